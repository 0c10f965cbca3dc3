//! `pqkms`: the service and its command line. Everything lives in the library; see `pqkms::cli`.

fn main() -> std::process::ExitCode {
    pqkms::cli::main()
}
