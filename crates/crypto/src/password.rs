//! Password hashing: argon2id by default, PBKDF2-HMAC-SM3 in 国密 mode. Both are stored as PHC
//! strings, so verification picks the algorithm from the stored hash and a site can switch mode
//! without locking anyone out (the next password change re-hashes in the new mode).

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine;

use crate::{ct_eq, random_bytes, CryptoError};

/// Which algorithm new hashes use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// argon2id, RFC 9106 second recommended parameters (m=19 MiB, t=2, p=1).
    Argon2id,
    /// PBKDF2 with HMAC-SM3, for sites that must use national algorithms only.
    Pbkdf2Sm3,
}

/// PBKDF2-HMAC-SM3 iteration count.
pub const PBKDF2_SM3_ROUNDS: u32 = 200_000;

/// Hash `password` with `alg`; returns a PHC string.
pub fn hash(password: &str, alg: Algorithm) -> Result<String, CryptoError> {
    match alg {
        Algorithm::Argon2id => Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| CryptoError::Password(e.to_string())),
        Algorithm::Pbkdf2Sm3 => {
            let salt = random_bytes(16);
            let out = pbkdf2_sm3(password.as_bytes(), &salt, PBKDF2_SM3_ROUNDS);
            Ok(format!("$pbkdf2-sm3$i={PBKDF2_SM3_ROUNDS}${}${}", B64.encode(&salt), B64.encode(out)))
        }
    }
}

/// Does `password` match `stored`? Comparison is constant-time in both algorithms.
pub fn verify(password: &str, stored: &str) -> bool {
    if let Some(rest) = stored.strip_prefix("$pbkdf2-sm3$") {
        let mut parts = rest.split('$');
        let (Some(iter), Some(salt), Some(want), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Some(rounds) = iter.strip_prefix("i=").and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        let (Ok(salt), Ok(want)) = (B64.decode(salt), B64.decode(want)) else {
            return false;
        };
        if rounds == 0 || want.len() != 32 {
            return false;
        }
        return ct_eq(&pbkdf2_sm3(password.as_bytes(), &salt, rounds), &want);
    }
    match argon2::password_hash::phc::PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

fn pbkdf2_sm3(password: &[u8], salt: &[u8], rounds: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sm3::Sm3>(password, salt, rounds, &mut out);
    out
}

/// Why a password was refused by [`check_policy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Shorter than the configured minimum.
    #[error("password must be at least {0} characters long")]
    TooShort(usize),
    /// Longer than 256 characters.
    #[error("password must be at most 256 characters long")]
    TooLong,
    /// Fewer than three of: lowercase, uppercase, digit, other.
    #[error("password must contain at least three of: lowercase letters, uppercase letters, digits, symbols")]
    TooSimple,
    /// Contains the username.
    #[error("password must not contain the username")]
    ContainsUsername,
}

/// The password policy: a minimum length, three character classes (as China's MLPS 2.0 /
/// 等保 2.0 baseline asks), and not containing the username.
pub fn check_policy(password: &str, username: &str, min_len: usize) -> Result<(), PolicyError> {
    let n = password.chars().count();
    if n < min_len {
        return Err(PolicyError::TooShort(min_len));
    }
    if n > 256 {
        return Err(PolicyError::TooLong);
    }
    let classes = [
        password.chars().any(|c| c.is_lowercase()),
        password.chars().any(|c| c.is_uppercase()),
        password.chars().any(|c| c.is_ascii_digit()),
        password.chars().any(|c| !c.is_alphanumeric()),
    ];
    if classes.iter().filter(|&&b| b).count() < 3 {
        return Err(PolicyError::TooSimple);
    }
    if !username.is_empty() && password.to_lowercase().contains(&username.to_lowercase()) {
        return Err(PolicyError::ContainsUsername);
    }
    Ok(())
}
