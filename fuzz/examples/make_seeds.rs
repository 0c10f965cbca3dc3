//! Writes the committed seed corpora, `seeds/<target>/<name>`, from freshly generated (random)
//! keys. Run from `fuzz/`: `cargo run --example make_seeds`. It replaces the files it writes and
//! leaves any other file alone.
//!
//! Every seed uses the fuzz fixtures' public parts (key ref, root key version, context), so the
//! fuzzer starts past the "is this blob for me?" checks, but none is a genuine ciphertext for the
//! fixtures' secret keys, which are generated anew in every fuzzing process.

use std::fs;
use std::path::Path;

use pqkms_envelope::{DataKey, FieldKey, KeyRef, RootKey, TenantPrivateKey};
use pqkms_fuzz::{KEY_REF, ROOT_VERSION, context};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    fs::create_dir_all(&dir).expect("create seed directory");
    fs::write(dir.join(name), bytes).expect("write seed");
    println!("seeds/{target}/{name}: {} bytes", bytes.len());
}

fn main() -> Result<(), pqkms_envelope::Error> {
    let tenant = TenantPrivateKey::generate(KEY_REF)?;
    let public = tenant.public_key();

    // wrapped_key: genuine wraps (to another key pair than the target's), plus near misses.
    let (_, wrapped) = public.generate_data_key(context())?;
    let wrapped = wrapped.into_bytes();
    write("wrapped_key", "valid", &wrapped);
    let (_, empty_ctx) = public.generate_data_key(&Default::default())?;
    write("wrapped_key", "valid-empty-context", empty_ctx.as_bytes());
    write("wrapped_key", "truncated", &wrapped[..wrapped.len() - 1]);
    let mut trailing = wrapped.clone();
    trailing.push(0);
    write("wrapped_key", "trailing", &trailing);
    write("wrapped_key", "header-only", &wrapped[..74]);

    // sealed_key: sealed under a root key of the fixed version, and of another version.
    let root = RootKey::generate(ROOT_VERSION)?;
    let sealed = root.seal_tenant_key(&tenant)?;
    write("sealed_key", "valid", sealed.as_bytes());
    let other_ref = KeyRef {
        version: 7,
        ..KEY_REF
    };
    let other = TenantPrivateKey::generate(other_ref)?;
    let root2 = RootKey::generate(ROOT_VERSION + 1)?;
    write(
        "sealed_key",
        "valid-root-v2",
        root2.seal_tenant_key(&other)?.as_bytes(),
    );
    write("sealed_key", "truncated", &sealed.as_bytes()[..50]);

    // public_key: a valid key, one whose X25519 half is the all-zero (low-order) point, and one
    // whose first ML-KEM coefficient is out of range.
    let exported = public.to_bytes();
    write("public_key", "valid", &exported);
    let mut low_order = exported.clone();
    let n = low_order.len();
    low_order[n - 32..].fill(0);
    write("public_key", "low-order-x25519", &low_order);
    let mut bad_mlkem = exported.clone();
    bad_mlkem[42] = 0xff;
    bad_mlkem[43] |= 0x0f;
    write("public_key", "bad-mlkem-coefficient", &bad_mlkem);
    write("public_key", "truncated", &exported[..100]);

    // field: genuine fields under another data key, and round-trip-shaped inputs
    // (`u16 BE split | plaintext | associated data`).
    let fields = FieldKey::new(&DataKey::generate()?)?;
    write("field", "valid-empty", &fields.encrypt(b"", b"")?);
    write(
        "field",
        "valid-email",
        &fields.encrypt(b"ada@example.com", b"customers/42/email")?,
    );
    write("field", "roundtrip-hello", b"\x00\x05helloaad");
    write("field", "roundtrip-empty", b"\x00\x00");

    // envelope: sealed to another key pair with the fixed key ref and context.
    write(
        "envelope",
        "valid-empty",
        &public.seal_envelope(context(), b"")?,
    );
    let doc = public.seal_envelope(context(), b"a small document, sealed\n")?;
    write("envelope", "valid-doc", &doc);
    write("envelope", "cut-short", &doc[..doc.len() - 20]);
    Ok(())
}
