//! The crate's one error type.

use core::fmt;

/// Why an operation of this crate failed.
///
/// Parse errors (`Truncated` .. `UnsupportedAlgorithm`) describe the *shape* of the input and are
/// safe to report. Everything that happens after parsing — a wrong key, a wrong tenant, a wrong
/// context, a tampered byte, a non-contributory X25519 share — is the single opaque
/// [`Error::Decryption`], so a caller cannot learn which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The input ends before the format says it should.
    Truncated,
    /// The input is longer than the format says it should be.
    TrailingBytes,
    /// The input does not start with the magic of the expected format.
    BadMagic,
    /// The format version byte is not one this build understands.
    UnsupportedVersion(u8),
    /// The algorithm byte is not one this build understands.
    UnsupportedAlgorithm(u8),
    /// A public key failed validation (ML-KEM modulus check or a low-order X25519 point).
    InvalidPublicKey,
    /// Opening failed. Deliberately uniform: the cause is not revealed.
    Decryption,
    /// A plaintext is larger than the format or the AEAD allows.
    TooLarge,
    /// The operating system's random number generator failed.
    Randomness,
    /// The cryptographic library refused an operation that cannot fail on well-formed inputs
    /// (in practice: it could not allocate).
    Primitive,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("input is truncated"),
            Error::TrailingBytes => f.write_str("input has trailing bytes"),
            Error::BadMagic => f.write_str("input is not in the expected format (bad magic)"),
            Error::UnsupportedVersion(v) => write!(f, "unsupported format version {v}"),
            Error::UnsupportedAlgorithm(a) => write!(f, "unsupported algorithm id {a}"),
            Error::InvalidPublicKey => f.write_str("invalid public key"),
            Error::Decryption => f.write_str("decryption failed"),
            Error::TooLarge => f.write_str("plaintext too large"),
            Error::Randomness => f.write_str("random number generator unavailable"),
            Error::Primitive => f.write_str("cryptographic primitive failed"),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand used throughout the crate.
pub type Result<T> = core::result::Result<T, Error>;
