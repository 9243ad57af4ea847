use super::*;
use sm4::cipher::BlockCipherEncrypt;
use sm4::cipher::KeyInit;

#[test]
fn sm3_gbt32905_vectors() {
    // GB/T 32905-2016, Appendix A, examples 1 and 2.
    assert_eq!(hex::encode(sm3_digest(b"abc")), "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0");
    assert_eq!(
        hex::encode(sm3_digest("abcd".repeat(16).as_bytes())),
        "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"
    );
    assert_eq!(sm3_parts(&[b"ab", b"c"]), sm3_digest(b"abc"));
}

#[test]
fn sm4_gbt32907_vectors() {
    // GB/T 32907-2016, Appendix A: one block, and the same block encrypted 1,000,000 times.
    let key = hex::decode("0123456789abcdeffedcba9876543210").unwrap();
    let cipher = sm4::Sm4::new_from_slice(&key).unwrap();
    let mut block = sm4::cipher::Block::<sm4::Sm4>::try_from(&key[..]).unwrap();
    cipher.encrypt_block(&mut block);
    assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
    let mut block = sm4::cipher::Block::<sm4::Sm4>::try_from(&key[..]).unwrap();
    for _ in 0..1_000_000 {
        cipher.encrypt_block(&mut block);
    }
    assert_eq!(hex::encode(block), "595298c7c6fd271f0402f804c33d3f66");
}

#[test]
fn sm4_gcm_round_trip_and_tamper_detection() {
    let mk = MasterKey::generate();
    let sealed = mk.seal(b"upstream api key", b"upstream:7");
    assert_eq!(mk.open(&sealed, b"upstream:7").unwrap(), b"upstream api key");
    // Every single-bit flip in nonce, ciphertext or tag is detected.
    for i in 1..sealed.len() {
        let mut t = sealed.clone();
        t[i] ^= 0x01;
        assert!(matches!(mk.open(&t, b"upstream:7"), Err(CryptoError::Unauthentic)), "flip at {i}");
    }
    // Wrong context or wrong key fails too.
    assert!(mk.open(&sealed, b"upstream:8").is_err());
    assert!(MasterKey::generate().open(&sealed, b"upstream:7").is_err());
    // Two seals of the same text differ (fresh nonce).
    assert_ne!(mk.seal(b"x", b""), mk.seal(b"x", b""));
}

#[test]
fn hmac_sm3_matches_definition() {
    // HMAC per RFC 2104 with SM3's 64-byte block, computed from sm3_digest directly.
    let key = b"key";
    let msg = b"The quick brown fox jumps over the lazy dog";
    let mut k = [0u8; 64];
    k[..key.len()].copy_from_slice(key);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = sm3_parts(&[&ipad, msg]);
    let outer = sm3_parts(&[&opad, &inner]);
    assert_eq!(hmac_sm3(key, msg), outer);
    let prepared = HmacSm3Key::new(key);
    assert_eq!(prepared.mac(msg), outer);
    assert_eq!(prepared.mac(b"other"), hmac_sm3(key, b"other"), "reusable");
}

#[test]
fn sm2_sign_verify_and_encrypt_decrypt() {
    let kp = Sm2KeyPair::generate();
    let pk = kp.public_key();
    let sig = kp.sign(b"checkpoint 1000");
    pk.verify(b"checkpoint 1000", &sig).unwrap();
    assert!(pk.verify(b"checkpoint 1001", &sig).is_err());
    assert!(Sm2KeyPair::generate().public_key().verify(b"checkpoint 1000", &sig).is_err());
    let ct = pk.encrypt(b"secret");
    assert_eq!(kp.decrypt(&ct).unwrap(), b"secret");
    let mut bad = ct.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(kp.decrypt(&bad).is_err());
    // Keys round-trip through hex.
    let again = Sm2KeyPair::from_private_hex(&kp.private_hex()).unwrap();
    assert_eq!(again.public_key(), pk);
    assert_eq!(Sm2PublicKey::from_hex(&pk.to_hex()).unwrap(), pk);
}

/// The `sm-crypto` crate (whose formats match the JS `sm-crypto` many Chinese front ends use)
/// is the interoperability oracle; it speaks num-bigint for signature scalars.
fn biguint_to_32(b: &num_bigint::BigUint) -> [u8; 32] {
    let bytes = b.to_bytes_be();
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(&bytes);
    out
}

