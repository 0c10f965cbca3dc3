//! In-crate tests: these reach the `pub(crate)` primitives and deterministic paths, so every
//! external vector runs through exactly the code the formats use.

mod golden;
mod properties;
mod secrets;
mod vectors;

/// Decode hex from a vector file; panics in tests only.
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("vector hex")
}

pub(crate) fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("vector length")
}
