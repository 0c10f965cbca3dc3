//! Benchmarks of pqkms-envelope and of the primitives under it, so that every composite operation
//! can be compared with the sum of its parts measured in the same run (`benches/ratio.py`).
//!
//! ```text
//! cargo bench --bench envelope -- --warm-up-time 1 --measurement-time 3
//! python3 benches/ratio.py
//! ```
//!
//! Benchmark ids are quoted in docs/BENCHMARKS.md and read by `benches/ratio.py`; keep them stable.
//!
//! | group          | ids                                                                        |
//! |----------------|----------------------------------------------------------------------------|
//! | `x25519`       | `keygen` (public key from secret: base-point mult), `dh` (AWS-LC ladder),  |
//! |                | `dh_table` (curve25519-dalek table of the peer's point: a key in heavy     |
//! |                | use), `table_create` (building that table once)                            |
//! | `x25519_dalek` | `keygen`, `dh`: the x25519-dalek ladder it replaced, side by side          |
//! | `mlkem768`     | `{keygen,encaps,decaps}/{libcrux,rustcrypto}`,                             |
//! |                | `{encaps,decaps}/libcrux_unpacked` (x86-64 with AVX2 only)                 |
//! | `sha3`         | `sha3_256/134` (the X-Wing combiner input)                                 |
//! | `hkdf_sha256`  | `extract_expand/32` (32 bytes out, 99-byte info: the wrap KDF)             |
//! | `aes256gcm`    | `key_init`, `{seal,open}/{32,64,1024,1048576}`                             |
//! | `getrandom`    | `fill/{12,64}`                                                             |
//! | `composite`    | `wrap`, `generate_data_key`, `unwrap`, `field/{encrypt,decrypt}_64B`,      |
//! |                | `envelope/{seal,open}_1KiB`, `unseal_tenant_key`, `context_digest_empty`   |
//! | `inline`       | `wrap_primitives` (DH by table, as for a key in heavy use),                |
//! |                | `unwrap_primitives`: the primitives back to back                           |

