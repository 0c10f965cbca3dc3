//! Transport behaviour against scripted fake servers: retries with backoff only on connection
//! errors and 503, error-code mapping (including `key_destroyed`), secret redaction, URL policy.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pqkms_client::{CacheLimits, Client, EncryptionContext, Error, RetryPolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server answering its n-th request with `answers[min(n, last)]` (status, JSON body).
/// Returns its base URL and the count of requests it saw.
async fn fake(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
    let (base, seen, _) = fake_logged(answers).await;
    (base, seen)
}

type Log = Arc<std::sync::Mutex<Vec<String>>>;

/// [`fake`], also recording each request's head (request line and headers).
async fn fake_logged(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>, Log) {
    let log: Log = Arc::default();
    let heads = Arc::clone(&log);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (status, body) = answers[n.min(answers.len() - 1)];
            let heads = Arc::clone(&heads);
            tokio::spawn(async move {
                // Read the head and any Content-Length body; the answers do not depend on them.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(k) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            heads
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&buf[..end]).into());
                            break;
                        }
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                     x-request-id: req_00000000000000ff\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (base, seen, log)
}

const KEY: &str = r#"{"name":"default","id":"c6de5f4d2d003e15ce1aac3b463e5ec4","created_at":1,"current_version":1,"versions":[]}"#;
const UNAVAILABLE: &str =
    r#"{"error":{"code":"unavailable","message":"service temporarily unavailable"}}"#;

fn fast_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    }
}

fn client(base: &str, retry: RetryPolicy) -> Client {
    Client::builder(base, "pqkms_test")
        .retry(retry)
        .cache_limits(CacheLimits::disabled())
        .build()
        .unwrap()
}

#[tokio::test]
async fn retries_503_with_backoff_then_succeeds() {
    let (base, seen) = fake(vec![(503, UNAVAILABLE), (503, UNAVAILABLE), (200, KEY)]).await;
    let c = client(&base, fast_retry(3));
    let started = Instant::now();
    let key = c.get_key("acme", "default").await.unwrap();
    assert_eq!(key.name, "default");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    let s = c.stats();
    assert_eq!((s.requests, s.retries), (3, 2));
    // Backoff: at least half of 10 ms + half of 20 ms.
    assert!(started.elapsed() >= Duration::from_millis(15));
}

#[tokio::test]
async fn gives_up_after_max_retries() {
    let (base, seen) = fake(vec![(503, UNAVAILABLE)]).await;
    let c = client(&base, fast_retry(2));
    let e = c.get_key("acme", "default").await.unwrap_err();
    assert!(matches!(e, Error::Unavailable(_)), "{e:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(c.stats().retries, 2);
}

#[tokio::test]
async fn other_errors_are_not_retried() {
    for (status, body) in [
        (
            500,
            r#"{"error":{"code":"internal","message":"internal error"}}"#,
        ),
        (
            422,
            r#"{"error":{"code":"decryption_failed","message":"no"}}"#,
        ),
        (
            429,
            r#"{"error":{"code":"rate_limited","message":"slow down"}}"#,
        ),
    ] {
        let (base, seen) = fake(vec![(status, body), (200, KEY)]).await;
        let c = client(&base, fast_retry(3));
        let e = c.get_key("acme", "default").await.unwrap_err();
        assert_eq!(
            seen.load(Ordering::SeqCst),
            1,
            "{status} must not be retried"
        );
        assert_eq!(e.service_error().unwrap().status, status);
    }
}

#[tokio::test]
async fn connection_refused_is_retried_then_reported() {
    // A port that was just free: nothing listens there.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = client(&format!("http://{addr}"), fast_retry(2));
    let e = c.get_key("acme", "default").await.unwrap_err();
    assert!(matches!(e, Error::Connect(_)), "{e:?}");
    let s = c.stats();
    assert_eq!((s.requests, s.retries), (3, 2));
}

#[tokio::test]
async fn a_timeout_is_not_retried() {
    // Accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let c = Client::builder(&base, "pqkms_test")
        .timeout(Duration::from_millis(200))
        .retry(fast_retry(3))
        .build()
        .unwrap();
    let e = c.get_key("acme", "default").await.unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "{e:?}");
    assert_eq!(c.stats().requests, 1);
    hold.abort();
}

