//! Encryption context: caller-chosen key/value pairs a wrapped data key is bound to.

use core::fmt;
use std::collections::BTreeMap;

use crate::primitives::sha256;

/// Key/value pairs (for example `{"table": "customers", "column": "email"}`) that must be
/// presented again to unwrap a data key. Not secret: it is authenticated, not encrypted. Only its
/// [`ContextDigest`] travels inside a wrapped key.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct EncryptionContext(BTreeMap<String, String>);

/// SHA-256 of the canonical encoding of an [`EncryptionContext`]; see docs/FORMATS.md.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContextDigest(pub(crate) [u8; 32]);

const CONTEXT_LABEL: &[u8] = b"pqkms/v1/context";

impl EncryptionContext {
    /// The empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace one pair.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.insert(key.into(), value.into());
        self
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `SHA-256(label || u32be(n) || for each pair sorted by key bytes:
    /// u32be(len k) || k || u32be(len v) || v)`.
    pub fn digest(&self) -> ContextDigest {
        let mut encoded = Vec::with_capacity(CONTEXT_LABEL.len() + 4 + self.0.len() * 16);
        encoded.extend_from_slice(CONTEXT_LABEL);
        // BTreeMap iterates in byte order of the keys, which is the canonical order.
        encoded.extend_from_slice(&len32(self.0.len()).to_be_bytes());
        for (k, v) in &self.0 {
            for part in [k.as_bytes(), v.as_bytes()] {
                encoded.extend_from_slice(&len32(part.len()).to_be_bytes());
                encoded.extend_from_slice(part);
            }
        }
        ContextDigest(sha256(&[&encoded]))
    }
}

/// A context string of 4 GiB or more cannot reach us (the service caps request bodies far below);
/// saturating keeps the function total without a panic path.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for EncryptionContext {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        EncryptionContext(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl From<BTreeMap<String, String>> for EncryptionContext {
    fn from(map: BTreeMap<String, String>) -> Self {
        EncryptionContext(map)
    }
}

impl ContextDigest {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ContextDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContextDigest(")?;
        crate::ids::write_hex(f, &self.0)?;
        f.write_str(")")
    }
}
