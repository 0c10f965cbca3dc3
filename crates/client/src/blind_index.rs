//! Blind index: find a record by an encrypted field's value without decrypting the column.
//!
//! `index = HMAC-SHA256(k_field, normalize(value))[..16]`, where `k_field` is a 32-byte key the
//! service derives per tenant, key and field from material it holds — never a data key — and hands
//! to callers with the `encrypt` or `decrypt` role. Store the index in its own column next to the
//! ciphertext, index it, and query with `WHERE email_bidx = ?`.
//!
//! ## Leakage
//!
//! A blind index is deterministic on purpose, so it reveals **equality**: anyone who reads the
//! table sees which rows share a value (and how many), and can confirm a guess of a value only if
//! they also hold `k_field`. It reveals nothing about order or prefixes. For low-entropy fields
//! (booleans, countries, birth years) equality is close to the value itself: do not index them.
//! The 16-byte truncation keeps accidental collisions negligible (2^-64 at 2^32 rows); treat a
//! match as a candidate and confirm it by decrypting the field.
//!
//! The normalizer decides which inputs are "equal": [`Normalizer::Email`] trims whitespace and
//! lowercases (so `" Ada@Example.com"` finds `"ada@example.com"`), [`Normalizer::Raw`] compares
//! bytes exactly. Use the same normalizer to write and to query.

use core::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::client::Client;
use crate::error::{Error, Result};

/// Length of a blind index value.
pub const BLIND_INDEX_LEN: usize = 16;

/// How a value is normalized before it is indexed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Normalizer {
    /// The bytes as given.
    Raw,
    /// Trim surrounding whitespace and lowercase (Unicode), for email addresses.
    Email,
}

/// Computes the blind index of one field. Holds the field's HMAC key (wiped on drop); no `Clone`.
pub struct BlindIndex {
    mac: Hmac<Sha256>,
    normalizer: Normalizer,
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlindIndex")
            .field("key", &"[REDACTED]")
            .field("normalizer", &self.normalizer)
            .finish()
    }
}

impl BlindIndex {
    /// A blind index with a field key obtained elsewhere. Most callers use
    /// [`Client::blind_index`].
    pub fn new(field_key: &[u8; 32], normalizer: Normalizer) -> Self {
        // HMAC zero-pads a key shorter than the hash block (64 bytes for SHA-256), so the padded
        // block *is* the same key; passing it whole avoids the fallible variable-length API.
        let mut block = zeroize::Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(field_key);
        let mac = <Hmac<Sha256> as KeyInit>::new(&(*block).into());
        BlindIndex { mac, normalizer }
    }

    /// The index of `value`, normalized first.
    pub fn compute(&self, value: &str) -> [u8; BLIND_INDEX_LEN] {
        match self.normalizer {
            Normalizer::Raw => self.compute_bytes(value.as_bytes()),
            Normalizer::Email => {
                let normalized = zeroize::Zeroizing::new(value.trim().to_lowercase());
                self.compute_bytes(normalized.as_bytes())
            }
        }
    }

    /// The index of raw bytes (no normalization).
    pub fn compute_bytes(&self, value: &[u8]) -> [u8; BLIND_INDEX_LEN] {
        let mut mac = self.mac.clone();
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        let mut out = [0u8; BLIND_INDEX_LEN];
        out.copy_from_slice(&tag[..BLIND_INDEX_LEN]);
        out
    }
}

impl Client {
    /// The blind index of `field` for `tenant`'s key `key`: one service call
    /// (`POST .../blind-index-key`, roles `encrypt` or `decrypt`), then local computation.
    pub async fn blind_index(
        &self,
        tenant: &str,
        key: &str,
        field: &str,
        normalizer: Normalizer,
    ) -> Result<BlindIndex> {
        if field.is_empty() {
            return Err(Error::Config("blind index field name is empty".into()));
        }
        let field_key = self.blind_index_key(tenant, key, field).await?;
        Ok(BlindIndex::new(&field_key, normalizer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // Independent reference: Python's
        // `hmac.new(b"\x0b" * 32, b"Hi There", hashlib.sha256).hexdigest()[:32]`.
        let index = BlindIndex::new(&[0x0b; 32], Normalizer::Raw);
        assert_eq!(
            hex(&index.compute_bytes(b"Hi There")),
            "198a607eb44bfbc69903a0f1cf2bbdc5"
        );
    }

    #[test]
    fn email_normalization() {
        let index = BlindIndex::new(&[1; 32], Normalizer::Email);
        assert_eq!(
            index.compute("  Ada@Example.COM\n"),
            index.compute("ada@example.com")
        );
        let raw = BlindIndex::new(&[1; 32], Normalizer::Raw);
        assert_ne!(
            raw.compute("Ada@example.com"),
            raw.compute("ada@example.com")
        );
        assert_eq!(
            raw.compute("ada@example.com"),
            index.compute("ada@example.com")
        );
        let other = BlindIndex::new(&[2; 32], Normalizer::Email);
        assert_ne!(
            other.compute("ada@example.com"),
            index.compute("ada@example.com")
        );
    }
}