#[tokio::test]
async fn every_service_code_maps_to_its_variant() {
    type Check = fn(&Error) -> bool;
    let cases: &[(u16, &str, Check)] = &[
        (400, "bad_request", |e| matches!(e, Error::BadRequest(_))),
        (401, "unauthorized", |e| matches!(e, Error::Unauthorized(_))),
        (403, "forbidden", |e| matches!(e, Error::Forbidden(_))),
        (404, "not_found", |e| matches!(e, Error::NotFound(_))),
        (409, "conflict", |e| matches!(e, Error::Conflict(_))),
        (409, "key_disabled", |e| matches!(e, Error::KeyDisabled(_))),
        (409, "version_retired", |e| {
            matches!(e, Error::VersionRetired(_))
        }),
        (409, "invalid_state", |e| {
            matches!(e, Error::InvalidState(_))
        }),
        (413, "body_too_large", |e| {
            matches!(e, Error::BodyTooLarge(_))
        }),
        (422, "decryption_failed", |e| {
            matches!(e, Error::DecryptionFailed(_))
        }),
        (410, "key_destroyed", |e| {
            matches!(e, Error::KeyDestroyed(_))
        }),
        (500, "internal", |e| matches!(e, Error::Internal(_))),
        (405, "method_not_allowed", |e| {
            matches!(e, Error::Unexpected(_))
        }),
    ];
    for &(status, code, check) in cases {
        let body: &'static str =
            Box::leak(format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#).into_boxed_str());
        let (base, _) = fake(vec![(status, body)]).await;
        let c = client(&base, RetryPolicy::none());
        let e = c
            .decrypt_data_key("acme", "default", b"blob", &EncryptionContext::new())
            .await
            .err()
            .unwrap();
        assert!(check(&e), "{status} {code}: {e:?}");
        assert_eq!(e.code(), Some(code));
        let s = e.service_error().unwrap();
        assert_eq!(s.request_id.as_deref(), Some("req_00000000000000ff"));
        assert!(e.to_string().contains(code));
    }
    // A destroyed key is its own error through the encryptor too, with when it was destroyed.
    let (base, _) = fake(vec![(
        410,
        r#"{"error":{"code":"key_destroyed","message":"this key version was destroyed","destroyed_at":1796419639774}}"#,
    )])
    .await;
    let c = client(&base, RetryPolicy::none());
    let e = c
        .encryptor("acme", "default", EncryptionContext::new())
        .open("r", b"blob")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::KeyDestroyed(_)), "{e:?}");
    assert_eq!(
        e.service_error().and_then(|s| s.destroyed_at),
        Some(1_796_419_639_774)
    );
    // A body without the error shape still maps by status.
    let (base, _) = fake(vec![(410, "gone")]).await;
    let e = client(&base, RetryPolicy::none())
        .get_key("a", "b")
        .await
        .unwrap_err();
    assert!(matches!(e, Error::KeyDestroyed(_)), "{e:?}");
}

#[tokio::test]
async fn malformed_success_answers_are_errors_not_panics() {
    for body in [
        "not json",
        r#"{"plaintext": "c2hvcnQ=", "version": 1}"#,
        r#"{"plaintext": "!!!", "version": 1}"#,
        r#"{"version": 1}"#,
    ] {
        let (base, _) = fake(vec![(200, body)]).await;
        let c = client(&base, RetryPolicy::none());
        let e = c
            .decrypt_data_key("acme", "default", b"x", &EncryptionContext::new())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, Error::InvalidResponse(_)), "{body}: {e:?}");
        let e = c
            .generate_data_key("acme", "default", &EncryptionContext::new(), true)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidResponse(_)), "{body}: {e:?}");
    }
}

#[test]
fn token_never_prints_and_plain_http_needs_loopback() {
    let token = "pqkms_d65e29f8f7613eefe899792ef6b325fb06e7a4abd4ed31333dc1c75f74a530f9";
    let builder = Client::builder("https://kms.example", token);
    assert!(!format!("{builder:?}").contains("d65e29"));
    let c = builder.build().unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("d65e29"), "{shown}");
    assert!(shown.contains("REDACTED"));

    for ok in [
        "http://127.0.0.1:8650",
        "http://localhost:8650",
        "http://[::1]:8650",
        "https://kms.internal/prefix",
    ] {
        Client::new(ok, token).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for bad in [
        "http://10.0.0.5:8650",
        "ftp://kms",
        "not a url",
        "https://kms/?q=1",
    ] {
        assert!(
            matches!(Client::new(bad, token), Err(Error::Config(_))),
            "{bad}"
        );
    }
    Client::builder("http://kms.internal:8650", token)
        .allow_insecure_http(true)
        .build()
        .unwrap();
    assert!(matches!(
        Client::builder("https://kms", token)
            .cache_limits(CacheLimits {
                max_fields_per_key: u64::MAX,
                ..CacheLimits::default()
            })
            .build(),
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn requests_carry_the_token_and_encoded_paths() {
    let (base, _, log) = fake_logged(vec![(200, KEY)]).await;
    let c = client(&format!("{base}/kms/"), RetryPolicy::none());
    c.get_key("acme", "default").await.unwrap();
    c.get_key("acme", "../x?y").await.unwrap();
    let heads = log.lock().unwrap().clone();
    let first: Vec<&str> = heads.iter().map(|h| h.lines().next().unwrap()).collect();
    assert_eq!(first[0], "GET /kms/v1/tenants/acme/keys/default HTTP/1.1");
    // A name cannot leave its path segment.
    assert_eq!(
        first[1],
        "GET /kms/v1/tenants/acme/keys/..%2Fx%3Fy HTTP/1.1"
    );
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer pqkms_test")
    );
}
