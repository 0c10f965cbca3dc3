//! Field ciphertexts: `DataKeyId::of_field` and `FieldKey::decrypt` on arbitrary bytes, plus a
//! structured encrypt/decrypt round-trip.
//!
//! Asserts: `of_field` succeeds exactly for inputs of at least `FIELD_OVERHEAD` bytes with the
//! `PF 01` prefix and reads the key id at bytes 3..11; `decrypt` with the fixed field key fails —
//! with the same shape error as `of_field` for a malformed input, with the opaque
//! `Error::Decryption` otherwise, also after rewriting the key id to the fixed key's so that
//! AES-GCM runs (a success would be a forgery). Round-trip: the input is split into
//! (plaintext, associated data); encrypting and decrypting gives the plaintext back, the
//! ciphertext is `FIELD_OVERHEAD` bytes longer and names the key, and other associated data or a
//! flipped bit fails with `Error::Decryption`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pqkms_envelope::{DataKeyId, Error, FIELD_OVERHEAD};
use pqkms_fuzz::{FIELD_KEY_ID, FIELD_PREFIX, field_key, is_shape_error};

fn must_not_decrypt(field: &[u8], associated_data: &[u8], what: &str) {
    match field_key().decrypt(field, associated_data) {
        Ok(plain) => panic!("forged field decrypted ({what}): {plain:02x?}"),
        Err(e) => assert_eq!(e, Error::Decryption, "decrypt error is not opaque ({what})"),
    }
}

fuzz_target!(|data: &[u8]| {
    let key = field_key();

    // 1. The input as a field ciphertext.
    let well_formed = data.len() >= FIELD_OVERHEAD && data.starts_with(FIELD_PREFIX);
    match DataKeyId::of_field(data) {
        Ok(id) => {
            assert!(well_formed, "malformed field accepted");
            assert_eq!(id.as_bytes()[..], data[FIELD_KEY_ID]);
            must_not_decrypt(data, b"", "as given");
            let mut retargeted = data.to_vec();
            retargeted[FIELD_KEY_ID].copy_from_slice(key.id().as_bytes());
            must_not_decrypt(&retargeted, b"", "retargeted");
            must_not_decrypt(
                &retargeted,
                &data[FIELD_KEY_ID.end..],
                "retargeted, fuzzed aad",
            );
        }
        Err(e) => {
            assert!(!well_formed, "well-formed field refused: {e:?}");
            assert!(
                is_shape_error(&e),
                "of_field returned a non-shape error: {e:?}"
            );
            match key.decrypt(data, b"") {
                Ok(_) => panic!("malformed field decrypted"),
                Err(d) => assert_eq!(d, e, "decrypt and of_field disagree"),
            }
        }
    }

    // 2. Round-trip: `u16 BE split | bytes`, plaintext = bytes[..split % (len + 1)], aad = rest.
    let Some((split, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let cut = usize::from(u16::from_be_bytes(*split)) % (rest.len() + 1);
    let (plaintext, associated_data) = rest.split_at(cut);
    let field = key
        .encrypt(plaintext, associated_data)
        .expect("encrypt a small field");
    assert_eq!(field.len(), plaintext.len() + FIELD_OVERHEAD);
    assert_eq!(DataKeyId::of_field(&field), Ok(key.id()));
    match key.decrypt(&field, associated_data) {
        Ok(back) => assert_eq!(back, plaintext, "round-trip changed the plaintext"),
        Err(e) => panic!("own field does not decrypt: {e:?}"),
    }
    let mut other_aad = associated_data.to_vec();
    other_aad.push(0);
    must_not_decrypt(&field, &other_aad, "other associated data");
    let mut flipped = field.clone();
    let at = usize::from(split[1]) % flipped.len();
    flipped[at] ^= 1 << (split[0] % 8);
    match key.decrypt(&flipped, associated_data) {
        Ok(_) => panic!(
            "field with bit {} of byte {at} flipped decrypted",
            split[0] % 8
        ),
        Err(e) if at < FIELD_KEY_ID.end => assert!(
            e == Error::Decryption || is_shape_error(&e),
            "header flip: {e:?}"
        ),
        Err(e) => assert_eq!(e, Error::Decryption),
    }
});
