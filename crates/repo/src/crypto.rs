//! Client-side encryption: a random data key wrapped by a passphrase-derived key.
//!
//! The passphrase never encrypts data directly. Argon2id turns it into a key-encryption key (KEK)
//! that wraps the 32-byte data key with XChaCha20-Poly1305; objects are encrypted with subkeys
//! derived from the data key. Re-keying therefore rewrites only the wrapped key, never data.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;

/// A passphrase held in memory; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

impl Passphrase {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Argon2id cost, stored in the repository config so it can be raised later without breaking
/// existing repositories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's minimum for Argon2id (19 MiB, 2 passes): every `wal-push` that reaches the store pays
    /// this once, so it must stay in the tens of milliseconds.
    fn default() -> Self {
        Self {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("authentication failed")]
    Authentication,
    #[error("random number generator failed: {0}")]
    Random(String),
}

pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(buf)
}

pub fn derive_kek(
    passphrase: &Passphrase,
    salt: &[u8],
    params: KdfParams,
) -> Result<[u8; 32], CryptoError> {
    let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase.bytes(), salt, &mut out)
        .map_err(|e| CryptoError::Kdf(e.to_string()))?;
    Ok(out)
}

/// Encrypt `plain` under `key`: returns nonce || ciphertext || tag. `aad` is authenticated too.
pub fn seal(key: &[u8; 32], plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let nonce_bytes: [u8; NONCE_LEN] = random_bytes()?;
    let nonce = XNonce::from(nonce_bytes);
    let sealed = cipher
        .encrypt(&nonce, Payload { msg: plain, aad })
        .map_err(|_| CryptoError::Authentication)?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Reverse of [`seal`]; fails when the bytes or `aad` were altered or the key is wrong.
pub fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Authentication);
    }
    let (nonce_bytes, body) = sealed.split_at(NONCE_LEN);
    let nonce_arr: [u8; NONCE_LEN] = nonce_bytes
        .try_into()
        .map_err(|_| CryptoError::Authentication)?;
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher
        .decrypt(&XNonce::from(nonce_arr), Payload { msg: body, aad })
        .map_err(|_| CryptoError::Authentication)
}

/// The unwrapped data key and the subkeys derived from it. Zeroed on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKeys {
    pub key_id: u8,
    pub encryption: [u8; 32],
    /// Keys the content hash, so stored hashes reveal nothing about plaintext to a reader of the
    /// bucket (an unkeyed hash would confirm guesses of known files).
    pub hashing: [u8; 32],
}

impl DataKeys {
    pub fn from_data_key(key_id: u8, data_key: &[u8; 32]) -> Self {
        Self {
            key_id,
            encryption: blake3::derive_key("lifeboat 2026-11 object encryption v1", data_key),
            hashing: blake3::derive_key("lifeboat 2026-11 content hash v1", data_key),
        }
    }
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKeys(id {}, <redacted>)", self.key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"hello", b"aad").unwrap();
        assert_eq!(open(&key, &sealed, b"aad").unwrap(), b"hello");
        assert!(open(&key, &sealed, b"other").is_err());
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open(&key, &bad, b"aad").is_err());
        assert!(open(&[8u8; 32], &sealed, b"aad").is_err());
    }

    #[test]
    fn kdf_is_deterministic_per_salt() {
        let p = Passphrase::new("correct horse");
        let params = KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let a = derive_kek(&p, b"0123456789abcdef", params).unwrap();
        let b = derive_kek(&p, b"0123456789abcdef", params).unwrap();
        let c = derive_kek(&p, b"fedcba9876543210", params).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
    }
}
