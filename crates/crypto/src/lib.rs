//! maasbox-crypto: the national algorithms (SM2, SM3, SM4-GCM), HMAC-SM3, password hashing,
//! the appliance's master key and its SM2 signing key.
//!
//! Entry points: [`sm3_digest`], [`hmac_sm3`], [`MasterKey`] (seal/open secrets with SM4-GCM),
//! [`Sm2KeyPair`] (sign/verify, encrypt/decrypt), [`password`] (argon2id or PBKDF2-HMAC-SM3),
//! and [`Keyring`] which creates and loads the key files of a data directory.
//!
//! Everything here is built on RustCrypto crates (`sm2`, `sm3`, `sm4`, `aes-gcm`, `hmac`,
//! `pbkdf2`, `argon2`); nothing is hand-rolled except the small file formats.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::AesGcm;
use hmac::{Hmac, Mac};
use rand::Rng;
use sm3::{Digest, Sm3};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

pub mod password;
mod sm2key;

pub use sm2key::{Sm2KeyPair, Sm2PublicKey};

/// SM4 in Galois/Counter Mode with a 96-bit nonce (through `aes-gcm`'s generic `AesGcm`).
pub type Sm4Gcm = AesGcm<sm4::Sm4, aes_gcm::aead::consts::U12>;

/// Errors from this crate. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Authentication of sealed data failed: wrong key or tampered ciphertext.
    #[error("authentication failed: the ciphertext was altered or the key is wrong")]
    Unauthentic,
    /// A key, signature or ciphertext was not in the expected format.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A signature did not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Password hashing failed.
    #[error("password hashing: {0}")]
    Password(String),
}

/// SM3 digest (GB/T 32905) of `data`.
pub fn sm3_digest(data: &[u8]) -> [u8; 32] {
    Sm3::digest(data).into()
}

/// SM3 over several parts, as if they were concatenated.
pub fn sm3_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sm3::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// An incremental SM3 hash, for data too large to hold at once (bundle blobs).
#[derive(Clone, Default)]
pub struct Sm3Stream(Sm3);

impl Sm3Stream {
    /// Feed more bytes.
    pub fn update(&mut self, data: &[u8]) {
        Digest::update(&mut self.0, data);
    }

    /// The digest as lowercase hex.
    pub fn finish_hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// HMAC-SM3 of `data` under `key`.
pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sm3> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// An HMAC-SM3 key with its inner and outer pads already absorbed, for MACs computed on a hot
/// path (API-key checks): each MAC then costs two SM3 compressions instead of four.
#[derive(Clone)]
pub struct HmacSm3Key(Hmac<Sm3>);

impl HmacSm3Key {
    /// Prepare `key`.
    pub fn new(key: &[u8]) -> Self {
        Self(<Hmac<Sm3> as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length"))
    }

    /// HMAC-SM3 of `data`; equal to [`hmac_sm3`] with the same key.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        let mut m = self.0.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// `n` bytes from the operating system's CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// A random token of `n` bytes, rendered as lowercase hex.
pub fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}

/// The appliance master key: 32 random bytes created at first run. Sub-keys for sealing,
/// token MACs and JWT signing are derived from it with HMAC-SM3 and a purpose label, so one
/// leaked sub-key reveals nothing about the others.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(k.as_mut());
        Self(k)
    }

    /// Wrap existing key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// A 32-byte sub-key for `purpose`.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(hmac_sm3(self.0.as_ref(), purpose.as_bytes()))
    }

    /// Encrypt `plaintext` with SM4-GCM under the sealing sub-key. `aad` binds the ciphertext to
    /// its context (e.g. the row it belongs to). Output: `0x01 || nonce(12) || ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let key = self.derive("maasbox/seal/v1");
        sm4_gcm_seal(&key[..16], plaintext, aad)
    }

    /// Decrypt what [`MasterKey::seal`] produced; fails on any change to the ciphertext or aad.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self.derive("maasbox/seal/v1");
        sm4_gcm_open(&key[..16], sealed, aad)
    }
}

/// SM4-GCM encrypt with a random nonce: `0x01 || nonce(12) || ciphertext || tag(16)`.
pub fn sm4_gcm_seal(key: &[u8], plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let cipher = Sm4Gcm::new_from_slice(key).expect("SM4 key is 16 bytes");
    let nonce_bytes = random_bytes(12);
    let nonce = aes_gcm::Nonce::try_from(&nonce_bytes[..]).expect("12-byte nonce");
    let ct = cipher
        .encrypt(&nonce, aes_gcm::aead::Payload { msg: plaintext, aad })
        .expect("SM4-GCM encryption cannot fail for in-memory buffers");
    let mut out = Vec::with_capacity(1 + 12 + ct.len());
    out.push(1);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&ct);
    out
}

/// SM4-GCM decrypt what [`sm4_gcm_seal`] produced.
pub fn sm4_gcm_open(key: &[u8], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 1 + 12 + 16 || sealed[0] != 1 {
        return Err(CryptoError::Malformed("sealed data"));
    }
    let cipher = Sm4Gcm::new_from_slice(key).map_err(|_| CryptoError::Malformed("SM4 key"))?;
    let nonce = aes_gcm::Nonce::try_from(&sealed[1..13]).map_err(|_| CryptoError::Malformed("nonce"))?;
    cipher.decrypt(&nonce, aes_gcm::aead::Payload { msg: &sealed[13..], aad }).map_err(|_| CryptoError::Unauthentic)
}

/// Write `bytes` to `path` with mode 0600, atomically (temp file + rename), refusing to
/// overwrite an existing file.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), CryptoError> {
    let io = |source| CryptoError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(io)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
            }
        }
    }
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    if path.exists() {
        let _ = fs::remove_file(&tmp);
        return Err(io(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists")));
    }
    fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// The key files of a data directory: `keys/master.key` (32 bytes) and `keys/sm2.key`
/// (the appliance's SM2 private key, hex), both mode 0600, created on first use.
pub struct Keyring {
    /// The master key.
    pub master: MasterKey,
    /// The appliance signing key (audit checkpoints, export manifests, bundles).
    pub signing: Sm2KeyPair,
}

impl Keyring {
    /// Load the keys under `keys_dir`, creating any that do not exist yet.
    pub fn load_or_create(keys_dir: &Path) -> Result<Self, CryptoError> {
        let master_path = keys_dir.join("master.key");
        let sm2_path = keys_dir.join("sm2.key");
        let master = match read_secret(&master_path)? {
            Some(bytes) => {
                let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| CryptoError::Malformed("master.key"))?;
                MasterKey::from_bytes(arr)
            }
            None => {
                let k = MasterKey::generate();
                write_secret_file(&master_path, k.0.as_ref())?;
                k
            }
        };
        let signing = match read_secret(&sm2_path)? {
            Some(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| CryptoError::Malformed("sm2.key"))?;
                Sm2KeyPair::from_private_hex(text.trim())?
            }
            None => {
                let k = Sm2KeyPair::generate();
                write_secret_file(&sm2_path, k.private_hex().as_bytes())?;
                let _ = fs::write(keys_dir.join("sm2.pub"), k.public_key().to_hex());
                k
            }
        };
        Ok(Self { master, signing })
    }
}

fn read_secret(path: &Path) -> Result<Option<Vec<u8>>, CryptoError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CryptoError::Io { path: path.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests;