use std::hint::black_box;

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use curve25519_dalek::edwards::{EdwardsBasepointTable, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::traits::BasepointTable;
use hkdf::Hkdf;
use libcrux_ml_kem::mlkem768;
use ml_kem::{B32, Decapsulate, DecapsulationKey768, KeyExport, Seed};
use pqkms_envelope::{
    DataKey, EncryptionContext, FieldKey, KeyId, KeyRef, RootKey, TenantId, TenantPrivateKey,
    WrappedDataKey,
};
use sha2::Sha256;

/// Fixed, arbitrary inputs: the benchmarks measure speed, not randomness.
const KEYGEN_SEED: [u8; 64] = [0x5a; 64];
const ENCAPS_M: [u8; 32] = [0xa5; 32];
const X25519_SCALAR: [u8; 32] = [0x3c; 32];
const X25519_PEER_SCALAR: [u8; 32] = [0xc3; 32];
const AES_KEY: [u8; 32] = [0x11; 32];
const AES_NONCE: [u8; 12] = [0x22; 12];
/// The X-Wing combiner label.
const XWING_LABEL: &[u8; 6] = b"\\.//^\\";
/// The wrap KDF label (crates/envelope/src/format/wrapped_key.rs).
const WRAP_KDF_LABEL: &[u8] = b"pqkms/v1/wrapped-data-key";
/// Wrapped-key header: magic, version, algorithm, key ref (36), context digest (32).
const WRAP_HEADER_LEN: usize = 4 + 1 + 1 + 36 + 32;
/// AES-GCM sizes: the 32-byte data key of a wrap, a 64-byte field, 1 KiB and 1 MiB.
const AES_SIZES: [usize; 4] = [32, 64, 1024, 1 << 20];

fn key_ref() -> KeyRef {
    KeyRef {
        tenant: TenantId::from_bytes([1; 16]),
        key: KeyId::from_bytes([2; 16]),
        version: 1,
    }
}

/// An X25519 scalar as the envelope crate holds it (AWS-LC).
fn x25519_secret(scalar: [u8; 32]) -> PrivateKey {
    PrivateKey::from_private_key(&X25519, &scalar).expect("32-byte scalar")
}

/// `X25519(scalar, 9)` as the envelope crate computes it: scalar in, public key out.
fn x25519_public(scalar: [u8; 32]) -> [u8; 32] {
    let public = x25519_secret(scalar)
        .compute_public_key()
        .expect("public key");
    <[u8; 32]>::try_from(public.as_ref()).expect("32 bytes")
}

/// X25519 as the envelope crate uses it: DH plus the contributory check (AWS-LC refuses zero).
fn x25519_dh(secret: &PrivateKey, peer: &[u8; 32]) -> [u8; 32] {
    let mut shared = [0u8; 32];
    agreement::agree(secret, UnparsedPublicKey::new(&X25519, peer), (), |s| {
        shared.copy_from_slice(s);
        Ok(())
    })
    .expect("contributory");
    shared
}

/// A point as `FixedPoint` turns it into a table: its Edwards form (either sign).
fn peer_table_point(peer: &[u8; 32]) -> EdwardsPoint {
    MontgomeryPoint(*peer).to_edwards(0).expect("on the curve")
}

/// X25519 with the peer's precomputed table, as `FixedPoint` computes it once the table is built.
fn x25519_dh_table(table: &EdwardsBasepointTable, scalar: [u8; 32]) -> [u8; 32] {
    table.mul_base_clamped(scalar).to_montgomery().to_bytes()
}

/// The X-Wing combiner: SHA3-256 over `ss_M || ss_X || ct_X || pk_X || label` (134 bytes).
fn combiner_input() -> [u8; 134] {
    let mut input = [0x77u8; 134];
    input[128..].copy_from_slice(XWING_LABEL);
    input
}

fn bench_x25519(c: &mut Criterion) {
    let mut g = c.benchmark_group("x25519");
    let secret = x25519_secret(X25519_SCALAR);
    let peer = x25519_public(X25519_PEER_SCALAR);
    g.bench_function("keygen", |b| {
        b.iter(|| x25519_public(black_box(X25519_SCALAR)))
    });
    g.bench_function("dh", |b| {
        b.iter(|| x25519_dh(black_box(&secret), black_box(&peer)))
    });
    // A tenant key in heavy use: its pk_X's precomputed table (`FixedPoint` in the envelope
    // crate), and what building the table costs once.
    let point = peer_table_point(&peer);
    let table = EdwardsBasepointTable::create(&point);
    assert_eq!(
        x25519_dh_table(&table, X25519_SCALAR),
        x25519_dh(&secret, &peer)
    );
    g.bench_function("dh_table", |b| {
        b.iter(|| x25519_dh_table(black_box(&table), black_box(X25519_SCALAR)))
    });
    g.bench_function("table_create", |b| {
        b.iter(|| EdwardsBasepointTable::create(black_box(&point)))
    });
    g.finish();

    // The implementation the envelope crate used before, in the same run (docs/CRYPTO.md).
    use x25519_dalek::{PublicKey, StaticSecret};
    let mut g = c.benchmark_group("x25519_dalek");
    let secret = StaticSecret::from(X25519_SCALAR);
    let peer = PublicKey::from(peer);
    assert_eq!(
        secret.diffie_hellman(&peer).to_bytes(),
        x25519_dh(&x25519_secret(X25519_SCALAR), peer.as_bytes())
    );
    g.bench_function("keygen", |b| {
        b.iter(|| PublicKey::from(&StaticSecret::from(black_box(X25519_SCALAR))).to_bytes())
    });
    g.bench_function("dh", |b| {
        b.iter(|| {
            let shared = black_box(&secret).diffie_hellman(black_box(&peer));
            assert!(shared.was_contributory());
            shared.to_bytes()
        })
    });
    g.finish();
}

fn bench_mlkem(c: &mut Criterion) {
    // Both implementations follow FIPS 203 deterministically: same seed, same keys and outputs.
    let lc_pair = mlkem768::generate_key_pair(KEYGEN_SEED);
    let lc_ct = mlkem768::encapsulate(lc_pair.public_key(), ENCAPS_M).0;
    let rc_dk = DecapsulationKey768::from_seed(Seed::from(KEYGEN_SEED));
    let rc_ek = rc_dk.encapsulation_key().clone();
    let (rc_ct, rc_ss) = rc_ek.encapsulate_deterministic(&B32::from(ENCAPS_M));
    assert_eq!(rc_ek.to_bytes().as_slice(), lc_pair.pk());
    assert_eq!(rc_ct.as_slice(), lc_ct.as_slice());
    assert_eq!(
        rc_ss.as_slice(),
        &mlkem768::decapsulate(lc_pair.private_key(), &lc_ct)
    );

    let mut g = c.benchmark_group("mlkem768");
    // keygen: seed to serialized public key (what X-Wing needs) and a usable private key.
    g.bench_function(BenchmarkId::new("keygen", "libcrux"), |b| {
        b.iter(|| mlkem768::generate_key_pair(black_box(KEYGEN_SEED)))
    });
    g.bench_function(BenchmarkId::new("keygen", "rustcrypto"), |b| {
        b.iter(|| {
            let dk = DecapsulationKey768::from_seed(Seed::from(black_box(KEYGEN_SEED)));
            let pk = dk.encapsulation_key().to_bytes();
            (dk, pk)
        })
    });
    // encaps with deterministic randomness. libcrux takes the serialized public key (as
    // pqkms-envelope stores it); RustCrypto takes its parsed key with H(ek) precomputed.
    g.bench_function(BenchmarkId::new("encaps", "libcrux"), |b| {
        b.iter(|| mlkem768::encapsulate(black_box(lc_pair.public_key()), black_box(ENCAPS_M)))
    });
    g.bench_function(BenchmarkId::new("encaps", "rustcrypto"), |b| {
        b.iter(|| black_box(&rc_ek).encapsulate_deterministic(&B32::from(black_box(ENCAPS_M))))
    });
    g.bench_function(BenchmarkId::new("decaps", "libcrux"), |b| {
        b.iter(|| mlkem768::decapsulate(black_box(lc_pair.private_key()), black_box(&lc_ct)))
    });
    g.bench_function(BenchmarkId::new("decaps", "rustcrypto"), |b| {
        b.iter(|| black_box(&rc_dk).decapsulate(black_box(&rc_ct)))
    });
    bench_mlkem_unpacked(&mut g, &lc_pair, &lc_ct);
    g.finish();
}

/// libcrux's unpacked API keeps the keys deserialized (matrix A sampled, H(ek) hashed, NTT form),
/// which pqkms-envelope does not use: measured to size that option, not part of any ratio. The
/// unpacked functions are per-backend; only the AVX2 one is measured, and only where AVX2 exists.
#[cfg(target_arch = "x86_64")]
fn bench_mlkem_unpacked(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    pair: &mlkem768::MlKem768KeyPair,
    ct: &mlkem768::MlKem768Ciphertext,
) {
    use mlkem768::avx2::unpacked;
    if !std::is_x86_feature_detected!("avx2") {
        return;
    }
    let key_pair = unpacked::generate_key_pair(KEYGEN_SEED);
    let mut public = unpacked::init_public_key();
    unpacked::unpacked_public_key(pair.public_key(), &mut public);
    assert_eq!(
        unpacked::encapsulate(&public, ENCAPS_M).0.as_slice(),
        ct.as_slice()
    );
    g.bench_function(BenchmarkId::new("encaps", "libcrux_unpacked"), |b| {
        b.iter(|| unpacked::encapsulate(black_box(&public), black_box(ENCAPS_M)))
    });
    g.bench_function(BenchmarkId::new("decaps", "libcrux_unpacked"), |b| {
        b.iter(|| unpacked::decapsulate(black_box(&key_pair), black_box(ct)))
    });
}

#[cfg(not(target_arch = "x86_64"))]
fn bench_mlkem_unpacked(
    _: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    _: &mlkem768::MlKem768KeyPair,
    _: &mlkem768::MlKem768Ciphertext,
) {
}

fn bench_hashes(c: &mut Criterion) {
    let input = combiner_input();
    let mut g = c.benchmark_group("sha3");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function(BenchmarkId::new("sha3_256", input.len()), |b| {
        b.iter(|| libcrux_sha3::sha256(black_box(&input[..])))
    });
    g.finish();

    // The wrap KDF: ikm = the 32-byte X-Wing secret, info = label (25) || header (74) = 99 bytes,
    // passed as two parts like crates/envelope does.
    let ikm = [0x44u8; 32];
    let header = [0x55u8; WRAP_HEADER_LEN];
    let mut g = c.benchmark_group("hkdf_sha256");
    g.bench_function(BenchmarkId::new("extract_expand", 32), |b| {
        b.iter(|| {
            let mut okm = [0u8; 32];
            Hkdf::<Sha256>::new(None, black_box(&ikm))
                .expand_multi_info(&[WRAP_KDF_LABEL, black_box(&header[..])], &mut okm)
                .expect("32 bytes is a valid HKDF-SHA256 length");
            okm
        })
    });
    g.finish();
}

fn bench_aes_gcm(c: &mut Criterion) {
    let cipher = Aes256Gcm::new(&AES_KEY.into());
    let nonce = Nonce::from(AES_NONCE);
    let aad = [0x33u8; WRAP_HEADER_LEN];
    let mut g = c.benchmark_group("aes256gcm");
    // Key schedule + GHASH key: paid once per wrap/unwrap, since each derives a fresh key.
    g.bench_function("key_init", |b| {
        b.iter(|| Aes256Gcm::new(&black_box(AES_KEY).into()))
    });
    for size in AES_SIZES {
        let plaintext = vec![0x66u8; size];
        let mut ciphertext = plaintext.clone();
        let tag: Tag = cipher
            .encrypt_inout_detached(&nonce, &aad, ciphertext.as_mut_slice().into())
            .expect("encrypt");
        g.throughput(Throughput::Bytes(size as u64));
        // Plaintext to a separate, preallocated output buffer: no copy, no allocation.
        let mut out = vec![0u8; size];
        g.bench_with_input(BenchmarkId::new("seal", size), &plaintext, |b, pt| {
            b.iter(|| {
                let buf = InOutBuf::new(black_box(pt), &mut out).expect("same length");
                cipher.encrypt_inout_detached(&nonce, black_box(&aad), buf)
            })
        });
        g.bench_with_input(BenchmarkId::new("open", size), &ciphertext, |b, ct| {
            b.iter(|| {
                let buf = InOutBuf::new(black_box(ct), &mut out).expect("same length");
                cipher
                    .decrypt_inout_detached(&nonce, black_box(&aad), buf, black_box(&tag))
                    .expect("authentic")
            })
        });
    }
    g.finish();
}

fn bench_getrandom(c: &mut Criterion) {
    let mut g = c.benchmark_group("getrandom");
    g.bench_function(BenchmarkId::new("fill", 12), |b| {
        b.iter(|| {
            let mut buf = [0u8; 12];
            getrandom::fill(&mut buf).expect("OS randomness");
            buf
        })
    });
    g.bench_function(BenchmarkId::new("fill", 64), |b| {
        b.iter(|| {
            let mut buf = [0u8; 64];
            getrandom::fill(&mut buf).expect("OS randomness");
            buf
        })
    });
    g.finish();
}

/// Composite operations, through the public API of pqkms-envelope only.
fn bench_composite(c: &mut Criterion) {
    let tenant_key = TenantPrivateKey::generate(key_ref()).expect("keygen");
    let public = tenant_key.public_key();
    let empty = EncryptionContext::new();
    let data_key = DataKey::from_bytes(&[0x99; 32]);
    let wrapped = public.wrap_data_key(&data_key, &empty).expect("wrap");
    let wrapped = WrappedDataKey::parse(wrapped.as_bytes()).expect("parse");
    let fields = FieldKey::new(&data_key).expect("field key");
    let field_plain = [0x42u8; 64];
    let field_ad = b"customers/42/email";
    let field = fields.encrypt(&field_plain, field_ad).expect("encrypt");
    let doc = vec![0x24u8; 1024];
    let envelope = public.seal_envelope(&empty, &doc).expect("seal");
    let root = RootKey::from_bytes(1, &[0x0f; 32]).expect("root key");
    let sealed = root.seal_tenant_key(&tenant_key).expect("seal tenant key");

    let mut g = c.benchmark_group("composite");
    g.bench_function("wrap", |b| {
        b.iter(|| {
            public
                .wrap_data_key(black_box(&data_key), black_box(&empty))
                .expect("wrap")
        })
    });
    g.bench_function("generate_data_key", |b| {
        b.iter(|| {
            public
                .generate_data_key(black_box(&empty))
                .expect("generate")
        })
    });
    g.bench_function("unwrap", |b| {
        b.iter(|| {
            tenant_key
                .unwrap_data_key(black_box(&wrapped), black_box(&empty))
                .expect("unwrap")
        })
    });
    g.bench_function("field/encrypt_64B", |b| {
        b.iter(|| {
            fields
                .encrypt(black_box(&field_plain), black_box(field_ad))
                .expect("encrypt")
        })
    });
    g.bench_function("field/decrypt_64B", |b| {
        b.iter(|| {
            fields
                .decrypt(black_box(&field), black_box(field_ad))
                .expect("decrypt")
        })
    });
    g.bench_function("envelope/seal_1KiB", |b| {
        b.iter(|| {
            public
                .seal_envelope(black_box(&empty), black_box(&doc))
                .expect("seal")
        })
    });
    g.bench_function("envelope/open_1KiB", |b| {
        b.iter(|| {
            tenant_key
                .open_envelope(black_box(&envelope), black_box(&empty))
                .expect("open")
        })
    });
    g.bench_function("unseal_tenant_key", |b| {
        b.iter(|| {
            root.unseal_tenant_key(black_box(&sealed), black_box(&key_ref()))
                .expect("unseal")
        })
    });
    // Not in the issue's primitive list, but computed on every wrap and unwrap.
    g.bench_function("context_digest_empty", |b| {
        b.iter(|| black_box(&empty).digest())
    });
    g.finish();
}

/// The primitives of wrap and unwrap run back to back in one closure, without the crate's
/// formatting, allocations or copies: separates "primitives measured apart" from "primitives
/// measured together" (cache and branch-predictor effects) when reading the ratio.
fn bench_inline(c: &mut Criterion) {
    let pair = mlkem768::generate_key_pair(KEYGEN_SEED);
    let x_secret = x25519_secret(X25519_SCALAR);
    let x_public = x25519_public(X25519_SCALAR);
    let x_table = EdwardsBasepointTable::create(&peer_table_point(&x_public));
    let header = [0x55u8; WRAP_HEADER_LEN];
    let data_key = [0x99u8; 32];
    let nonce = Nonce::from(AES_NONCE);

    let kdf_and_key = |ss: &[u8; 32]| {
        let mut kek = [0u8; 32];
        Hkdf::<Sha256>::new(None, ss)
            .expand_multi_info(&[WRAP_KDF_LABEL, &header[..]], &mut kek)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Aes256Gcm::new(&kek.into())
    };
    let combine = |ss_m: &[u8; 32], ss_x: &[u8; 32], ct_x: &[u8; 32]| {
        let mut input = [0u8; 134];
        input[..32].copy_from_slice(ss_m);
        input[32..64].copy_from_slice(ss_x);
        input[64..96].copy_from_slice(ct_x);
        input[96..128].copy_from_slice(&x_public);
        input[128..].copy_from_slice(XWING_LABEL);
        libcrux_sha3::sha256(&input)
    };

    // One wrap's worth of output, for the unwrap bench.
    let eseed = [0x0bu8; 64];
    let ek_x = <[u8; 32]>::try_from(&eseed[32..]).expect("32 bytes");
    let ct_x = x25519_public(ek_x);
    let ss_x = x25519_dh(&x25519_secret(ek_x), &x_public);
    let m = <[u8; 32]>::try_from(&eseed[..32]).expect("32 bytes");
    let (ct_m, ss_m) = mlkem768::encapsulate(pair.public_key(), m);
    let kek = kdf_and_key(&combine(&ss_m, &ss_x, &ct_x));
    let mut sealed_key = data_key;
    let tag = kek
        .encrypt_inout_detached(&nonce, &header, sealed_key.as_mut_slice().into())
        .expect("encrypt");

    let mut g = c.benchmark_group("inline");
    g.bench_function("wrap_primitives", |b| {
        b.iter(|| {
            let mut eseed = [0u8; 64];
            getrandom::fill(&mut eseed).expect("OS randomness");
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).expect("OS randomness");
            let ek_x_bytes = <[u8; 32]>::try_from(&eseed[32..]).expect("32 bytes");
            let ek_x = x25519_secret(ek_x_bytes);
            let ct_x = <[u8; 32]>::try_from(ek_x.compute_public_key().expect("public").as_ref())
                .expect("32 bytes");
            let ss_x = x25519_dh_table(black_box(&x_table), ek_x_bytes);
            let m = <[u8; 32]>::try_from(&eseed[..32]).expect("32 bytes");
            let (ct_m, ss_m) = mlkem768::encapsulate(black_box(pair.public_key()), m);
            let kek = kdf_and_key(&combine(&ss_m, &ss_x, &ct_x));
            let mut out = [0u8; 32];
            let buf = InOutBuf::new(black_box(&data_key), &mut out).expect("same length");
            let tag = kek
                .encrypt_inout_detached(&Nonce::from(nonce), &header, buf)
                .expect("encrypt");
            (ct_m, ct_x, out, tag)
        })
    });
    g.bench_function("unwrap_primitives", |b| {
        b.iter(|| {
            let ss_m = mlkem768::decapsulate(black_box(pair.private_key()), black_box(&ct_m));
            let ss_x = x25519_dh(black_box(&x_secret), black_box(&ct_x));
            let kek = kdf_and_key(&combine(&ss_m, &ss_x, &ct_x));
            let mut out = [0u8; 32];
            let buf = InOutBuf::new(black_box(&sealed_key), &mut out).expect("same length");
            kek.decrypt_inout_detached(&nonce, &header, buf, &tag)
                .expect("authentic");
            out
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_x25519,
    bench_mlkem,
    bench_hashes,
    bench_aes_gcm,
    bench_getrandom,
    bench_composite,
    bench_inline
);
criterion_main!(benches);
