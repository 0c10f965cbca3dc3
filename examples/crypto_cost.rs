//! Crypto cost per request: times the envelope operations that one pqkms request performs, so the
//! load harness (`benches/load/run.py`) can report which share of the server's CPU per request is
//! cryptography.
//!
//! ```text
//! cargo run --release --example crypto_cost -- [ITERATIONS]     # default 2000
//! ```
//!
//! Prints one JSON object on stdout, times in microseconds per operation (mean over ITERATIONS,
//! after ITERATIONS / 10 warm-up operations), single thread:
//!
//! - `generate_data_key_us`: `TenantPublicKey::generate_data_key` with the harness's two-pair
//!   context: the crypto of `POST .../data-key` (X-Wing encapsulation, KDF, AES-GCM seal, RNG).
//! - `unwrap_data_key_us`: `WrappedDataKey::parse` + `TenantPrivateKey::unwrap_data_key`, same
//!   context: the crypto of `POST .../decrypt`.
//! - `context_digest_us`: `EncryptionContext::digest` (the audit entry's `context_hash`).
//! - `unseal_tenant_key_us`: `RootKey::unseal_tenant_key`, paid once per key version on a key
//!   cache miss, not per request.
//! - `generate_tenant_key_us`: `TenantPrivateKey::generate` (tenant or key creation).

use std::hint::black_box;
use std::time::Instant;

use pqkms_envelope::{
    EncryptionContext, KeyId, KeyRef, RootKey, TenantId, TenantPrivateKey, WrappedDataKey,
};

/// Default number of timed operations per measurement.
const DEFAULT_ITERATIONS: u32 = 2000;

/// Mean microseconds per call of `op`, after `iterations / 10` untimed calls.
fn time_us(iterations: u32, mut op: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        op();
    }
    let start = Instant::now();
    for _ in 0..iterations {
        op();
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let iterations = match std::env::args().nth(1) {
        Some(n) => n.parse::<u32>().map_err(|e| format!("ITERATIONS: {e}"))?,
        None => DEFAULT_ITERATIONS,
    }
    .max(1);

    let key_ref = KeyRef {
        tenant: TenantId::random()?,
        key: KeyId::random()?,
        version: 1,
    };
    let tenant_key = TenantPrivateKey::generate(key_ref)?;
    let root = RootKey::generate(1)?;
    let sealed = root.seal_tenant_key(&tenant_key)?;
    // The context the load harness sends with every data-key and decrypt request.
    let mut context = EncryptionContext::new();
    context.insert("table", "customers");
    context.insert("column", "email");
    let (_, wrapped) = tenant_key.public_key().generate_data_key(&context)?;
    let wrapped = wrapped.into_bytes();

    let generate = time_us(iterations, || {
        let out = tenant_key
            .public_key()
            .generate_data_key(black_box(&context));
        black_box(out.expect("generate_data_key"));
    });
    let unwrap = time_us(iterations, || {
        let parsed = WrappedDataKey::parse(black_box(&wrapped)).expect("parse");
        let key = tenant_key.unwrap_data_key(&parsed, black_box(&context));
        black_box(key.expect("unwrap_data_key"));
    });
    let digest = time_us(iterations, || {
        black_box(black_box(&context).digest());
    });
    let unseal = time_us(iterations, || {
        let key = root.unseal_tenant_key(black_box(&sealed), &key_ref);
        black_box(key.expect("unseal_tenant_key"));
    });
    let keygen = time_us((iterations / 4).max(1), || {
        black_box(TenantPrivateKey::generate(key_ref).expect("generate"));
    });

    println!(
        "{{\"iterations\": {iterations}, \"generate_data_key_us\": {generate:.3}, \
         \"unwrap_data_key_us\": {unwrap:.3}, \"context_digest_us\": {digest:.3}, \
         \"unseal_tenant_key_us\": {unseal:.3}, \"generate_tenant_key_us\": {keygen:.3}}}"
    );
    Ok(())
}
