//! Fields per second, encrypting and decrypting 64-byte fields: with a cached data key versus one
//! service call per field, side by side, against the real service (SQLite, in process, loopback).
//!
//! `cargo bench -p pqkms-client --bench fields`
//!
//! - `cached_key`: fields of one record (the data key is already in hand): the per-field cost.
//! - `cached_key+record`: one field per record, each record taking the cached data key
//!   (`Encryptor::record` / `Encryptor::open` on a cache hit): the worst case with the cache on.
//! - `service_call_per_field`: the cache disabled, one field per record: every field costs a
//!   data-key generation (or decryption) by the service, audited in its database.
//!
//! Target (issue 5): >= 1M fields/s per core at 64 B with a cached key. The bench thread does all
//! the encryption; the runtime's threads only serve the in-process service.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pqkms::config::Config;
use pqkms_client::{CacheLimits, Client, EncryptionContext, ExposeSecret, RetryPolicy, Role};

struct Setup {
    rt: tokio::runtime::Runtime,
    cached: Client,
    uncached: Client,
    _running: pqkms::server::Running,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let (running, cached, uncached) = rt.block_on(async {
        let running = pqkms::server::start(&config).await.expect("server");
        let base = format!("http://{}", running.addr);
        let operator_token =
            std::fs::read_to_string(config.data_dir.join("operator.token")).expect("token");
        let operator = Client::new(&base, operator_token.trim()).expect("client");
        operator.create_tenant("bench").await.expect("tenant");
        let app = operator
            .create_token("bench", &[Role::Encrypt, Role::Decrypt], None)
            .await
            .expect("token");
        let build = |limits| {
            Client::builder(&base, app.token.expose_secret())
                .cache_limits(limits)
                .retry(RetryPolicy::none())
                .build()
                .expect("client")
        };
        let cached = build(CacheLimits {
            max_age: Duration::from_secs(3600),
            ..CacheLimits::default()
        });
        let uncached = build(CacheLimits::disabled());
        (running, cached, uncached)
    });
    Setup {
        rt,
        cached,
        uncached,
        _running: running,
        _dir: dir,
    }
}

fn fields(c: &mut Criterion) {
    let s = setup();
    let ctx: EncryptionContext = [("table", "bench")].into_iter().collect();
    let field = [0x5au8; 64];
    let cached = s.cached.encryptor("bench", "default", ctx.clone());
    let uncached = s.uncached.encryptor("bench", "default", ctx.clone());

    let rec = s.rt.block_on(cached.record("row")).expect("record");
    let column = rec.encrypt("f", &field).expect("encrypt");
    let dek = rec.wrapped_key().as_bytes().to_vec();
    let opened = s.rt.block_on(cached.open("row", &dek)).expect("open");

    let mut g = c.benchmark_group("fields_64B");
    g.throughput(Throughput::Elements(1));

    g.bench_function("encrypt/cached_key", |b| {
        b.iter(|| black_box(rec.encrypt("f", black_box(&field)).expect("encrypt")))
    });
    g.bench_function("decrypt/cached_key", |b| {
        b.iter(|| {
            black_box(
                opened
                    .decrypt::<Vec<u8>>("f", black_box(&column))
                    .expect("decrypt"),
            )
        })
    });
    g.bench_function("encrypt/cached_key+record", |b| {
        b.iter(|| {
            let rec = s.rt.block_on(cached.record("row")).expect("record");
            black_box(rec.encrypt("f", black_box(&field)).expect("encrypt"))
        })
    });
    g.bench_function("decrypt/cached_key+record", |b| {
        b.iter(|| {
            let opened = s.rt.block_on(cached.open("row", &dek)).expect("open");
            black_box(opened.decrypt::<Vec<u8>>("f", &column).expect("decrypt"))
        })
    });

    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("encrypt/service_call_per_field", |b| {
        b.iter(|| {
            let rec = s.rt.block_on(uncached.record("row")).expect("record");
            black_box(rec.encrypt("f", black_box(&field)).expect("encrypt"))
        })
    });
    g.bench_function("decrypt/service_call_per_field", |b| {
        b.iter(|| {
            let opened = s.rt.block_on(uncached.open("row", &dek)).expect("open");
            black_box(opened.decrypt::<Vec<u8>>("f", &column).expect("decrypt"))
        })
    });
    g.finish();
}

criterion_group!(benches, fields);
criterion_main!(benches);
