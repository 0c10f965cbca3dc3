//! Properties every format must have: every single-bit flip is rejected, truncated and extended
//! inputs fail with a typed error (never a panic), round trips hold for arbitrary inputs, and the
//! bindings are cryptographic, not just header comparisons.

use proptest::prelude::*;
use secrecy::SecretBox;

use crate::format::sealed_key::SealedTenantKey;
use crate::format::wrapped_key::{HEADER_LEN, WrappedDataKey};
use crate::{
    DataKey, EncryptionContext, Envelope, Error, FieldKey, KeyId, KeyRef, RootKey, TenantId,
    TenantPrivateKey, TenantPublicKey,
};

fn key_ref(tenant: u8, version: u32) -> KeyRef {
    KeyRef {
        tenant: TenantId::from_bytes([tenant; 16]),
        key: KeyId::from_bytes([0x22; 16]),
        version,
    }
}

fn private(seed: u8, key_ref: KeyRef) -> TenantPrivateKey {
    TenantPrivateKey::from_seed(key_ref, SecretBox::new(Box::new([seed; 32]))).unwrap()
}

fn ctx() -> EncryptionContext {
    [("row", "42")].into_iter().collect()
}

/// Flip every bit of `valid` in turn; `open` must fail each time.
fn every_bit_flip_fails(valid: &[u8], open: impl Fn(&[u8]) -> Result<Vec<u8>, Error>) {
    assert!(open(valid).is_ok());
    let mut buf = valid.to_vec();
    for i in 0..buf.len() * 8 {
        buf[i / 8] ^= 1 << (i % 8);
        assert!(open(&buf).is_err(), "bit {i} flip accepted");
        buf[i / 8] ^= 1 << (i % 8);
    }
}

/// Every strict prefix and a range of extensions fail with a typed error.
fn every_truncation_and_extension_fails(
    valid: &[u8],
    open: impl Fn(&[u8]) -> Result<Vec<u8>, Error>,
) {
    for len in 0..valid.len() {
        let err = open(&valid[..len]).err();
        assert!(
            matches!(err, Some(Error::Truncated | Error::Decryption)),
            "prefix {len}: {err:?}"
        );
    }
    for extra in [1usize, 2, 16, 1000] {
        let mut long = valid.to_vec();
        long.resize(valid.len() + extra, 0xa5);
        let err = open(&long).err();
        assert!(
            matches!(err, Some(Error::TrailingBytes | Error::Decryption)),
            "+{extra}: {err:?}"
        );
    }
}

#[test]
fn wrapped_key_bit_flips_truncations_extensions() {
    let key = private(1, key_ref(1, 1));
    let (_, wrapped) = key.public_key().generate_data_key(&ctx()).unwrap();
    let open = |b: &[u8]| -> Result<Vec<u8>, Error> {
        let w = WrappedDataKey::parse(b)?;
        Ok(key.unwrap_data_key(&w, &ctx())?.expose_secret().to_vec())
    };
    every_bit_flip_fails(wrapped.as_bytes(), open);
    every_truncation_and_extension_fails(wrapped.as_bytes(), open);
}

#[test]
fn sealed_key_bit_flips_truncations_extensions() {
    let root = RootKey::generate(1).unwrap();
    let r = key_ref(1, 1);
    let sealed = root.seal_tenant_key(&private(1, r)).unwrap();
    let open = |b: &[u8]| -> Result<Vec<u8>, Error> {
        let s = SealedTenantKey::parse(b)?;
        Ok(root.unseal_tenant_key(&s, &r)?.public_key().to_bytes())
    };
    every_bit_flip_fails(sealed.as_bytes(), open);
    every_truncation_and_extension_fails(sealed.as_bytes(), open);
}

#[test]
fn public_key_bit_flips_are_rejected_or_change_the_key() {
    // A public key carries no MAC: a flipped bit may still be a valid key, but never the *same*
    // key. What protects users is the fingerprint they pin, and that must change.
    let key = private(1, key_ref(1, 1));
    let bytes = key.public_key().to_bytes();
    let fp = key.public_key().fingerprint();
    let mut buf = bytes.clone();
    for i in 0..buf.len() * 8 {
        buf[i / 8] ^= 1 << (i % 8);
        if let Ok(k) = TenantPublicKey::from_bytes(&buf) {
            assert_ne!(k.fingerprint(), fp, "bit {i}");
        }
        buf[i / 8] ^= 1 << (i % 8);
    }
    every_truncation_and_extension_fails(&bytes, |b| {
        TenantPublicKey::from_bytes(b).map(|k| k.to_bytes())
    });
}

#[test]
fn field_bit_flips_truncations_extensions() {
    let fk = FieldKey::new(&DataKey::generate().unwrap()).unwrap();
    let field = fk.encrypt(b"4111 1111 1111 1111", b"cards/7/pan").unwrap();
    let open = |b: &[u8]| fk.decrypt(b, b"cards/7/pan");
    every_bit_flip_fails(&field, open);
    every_truncation_and_extension_fails(&field, open);
    assert_eq!(fk.decrypt(&field, b"cards/8/pan"), Err(Error::Decryption));
}

