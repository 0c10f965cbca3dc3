//! Thin, checked wrappers over the primitives. Every format in this crate goes through exactly
//! these functions, and the Wycheproof / KAT tests exercise exactly these functions too.

pub(crate) mod aead;
pub(crate) mod kdf;
pub(crate) mod mlkem;
pub(crate) mod x25519;

use crate::error::{Error, Result};

/// Fill `buf` from the operating system's CSPRNG.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Randomness)
}

/// SHA-256 of the concatenation of `parts`.
pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}
