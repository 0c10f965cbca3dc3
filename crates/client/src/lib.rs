//! # pqkms-client
//!
//! Field-level encryption for platform services, with data keys from a pqkms service: encrypt a
//! record's fields locally under one data key, store the wrapped data key once next to them, and
//! decrypt by having the service unwrap it.
//!
//! ```no_run
//! use pqkms_client::{Client, EncryptionContext};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new("https://pqkms.internal:8650", std::env::var("PQKMS_TOKEN")?)?;
//! let customers = client.encryptor("acme", "default", EncryptionContext::from_iter([("table", "customers")]));
//!
//! // Write row 42: one data key for the record, each field encrypted locally.
//! let record = customers.record("customers/42").await?;
//! let email = record.encrypt("email", "ada@example.com")?;   // EncryptedColumn: store as BLOB/BYTEA
//! let dek = record.wrapped_key().as_bytes().to_vec();         // store once per row
//!
//! // Read it back: the service unwraps the data key (once; then cached), fields decrypt locally.
//! let opened = customers.open("customers/42", &dek).await?;
//! let email: String = opened.decrypt("email", &email)?;
//! # Ok(()) }
//! ```
//!
//! The token needs the `encrypt` role to write and `decrypt` to read (one token may have both).
//! The row id (`"customers/42"`) and field name (`"email"`) are authenticated with every field, so
//! a ciphertext copied to another row or column does not decrypt; see [`encryptor`] for the exact
//! associated data. Store [`EncryptedColumn`]s directly with sqlx (it encodes as bytes).
//!
//! ## What you get
//!
//! - [`Client`]: the whole v1 API (async, rustls), bearer token held in a [`SecretString`] and
//!   never printed, timeouts, retries with exponential backoff on connection failures and `503`
//!   only ([`RetryPolicy`]), typed [`Error`]s per service error code — including
//!   [`Error::KeyDestroyed`] for a crypto-shredded key. Plaintext data keys are only ever
//!   [`DataKey`]s (zeroized on drop, no `Debug`). The key lifecycle too:
//!   [`Client::rotate_key`], [`Client::rewrap`] / [`Client::rewrap_batch`] (move stored wrapped
//!   keys to the newest version; `examples/migrate_wrapped_keys.rs` does a whole table),
//!   [`Client::configure_key`], disable / enable, scheduled destruction and its cancellation.
//! - [`Encryptor`]: bound to a tenant, key and [`EncryptionContext`]; one data key per record
//!   ([`Encryptor::record`]), fields encrypted with the envelope crate's field format, records
//!   opened through the service ([`Encryptor::open`]). [`EncryptedRecord`] bundles a record's
//!   wrapped key and fields when you want them together.
//! - A data-key cache with [`CacheLimits`] (max age, fields and bytes per key, entries), keyed by
//!   tenant, key and context digest (and wrapped key, to decrypt): never shared across tenants or
//!   contexts, and a context mismatch never hits the cache. Only derived field keys are cached;
//!   they zeroize on eviction and drop. [`Client::stats`] counts service calls and cache hits.
//! - Offline wrapping ([`offline`]): pin a tenant public key by fingerprint once, then wrap new
//!   data keys locally with zero service calls.
//! - Typed values ([`value`]): `&str`/`String`, bytes, `i64`/`u64` and any serde value via
//!   [`Json`]; [`EncryptedColumn`] implements sqlx `Type`/`Encode`/`Decode` as bytes (SQLite,
//!   PostgreSQL).
//! - Blind indexes ([`blind_index`]) for equality lookups on encrypted columns. They leak
//!   equality by design — read the module docs before indexing a field.
//!
//! ## What it protects, and what not
//!
//! A database dump holds ciphertexts and wrapped keys: without a `decrypt` token for that tenant
//! (and the exact context), they do not open, and every unwrap is audited by the service. What
//! stays visible: field lengths (pad if that matters), which fields share a data key, blind-index
//! equality, and everything the encryption context says (it is authenticated, not encrypted).
//! A process holding a cached key can decrypt that key's fields without the service until the
//! key leaves the cache: revoking a token or destroying a key takes effect for cached keys after
//! at most [`CacheLimits::max_age`] — lower it, or call [`Client::clear_cache`], where that
//! matters.
//!
//! The HTTP stack's own buffers (which hold data-key answers briefly) are not zeroized; this
//! crate wipes every copy it makes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod blind_index;
mod cache;
mod client;
mod column;
pub mod encryptor;
mod error;
pub mod offline;
pub mod value;

pub use blind_index::{BLIND_INDEX_LEN, BlindIndex, Normalizer};
pub use cache::CacheLimits;
pub use client::{
    AuditVerification, Client, ClientBuilder, ClientStats, CreatedToken, DestroyCancelled,
    DestroyScheduled, GeneratedDataKey, KeyConfig, KeyInfo, KeyPolicy, KeyStateChange, KeyVersion,
    MAX_REWRAP_BATCH, ResealResult, RetryPolicy, RewrappedKey, Role, RotatedKey, RotationPeriod,
    TenantCreated,
};
pub use column::EncryptedColumn;
pub use encryptor::{EncryptedRecord, Encryptor, RecordDecryptor, RecordEncryptor};
pub use error::{Error, Result, ServiceError};
pub use offline::PinnedPublicKey;
pub use value::{DecryptValue, EncryptValue, Json};

/// The envelope crate, for its types ([`DataKey`], [`WrappedDataKey`], [`TenantPublicKey`], ...).
pub use pqkms_envelope as envelope;
pub use pqkms_envelope::{
    DataKey, DataKeyId, EncryptionContext, Fingerprint, TenantPublicKey, WrappedDataKey,
};
/// Re-exported: the type the bearer token and created tokens are held in.
pub use secrecy::{ExposeSecret, SecretString};