#[test]
fn envelope_bit_flips_truncations_extensions() {
    let key = private(1, key_ref(1, 1));
    let env = key
        .public_key()
        .seal_envelope(&ctx(), b"a small document")
        .unwrap();
    let open = |b: &[u8]| key.open_envelope(b, &ctx());
    every_bit_flip_fails(&env, open);
    every_truncation_and_extension_fails(&env, open);
}

/// The header check in `unwrap_data_key` is a fast path; the AEAD and KDF enforce the binding
/// on their own. Build a key that *claims* the other identity (same seed, other key ref) and
/// rewrite the header to match it: the open must still fail.
#[test]
fn bindings_are_cryptographic_not_only_header_checks() {
    let a = private(1, key_ref(1, 1));
    let (_, wrapped) = a.public_key().generate_data_key(&ctx()).unwrap();
    for (offset, other) in [(6usize, key_ref(2, 1)), (41, key_ref(1, 2))] {
        let impostor = private(1, other);
        let mut bytes = wrapped.as_bytes().to_vec();
        let new_header = {
            let mut h = bytes[..HEADER_LEN].to_vec();
            h[6..22].copy_from_slice(other.tenant.as_bytes());
            h[38..42].copy_from_slice(&other.version.to_be_bytes());
            h
        };
        bytes[..HEADER_LEN].copy_from_slice(&new_header);
        let moved = WrappedDataKey::parse(&bytes).unwrap();
        assert_eq!(moved.key_ref(), &other, "offset {offset}");
        assert_eq!(
            impostor.unwrap_data_key(&moved, &ctx()).err(),
            Some(Error::Decryption)
        );
    }
    // Same for the context digest: rewrite it to the digest of another context.
    let other_ctx: EncryptionContext = [("row", "43")].into_iter().collect();
    let mut bytes = wrapped.as_bytes().to_vec();
    bytes[42..74].copy_from_slice(other_ctx.digest().as_bytes());
    let moved = WrappedDataKey::parse(&bytes).unwrap();
    assert_eq!(
        a.unwrap_data_key(&moved, &other_ctx).err(),
        Some(Error::Decryption)
    );

    // And a sealed key re-labelled for another tenant does not unseal as that tenant.
    let root = RootKey::generate(1).unwrap();
    let sealed = root.seal_tenant_key(&a).unwrap();
    let mut bytes = sealed.as_bytes().to_vec();
    bytes[10..26].copy_from_slice(&[2; 16]);
    let relabelled = SealedTenantKey::parse(&bytes).unwrap();
    assert!(root.unseal_tenant_key(&relabelled, &key_ref(2, 1)).is_err());
}

#[test]
fn wrong_tenant_key_version_context_root_all_fail() {
    let v1 = private(1, key_ref(1, 1));
    let v2 = private(2, key_ref(1, 2));
    let other_tenant = private(3, key_ref(3, 1));
    let (dk, wrapped) = v1.public_key().generate_data_key(&ctx()).unwrap();
    assert_eq!(
        v1.unwrap_data_key(&wrapped, &ctx())
            .unwrap()
            .expose_secret(),
        dk.expose_secret()
    );
    for wrong in [&v2, &other_tenant] {
        assert_eq!(
            wrong.unwrap_data_key(&wrapped, &ctx()).err(),
            Some(Error::Decryption)
        );
    }
    assert!(
        v1.unwrap_data_key(&wrapped, &EncryptionContext::new())
            .is_err()
    );

    // Re-wrap to v2 keeps the data key (and so the field key id).
    let rewrapped = v2.public_key().wrap_data_key(&dk, &ctx()).unwrap();
    let again = v2.unwrap_data_key(&rewrapped, &ctx()).unwrap();
    assert_eq!(again.expose_secret(), dk.expose_secret());
    assert_eq!(
        FieldKey::new(&again).unwrap().id(),
        FieldKey::new(&dk).unwrap().id()
    );

    let root1 = RootKey::generate(1).unwrap();
    let root1b = RootKey::generate(1).unwrap();
    let sealed = root1.seal_tenant_key(&v1).unwrap();
    assert!(root1b.unseal_tenant_key(&sealed, &key_ref(1, 1)).is_err());
    assert!(root1.unseal_tenant_key(&sealed, &key_ref(1, 2)).is_err());
    let unsealed = root1.unseal_tenant_key(&sealed, &key_ref(1, 1)).unwrap();
    assert_eq!(
        unsealed.public_key().fingerprint(),
        v1.public_key().fingerprint()
    );
}

