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
        // Every connection closed, the audit writer's own included: SQLite checkpointed the WAL
        // into the database file and removed it.
        assert!(
            !data.join("pqkms.db-wal").exists(),
            "WAL left after a graceful stop"
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

/// `pqkms key rotate`, `key rewrap` (stdin → stdout, progress on stderr), `key disable/enable`,
/// `key destroy/cancel-destroy` and `tenant shred`, with the real binary.
#[test]
fn lifecycle_commands_with_the_real_binary() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = serve(dir.path(), port);
    wait_ready(port);
    let operator = std::fs::read_to_string(dir.path().join("pqkms-data/operator.token")).unwrap();
    let operator = operator.trim();
    ok_json(cli(port, operator, &["tenant", "create", "acme", "--json"]));
    let token = |roles: &[&str]| {
        let mut args = vec!["token", "create", "--tenant", "acme", "--json"];
        for r in roles {
            args.extend(["--role", r]);
        }
        ok_json(cli(port, operator, &args))["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (admin, app) = (token(&["tenant-admin"]), token(&["encrypt", "decrypt"]));

    let mut wrapped = Vec::new();
    for _ in 0..3 {
        let dk = ok_json(cli(
            port,
            &app,
            &["data-key", "generate", "--tenant", "acme", "--json"],
        ));
        wrapped.push((
            dk["wrapped_key"].as_str().unwrap().to_owned(),
            dk["plaintext"].clone(),
        ));
    }
    let rotated = ok_json(cli(
        port,
        &admin,
        &["key", "rotate", "--tenant", "acme", "--json"],
    ));
    assert_eq!(rotated["version"], 2);

    let mut child = Command::new(BIN)
        .args(["key", "rewrap", "--tenant", "acme"])
        .env("PQKMS_ADDR", format!("http://127.0.0.1:{port}"))
        .env("PQKMS_TOKEN", &app)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 120 lines (the three keys, 40 times): more than one request body's worth (~30 per 64 KiB),
    // so the CLI must split them into several batches.
    let input: String = (0..40)
        .flat_map(|_| wrapped.iter().map(|(w, _)| format!("{w}\n")))
        .collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("rewrap: 120/120 (0 failed)"));
    let new: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(new.len(), 120);
    for (n, (old, plaintext)) in new.iter().zip(&wrapped) {
        assert_ne!(n, old);
        let v = ok_json(cli(
            port,
            &app,
            &[
                "data-key",
                "decrypt",
                "--tenant",
                "acme",
                "--wrapped",
                n,
                "--json",
            ],
        ));
        assert_eq!(
            (&v["plaintext"], v["version"].as_i64()),
            (plaintext, Some(2))
        );
    }

    ok_json(cli(
        port,
        &admin,
        &[
            "key",
            "disable",
            "--tenant",
            "acme",
            "--version",
            "2",
            "--json",
        ],
    ));
    let refused = cli(
        port,
        &app,
        &[
            "data-key",
            "decrypt",
            "--tenant",
            "acme",
            "--wrapped",
            &new[0],
        ],
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("409 key_disabled"));
    ok_json(cli(
        port,
        &admin,
        &[
            "key",
            "enable",
            "--tenant",
            "acme",
            "--version",
            "2",
            "--json",
        ],
    ));

    let sched = ok_json(cli(
        port,
        &admin,
        &["key", "destroy", "--tenant", "acme", "--json"],
    ));
    assert!(sched["destroy_at"].as_i64().unwrap() > 0);
    let too_short = cli(
        port,
        &admin,
        &[
            "key",
            "destroy",
            "--tenant",
            "acme",
            "--waiting-period",
            "1h",
        ],
    );
    assert!(!too_short.status.success(), "the 7-day minimum applies");
    ok_json(cli(
        port,
        &admin,
        &["key", "cancel-destroy", "--tenant", "acme", "--json"],
    ));
    ok_json(cli(
        port,
        &admin,
        &["key", "create", "--tenant", "acme", "second", "--json"],
    ));
    let shred = ok_json(cli(port, &admin, &["tenant", "shred", "acme", "--json"]));
    assert_eq!(shred["scheduled"].as_array().unwrap().len(), 2);
    let pending = cli(
        port,
        &app,
        &[
            "data-key", "generate", "--tenant", "acme", "--key", "second",
        ],
    );
    assert!(String::from_utf8_lossy(&pending.stderr).contains("409"));
    server.kill().unwrap();
    let _ = server.wait();
}
