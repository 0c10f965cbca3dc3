//! `pqkms`: the service and its command line. Everything lives in the library; see `pqkms::cli`.

/// mimalloc instead of the system allocator: the request path allocates many small, short-lived
/// buffers across threads (JSON, base64, futures), and glibc malloc was ~12 % of the server's CPU
/// samples at 64 connections. Measured side by side in docs/PERFORMANCE.md. Secrets never depend
/// on the allocator: they are zeroized before they are freed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pqkms::cli::main()
}
