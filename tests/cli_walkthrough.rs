//! The README walkthrough, run with the real binary: `pqkms serve` as a child process on the
//! embedded default, then the CLI commands a new user types, then SIGTERM.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_pqkms");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(dir: &Path, port: u16) -> Child {
    Command::new(BIN)
        .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .env_remove("PQKMS_DATABASE_URL")
        .env_remove("PQKMS_TOKEN")
        .env("PQKMS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pqkms serve starts")
}

fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server did not listen on {port}");
}

fn cli(port: u16, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("PQKMS_ADDR", format!("http://127.0.0.1:{port}"))
        .env("PQKMS_TOKEN", token)
        .output()
        .expect("cli runs")
}

fn ok_json(out: Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn readme_walkthrough_with_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port);
    wait_ready(port);

    let data = dir.path().join("pqkms-data");
    #[cfg(unix)]
    {
        assert_eq!(mode(&data), 0o700);
        for f in ["root.key", "operator.token", "pqkms.db"] {
            assert_eq!(mode(&data.join(f)), 0o600, "{f}");
        }
    }
    let operator = std::fs::read_to_string(data.join("operator.token")).unwrap();
    let operator = operator.trim();

    let t = ok_json(cli(port, operator, &["tenant", "create", "acme", "--json"]));
    assert_eq!(t["tenant"], "acme");
    let tok = ok_json(cli(
        port,
        operator,
        &[
            "token", "create", "--tenant", "acme", "--role", "encrypt", "--role", "decrypt",
            "--json",
        ],
    ));
    let app = tok["token"].as_str().unwrap().to_owned();

    let dk = ok_json(cli(
        port,
        &app,
        &[
            "data-key",
            "generate",
            "--tenant",
            "acme",
            "--context",
            "table=customers",
            "--json",
        ],
    ));
    let wrapped = dk["wrapped_key"].as_str().unwrap();
    let opened = ok_json(cli(
        port,
        &app,
        &[
            "data-key",
            "decrypt",
            "--tenant",
            "acme",
            "--wrapped",
            wrapped,
            "--context",
            "table=customers",
            "--json",
        ],
    ));
    assert_eq!(opened["plaintext"], dk["plaintext"]);

    // Wrong context: the CLI exits non-zero and prints the uniform 422.
    let wrong = cli(
        port,
        &app,
        &[
            "data-key",
            "decrypt",
            "--tenant",
            "acme",
            "--wrapped",
            wrapped,
            "--context",
            "table=x",
        ],
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("422"));

    // Human output of key list and audit verify.
    let admin = ok_json(cli(
        port,
        operator,
        &[
            "token",
            "create",
            "--tenant",
            "acme",
            "--role",
            "tenant-admin",
            "--json",
        ],
    ));
    let keys = cli(
        port,
        admin["token"].as_str().unwrap(),
        &["key", "list", "--tenant", "acme"],
    );
    assert!(String::from_utf8_lossy(&keys.stdout).contains("default"));
    let verify = cli(port, operator, &["audit", "verify"]);
    assert!(verify.status.success());
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(text.starts_with("audit chain OK: 7 entries"), "{text}");

    // SIGTERM: graceful shutdown, exit status 0, and the log never shows a token.
    #[cfg(unix)]
    {
        let pid = server.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let out = server.wait_with_output().unwrap();
        assert!(out.status.success(), "exit: {:?}", out.status);
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            log.contains("operator.token") && log.contains("stopped"),
            "{log}"
        );
        assert!(
            !log.contains(operator) && !log.contains(&app),
            "token in log"
        );
    }
    #[cfg(not(unix))]
    {
        let mut server = server;
        server.kill().unwrap();
    }

    // Restart on the same data directory: same root key, the old wrapped key still opens.
    let port = free_port();
    let mut server = serve(dir.path(), port);
    wait_ready(port);
    let again = ok_json(cli(
        port,
        &app,
        &[
            "data-key",
            "decrypt",
            "--tenant",
            "acme",
            "--wrapped",
            wrapped,
            "--context",
            "table=customers",
            "--json",
        ],
    ));
    assert_eq!(again["plaintext"], dk["plaintext"]);
    server.kill().unwrap();
    let _ = server.wait();
}
