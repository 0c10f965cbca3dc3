//! Golden vectors for our own formats (tests/data/*_v1.json), including `fail_` cases.
//!
//! Each file holds the fixed inputs, useful intermediates, the valid encoding, and `fail_` cases
//! (encoding + the error the full open path must return). The test does three things:
//! 1. rebuilds every file from its inputs through the deterministic code paths and requires the
//!    result to equal the checked-in file byte for byte (any format change shows up here);
//! 2. opens the checked-in valid encoding and compares the plaintext;
//! 3. runs every `fail_` encoding through the open path and compares the error.
//!
//! Regenerate (after an intended format change only): `PQKMS_WRITE_VECTORS=1 cargo test -p
//! pqkms-envelope golden`.

use serde_json::{Value, json};

use super::{arr, unhex};
use crate::format::{envelope, sealed_key::SealedTenantKey, wrapped_key::WrappedDataKey};
use crate::xwing::{self, DecapsulationKey};
use crate::{
    DataKey, EncryptionContext, Envelope, Error, FieldKey, KeyId, KeyRef, RootKey, TenantId,
    TenantPrivateKey, TenantPublicKey,
};

/// The full open path of a format, as the fail_ cases run it.
type OpenFn<'a> = &'a dyn Fn(&[u8]) -> Result<Vec<u8>, Error>;

