//! `pqkms`: the key-management service. The HTTP service, storage and CLI land with issue #3; this
//! binary currently reports its version and the formats it speaks.

fn main() {
    println!(
        "pqkms {} (envelope formats v1: X-Wing + HKDF-SHA256 + AES-256-GCM)",
        env!("CARGO_PKG_VERSION")
    );
}