#[test]
fn interop_sm_crypto_signatures_both_ways() {
    let (sk_hex, pk_hex) = sm_crypto::sm2::gen_keypair();
    let ours = Sm2KeyPair::from_private_hex(&sk_hex).unwrap();
    let their_pk = Sm2PublicKey::from_hex(&pk_hex).unwrap();
    assert_eq!(ours.public_key(), their_pk);
    let msg = "审计检查点 audit checkpoint".as_bytes();

    // Theirs verifies with ours (raw r,s and DER).
    let (r, s) = sm_crypto::sm2::Sign::new(&sk_hex).sign(msg, true);
    let mut rs = biguint_to_32(&r).to_vec();
    rs.extend_from_slice(&biguint_to_32(&s));
    their_pk.verify(msg, &rs).unwrap();
    let der = sm_crypto::sm2::Sign::new(&sk_hex).sign_der(msg, true);
    their_pk.verify(msg, &der).unwrap();

    // Ours verifies with theirs.
    let sig = ours.sign(msg);
    let r = num_bigint::BigUint::from_bytes_be(&sig[..32]);
    let s = num_bigint::BigUint::from_bytes_be(&sig[32..]);
    assert!(sm_crypto::sm2::Verify::new(&pk_hex).verify(msg, (r.clone(), s.clone()), true));
    assert!(!sm_crypto::sm2::Verify::new(&pk_hex).verify(b"other", (r, s), true));
}

#[test]
fn interop_sm_crypto_encryption_both_ways() {
    let (sk_hex, pk_hex) = sm_crypto::sm2::gen_keypair();
    let ours = Sm2KeyPair::from_private_hex(&sk_hex).unwrap();
    let msg = "国密 SM2 加密 interop".as_bytes();
    // Their C1C3C2 (C1 without the 04 prefix) decrypts with ours.
    let ct = sm_crypto::sm2::Encrypt::new(&pk_hex).encrypt(msg);
    assert_eq!(ours.decrypt(&ct).unwrap(), msg);
    // Ours decrypts with theirs once the SEC1 prefix is dropped.
    let ct = ours.public_key().encrypt(msg);
    assert_eq!(ct[0], 0x04);
    assert_eq!(sm_crypto::sm2::Decrypt::new(&sk_hex).decrypt(&ct[1..]), msg);
}

#[test]
fn interop_sm_crypto_sm3() {
    let data = "国密算法 SM3".as_bytes();
    assert_eq!(sm_crypto::sm3::sm3_hash(data), hex::encode(sm3_digest(data)));
}

#[test]
fn passwords_hash_and_verify_in_both_modes() {
    for alg in [password::Algorithm::Argon2id, password::Algorithm::Pbkdf2Sm3] {
        let h = password::hash("Correct-Horse-9", alg).unwrap();
        assert!(password::verify("Correct-Horse-9", &h), "{alg:?}");
        assert!(!password::verify("correct-horse-9", &h), "{alg:?}");
        assert_ne!(h, password::hash("Correct-Horse-9", alg).unwrap(), "salted");
    }
    assert!(password::hash("x", password::Algorithm::Argon2id).unwrap().starts_with("$argon2id$"));
    assert!(!password::verify("x", "$pbkdf2-sm3$i=0$AA$AA"));
    assert!(!password::verify("x", "garbage"));
}

#[test]
fn password_policy_messages() {
    use password::{check_policy, PolicyError};
    assert_eq!(check_policy("Ab1!", "alice", 10), Err(PolicyError::TooShort(10)));
    assert_eq!(check_policy("abcdefghijk", "alice", 10), Err(PolicyError::TooSimple));
    assert_eq!(check_policy("Alice-12345", "alice", 10), Err(PolicyError::ContainsUsername));
    assert_eq!(check_policy("Tr0ub4dor&3x", "alice", 10), Ok(()));
    assert_eq!(check_policy("密码很长很长很长Ab1", "alice", 10), Ok(()));
}

#[test]
fn keyring_created_once_with_private_modes() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let a = Keyring::load_or_create(&keys).unwrap();
    let b = Keyring::load_or_create(&keys).unwrap();
    assert_eq!(a.signing.public_key(), b.signing.public_key());
    let sealed = a.master.seal(b"x", b"");
    assert_eq!(b.master.open(&sealed, b"").unwrap(), b"x");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["master.key", "sm2.key"] {
            let mode = std::fs::metadata(keys.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
    }
}
