//! Data keys over real HTTP, on every backend: round trips, every way a wrapped key can fail to
//! open (uniform 422, audited as failed, nothing changes), malformed and oversized bodies, name
//! validation and conflicts, and immediate token revocation.

mod common;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE};
use common::{TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// POST a JSON body; returns (status, body, x-request-id).
async fn post(
    server: &TestServer,
    path: &str,
    token: &str,
    body: &Value,
) -> (StatusCode, Value, String) {
    let resp = server
        .http
        .post(format!("{}{path}", server.base))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("request sent");
    let status = resp.status();
    let rid = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        rid,
    )
}

fn key_path(tenant: &str, key: &str, op: &str) -> String {
    format!("/v1/tenants/{tenant}/keys/{key}/{op}")
}

/// Every audit entry with `seq > after`, following the pager.
async fn audit_after(server: &TestServer, after: i64) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = after;
    loop {
        let (s, v) = server
            .call(
                Method::GET,
                &format!("/v1/audit?after={cursor}&limit=100"),
                Some(&server.operator),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        out.extend(v["entries"].as_array().expect("entries").iter().cloned());
        match v["next_after"].as_i64() {
            Some(n) => cursor = n,
            None => break,
        }
    }
    out
}

async fn last_seq(server: &TestServer) -> i64 {
    audit_after(server, 0)
        .await
        .last()
        .and_then(|e| e["seq"].as_i64())
        .unwrap_or(0)
}

