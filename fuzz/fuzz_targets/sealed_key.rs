//! `SealedTenantKey::parse` on arbitrary bytes.
//!
//! Asserts: parse succeeds exactly for 106-byte inputs with the `PQSK 01 01` prefix, and otherwise
//! fails with a shape error; a parsed key keeps the input byte for byte and its accessors read the
//! documented offsets; `RootKey::unseal_tenant_key` with the fixed root key and the parsed key ref
//! fails with the opaque `Error::Decryption` — both as given and with the root key version
//! rewritten to the fixed root key's, so that AES-GCM runs on every structurally valid input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pqkms_envelope::{Error, KeyRef, SealedTenantKey};
use pqkms_fuzz::{
    ROOT_VERSION, SEALED_KEY_REF, SEALED_LEN, SEALED_PREFIX, SEALED_ROOT_VERSION, encode_key_ref,
    is_shape_error, root_key,
};

fn must_not_unseal(sealed: &SealedTenantKey, expected: &KeyRef, what: &str) {
    match root_key().unseal_tenant_key(sealed, expected) {
        Ok(_) => panic!("forged sealed tenant key unsealed ({what})"),
        Err(e) => assert_eq!(e, Error::Decryption, "unseal error is not opaque ({what})"),
    }
}

fuzz_target!(|data: &[u8]| {
    let well_formed = data.len() == SEALED_LEN && data.starts_with(SEALED_PREFIX);
    let sealed = match SealedTenantKey::parse(data) {
        Ok(sealed) => sealed,
        Err(e) => {
            assert!(!well_formed, "well-formed sealed key refused: {e:?}");
            assert!(
                is_shape_error(&e),
                "parse returned a non-shape error: {e:?}"
            );
            return;
        }
    };
    assert!(well_formed, "malformed sealed key accepted");
    assert_eq!(sealed.as_bytes(), data);
    let root_version = u32::from_be_bytes(data[SEALED_ROOT_VERSION].try_into().unwrap());
    assert_eq!(sealed.root_key_version(), root_version);
    assert_eq!(encode_key_ref(sealed.key_ref()), data[SEALED_KEY_REF]);
    assert_eq!(
        SealedTenantKey::parse(sealed.as_bytes()).as_ref(),
        Ok(&sealed)
    );

    let key_ref = *sealed.key_ref();
    must_not_unseal(&sealed, &key_ref, "as given");
    let mut other = key_ref;
    other.version = other.version.wrapping_add(1);
    must_not_unseal(&sealed, &other, "other key version");

    let mut retargeted = data.to_vec();
    retargeted[SEALED_ROOT_VERSION].copy_from_slice(&ROOT_VERSION.to_be_bytes());
    let retargeted = SealedTenantKey::parse(&retargeted).expect("retargeting keeps the structure");
    assert_eq!(retargeted.root_key_version(), root_key().version());
    must_not_unseal(&retargeted, &key_ref, "retargeted to the fixed root key");
});