/// RUSTSEC-2023-0096: a failed open must not hand back or leave plaintext. Our open paths take
/// the input by shared reference and return fresh buffers only on success.
#[test]
fn failed_open_returns_and_leaves_no_plaintext() {
    let fk = FieldKey::new(&DataKey::generate().unwrap()).unwrap();
    let secret = b"very secret value";
    let field = fk.encrypt(secret, b"").unwrap();
    let mut tampered = field.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let before = tampered.clone();
    assert_eq!(fk.decrypt(&tampered, b""), Err(Error::Decryption));
    assert_eq!(tampered, before, "input buffer changed by a failed open");
    assert!(!tampered.windows(secret.len()).any(|w| w == secret));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn field_roundtrip(plain in proptest::collection::vec(any::<u8>(), 0..2048),
                       aad in proptest::collection::vec(any::<u8>(), 0..64)) {
        let fk = FieldKey::new(&DataKey::generate().unwrap()).unwrap();
        let ct = fk.encrypt(&plain, &aad).unwrap();
        prop_assert_eq!(ct.len(), plain.len() + crate::FIELD_OVERHEAD);
        prop_assert_eq!(crate::DataKeyId::of_field(&ct).unwrap(), fk.id());
        prop_assert_eq!(fk.decrypt(&ct, &aad).unwrap(), plain);
    }

    #[test]
    fn envelope_and_wrap_roundtrip(plain in proptest::collection::vec(any::<u8>(), 0..4096),
                                   pairs in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
                                   version in 1u32..u32::MAX) {
        let context = EncryptionContext::from(pairs);
        let key = private(5, key_ref(9, version));
        let env = key.public_key().seal_envelope(&context, &plain).unwrap();
        let parsed = Envelope::parse(&env).unwrap();
        prop_assert_eq!(parsed.wrapped_key().key_ref(), &key_ref(9, version));
        prop_assert_eq!(key.open_envelope(&env, &context).unwrap(), plain);
    }

    #[test]
    fn distinct_contexts_have_distinct_digests(
        a in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4),
        b in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..4)) {
        let (da, db) = (EncryptionContext::from(a.clone()).digest(), EncryptionContext::from(b.clone()).digest());
        prop_assert_eq!(a == b, da == db);
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400), cut in 0usize..1400) {
        let key = private(1, key_ref(1, 1));
        let root = RootKey::from_bytes(1, &[3; 32]).unwrap();
        let mut inputs = vec![bytes.clone()];
        // Also try inputs that start with each real magic, so parsing gets past the first check.
        for magic in [&b"PQWK\x01\x01"[..], b"PQSK\x01\x01", b"PQPK\x01\x01", b"PF\x01", b"PQEV\x01"] {
            let mut v = magic.to_vec();
            v.extend_from_slice(&bytes[..cut.min(bytes.len())]);
            inputs.push(v);
        }
        for input in &inputs {
            if let Ok(w) = WrappedDataKey::parse(input) {
                prop_assert!(key.unwrap_data_key(&w, &ctx()).is_err());
            }
            if let Ok(s) = SealedTenantKey::parse(input) {
                prop_assert!(root.unseal_tenant_key(&s, s.key_ref()).is_err());
            }
            let _ = TenantPublicKey::from_bytes(input);
            prop_assert!(key.open_envelope(input, &ctx()).is_err());
            let fk = FieldKey::new(&DataKey::from_bytes(&[1; 32])).unwrap();
            prop_assert!(fk.decrypt(input, b"").is_err());
        }
    }
}

/// A data key's three random inputs come from one draw, split as `key | seed | nonce`: the result
/// is exactly the deterministic wrap of that key with that seed and nonce (a wrong split — bytes of
/// the key reused as seed or nonce — gives another blob). Fresh draws open and never repeat.
#[test]
fn generated_data_keys_use_independent_randomness() {
    use crate::format::wrapped_key::GENERATE_RANDOM_LEN;
    use std::collections::HashSet;

    let key = private(1, key_ref(1, 1));
    let random: [u8; GENERATE_RANDOM_LEN] = core::array::from_fn(|i| i as u8);
    let (dk, wrapped) = key
        .public_key()
        .generate_data_key_from(&random, &ctx())
        .unwrap();
    assert_eq!(dk.expose_secret()[..], random[..32]);
    let expected = key
        .public_key()
        .wrap_deterministic(
            &dk,
            &ctx(),
            random[32..96].try_into().unwrap(),
            random[96..].try_into().unwrap(),
        )
        .unwrap();
    assert_eq!(wrapped.as_bytes(), expected.as_bytes());

    let mut seen = HashSet::new();
    for _ in 0..64 {
        let (dk, wrapped) = key.public_key().generate_data_key(&ctx()).unwrap();
        let opened = key.unwrap_data_key(&wrapped, &ctx()).unwrap();
        assert_eq!(opened.expose_secret(), dk.expose_secret());
        assert!(seen.insert(*dk.expose_secret()));
        assert!(
            seen.insert(
                wrapped.as_bytes()[HEADER_LEN..HEADER_LEN + 32]
                    .try_into()
                    .unwrap()
            )
        );
    }
}