async fn verify_ok(server: &TestServer) -> Value {
    let (s, v) = server
        .call(
            Method::GET,
            "/v1/audit/verify",
            Some(&server.operator),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    v
}

/// The `{"error": {"code", "message"}}` shape with this code, and nothing else.
fn assert_error(v: &Value, code: &str, what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not a JSON object: {v}"));
    assert_eq!(obj.len(), 1, "{what}: {v}");
    assert_eq!(v["error"]["code"], code, "{what}: {v}");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message: {v}"));
    assert!(!msg.is_empty(), "{what}: {v}");
    assert_eq!(v["error"].as_object().unwrap().len(), 2, "{what}: {v}");
}

fn decode32(v: &Value, what: &str) -> Vec<u8> {
    let b = B64
        .decode(
            v.as_str()
                .unwrap_or_else(|| panic!("{what}: not a string: {v}")),
        )
        .unwrap_or_else(|e| panic!("{what}: not base64: {e}"));
    assert_eq!(b.len(), 32, "{what}: data key length");
    b
}

#[tokio::test]
async fn round_trip_with_and_without_context_and_without_plaintext() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let acme = server.tenant("acme").await;
        let gen_path = key_path("acme", "default", "data-key");
        let dec_path = key_path("acme", "default", "decrypt");
        let ctx = json!({ "table": "users", "column": "email" });

        // With context.
        let (s, v, _) = post(
            &server,
            &gen_path,
            &acme.encrypt,
            &json!({ "context": ctx }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {v}");
        assert_eq!(v["version"], 1, "{backend:?} {v}");
        let pt_ctx = decode32(&v["plaintext"], "plaintext with context");
        let wrapped_ctx = v["wrapped_key"].clone();
        assert_eq!(
            B64.decode(wrapped_ctx.as_str().unwrap()).unwrap().len(),
            1254,
            "{backend:?}"
        );
        let (s, d, _) = post(
            &server,
            &dec_path,
            &acme.decrypt,
            &json!({ "wrapped_key": wrapped_ctx, "context": ctx }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {d}");
        assert_eq!(d["version"], 1, "{backend:?} {d}");
        assert_eq!(
            decode32(&d["plaintext"], "decrypted"),
            pt_ctx,
            "{backend:?}"
        );
        // The context is a map: key order in the JSON does not matter.
        let (s, d, _) = post(
            &server,
            &dec_path,
            &acme.decrypt,
            &serde_json::from_str::<Value>(&format!(
                r#"{{"context": {{"column": "email", "table": "users"}}, "wrapped_key": {wrapped_ctx}}}"#
            ))
            .unwrap(),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {d}");
        assert_eq!(
            decode32(&d["plaintext"], "decrypted, reordered"),
            pt_ctx,
            "{backend:?}"
        );

        // Without context (no field at all), and an empty body object.
        let (s, v, _) = post(&server, &gen_path, &acme.encrypt, &json!({})).await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {v}");
        let pt_none = decode32(&v["plaintext"], "plaintext without context");
        assert_ne!(pt_none, pt_ctx, "{backend:?}: two data keys are equal");
        let (s, d, _) = post(
            &server,
            &dec_path,
            &acme.decrypt,
            &json!({ "wrapped_key": v["wrapped_key"] }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {d}");
        assert_eq!(
            decode32(&d["plaintext"], "decrypted without context"),
            pt_none,
            "{backend:?}"
        );

        // An empty context map is the empty context.
        let (s, d, _) = post(
            &server,
            &dec_path,
            &acme.decrypt,
            &json!({ "wrapped_key": v["wrapped_key"], "context": {} }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} empty context map: {d}");
        assert_eq!(
            decode32(&d["plaintext"], "decrypted with {}"),
            pt_none,
            "{backend:?}"
        );

        // include_plaintext: false -> no plaintext field, but the wrapped key opens.
        let (s, v, _) = post(
            &server,
            &gen_path,
            &acme.encrypt,
            &json!({ "context": ctx, "include_plaintext": false }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {v}");
        assert!(
            v.get("plaintext").is_none(),
            "{backend:?}: plaintext returned: {v}"
        );
        assert_eq!(v["version"], 1, "{backend:?} {v}");
        let (s, d, _) = post(
            &server,
            &dec_path,
            &acme.decrypt,
            &json!({ "wrapped_key": v["wrapped_key"], "context": ctx }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {d}");
        let pt_hidden = decode32(&d["plaintext"], "decrypted hidden key");
        assert_ne!(pt_hidden, pt_ctx, "{backend:?}");
        assert_ne!(pt_hidden, pt_none, "{backend:?}");

        // include_plaintext: true is the default made explicit.
        let (s, v, _) = post(
            &server,
            &gen_path,
            &acme.encrypt,
            &json!({ "include_plaintext": true }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {v}");
        decode32(&v["plaintext"], "explicit include_plaintext");

        // Each use was audited as ok, with the key and version.
        let entries = audit_after(&server, 0).await;
        let gens: Vec<&Value> = entries
            .iter()
            .filter(|e| e["operation"] == "data_key.generate")
            .collect();
        let decs: Vec<&Value> = entries
            .iter()
            .filter(|e| e["operation"] == "data_key.decrypt")
            .collect();
        assert_eq!(gens.len(), 4, "{backend:?}");
        assert_eq!(decs.len(), 5, "{backend:?}");
        for e in gens.iter().chain(&decs) {
            assert_eq!(e["outcome"], "ok", "{backend:?} {e}");
            assert_eq!(e["tenant"], "acme", "{backend:?} {e}");
            assert_eq!(e["key"], "default", "{backend:?} {e}");
            assert_eq!(e["version"], 1, "{backend:?} {e}");
        }
        verify_ok(&server).await;
        server.stop().await;
    }
}

/// Flip one byte of a blob (xor with `mask`).
fn flip(blob: &[u8], at: usize, mask: u8) -> String {
    let mut b = blob.to_vec();
    b[at] ^= mask;
    B64.encode(b)
}

#[tokio::test]
async fn unopenable_wrapped_keys_are_a_uniform_422_audited_as_failed_and_change_nothing() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let acme = server.tenant("acme").await;
        let globex = server.tenant("globex").await;
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants/acme/keys",
                Some(&acme.admin),
                Some(json!({ "name": "other" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend:?} {v}");

        let ctx = json!({ "table": "users", "column": "email" });
        let (s, v, _) = post(
            &server,
            &key_path("acme", "default", "data-key"),
            &acme.encrypt,
            &json!({ "context": ctx }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {v}");
        let wrapped = v["wrapped_key"].as_str().unwrap().to_owned();
        let plaintext = v["plaintext"].clone();
        let blob = B64.decode(&wrapped).unwrap();
        assert_eq!(blob.len(), 1254);

        let metadata = |tenant: String, token: String| {
            let server = &server;
            async move {
                let (s, v) = server
                    .call(
                        Method::GET,
                        &format!("/v1/tenants/{tenant}/keys"),
                        Some(&token),
                        None,
                    )
                    .await;
                assert_eq!(s, StatusCode::OK, "{v}");
                v
            }
        };
        let acme_before = metadata("acme".into(), acme.admin.clone()).await;
        let globex_before = metadata("globex".into(), globex.admin.clone()).await;
        assert_eq!(
            acme_before["keys"].as_array().unwrap().len(),
            2,
            "{acme_before}"
        );

        let acme_dec = key_path("acme", "default", "decrypt");
        let body = |w: &str, c: Option<Value>| match c {
            Some(c) => json!({ "wrapped_key": w, "context": c }),
            None => json!({ "wrapped_key": w }),
        };
        let good_ctx = Some(ctx.clone());
        // (label, path, token, body)
        let mut cases: Vec<(String, String, String, Value)> = vec![
            (
                "wrong context value".into(),
                acme_dec.clone(),
                acme.decrypt.clone(),
                body(
                    &wrapped,
                    Some(json!({ "table": "users", "column": "phone" })),
                ),
            ),
            (
                "context with an extra pair".into(),
                acme_dec.clone(),
                acme.decrypt.clone(),
                body(
                    &wrapped,
                    Some(json!({ "table": "users", "column": "email", "x": "y" })),
                ),
            ),
            (
                "context missing".into(),
                acme_dec.clone(),
                acme.decrypt.clone(),
                body(&wrapped, None),
            ),
            (
                "empty context".into(),
                acme_dec.clone(),
                acme.decrypt.clone(),
                body(&wrapped, Some(json!({}))),
            ),
            (
                "wrong tenant (globex route, globex decrypt token)".into(),
                key_path("globex", "default", "decrypt"),
                globex.decrypt.clone(),
                body(&wrapped, good_ctx.clone()),
            ),
            (
                "wrong key (acme/other)".into(),
                key_path("acme", "other", "decrypt"),
                acme.decrypt.clone(),
                body(&wrapped, good_ctx.clone()),
            ),
        ];
        // Tampered bytes: header fields, the KEM ciphertext, nonce, AEAD ciphertext and tag.
        for (at, what) in [
            (0, "magic"),
            (4, "format version"),
            (5, "algorithm"),
            (10, "key ref: tenant id"),
            (30, "key ref: key id"),
            (50, "context digest"),
            (74, "X-Wing ciphertext start"),
            (627, "middle (X-Wing ciphertext)"),
            (1193, "X-Wing ciphertext end"),
            (1200, "nonce"),
            (1210, "AEAD ciphertext"),
            (1240, "tag"),
            (1253, "last byte of the tag"),
        ] {
            cases.push((
                format!("flipped byte {at} ({what})"),
                acme_dec.clone(),
                acme.decrypt.clone(),
                body(&flip(&blob, at, 0x01), good_ctx.clone()),
            ));
        }
        // The key version inside the key ref (bytes 38..42, big-endian): version 2 does not exist.
        cases.push((
            "key ref names version 2".into(),
            acme_dec.clone(),
            acme.decrypt.clone(),
            body(&flip(&blob, 41, 0x03), good_ctx.clone()),
        ));
        // Truncated and extended blobs, re-encoded as valid base64.
        for (label, bytes) in [
            ("dropped the last byte", blob[..1253].to_vec()),
            ("dropped the tag", blob[..1238].to_vec()),
            (
                "dropped 100 bytes from the middle",
                [&blob[..600], &blob[700..]].concat(),
            ),
            ("header only", blob[..74].to_vec()),
            ("dropped the first byte", blob[1..].to_vec()),
            ("empty", Vec::new()),
            ("one extra byte", [&blob[..], &[0u8]].concat()),
        ] {
            cases.push((
                label.into(),
                acme_dec.clone(),
                acme.decrypt.clone(),
                body(&B64.encode(bytes), good_ctx.clone()),
            ));
        }

        let mut first_body: Option<Value> = None;
        for (label, path, token, req) in &cases {
            let before = last_seq(&server).await;
            let (s, v, rid) = post(&server, path, token, req).await;
            assert_eq!(
                s,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{backend:?} {label}: {v}"
            );
            assert_error(&v, "decryption_failed", label);
            assert!(v.get("plaintext").is_none(), "{backend:?} {label}: {v}");
            match &first_body {
                None => first_body = Some(v.clone()),
                Some(first) => {
                    assert_eq!(&v, first, "{backend:?} {label}: 422 body is not uniform")
                }
            }
            // Exactly one new audit entry: this request, failed.
            let new = audit_after(&server, before).await;
            assert_eq!(new.len(), 1, "{backend:?} {label}: {new:?}");
            let e = &new[0];
            assert_eq!(e["request_id"], rid.as_str(), "{backend:?} {label}: {e}");
            assert_eq!(
                e["operation"], "data_key.decrypt",
                "{backend:?} {label}: {e}"
            );
            assert_eq!(e["outcome"], "failed", "{backend:?} {label}: {e}");
            let route_tenant = path.split('/').nth(3).unwrap();
            assert_eq!(e["tenant"], route_tenant, "{backend:?} {label}: {e}");
        }

        // Nothing changed: the original still opens, metadata is identical, the chain verifies.
        let (s, d, _) = post(
            &server,
            &acme_dec,
            &acme.decrypt,
            &body(&wrapped, good_ctx.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {d}");
        assert_eq!(d["plaintext"], plaintext, "{backend:?}");
        assert_eq!(
            metadata("acme".into(), acme.admin.clone()).await,
            acme_before,
            "{backend:?}"
        );
        assert_eq!(
            metadata("globex".into(), globex.admin.clone()).await,
            globex_before,
            "{backend:?}"
        );
        let v = verify_ok(&server).await;
        // bootstrap + 2 tenants + 6 tokens + key.create + generate + failures + final decrypt
        assert_eq!(
            v["entries"],
            1 + 2 + 6 + 1 + 1 + cases.len() as i64 + 1,
            "{backend:?} {v}"
        );
        let failed = audit_after(&server, 0)
            .await
            .into_iter()
            .filter(|e| e["outcome"] == "failed")
            .count();
        assert_eq!(failed, cases.len(), "{backend:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn malformed_bodies_are_400_and_oversized_bodies_413() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let acme = server.tenant("acme").await;
        let gen_path = key_path("acme", "default", "data-key");
        let dec_path = key_path("acme", "default", "decrypt");
        let (s, v, _) = post(&server, &gen_path, &acme.encrypt, &json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let wrapped = v["wrapped_key"].as_str().unwrap().to_owned();
        let blob = B64.decode(&wrapped).unwrap();
        let before = last_seq(&server).await;

        // Not standard base64.
        let url_safe = URL_SAFE.encode(&blob);
        assert_ne!(
            url_safe, wrapped,
            "blob has no '+' or '/': the URL-safe case tests nothing"
        );
        let mut no_pad = wrapped.clone();
        no_pad.pop();
        for (label, w) in [
            ("garbage", "not base64!!".to_owned()),
            ("URL-safe alphabet", url_safe),
            ("bad length", no_pad),
            (
                "embedded whitespace",
                format!("{} {}", &wrapped[..10], &wrapped[10..]),
            ),
        ] {
            let (s, v, _) = post(
                &server,
                &dec_path,
                &acme.decrypt,
                &json!({ "wrapped_key": w }),
            )
            .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{backend:?} {label}: {v}");
            assert_error(&v, "bad_request", label);
        }

        // Malformed JSON, wrong types, unknown or missing fields.
        let (dp, gp, de, en) = (
            dec_path.as_str(),
            gen_path.as_str(),
            acme.decrypt.as_str(),
            acme.encrypt.as_str(),
        );
        let raw: Vec<(&str, &str, &str, String)> = vec![
            ("truncated JSON", dp, de, r#"{"wrapped_key":"#.into()),
            (
                "truncated JSON (data-key)",
                gp,
                en,
                r#"{"context": {"#.into(),
            ),
            ("not JSON", gp, en, "hello".into()),
            ("empty body", dp, de, String::new()),
            ("JSON null", gp, en, "null".into()),
            ("JSON array", gp, en, "[]".into()),
            (
                "wrapped_key is a number",
                dp,
                de,
                r#"{"wrapped_key": 5}"#.into(),
            ),
            ("wrapped_key missing", dp, de, "{}".into()),
            (
                "context value is a number",
                dp,
                de,
                format!(r#"{{"wrapped_key": "{wrapped}", "context": {{"a": 1}}}}"#),
            ),
            (
                "context is a list",
                dp,
                de,
                format!(r#"{{"wrapped_key": "{wrapped}", "context": ["a"]}}"#),
            ),
            (
                "context is a string",
                gp,
                en,
                r#"{"context": "table=users"}"#.into(),
            ),
            (
                "include_plaintext is a string",
                gp,
                en,
                r#"{"include_plaintext": "yes"}"#.into(),
            ),
            (
                "unknown field (data-key)",
                gp,
                en,
                r#"{"contxt": {}}"#.into(),
            ),
            (
                "unknown field (decrypt)",
                dp,
                de,
                format!(r#"{{"wrapped_key": "{wrapped}", "contxt": {{}}}}"#),
            ),
            (
                "unknown field (tenant)",
                "/v1/tenants",
                &server.operator,
                r#"{"name": "x", "extra": 1}"#.into(),
            ),
            ("trailing garbage", gp, en, "{} {}".into()),
        ];
        for (label, path, token, body) in raw {
            let (s, v) = server.call_raw(path, token, body.into_bytes()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{backend:?} {label}: {v}");
            assert_error(&v, "bad_request", label);
        }
        // None of the rejected requests used a key or changed anything.
        assert_eq!(last_seq(&server).await, before, "{backend:?}");
        server.stop().await;

        // A configured small limit.
        let small = TestServer::start_with(backend, |c| c.max_body_bytes = 4096).await;
        let acme = small.tenant("acme").await;
        let sized = |n: usize| {
            let skeleton = r#"{"context": {"pad": ""}}"#.len();
            let body = format!(
                r#"{{"context": {{"pad": "{}"}}}}"#,
                "a".repeat(n - skeleton)
            );
            assert_eq!(body.len(), n);
            body.into_bytes()
        };
        let (s, v) = small.call_raw(&gen_path, &acme.encrypt, sized(4000)).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{backend:?} 4000 bytes under a 4096 limit: {v}"
        );
        let (s, v) = small.call_raw(&gen_path, &acme.encrypt, sized(5000)).await;
        assert_eq!(
            s,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{backend:?} 5000 bytes over 4096: {v}"
        );
        assert_error(&v, "body_too_large", "5000 bytes");
        let (s, v) = small.call_raw(&dec_path, &acme.decrypt, sized(5000)).await;
        assert_eq!(
            s,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{backend:?} 5000 bytes to decrypt: {v}"
        );
        assert_error(&v, "body_too_large", "5000 bytes to decrypt");
        small.stop().await;

        // The default limit: 64 KiB.
        let server = TestServer::start(backend).await;
        let acme = server.tenant("acme").await;
        let (s, v) = server
            .call_raw(&gen_path, &acme.encrypt, sized(60 * 1024))
            .await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{backend:?} 60 KiB under the default limit: {v}"
        );
        let (s, v) = server
            .call_raw(&gen_path, &acme.encrypt, sized(70 * 1024))
            .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{backend:?} 70 KiB: {v}");
        assert_error(&v, "body_too_large", "70 KiB");
        server.stop().await;
    }
}

#[tokio::test]
async fn names_are_validated_and_duplicates_conflict() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let op = Some(server.operator.as_str());
        let long64 = "a".repeat(64);
        let long65 = "a".repeat(65);
        for bad in [
            "ACME",
            "Acme",
            long65.as_str(),
            "",
            "a b",
            "under_score",
            "dot.name",
            "caf\u{e9}",
            "a/b",
        ] {
            let (s, v) = server
                .call(
                    Method::POST,
                    "/v1/tenants",
                    op,
                    Some(json!({ "name": bad })),
                )
                .await;
            assert_eq!(
                s,
                StatusCode::BAD_REQUEST,
                "{backend:?} tenant {bad:?}: {v}"
            );
            assert_error(&v, "bad_request", bad);
        }
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants",
                op,
                Some(json!({ "name": long64 })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend:?} 64-char tenant: {v}");
        let acme = server.tenant("acme").await;
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants",
                op,
                Some(json!({ "name": "acme" })),
            )
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{backend:?} duplicate tenant: {v}");
        assert_error(&v, "conflict", "duplicate tenant");

        let keys = "/v1/tenants/acme/keys";
        let admin = Some(acme.admin.as_str());
        for bad in ["Other", long65.as_str(), "", "a_b", "k.1"] {
            let (s, v) = server
                .call(Method::POST, keys, admin, Some(json!({ "name": bad })))
                .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{backend:?} key {bad:?}: {v}");
            assert_error(&v, "bad_request", bad);
        }
        for good in [long64.as_str(), "k-1", "0"] {
            let (s, v) = server
                .call(Method::POST, keys, admin, Some(json!({ "name": good })))
                .await;
            assert_eq!(s, StatusCode::CREATED, "{backend:?} key {good:?}: {v}");
            assert_eq!(v["name"], good, "{backend:?} {v}");
        }
        for dup in ["default", "k-1"] {
            let (s, v) = server
                .call(Method::POST, keys, admin, Some(json!({ "name": dup })))
                .await;
            assert_eq!(
                s,
                StatusCode::CONFLICT,
                "{backend:?} duplicate key {dup:?}: {v}"
            );
            assert_error(&v, "conflict", dup);
        }
        // The same key name in another tenant is fine.
        let globex = server.tenant("globex").await;
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants/globex/keys",
                Some(&globex.admin),
                Some(json!({ "name": "k-1" })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{backend:?} {v}");

        let (s, v) = server.call(Method::GET, keys, admin, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let mut names: Vec<&str> = v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        let mut expected = vec!["0", "default", "k-1", long64.as_str()];
        expected.sort_unstable();
        assert_eq!(names, expected, "{backend:?}");
        // Rejected and conflicting requests left the chain whole.
        verify_ok(&server).await;
        server.stop().await;
    }
}

#[tokio::test]
async fn revoked_token_stops_working_immediately() {
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let acme = server.tenant("acme").await;
        let gen_path = key_path("acme", "default", "data-key");
        let dec_path = key_path("acme", "default", "decrypt");
        let (s, v, _) = post(&server, &gen_path, &acme.encrypt, &json!({})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let req = json!({ "wrapped_key": v["wrapped_key"] });

        // Revoked by the operator.
        let (dec, dec_id) = server.token("acme", &["decrypt"], None).await;
        let (s, d, _) = post(&server, &dec_path, &dec, &req).await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {d}");
        let (s, v) = server
            .call(
                Method::DELETE,
                &format!("/v1/tenants/acme/tokens/{dec_id}"),
                Some(&server.operator),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{backend:?} {v}");
        let (s, v, _) = post(&server, &dec_path, &dec, &req).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{backend:?} revoked token still works: {v}"
        );
        assert_error(&v, "unauthorized", "revoked token");
        assert!(v.get("plaintext").is_none());
        // Other tokens of the tenant are untouched.
        let (s, d, _) = post(&server, &dec_path, &acme.decrypt, &req).await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {d}");
        // Revoking twice: no such active token.
        let (s, v) = server
            .call(
                Method::DELETE,
                &format!("/v1/tenants/acme/tokens/{dec_id}"),
                Some(&server.operator),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{backend:?} {v}");

        // Revoked by the tenant admin, on a kept-alive connection that just used it.
        let (enc, enc_id) = server.token("acme", &["encrypt"], None).await;
        let (s, v, _) = post(&server, &gen_path, &enc, &json!({})).await;
        assert_eq!(s, StatusCode::OK, "{backend:?} {v}");
        let (s, v) = server
            .call(
                Method::DELETE,
                &format!("/v1/tenants/acme/tokens/{enc_id}"),
                Some(&acme.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{backend:?} {v}");
        let (s, v, _) = post(&server, &gen_path, &enc, &json!({})).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{backend:?} revoked token still works: {v}"
        );
        assert!(
            v.get("plaintext").is_none() && v.get("wrapped_key").is_none(),
            "{v}"
        );
        let (s, _) = server
            .call(
                Method::GET,
                &key_path("acme", "default", "public-key"),
                Some(&enc),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{backend:?}");

        // A revoked tenant-admin cannot revoke or mint anything.
        let (adm, adm_id) = server.token("acme", &["tenant-admin"], None).await;
        let (s, v) = server
            .call(
                Method::DELETE,
                &format!("/v1/tenants/acme/tokens/{adm_id}"),
                Some(&adm),
                None,
            )
            .await;
        assert_eq!(
            s,
            StatusCode::NO_CONTENT,
            "{backend:?} self-revocation: {v}"
        );
        let (s, _) = server
            .call(
                Method::POST,
                "/v1/tenants/acme/tokens",
                Some(&adm),
                Some(json!({ "roles": ["decrypt"] })),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{backend:?}");

        let entries = audit_after(&server, 0).await;
        assert_eq!(
            entries
                .iter()
                .filter(|e| e["operation"] == "token.revoke")
                .count(),
            3,
            "{backend:?}"
        );
        verify_ok(&server).await;
        server.stop().await;
    }
}
