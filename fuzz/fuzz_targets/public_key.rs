//! `TenantPublicKey::from_bytes` on arbitrary bytes.
//!
//! Asserts: only 1258-byte inputs with the `PQPK 01 01` prefix parse, everything else fails with a
//! shape error (a well-formed one may still be refused as `InvalidPublicKey`); a parsed key
//! round-trips (`to_bytes() == input`, same fingerprint on re-parse) and its accessors read the
//! documented offsets; `wrap_data_key` either fails with `InvalidPublicKey` (low-order X25519
//! share) or returns a well-formed wrapped key bound to this key ref and context, which the fixed
//! tenant key (a different key pair) cannot unwrap. Never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pqkms_envelope::{Error, TenantPublicKey, WrappedDataKey};
use pqkms_fuzz::{
    PUBLIC_KEY_REF, PUBLIC_LEN, PUBLIC_PREFIX, context, data_key, encode_key_ref, is_shape_error,
    retarget_wrapped, tenant_key,
};

fuzz_target!(|data: &[u8]| {
    let well_formed = data.len() == PUBLIC_LEN && data.starts_with(PUBLIC_PREFIX);
    let public = match TenantPublicKey::from_bytes(data) {
        Ok(public) => public,
        Err(e) => {
            if well_formed {
                assert_eq!(e, Error::InvalidPublicKey, "well-formed public key: {e:?}");
            } else {
                assert!(
                    is_shape_error(&e),
                    "parse returned a non-shape error: {e:?}"
                );
            }
            return;
        }
    };
    assert!(well_formed, "malformed public key accepted");
    assert_eq!(public.to_bytes(), data, "public key does not round-trip");
    assert_eq!(encode_key_ref(public.key_ref()), data[PUBLIC_KEY_REF]);
    assert_eq!(&public.xwing_bytes()[..], &data[PUBLIC_KEY_REF.end..]);
    let again = TenantPublicKey::from_bytes(&public.to_bytes()).expect("re-parse own encoding");
    assert_eq!(again.fingerprint(), public.fingerprint());

    match public.wrap_data_key(data_key(), context()) {
        Ok(wrapped) => {
            assert_eq!(wrapped.key_ref(), public.key_ref());
            assert_eq!(wrapped.context_digest(), &context().digest());
            assert_eq!(
                WrappedDataKey::parse(wrapped.as_bytes()).as_ref(),
                Ok(&wrapped)
            );
            // Wrapped to this (fuzzed) public key, not to the fixed tenant key: must not open.
            let retargeted = WrappedDataKey::parse(&retarget_wrapped(wrapped.as_bytes()))
                .expect("retargeting keeps the structure");
            match tenant_key().unwrap_data_key(&retargeted, context()) {
                Ok(_) => panic!("a key wrapped to another public key unwrapped"),
                Err(e) => assert_eq!(e, Error::Decryption),
            }
        }
        Err(e) => assert!(
            matches!(e, Error::InvalidPublicKey | Error::Randomness),
            "unexpected wrap error: {e:?}"
        ),
    }
});