fn seq<const N: usize>(start: u8) -> [u8; N] {
    core::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn key_ref() -> KeyRef {
    KeyRef {
        tenant: TenantId::from_bytes([0x11; 16]),
        key: KeyId::from_bytes([0x22; 16]),
        version: 3,
    }
}

const TENANT_SEED_START: u8 = 0x00;
const ROOT_KEY_START: u8 = 0x40;
const ROOT_VERSION: u32 = 7;
const DATA_KEY_START: u8 = 0xa0;

fn tenant_key() -> TenantPrivateKey {
    use secrecy::SecretBox;
    TenantPrivateKey::from_seed(key_ref(), SecretBox::new(Box::new(seq(TENANT_SEED_START))))
        .unwrap()
}

fn context() -> EncryptionContext {
    [("table", "customers"), ("column", "email")]
        .into_iter()
        .collect()
}

fn context_json(ctx: &EncryptionContext) -> Value {
    Value::Object(ctx.iter().map(|(k, v)| (k.into(), v.into())).collect())
}

fn error_name<T>(r: Result<T, Error>) -> String {
    match r {
        Ok(_) => "Ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// A `fail_` case: asserts at generation time that `open` gives `expected`, and records it.
fn fail_case(name: &str, encoding: Vec<u8>, expected: Error, open: OpenFn<'_>) -> Value {
    assert_eq!(open(&encoding).err(), Some(expected), "{name}");
    json!({ "name": name, "encoding": hex::encode(&encoding), "error": format!("{expected:?}") })
}

fn flipped(bytes: &[u8], index: usize, mask: u8) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[index] ^= mask;
    b
}

fn with(bytes: &[u8], index: usize, value: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[index..index + value.len()].copy_from_slice(value);
    b
}

fn common_fails(valid: &[u8], magic_len: usize, open: OpenFn<'_>) -> Vec<Value> {
    let mut trailing = valid.to_vec();
    trailing.push(0);
    let truncated = valid[..valid.len() - 1].to_vec();
    let mut out = vec![
        fail_case(
            "fail_bad_magic",
            flipped(valid, 0, 0x20),
            Error::BadMagic,
            open,
        ),
        fail_case(
            "fail_version_2",
            with(valid, magic_len, &[2]),
            Error::UnsupportedVersion(2),
            open,
        ),
        fail_case("fail_empty", vec![], Error::Truncated, open),
        fail_case(
            "fail_magic_only",
            valid[..magic_len].to_vec(),
            Error::Truncated,
            open,
        ),
    ];
    // For fixed-length formats a missing or extra byte is a parse error; for the variable-length
    // ones (field, envelope) it moves the tag boundary, so the AEAD rejects it.
    let fixed = matches!(&valid[..magic_len], b"PQPK" | b"PQSK" | b"PQWK");
    let (short, long) = if fixed {
        (Error::Truncated, Error::TrailingBytes)
    } else {
        (Error::Decryption, Error::Decryption)
    };
    out.push(fail_case("fail_truncated_by_one", truncated, short, open));
    out.push(fail_case("fail_trailing_byte", trailing, long, open));
    out
}

// ---------------------------------------------------------------- the five formats

fn public_key_vectors() -> Value {
    let private = tenant_key();
    let encoding = private.public_key().to_bytes();
    let open = |b: &[u8]| -> Result<Vec<u8>, Error> {
        let key = TenantPublicKey::from_bytes(b)?;
        Ok(key
            .wrap_data_key(&DataKey::from_bytes(&[0; 32]), &EncryptionContext::new())?
            .into_bytes())
    };
    let mut fails = common_fails(&encoding, 4, &open);
    fails.push(fail_case(
        "fail_algorithm_2",
        with(&encoding, 5, &[2]),
        Error::UnsupportedAlgorithm(2),
        &open,
    ));
    // First ML-KEM coefficient set to 0xfff >= q = 3329: the FIPS 203 modulus check fails.
    let pk_m = 6 + 36;
    let mut overflow = encoding.clone();
    overflow[pk_m] = 0xff;
    overflow[pk_m + 1] |= 0x0f;
    fails.push(fail_case(
        "fail_mlkem_modulus",
        overflow,
        Error::InvalidPublicKey,
        &open,
    ));
    // pk_X = 0 is a small-order point: wrapping to it would give an all-zero X25519 share.
    let pk_x = pk_m + 1184;
    fails.push(fail_case(
        "fail_x25519_low_order",
        with(&encoding, pk_x, &[0; 32]),
        Error::InvalidPublicKey,
        &open,
    ));
    json!({
        "format": "exported tenant public key v1",
        "inputs": { "tenant": key_ref().tenant.to_string(), "key": key_ref().key.to_string(),
                    "version": key_ref().version, "xwing_seed": hex::encode(seq::<32>(TENANT_SEED_START)) },
        "intermediates": { "xwing_public_key": hex::encode(private.public_key().xwing_bytes()) },
        "encoding": hex::encode(&encoding),
        "fingerprint": private.public_key().fingerprint().to_string(),
        "fail": fails,
    })
}

fn root_key() -> RootKey {
    RootKey::from_bytes(ROOT_VERSION, &seq(ROOT_KEY_START)).unwrap()
}

fn sealed_key_vectors() -> Value {
    let root = root_key();
    let nonce = seq::<12>(0x60);
    let sealed = root.seal_with_nonce(&tenant_key(), &nonce).unwrap();
    let encoding = sealed.as_bytes().to_vec();
    let open = |b: &[u8]| -> Result<Vec<u8>, Error> {
        let sealed = SealedTenantKey::parse(b)?;
        let key = root_key().unseal_tenant_key(&sealed, &key_ref())?;
        Ok(key.public_key().to_bytes())
    };
    let mut fails = common_fails(&encoding, 4, &open);
    fails.push(fail_case(
        "fail_algorithm_2",
        with(&encoding, 5, &[2]),
        Error::UnsupportedAlgorithm(2),
        &open,
    ));
    fails.push(fail_case(
        "fail_root_version_changed",
        flipped(&encoding, 9, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_other_tenant",
        flipped(&encoding, 10, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_other_key_version",
        flipped(&encoding, 45, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_seed",
        flipped(&encoding, 46 + 12, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_tag",
        flipped(&encoding, encoding.len() - 1, 0x80),
        Error::Decryption,
        &open,
    ));
    let mut seal_key = [0u8; 32];
    crate::primitives::kdf::hkdf_sha256(
        None,
        &seq::<32>(ROOT_KEY_START),
        &[b"pqkms/v1/root-seal-key"],
        &mut seal_key,
    )
    .unwrap();
    json!({
        "format": "sealed tenant private key v1",
        "inputs": { "root_key": hex::encode(seq::<32>(ROOT_KEY_START)), "root_version": ROOT_VERSION,
                    "tenant": key_ref().tenant.to_string(), "key": key_ref().key.to_string(),
                    "version": key_ref().version, "xwing_seed": hex::encode(seq::<32>(TENANT_SEED_START)),
                    "nonce": hex::encode(nonce) },
        "intermediates": { "seal_key": hex::encode(seal_key) },
        "encoding": hex::encode(&encoding),
        "fail": fails,
    })
}

const WRAP_ESEED_START: u8 = 0x70;
const WRAP_NONCE_START: u8 = 0xc0;

fn wrapped() -> WrappedDataKey {
    tenant_key()
        .public_key()
        .wrap_deterministic(
            &DataKey::from_bytes(&seq(DATA_KEY_START)),
            &context(),
            &seq(WRAP_ESEED_START),
            &seq(WRAP_NONCE_START),
        )
        .unwrap()
}

fn wrapped_key_vectors() -> Value {
    let encoding = wrapped().into_bytes();
    let open = |b: &[u8]| -> Result<Vec<u8>, Error> {
        let w = WrappedDataKey::parse(b)?;
        Ok(tenant_key()
            .unwrap_data_key(&w, &context())?
            .expose_secret()
            .to_vec())
    };
    let mut fails = common_fails(&encoding, 4, &open);
    fails.push(fail_case(
        "fail_algorithm_2",
        with(&encoding, 5, &[2]),
        Error::UnsupportedAlgorithm(2),
        &open,
    ));
    fails.push(fail_case(
        "fail_other_tenant",
        flipped(&encoding, 6, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_other_key",
        flipped(&encoding, 22, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_other_version",
        flipped(&encoding, 41, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_other_context",
        flipped(&encoding, 42, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_mlkem_ct",
        flipped(&encoding, 74, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_x25519_ct",
        flipped(&encoding, 74 + 1088, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_x25519_ct_low_order",
        with(&encoding, 74 + 1088, &[0; 32]),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_nonce",
        flipped(&encoding, 74 + 1120, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_sealed_key",
        flipped(&encoding, 74 + 1132, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_tag",
        flipped(&encoding, encoding.len() - 1, 1),
        Error::Decryption,
        &open,
    ));

    let pk = tenant_key();
    let ek = xwing::EncapsulationKey::new(pk.public_key().xwing_bytes()).unwrap();
    let (_, ss) = ek.encapsulate_with_seed(&seq(WRAP_ESEED_START)).unwrap();
    let mut kek = [0u8; 32];
    crate::primitives::kdf::hkdf_sha256(
        None,
        &ss[..],
        &[b"pqkms/v1/wrapped-data-key", &encoding[..74]],
        &mut kek,
    )
    .unwrap();
    let (_, pk_bytes) = DecapsulationKey::from_seed(&seq(TENANT_SEED_START)).unwrap();
    json!({
        "format": "wrapped data key v1",
        "inputs": { "tenant": key_ref().tenant.to_string(), "key": key_ref().key.to_string(),
                    "version": key_ref().version, "xwing_seed": hex::encode(seq::<32>(TENANT_SEED_START)),
                    "xwing_public_key": hex::encode(pk_bytes),
                    "context": context_json(&context()), "data_key": hex::encode(seq::<32>(DATA_KEY_START)),
                    "xwing_eseed": hex::encode(seq::<64>(WRAP_ESEED_START)), "nonce": hex::encode(seq::<12>(WRAP_NONCE_START)) },
        "intermediates": { "context_digest": hex::encode(context().digest().as_bytes()),
                           "header": hex::encode(&encoding[..74]),
                           "xwing_shared_secret": hex::encode(&ss[..]), "kek": hex::encode(kek) },
        "encoding": hex::encode(&encoding),
        "fail": fails,
    })
}

fn field_vectors() -> Value {
    let data_key = DataKey::from_bytes(&seq(DATA_KEY_START));
    let fk = FieldKey::new(&data_key).unwrap();
    let (plaintext, aad) = (b"ada@example.com", b"customers/42/email");
    let nonce = seq::<12>(0xd0);
    let encoding = fk.encrypt_with_nonce(plaintext, aad, &nonce).unwrap();
    let open =
        |b: &[u8]| FieldKey::new(&DataKey::from_bytes(&seq(DATA_KEY_START)))?.decrypt(b, aad);
    let mut fails = common_fails(&encoding, 2, &open);
    fails.push(fail_case(
        "fail_shorter_than_overhead",
        encoding[..38].to_vec(),
        Error::Truncated,
        &open,
    ));
    fails.push(fail_case(
        "fail_other_data_key_id",
        flipped(&encoding, 3, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_nonce",
        flipped(&encoding, 11, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_ciphertext",
        flipped(&encoding, 23, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_tag",
        flipped(&encoding, encoding.len() - 1, 1),
        Error::Decryption,
        &open,
    ));
    let mut okm = [0u8; 40];
    crate::primitives::kdf::hkdf_sha256(
        None,
        &seq::<32>(DATA_KEY_START),
        &[b"pqkms/v1/field"],
        &mut okm,
    )
    .unwrap();
    json!({
        "format": "field ciphertext v1",
        "inputs": { "data_key": hex::encode(seq::<32>(DATA_KEY_START)), "plaintext": hex::encode(plaintext),
                    "associated_data": hex::encode(aad), "nonce": hex::encode(nonce) },
        "intermediates": { "field_key": hex::encode(&okm[..32]), "data_key_id": hex::encode(&okm[32..]) },
        "encoding": hex::encode(&encoding),
        "fail": fails,
    })
}

fn envelope_vectors() -> Value {
    let data_key = DataKey::from_bytes(&seq(DATA_KEY_START));
    let plaintext = b"hello, envelope";
    let nonce = seq::<12>(0xe0);
    let encoding = envelope::seal_with(&data_key, &wrapped(), &nonce, plaintext).unwrap();
    let open = |b: &[u8]| tenant_key().open_envelope(b, &context());
    let mut fails = common_fails(&encoding, 4, &open);
    fails.push(fail_case(
        "fail_wrapped_length_short",
        with(&encoding, 5, &1253u16.to_be_bytes()),
        Error::Truncated,
        &open,
    ));
    fails.push(fail_case(
        "fail_wrapped_length_long",
        with(&encoding, 5, &1255u16.to_be_bytes()),
        Error::TrailingBytes,
        &open,
    ));
    fails.push(fail_case(
        "fail_inner_wrapped_key_bad_magic",
        flipped(&encoding, 7, 0x20),
        Error::BadMagic,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_wrapped_key",
        flipped(&encoding, 7 + 100, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_nonce",
        flipped(&encoding, 7 + 1254, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_tampered_ciphertext",
        flipped(&encoding, 7 + 1254 + 12, 1),
        Error::Decryption,
        &open,
    ));
    fails.push(fail_case(
        "fail_no_tag",
        encoding[..7 + 1254 + 12 + 15].to_vec(),
        Error::Truncated,
        &open,
    ));
    let mut content_key = [0u8; 32];
    crate::primitives::kdf::hkdf_sha256(
        None,
        &seq::<32>(DATA_KEY_START),
        &[b"pqkms/v1/envelope"],
        &mut content_key,
    )
    .unwrap();
    json!({
        "format": "self-contained envelope v1",
        "inputs": { "wrapped_key": "the encoding of wrapped_key_v1.json (same inputs)",
                    "context": context_json(&context()), "data_key": hex::encode(seq::<32>(DATA_KEY_START)),
                    "plaintext": hex::encode(plaintext), "nonce": hex::encode(nonce) },
        "intermediates": { "content_key": hex::encode(content_key) },
        "encoding": hex::encode(&encoding),
        "fail": fails,
    })
}

fn context_vectors() -> Value {
    let cases: Vec<EncryptionContext> = vec![
        EncryptionContext::new(),
        context(),
        [("a", ""), ("", "b")].into_iter().collect(),
        [("ключ", "значение"), ("Z", "z"), ("a", "z")]
            .into_iter()
            .collect(),
    ];
    json!({
        "format": "encryption context digest v1",
        "cases": cases.iter().map(|c| json!({
            "context": context_json(c), "digest": hex::encode(c.digest().as_bytes())
        })).collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------- the test

fn check_file(name: &str, built: Value) {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("PQKMS_WRITE_VECTORS").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&built).unwrap() + "\n").unwrap();
        return;
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        stored, built,
        "{name} no longer matches the code (format change?)"
    );
}

fn stored(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn run_fails(file: &Value, open: OpenFn<'_>) -> usize {
    let fails = file["fail"].as_array().unwrap();
    for f in fails {
        let name = f["name"].as_str().unwrap();
        assert!(name.starts_with("fail_"));
        let got = error_name(open(&unhex(f["encoding"].as_str().unwrap())));
        assert_eq!(got, f["error"].as_str().unwrap(), "{name}");
    }
    fails.len()
}

#[test]
fn golden_vectors_match_the_code() {
    check_file("public_key_v1.json", public_key_vectors());
    check_file("sealed_key_v1.json", sealed_key_vectors());
    check_file("wrapped_key_v1.json", wrapped_key_vectors());
    check_file("field_v1.json", field_vectors());
    check_file("envelope_v1.json", envelope_vectors());
    check_file("context_v1.json", context_vectors());
}

#[test]
fn golden_valid_encodings_open() {
    let enc = |v: &Value| unhex(v["encoding"].as_str().unwrap());
    let pk = stored("public_key_v1.json");
    let key = TenantPublicKey::from_bytes(&enc(&pk)).unwrap();
    assert_eq!(key.key_ref(), &key_ref());
    assert_eq!(
        key.fingerprint().to_string(),
        pk["fingerprint"].as_str().unwrap()
    );

    let sealed = SealedTenantKey::parse(&enc(&stored("sealed_key_v1.json"))).unwrap();
    assert_eq!(sealed.root_key_version(), ROOT_VERSION);
    let unsealed = root_key().unseal_tenant_key(&sealed, &key_ref()).unwrap();
    assert_eq!(unsealed.public_key().to_bytes(), enc(&pk));

    let w = WrappedDataKey::parse(&enc(&stored("wrapped_key_v1.json"))).unwrap();
    let dk = unsealed.unwrap_data_key(&w, &context()).unwrap();
    assert_eq!(dk.expose_secret(), &seq::<32>(DATA_KEY_START));

    let field = stored("field_v1.json");
    let plain = FieldKey::new(&dk)
        .unwrap()
        .decrypt(&enc(&field), b"customers/42/email")
        .unwrap();
    assert_eq!(plain, b"ada@example.com");

    let env_bytes = enc(&stored("envelope_v1.json"));
    let env = Envelope::parse(&env_bytes).unwrap();
    assert_eq!(env.wrapped_key(), &w);
    assert_eq!(env.open(&dk).unwrap(), b"hello, envelope");
    assert_eq!(arr::<4>(&env_bytes[..4]), *b"PQEV");
}

#[test]
fn golden_fail_cases_fail_as_recorded() {
    let pk_open = |b: &[u8]| -> Result<Vec<u8>, Error> {
        let key = TenantPublicKey::from_bytes(b)?;
        Ok(key
            .wrap_data_key(&DataKey::from_bytes(&[0; 32]), &EncryptionContext::new())?
            .into_bytes())
    };
    let sealed_open = |b: &[u8]| -> Result<Vec<u8>, Error> {
        let sealed = SealedTenantKey::parse(b)?;
        Ok(root_key()
            .unseal_tenant_key(&sealed, &key_ref())?
            .public_key()
            .to_bytes())
    };
    let wrapped_open = |b: &[u8]| -> Result<Vec<u8>, Error> {
        let w = WrappedDataKey::parse(b)?;
        Ok(tenant_key()
            .unwrap_data_key(&w, &context())?
            .expose_secret()
            .to_vec())
    };
    let field_open = |b: &[u8]| {
        FieldKey::new(&DataKey::from_bytes(&seq(DATA_KEY_START)))?.decrypt(b, b"customers/42/email")
    };
    let envelope_open = |b: &[u8]| tenant_key().open_envelope(b, &context());
    let n = run_fails(&stored("public_key_v1.json"), &pk_open)
        + run_fails(&stored("sealed_key_v1.json"), &sealed_open)
        + run_fails(&stored("wrapped_key_v1.json"), &wrapped_open)
        + run_fails(&stored("field_v1.json"), &field_open)
        + run_fails(&stored("envelope_v1.json"), &envelope_open);
    assert!(n >= 40, "{n} fail_ cases");
}
