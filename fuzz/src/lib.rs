//! Fixtures shared by the fuzz targets and by `examples/make_seeds.rs`.
//!
//! Every secret key here is generated at random once per process, so no fuzzer input (and no
//! committed seed) can be a genuine ciphertext for it: anything that opens under one of these keys
//! is a forgery, and the targets treat it as a finding. The *public* parts (the key ref, the root
//! key version, the context) are fixed, so the seeds carry them and the fuzzer gets past the cheap
//! "is this blob for me?" checks into the KEM and AEAD code.
//!
//! The byte offsets below restate the v1 wire formats (see the module docs under
//! `crates/envelope/src/format/`); the targets use them as an independent oracle for the parsers.

use std::sync::OnceLock;

use pqkms_envelope::{
    DataKey, EncryptionContext, Error, FieldKey, KeyId, KeyRef, RootKey, TenantId, TenantPrivateKey,
};

/// The key ref of the fixed tenant key, and of every seed.
pub const KEY_REF: KeyRef = KeyRef {
    tenant: TenantId::from_bytes([0x11; 16]),
    key: KeyId::from_bytes([0x22; 16]),
    version: 1,
};

/// The version of the fixed root key, and of every sealed-key seed.
pub const ROOT_VERSION: u32 = 1;

/// Wrapped data key: `"PQWK" | 1 | alg 1`.
pub const WRAPPED_PREFIX: &[u8] = b"PQWK\x01\x01";
/// Wrapped data key: key ref at `6..42`, context digest at `42..74`.
pub const WRAPPED_KEY_REF: core::ops::Range<usize> = 6..42;
/// See [`WRAPPED_KEY_REF`].
pub const WRAPPED_CONTEXT: core::ops::Range<usize> = 42..74;

/// Sealed tenant key: `"PQSK" | 1 | alg 1`.
pub const SEALED_PREFIX: &[u8] = b"PQSK\x01\x01";
/// Sealed tenant key length.
pub const SEALED_LEN: usize = 106;
/// Sealed tenant key: root key version (u32 BE) at `6..10`.
pub const SEALED_ROOT_VERSION: core::ops::Range<usize> = 6..10;
/// Sealed tenant key: key ref at `10..46`.
pub const SEALED_KEY_REF: core::ops::Range<usize> = 10..46;

/// Exported public key: `"PQPK" | 1 | alg 1`.
pub const PUBLIC_PREFIX: &[u8] = b"PQPK\x01\x01";
/// Exported public key length.
pub const PUBLIC_LEN: usize = 1258;
/// Exported public key: key ref at `6..42`, X-Wing public key after it.
pub const PUBLIC_KEY_REF: core::ops::Range<usize> = 6..42;

/// Field ciphertext: `"PF" | 1`.
pub const FIELD_PREFIX: &[u8] = b"PF\x01";
/// Field ciphertext: data key id at `3..11`.
pub const FIELD_KEY_ID: core::ops::Range<usize> = 3..11;

/// Envelope: `"PQEV" | 1`, then the u16 BE wrapped-key length at `5..7`, the wrapped key from 7.
pub const ENVELOPE_PREFIX: &[u8] = b"PQEV\x01";
/// Offset of the wrapped key inside an envelope.
pub const ENVELOPE_WRAPPED_START: usize = 7;

/// The context every seed is bound to.
pub fn context() -> &'static EncryptionContext {
    static CONTEXT: OnceLock<EncryptionContext> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        [("table", "customers"), ("column", "email")]
            .into_iter()
            .collect()
    })
}

/// The fixed tenant private key (random, [`KEY_REF`]).
pub fn tenant_key() -> &'static TenantPrivateKey {
    static KEY: OnceLock<TenantPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| TenantPrivateKey::generate(KEY_REF).expect("generate tenant key"))
}

/// The fixed root key (random, [`ROOT_VERSION`]).
pub fn root_key() -> &'static RootKey {
    static KEY: OnceLock<RootKey> = OnceLock::new();
    KEY.get_or_init(|| RootKey::generate(ROOT_VERSION).expect("generate root key"))
}

/// The fixed data key (random).
pub fn data_key() -> &'static DataKey {
    static KEY: OnceLock<DataKey> = OnceLock::new();
    KEY.get_or_init(|| DataKey::generate().expect("generate data key"))
}

/// The field key of [`data_key`].
pub fn field_key() -> &'static FieldKey {
    static KEY: OnceLock<FieldKey> = OnceLock::new();
    KEY.get_or_init(|| FieldKey::new(data_key()).expect("derive field key"))
}

/// The 36-byte encoding of a key ref: tenant id, key id, u32 BE version.
pub fn encode_key_ref(key_ref: &KeyRef) -> [u8; 36] {
    let mut out = [0u8; 36];
    out[..16].copy_from_slice(key_ref.tenant.as_bytes());
    out[16..32].copy_from_slice(key_ref.key.as_bytes());
    out[32..].copy_from_slice(&key_ref.version.to_be_bytes());
    out
}

/// Whether `e` is one of the documented *parse* errors (the shape of the input), as opposed to
/// the opaque [`Error::Decryption`] and the non-parse errors.
pub fn is_shape_error(e: &Error) -> bool {
    matches!(
        e,
        Error::Truncated
            | Error::TrailingBytes
            | Error::BadMagic
            | Error::UnsupportedVersion(_)
            | Error::UnsupportedAlgorithm(_)
    )
}

/// A copy of a wrapped data key (at least 74 bytes long) rewritten to name [`tenant_key`] and
/// [`context`], so that unwrapping it gets past the key-ref and context checks into X-Wing
/// decapsulation and AES-GCM.
pub fn retarget_wrapped(wrapped: &[u8]) -> Vec<u8> {
    let mut out = wrapped.to_vec();
    out[WRAPPED_KEY_REF].copy_from_slice(&encode_key_ref(tenant_key().key_ref()));
    out[WRAPPED_CONTEXT].copy_from_slice(context().digest().as_bytes());
    out
}
