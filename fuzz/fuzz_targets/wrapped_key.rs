//! `WrappedDataKey::parse` on arbitrary bytes.
//!
//! Asserts: parse succeeds exactly for 1254-byte inputs with the `PQWK 01 01` prefix, and
//! otherwise fails with a shape error; a parsed key re-encodes to the input byte for byte and its
//! accessors read the documented offsets; unwrapping it with the fixed tenant key fails with the
//! opaque `Error::Decryption` — both as given and retargeted to the fixed key ref and context, so
//! that X-Wing decapsulation and AES-GCM run on every structurally valid input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pqkms_envelope::{EncryptionContext, Error, WrappedDataKey};
use pqkms_fuzz::{
    WRAPPED_CONTEXT, WRAPPED_KEY_REF, WRAPPED_PREFIX, context, encode_key_ref, is_shape_error,
    retarget_wrapped, tenant_key,
};

fn must_not_unwrap(wrapped: &WrappedDataKey, context: &EncryptionContext, what: &str) {
    match tenant_key().unwrap_data_key(wrapped, context) {
        Ok(_) => panic!("forged wrapped data key unwrapped ({what})"),
        Err(e) => assert_eq!(e, Error::Decryption, "unwrap error is not opaque ({what})"),
    }
}

fuzz_target!(|data: &[u8]| {
    let well_formed = data.len() == WrappedDataKey::LEN && data.starts_with(WRAPPED_PREFIX);
    let wrapped = match WrappedDataKey::parse(data) {
        Ok(wrapped) => wrapped,
        Err(e) => {
            assert!(!well_formed, "well-formed wrapped key refused: {e:?}");
            assert!(
                is_shape_error(&e),
                "parse returned a non-shape error: {e:?}"
            );
            return;
        }
    };
    assert!(well_formed, "malformed wrapped key accepted");
    assert_eq!(wrapped.as_bytes(), data);
    assert_eq!(encode_key_ref(wrapped.key_ref()), data[WRAPPED_KEY_REF]);
    assert_eq!(wrapped.context_digest().as_bytes(), &data[WRAPPED_CONTEXT]);
    assert_eq!(
        WrappedDataKey::parse(wrapped.as_bytes()).as_ref(),
        Ok(&wrapped)
    );
    assert_eq!(wrapped.clone().into_bytes(), data);

    must_not_unwrap(&wrapped, context(), "as given");
    must_not_unwrap(&wrapped, &EncryptionContext::new(), "empty context");

    let retargeted = retarget_wrapped(data);
    let retargeted = WrappedDataKey::parse(&retargeted).expect("retargeting keeps the structure");
    assert_eq!(retargeted.key_ref(), tenant_key().key_ref());
    assert_eq!(retargeted.context_digest(), &context().digest());
    must_not_unwrap(&retargeted, context(), "retargeted");
});
