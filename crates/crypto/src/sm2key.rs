//! SM2 key pairs: signatures (SM2DSA with SM3 and the default distinguishing id) and public-key
//! encryption (C1C3C2, the GM/T 0003-2012 order used by the JS and Rust `sm-crypto` libraries).

use sm2::dsa::signature::{Signer, Verifier};
use sm2::dsa::{Signature, SigningKey, VerifyingKey};
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::pke::{DecryptingKey, EncryptingKey};
use sm2::{PublicKey, SecretKey};

use crate::CryptoError;

/// The default distinguishing identifier of GB/T 32918 (and every interoperable library).
pub const DEFAULT_DISTID: &str = "1234567812345678";

/// An SM2 private key with its public key.
pub struct Sm2KeyPair {
    signing: SigningKey,
    decrypting: DecryptingKey,
}

/// An SM2 public key.
#[derive(Clone, Debug, PartialEq)]
pub struct Sm2PublicKey(PublicKey);

impl Sm2KeyPair {
    /// A new random key pair.
    pub fn generate() -> Self {
        let secret = <SecretKey as sm2::elliptic_curve::Generate>::generate_from_rng(&mut rand::rng());
        Self::from_secret(&secret).expect("a random non-zero scalar is a valid key")
    }

    fn from_secret(secret: &SecretKey) -> Result<Self, CryptoError> {
        let signing = SigningKey::new(DEFAULT_DISTID, secret).map_err(|_| CryptoError::Malformed("SM2 key"))?;
        let decrypting = DecryptingKey::new(secret.clone());
        Ok(Self { signing, decrypting })
    }

    /// Parse a private key given as 64 hex digits (the format `sm-crypto` uses).
    pub fn from_private_hex(hex_key: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(hex_key).map_err(|_| CryptoError::Malformed("SM2 private key"))?;
        let secret = SecretKey::from_slice(&bytes).map_err(|_| CryptoError::Malformed("SM2 private key"))?;
        Self::from_secret(&secret)
    }

    /// The private key as 64 hex digits.
    pub fn private_hex(&self) -> String {
        hex::encode(self.signing.to_bytes())
    }

    /// The public half.
    pub fn public_key(&self) -> Sm2PublicKey {
        Sm2PublicKey(PublicKey::from_secret_scalar(self.signing.as_nonzero_scalar()))
    }

    /// Sign `msg` (SM3 with Z_A over the default id); returns `r || s` (64 bytes).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let sig: Signature = self.signing.sign(msg);
        sig.to_bytes().to_vec()
    }

    /// Decrypt an SM2 ciphertext in C1C3C2 order. C1 may carry the SEC1 `04` prefix or not
    /// (the `sm-crypto` libraries omit it).
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let owned;
        let ct = if ciphertext.first() == Some(&0x04) {
            ciphertext
        } else {
            let mut v = Vec::with_capacity(ciphertext.len() + 1);
            v.push(0x04);
            v.extend_from_slice(ciphertext);
            owned = v;
            &owned
        };
        self.decrypting.decrypt(ct).map_err(|_| CryptoError::Unauthentic)
    }
}

impl Sm2PublicKey {
    /// Parse an uncompressed public key: 130 hex digits starting `04`, or 128 without it.
    pub fn from_hex(hex_key: &str) -> Result<Self, CryptoError> {
        let mut bytes = hex::decode(hex_key.trim()).map_err(|_| CryptoError::Malformed("SM2 public key"))?;
        if bytes.len() == 64 {
            bytes.insert(0, 0x04);
        }
        PublicKey::from_sec1_bytes(&bytes).map(Self).map_err(|_| CryptoError::Malformed("SM2 public key"))
    }

    /// Uncompressed SEC1 encoding as hex (`04 || x || y`).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_sec1_point(false).as_bytes())
    }

    /// Verify an SM2 signature given as `r || s` (64 bytes) or DER.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let sig = if signature.len() == 64 { Signature::from_slice(signature) } else { Signature::from_der(signature) }
            .map_err(|_| CryptoError::Malformed("SM2 signature"))?;
        let vk = VerifyingKey::new(DEFAULT_DISTID, self.0).map_err(|_| CryptoError::Malformed("SM2 public key"))?;
        vk.verify(msg, &sig).map_err(|_| CryptoError::BadSignature)
    }

    /// Encrypt `msg` to this key; C1C3C2 with the `04` prefix on C1.
    pub fn encrypt(&self, msg: &[u8]) -> Vec<u8> {
        let ek = EncryptingKey::new(self.0);
        ek.encrypt(&mut rand::rngs::SysRng, msg).expect("SM2 encryption with the OS RNG")
    }
}
