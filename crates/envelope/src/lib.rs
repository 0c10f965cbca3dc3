//! # pqkms-envelope
//!
//! The key hierarchy, the hybrid post-quantum KEM and every wire format of pqkms, with no I/O.
//! The service and the client crate both use this crate, so each format has exactly one
//! implementation. Formats are specified byte by byte in `docs/FORMATS.md`.
//!
//! ```text
//! RootKey                 seals ──▶ SealedTenantKey            (stored in the database)
//! TenantPrivateKey (vN)   X-Wing = X25519 + ML-KEM-768
//!   └ TenantPublicKey     wraps ──▶ WrappedDataKey             (stored next to the data)
//!       └ DataKey         AES-256 ─▶ FieldKey ──▶ field ciphertexts
//!                                  └▶ Envelope (wrapped key + ciphertext in one blob)
//! ```
//!
//! ```
//! use pqkms_envelope::{EncryptionContext, FieldKey, KeyId, KeyRef, RootKey, TenantId,
//!                      TenantPrivateKey, WrappedDataKey};
//!
//! # fn main() -> Result<(), pqkms_envelope::Error> {
//! let key_ref = KeyRef { tenant: TenantId::random()?, key: KeyId::random()?, version: 1 };
//! let tenant_key = TenantPrivateKey::generate(key_ref)?;
//!
//! // Store the private half only sealed under the root key.
//! let root = RootKey::generate(1)?;
//! let sealed = root.seal_tenant_key(&tenant_key)?;
//!
//! // Anyone with the public key wraps data keys, bound to a context.
//! let mut context = EncryptionContext::new();
//! context.insert("table", "customers");
//! let (data_key, wrapped) = tenant_key.public_key().generate_data_key(&context)?;
//!
//! // Encrypt many fields locally with one data key.
//! let fields = FieldKey::new(&data_key)?;
//! let email = fields.encrypt(b"ada@example.com", b"customers/42/email")?;
//!
//! // Later: unseal, unwrap, decrypt.
//! let tenant_key = root.unseal_tenant_key(&sealed, &key_ref)?;
//! let wrapped = WrappedDataKey::parse(wrapped.as_bytes())?;
//! let data_key = tenant_key.unwrap_data_key(&wrapped, &context)?;
//! let plain = FieldKey::new(&data_key)?.decrypt(&email, b"customers/42/email")?;
//! assert_eq!(plain, b"ada@example.com");
//! # Ok(()) }
//! ```
//!
//! ## Choices
//!
//! - **X-Wing** (draft-connolly-cfrg-xwing-kem-06) as the hybrid KEM: ML-KEM-768 and X25519
//!   combined with SHA3-256, so a wrapped key stays safe while either half holds. A
//!   non-contributory X25519 share is refused.
//! - **ML-KEM from libcrux** (formally verified, AVX2 with runtime detection) rather than RustCrypto
//!   `ml-kem`: 3-6x faster here, same deterministic API. Its key type does not zeroize itself, so
//!   ours wraps it and wipes it on drop. Figures in `docs/CRYPTO.md`.
//! - **Opaque failures**: everything after parsing fails as [`Error::Decryption`].
//! - **Secrets** ([`RootKey`], [`TenantPrivateKey`], [`DataKey`], [`FieldKey`]) have no `Debug`,
//!   `Display` or `Clone`, and are zeroized on drop.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod context;
mod error;
mod format;
mod ids;
mod keys;
mod primitives;
mod xwing;

#[cfg(test)]
mod tests;

pub use context::{ContextDigest, EncryptionContext};
pub use error::{Error, Result};
pub use format::envelope::Envelope;
pub use format::field::{DataKeyId, FIELD_OVERHEAD, FieldKey};
pub use format::sealed_key::SealedTenantKey;
pub use format::wrapped_key::WrappedDataKey;
pub use ids::{KeyId, KeyRef, TenantId};
pub use keys::{DataKey, Fingerprint, RootKey, TenantPrivateKey, TenantPublicKey};

/// Length of an exported X-Wing public key (`pk_M || pk_X`).
pub const XWING_PUBLIC_KEY_LEN: usize = xwing::PUBLIC_KEY_LEN;
/// Length of an X-Wing ciphertext (`ct_M || ct_X`).
pub const XWING_CIPHERTEXT_LEN: usize = xwing::CIPHERTEXT_LEN;
