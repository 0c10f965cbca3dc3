//! `Envelope::parse` on arbitrary bytes.
//!
//! Asserts: a parsed envelope has the `PQEV 01` prefix, a u16 BE wrapped-key length that matches
//! the embedded wrapped key (which re-encodes to those bytes), and room for a nonce and a tag;
//! `Envelope::open` with the fixed data key and `TenantPrivateKey::open_envelope` with the fixed
//! tenant key fail with the opaque `Error::Decryption` — the latter also after retargeting the
//! embedded wrapped key to the fixed key ref and context, so that decapsulation runs. A parse
//! error is a shape error, and `open_envelope` reports the same one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pqkms_envelope::{Envelope, Error, WrappedDataKey};
use pqkms_fuzz::{
    ENVELOPE_PREFIX, ENVELOPE_WRAPPED_START, context, data_key, is_shape_error, retarget_wrapped,
    tenant_key,
};

/// Nonce and tag around the content.
const NONCE_AND_TAG: usize = 12 + 16;

fn must_not_open_envelope(envelope: &[u8], what: &str) {
    match tenant_key().open_envelope(envelope, context()) {
        Ok(plain) => panic!("forged envelope opened ({what}): {plain:02x?}"),
        Err(e) => assert_eq!(
            e,
            Error::Decryption,
            "open_envelope error is not opaque ({what})"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let envelope = match Envelope::parse(data) {
        Ok(envelope) => envelope,
        Err(e) => {
            assert!(
                is_shape_error(&e),
                "parse returned a non-shape error: {e:?}"
            );
            match tenant_key().open_envelope(data, context()) {
                Ok(_) => panic!("unparseable envelope opened"),
                Err(o) => assert_eq!(o, e, "open_envelope and parse disagree"),
            }
            return;
        }
    };
    assert!(data.starts_with(ENVELOPE_PREFIX), "bad prefix accepted");
    let wrapped_len = usize::from(u16::from_be_bytes([data[5], data[6]]));
    assert_eq!(wrapped_len, WrappedDataKey::LEN);
    let wrapped_end = ENVELOPE_WRAPPED_START + wrapped_len;
    assert!(
        data.len() >= wrapped_end + NONCE_AND_TAG,
        "short envelope accepted"
    );
    let wrapped_bytes = &data[ENVELOPE_WRAPPED_START..wrapped_end];
    assert_eq!(envelope.wrapped_key().as_bytes(), wrapped_bytes);
    assert_eq!(
        WrappedDataKey::parse(wrapped_bytes).as_ref(),
        Ok(envelope.wrapped_key())
    );

    match envelope.open(data_key()) {
        Ok(plain) => panic!("forged envelope content opened: {plain:02x?}"),
        Err(e) => assert_eq!(e, Error::Decryption, "open error is not opaque"),
    }
    must_not_open_envelope(data, "as given");

    let mut retargeted = data.to_vec();
    retargeted[ENVELOPE_WRAPPED_START..wrapped_end]
        .copy_from_slice(&retarget_wrapped(wrapped_bytes));
    must_not_open_envelope(&retargeted, "retargeted");
});
