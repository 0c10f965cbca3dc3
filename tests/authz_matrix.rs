//! The full authorization matrix of issue 3: every route × every caller × target scope, asserting
//! the exact HTTP status, on every backend of `backends()`.
//!
//! The expected statuses come from [`TABLE`], written from the spec (issue 3), not from the code:
//!
//! - operator: create tenants, create/revoke tokens of any tenant (404 for a tenant that does not
//!   exist), read all audit, verify audit; nothing on keys, data keys or public keys (403).
//! - tenant-admin: own tenant's keys (create, list, get), tokens (create, revoke), public keys, and
//!   audit of its own tenant only; no data key, no decrypt, no verify, no tenant creation.
//! - encrypt: data key and public key of its own tenant only.
//! - decrypt: decrypt on its own tenant only.
//! - key lifecycle (rotate, config, disable, enable, destroy, cancel-destroy): tenant-admin of its
//!   own tenant only; operator, encrypt and decrypt get 403.
//! - re-wrap (one or a batch): the decrypt role of its own tenant only; operator, tenant-admin and
//!   encrypt get 403.
//! - blind-index key: the encrypt and the decrypt role of its own tenant (the same key for both);
//!   operator and tenant-admin get 403.
//! - no token, a malformed token, an unknown token, a revoked token, an expired token: 401.
//! - A tenant-scoped token naming another tenant gets 403 with the same body whether that tenant
//!   exists ("other") or not ("ghost").
//!
//! Every mismatch is collected, so one run shows every wrong cell, and the test fails at the end.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Backend, Tenant, TestServer, backends};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const TENANT_A: &str = "tenant-a";
const TENANT_B: &str = "tenant-b";
/// Never created.
const GHOST: &str = "ghost-tenant";
/// All tenant roles, for the revoked and expired tokens: if revocation or expiry were ignored,
/// they would be allowed somewhere and the matrix would show it.
const ALL_TENANT_ROLES: &[&str] = &["tenant-admin", "encrypt", "decrypt"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Route {
    CreateTenant,
    CreateToken,
    RevokeToken,
    CreateKey,
    ListKeys,
    GetKey,
    DataKey,
    Decrypt,
    PublicKey,
    ReadAudit,
    VerifyAudit,
    Rotate,
    Configure,
    Disable,
    Enable,
    Destroy,
    CancelDestroy,
    Rewrap,
    RewrapBatch,
    BlindIndexKey,
}

const ROUTES: [Route; 20] = [
    Route::CreateTenant,
    Route::CreateToken,
    Route::RevokeToken,
    Route::CreateKey,
    Route::ListKeys,
    Route::GetKey,
    Route::DataKey,
    Route::Decrypt,
    Route::PublicKey,
    Route::ReadAudit,
    Route::VerifyAudit,
    Route::Rotate,
    Route::Configure,
    Route::Disable,
    Route::Enable,
    Route::Destroy,
    Route::CancelDestroy,
    Route::Rewrap,
    Route::RewrapBatch,
    Route::BlindIndexKey,
];

impl Route {
    /// The target scopes this route is exercised with.
    fn targets(self) -> &'static [Target] {
        match self {
            Route::CreateTenant | Route::VerifyAudit => &[Target::None],
            // The audit log's scope is its `?tenant=` filter; `None` is no filter.
            Route::ReadAudit => &[Target::None, Target::Own, Target::Other, Target::Ghost],
            _ => &[Target::Own, Target::Other, Target::Ghost],
        }
    }

    /// The lifecycle routes that change a key's state or policy: each of their cells on an
    /// existing tenant gets a fresh key of that tenant, prepared for the call to succeed.
    fn lifecycle_action(self) -> Option<&'static str> {
        match self {
            Route::Rotate => Some("rotate"),
            Route::Configure => Some("config"),
            Route::Disable => Some("disable"),
            Route::Enable => Some("enable"),
            Route::Destroy => Some("destroy"),
            Route::CancelDestroy => Some("cancel-destroy"),
            _ => None,
        }
    }
}

/// The tenant a request names (in its path, or in the audit filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    /// The route names no tenant (or the audit read has no filter).
    None,
    /// Tenant A: the tenant-scoped callers' own tenant.
    Own,
    /// Tenant B: exists, but is not the callers' tenant.
    Other,
    /// A tenant that does not exist.
    Ghost,
}

impl Target {
    fn tenant(self) -> Option<&'static str> {
        match self {
            Target::None => None,
            Target::Own => Some(TENANT_A),
            Target::Other => Some(TENANT_B),
            Target::Ghost => Some(GHOST),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    Operator,
    TenantAdmin,
    Encrypt,
    Decrypt,
    NoToken,
    /// Not even shaped like a token.
    Malformed,
    /// Shaped like a token, but never issued.
    Unknown,
    /// Issued (all tenant roles of A), then revoked through DELETE.
    Revoked,
    /// Issued (all tenant roles of A) with ttl_seconds=1, used after it expired.
    Expired,
}

/// The first four callers are authenticated, in the column order of [`TABLE`].
const CALLERS: [Caller; 9] = [
    Caller::Operator,
    Caller::TenantAdmin,
    Caller::Encrypt,
    Caller::Decrypt,
    Caller::NoToken,
    Caller::Malformed,
    Caller::Unknown,
    Caller::Revoked,
    Caller::Expired,
];

/// Every caller that is not authenticated gets this on every route.
const UNAUTHENTICATED: u16 = 401;

/// Expected status per (route, target) for the authenticated callers, columns:
/// operator, tenant-admin of A, encrypt of A, decrypt of A.
#[rustfmt::skip]
const TABLE: &[(Route, Target, [u16; 4])] = &[
    //                                          op   admin  enc  dec
    (Route::CreateTenant, Target::None,        [201,  403,  403, 403]),

    (Route::CreateToken,  Target::Own,         [201,  201,  403, 403]),
    (Route::CreateToken,  Target::Other,       [201,  403,  403, 403]),
    (Route::CreateToken,  Target::Ghost,       [404,  403,  403, 403]),

    (Route::RevokeToken,  Target::Own,         [204,  204,  403, 403]),
    (Route::RevokeToken,  Target::Other,       [204,  403,  403, 403]),
    (Route::RevokeToken,  Target::Ghost,       [404,  403,  403, 403]),

    (Route::CreateKey,    Target::Own,         [403,  201,  403, 403]),
    (Route::CreateKey,    Target::Other,       [403,  403,  403, 403]),
    (Route::CreateKey,    Target::Ghost,       [403,  403,  403, 403]),

    (Route::ListKeys,     Target::Own,         [403,  200,  403, 403]),
    (Route::ListKeys,     Target::Other,       [403,  403,  403, 403]),
    (Route::ListKeys,     Target::Ghost,       [403,  403,  403, 403]),

    (Route::GetKey,       Target::Own,         [403,  200,  403, 403]),
    (Route::GetKey,       Target::Other,       [403,  403,  403, 403]),
    (Route::GetKey,       Target::Ghost,       [403,  403,  403, 403]),

    (Route::DataKey,      Target::Own,         [403,  403,  200, 403]),
    (Route::DataKey,      Target::Other,       [403,  403,  403, 403]),
    (Route::DataKey,      Target::Ghost,       [403,  403,  403, 403]),

    (Route::Decrypt,      Target::Own,         [403,  403,  403, 200]),
    (Route::Decrypt,      Target::Other,       [403,  403,  403, 403]),
    (Route::Decrypt,      Target::Ghost,       [403,  403,  403, 403]),

    (Route::PublicKey,    Target::Own,         [403,  200,  200, 403]),
    (Route::PublicKey,    Target::Other,       [403,  403,  403, 403]),
    (Route::PublicKey,    Target::Ghost,       [403,  403,  403, 403]),

    (Route::ReadAudit,    Target::None,        [200,  200,  403, 403]),
    (Route::ReadAudit,    Target::Own,         [200,  200,  403, 403]),
    (Route::ReadAudit,    Target::Other,       [200,  403,  403, 403]),
    (Route::ReadAudit,    Target::Ghost,       [200,  403,  403, 403]),

    (Route::VerifyAudit,  Target::None,        [200,  403,  403, 403]),

    (Route::Rotate,       Target::Own,         [403,  200,  403, 403]),
    (Route::Rotate,       Target::Other,       [403,  403,  403, 403]),
    (Route::Rotate,       Target::Ghost,       [403,  403,  403, 403]),

    (Route::Configure,    Target::Own,         [403,  200,  403, 403]),
    (Route::Configure,    Target::Other,       [403,  403,  403, 403]),
    (Route::Configure,    Target::Ghost,       [403,  403,  403, 403]),

    (Route::Disable,      Target::Own,         [403,  200,  403, 403]),
    (Route::Disable,      Target::Other,       [403,  403,  403, 403]),
    (Route::Disable,      Target::Ghost,       [403,  403,  403, 403]),

    (Route::Enable,       Target::Own,         [403,  200,  403, 403]),
    (Route::Enable,       Target::Other,       [403,  403,  403, 403]),
    (Route::Enable,       Target::Ghost,       [403,  403,  403, 403]),

    (Route::Destroy,      Target::Own,         [403,  200,  403, 403]),
    (Route::Destroy,      Target::Other,       [403,  403,  403, 403]),
    (Route::Destroy,      Target::Ghost,       [403,  403,  403, 403]),

    (Route::CancelDestroy, Target::Own,        [403,  200,  403, 403]),
    (Route::CancelDestroy, Target::Other,      [403,  403,  403, 403]),
    (Route::CancelDestroy, Target::Ghost,      [403,  403,  403, 403]),

    (Route::Rewrap,       Target::Own,         [403,  403,  403, 200]),
    (Route::Rewrap,       Target::Other,       [403,  403,  403, 403]),
    (Route::Rewrap,       Target::Ghost,       [403,  403,  403, 403]),

    (Route::RewrapBatch,  Target::Own,         [403,  403,  403, 200]),
    (Route::RewrapBatch,  Target::Other,       [403,  403,  403, 403]),
    (Route::RewrapBatch,  Target::Ghost,       [403,  403,  403, 403]),

    (Route::BlindIndexKey, Target::Own,        [403,  403,  200, 200]),
    (Route::BlindIndexKey, Target::Other,      [403,  403,  403, 403]),
    (Route::BlindIndexKey, Target::Ghost,      [403,  403,  403, 403]),
];

/// 17 routes naming a tenant (8 of them key lifecycle) × 3 targets, create-tenant and verify (no
/// target), audit read with no filter and with the 3 targets as filter; × 9 callers.
const MIN_CELLS_PER_BACKEND: usize = (17 * 3 + 1 + 1 + 4) * 9;

/// The destruction waiting period the matrix asks for (above the service's 7-day minimum).
const WAITING_PERIOD: &str = "30d";
const WAITING_PERIOD_MS: i64 = 30 * 86_400 * 1000;
const ROTATION_PERIOD_SECS: i64 = 90 * 86_400;
/// A key of each tenant, rotated once in setup after a data key was wrapped to its version 1:
/// what the re-wrap cells present, so an allowed re-wrap must move it to version 2.
const REWRAP_KEY: &str = "rewrap-src";

fn expected(route: Route, target: Target, caller: Caller) -> u16 {
    let row = TABLE
        .iter()
        .find(|(r, t, _)| *r == route && *t == target)
        .unwrap_or_else(|| panic!("no table row for {route:?} on {target:?}"));
    match caller {
        Caller::Operator => row.2[0],
        Caller::TenantAdmin => row.2[1],
        Caller::Encrypt => row.2[2],
        Caller::Decrypt => row.2[3],
        Caller::NoToken
        | Caller::Malformed
        | Caller::Unknown
        | Caller::Revoked
        | Caller::Expired => UNAUTHENTICATED,
    }
}

/// What a backend's matrix needs: two tenants, genuine wrapped keys, the bad tokens.
struct Fixture {
    a: Tenant,
    b: Tenant,
    ctx: Value,
    wrapped_a: String,
    plaintext_a: String,
    wrapped_b: String,
    /// Wrapped to version 1 of [`REWRAP_KEY`] of A, and its plaintext; the key is now at version 2.
    rewrap_a: String,
    rewrap_plain_a: String,
    /// The same for B.
    rewrap_b: String,
    revoked: String,
    expired: String,
    unknown: String,
}

impl Fixture {
    fn token(&self, server: &TestServer, caller: Caller) -> Option<String> {
        match caller {
            Caller::Operator => Some(server.operator.clone()),
            Caller::TenantAdmin => Some(self.a.admin.clone()),
            Caller::Encrypt => Some(self.a.encrypt.clone()),
            Caller::Decrypt => Some(self.a.decrypt.clone()),
            Caller::NoToken => None,
            Caller::Malformed => Some("this is not a token".to_owned()),
            Caller::Unknown => Some(self.unknown.clone()),
            Caller::Revoked => Some(self.revoked.clone()),
            Caller::Expired => Some(self.expired.clone()),
        }
    }
}

fn public_key_path(tenant: &str) -> String {
    format!("/v1/tenants/{tenant}/keys/default/public-key")
}

async fn setup(server: &TestServer) -> Fixture {
    let a = server.tenant(TENANT_A).await;
    // The expired token first, so that its one second of life passes during the rest of setup.
    let (expired, _) = server.token(TENANT_A, ALL_TENANT_ROLES, Some(1)).await;
    let born = Instant::now();
    let (s, v) = server
        .call(
            Method::GET,
            &public_key_path(TENANT_A),
            Some(&expired),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the short-lived token works before it expires: {v}"
    );

    let b = server.tenant(TENANT_B).await;
    let ctx = json!({ "table": "users", "column": "email" });
    let mut wrapped = Vec::new();
    for t in [&a, &b] {
        let (s, v) = server
            .call(
                Method::POST,
                &format!("/v1/tenants/{}/keys/default/data-key", t.name),
                Some(&t.encrypt),
                Some(json!({ "context": ctx })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        wrapped.push((
            v["wrapped_key"].as_str().unwrap().to_owned(),
            v["plaintext"].as_str().unwrap().to_owned(),
        ));
    }

    let mut rewrap = Vec::new();
    for t in [&a, &b] {
        let keys = format!("/v1/tenants/{}/keys", t.name);
        let (s, v) = server
            .call(
                Method::POST,
                &keys,
                Some(&t.admin),
                Some(json!({ "name": REWRAP_KEY })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = server
            .call(
                Method::POST,
                &format!("{keys}/{REWRAP_KEY}/data-key"),
                Some(&t.encrypt),
                Some(json!({ "context": ctx })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["version"], json!(1), "{v}");
        rewrap.push((
            v["wrapped_key"].as_str().unwrap().to_owned(),
            v["plaintext"].as_str().unwrap().to_owned(),
        ));
        let (s, v) = server
            .call(
                Method::POST,
                &format!("{keys}/{REWRAP_KEY}/rotate"),
                Some(&t.admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["version"], json!(2), "{v}");
    }

    let (revoked, revoked_id) = server.token(TENANT_A, ALL_TENANT_ROLES, None).await;
    let (s, v) = server
        .call(
            Method::GET,
            &public_key_path(TENANT_A),
            Some(&revoked),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::OK,
        "the token works before it is revoked: {v}"
    );
    let (s, v) = server
        .call(
            Method::DELETE,
            &format!("/v1/tenants/{TENANT_A}/tokens/{revoked_id}"),
            Some(&server.operator),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");

    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).unwrap();
    let unknown = format!("pqkms_{}", hex::encode(secret));

    let wait = Duration::from_millis(1200).saturating_sub(born.elapsed());
    tokio::time::sleep(wait).await;

    let (wrapped_b, _) = wrapped.pop().unwrap();
    let (wrapped_a, plaintext_a) = wrapped.pop().unwrap();
    let (rewrap_b, _) = rewrap.pop().unwrap();
    let (rewrap_a, rewrap_plain_a) = rewrap.pop().unwrap();
    Fixture {
        a,
        b,
        ctx,
        wrapped_a,
        plaintext_a,
        wrapped_b,
        rewrap_a,
        rewrap_plain_a,
        rewrap_b,
        revoked,
        expired,
        unknown,
    }
}

/// One prepared request, plus what to check after it.
struct Request {
    method: Method,
    path: String,
    body: Option<Value>,
    /// RevokeToken: the token the request tries to revoke (an encrypt token of the target tenant).
    victim: Option<(String, &'static str)>,
    /// Lifecycle routes on an existing tenant: the fresh key the request acts on.
    subject: Option<Subject>,
}

/// A key made for one lifecycle cell, and how it looked just before the call.
struct Subject {
    /// The key's tenant, and that tenant's admin token (to inspect the key).
    tenant: &'static str,
    admin: String,
    key: String,
    /// `GET` of the key (versions and their states) before the call.
    before: Value,
}

struct Run {
    backend: Backend,
    cells: usize,
    side_checks: usize,
    mismatches: Vec<String>,
    seq: usize,
}

impl Run {
    fn fresh(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}-{}", self.seq)
    }

    fn mismatch(&mut self, what: String) {
        // Bodies can be long (audit pages): keep each line readable.
        let mut what = what;
        if let Some((cut, _)) = what.char_indices().nth(600) {
            what.truncate(cut);
            what.push_str("...");
        }
        self.mismatches.push(format!("[{:?}] {what}", self.backend));
    }
}

async fn prepare(
    server: &TestServer,
    fx: &Fixture,
    run: &mut Run,
    route: Route,
    target: Target,
) -> Request {
    let tenant = target.tenant();
    let t = tenant.unwrap_or("");
    let key = format!("/v1/tenants/{t}/keys/default");
    let mut victim = None;
    let mut subject = None;
    let (method, path, body) = match route {
        Route::CreateTenant => (
            Method::POST,
            "/v1/tenants".to_owned(),
            Some(json!({ "name": run.fresh("matrix-tenant") })),
        ),
        Route::CreateToken => (
            Method::POST,
            format!("/v1/tenants/{t}/tokens"),
            Some(json!({ "roles": ["encrypt"] })),
        ),
        Route::RevokeToken => {
            // A fresh token per cell, so every allowed revoke has something to revoke.
            let id = match target {
                Target::Own | Target::Other => {
                    let owner = tenant.unwrap();
                    let (token, id) = server.token(owner, &["encrypt"], None).await;
                    victim = Some((token, owner));
                    id
                }
                _ => "tok_00000000deadbeef".to_owned(),
            };
            (Method::DELETE, format!("/v1/tenants/{t}/tokens/{id}"), None)
        }
        Route::CreateKey => (
            Method::POST,
            format!("/v1/tenants/{t}/keys"),
            Some(json!({ "name": run.fresh("matrix-key") })),
        ),
        Route::ListKeys => (Method::GET, format!("/v1/tenants/{t}/keys"), None),
        Route::GetKey => (Method::GET, key, None),
        Route::DataKey => (
            Method::POST,
            format!("{key}/data-key"),
            Some(json!({ "context": fx.ctx })),
        ),
        Route::Decrypt => {
            // A genuine wrapped key of the named tenant (A's for the ghost), so that a wrongly
            // allowed cross-tenant decrypt would show as 200, not hide behind a 422.
            let wrapped = if target == Target::Other {
                &fx.wrapped_b
            } else {
                &fx.wrapped_a
            };
            (
                Method::POST,
                format!("{key}/decrypt"),
                Some(json!({ "wrapped_key": wrapped, "context": fx.ctx })),
            )
        }
        Route::PublicKey => (Method::GET, format!("{key}/public-key"), None),
        Route::BlindIndexKey => (
            Method::POST,
            format!("{key}/blind-index-key"),
            Some(json!({ "field": "email" })),
        ),
        Route::ReadAudit => match tenant {
            None => (Method::GET, "/v1/audit".to_owned(), None),
            Some(t) => (
                Method::GET,
                format!("/v1/audit?tenant={t}&limit=1000"),
                None,
            ),
        },
        Route::VerifyAudit => (Method::GET, "/v1/audit/verify".to_owned(), None),
        Route::Rotate
        | Route::Configure
        | Route::Disable
        | Route::Enable
        | Route::Destroy
        | Route::CancelDestroy => {
            let action = route.lifecycle_action().unwrap();
            // A fresh key per cell on an existing tenant, in the state the call needs: every
            // allowed call can succeed, and a wrongly allowed one would show as 200.
            let name = match target {
                Target::Own | Target::Other => {
                    let owner = if target == Target::Own { &fx.a } else { &fx.b };
                    let s = lifecycle_subject(server, run, owner, route).await;
                    let name = s.key.clone();
                    subject = Some(s);
                    name
                }
                _ => "default".to_owned(),
            };
            let body = match route {
                Route::Rotate => None,
                Route::Configure => Some(json!({ "rotation_period": "90d" })),
                Route::Destroy => Some(json!({ "waiting_period": WAITING_PERIOD })),
                _ => Some(json!({})),
            };
            (
                Method::POST,
                format!("/v1/tenants/{t}/keys/{name}/{action}"),
                body,
            )
        }
        Route::Rewrap | Route::RewrapBatch => {
            // A genuine wrapped key of the named tenant's key (A's for the ghost), as for decrypt.
            let wrapped = if target == Target::Other {
                &fx.rewrap_b
            } else {
                &fx.rewrap_a
            };
            let item = json!({ "wrapped_key": wrapped, "context": fx.ctx });
            let base = format!("/v1/tenants/{t}/keys/{REWRAP_KEY}");
            if route == Route::Rewrap {
                (Method::POST, format!("{base}/rewrap"), Some(item))
            } else {
                (
                    Method::POST,
                    format!("{base}/rewrap-batch"),
                    Some(json!({ "items": [item] })),
                )
            }
        }
    };
    Request {
        method,
        path,
        body,
        victim,
        subject,
    }
}

fn tenant_name(t: &Tenant) -> &'static str {
    if t.name == TENANT_A {
        TENANT_A
    } else {
        TENANT_B
    }
}

/// `GET` a key as its tenant's admin.
async fn key_info(server: &TestServer, tenant: &str, admin: &str, key: &str) -> Value {
    let (s, v) = server
        .call(
            Method::GET,
            &format!("/v1/tenants/{tenant}/keys/{key}"),
            Some(admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "GET key {tenant}/{key}: {v}");
    v
}

/// A fresh key of `owner`, made by its admin, put in the state `route` needs to succeed.
async fn lifecycle_subject(
    server: &TestServer,
    run: &mut Run,
    owner: &Tenant,
    route: Route,
) -> Subject {
    let tenant = tenant_name(owner);
    let key = run.fresh("lifecycle");
    let (s, v) = server
        .call(
            Method::POST,
            &format!("/v1/tenants/{tenant}/keys"),
            Some(&owner.admin),
            Some(json!({ "name": key })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "create key {tenant}/{key}: {v}");
    let setup = match route {
        Route::Enable => Some(("disable", json!({}))),
        Route::CancelDestroy => Some(("destroy", json!({ "waiting_period": WAITING_PERIOD }))),
        _ => None,
    };
    if let Some((action, body)) = setup {
        let (s, v) = server
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/keys/{key}/{action}"),
                Some(&owner.admin),
                Some(body),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{action} {tenant}/{key} for {route:?}: {v}"
        );
    }
    let before = key_info(server, tenant, &owner.admin, &key).await;
    Subject {
        tenant,
        admin: owner.admin.clone(),
        key,
        before,
    }
}

/// A data key from key `key` of A, as A's encrypt token.
async fn data_key_on(server: &TestServer, fx: &Fixture, key: &str) -> (StatusCode, Value) {
    server
        .call(
            Method::POST,
            &format!("/v1/tenants/{TENANT_A}/keys/{key}/data-key"),
            Some(&fx.a.encrypt),
            Some(json!({ "context": fx.ctx })),
        )
        .await
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Content checks on allowed answers: the status alone would not catch a leak.
#[allow(clippy::too_many_arguments)]
async fn check_body(
    server: &TestServer,
    run: &mut Run,
    fx: &Fixture,
    route: Route,
    target: Target,
    caller: Caller,
    req: &Request,
    sent_at: i64,
    v: &Value,
) {
    let key = req.subject.as_ref().map_or("", |s| s.key.as_str());
    let cell = format!("{caller:?} {route:?} on {target:?} ({})", req.path);
    match route {
        Route::Decrypt if v["plaintext"] != json!(fx.plaintext_a) => {
            run.mismatch(format!(
                "{caller:?} decrypt on {target:?}: wrong plaintext: {v}"
            ));
        }
        Route::ReadAudit => {
            let Some(entries) = v["entries"].as_array() else {
                run.mismatch(format!(
                    "{caller:?} audit on {target:?}: no entries array: {v}"
                ));
                return;
            };
            // Which tenant every entry must belong to, if any.
            let scope = match (caller, target) {
                (Caller::Operator, Target::None) => None,
                (Caller::Operator, t) => t.tenant(),
                (_, _) => Some(TENANT_A),
            };
            if let Some(scope) = scope {
                let foreign: Vec<&Value> = entries
                    .iter()
                    .filter(|e| e["tenant"] != json!(scope))
                    .collect();
                if !foreign.is_empty() {
                    run.mismatch(format!(
                        "{caller:?} audit on {target:?}: {} entries outside {scope}: {:?}",
                        foreign.len(),
                        foreign.first()
                    ));
                }
            }
            if target != Target::Ghost && entries.is_empty() {
                run.mismatch(format!("{caller:?} audit on {target:?}: no entries at all"));
            }
        }
        Route::VerifyAudit if v["ok"] != json!(true) => {
            run.mismatch(format!("audit verify does not report ok: {v}"));
        }
        Route::BlindIndexKey => {
            use base64::Engine;
            let len = v["key"]
                .as_str()
                .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
                .map(|k| k.len());
            if len != Some(32) || v.as_object().map(|o| o.len()) != Some(1) {
                run.mismatch(format!("{cell}: expected {{\"key\": 32 bytes}}: {v}"));
            }
            // The other role of the tenant gets the same key.
            let other = if caller == Caller::Encrypt {
                &fx.a.decrypt
            } else {
                &fx.a.encrypt
            };
            let (s, w) = server
                .call(Method::POST, &req.path, Some(other), req.body.clone())
                .await;
            run.side_checks += 1;
            if s != StatusCode::OK || w != *v {
                run.mismatch(format!(
                    "{cell}: the other role gets {s} {w}, expected the same key"
                ));
            }
        }
        Route::Rotate => {
            if v["version"] != json!(2) || !v["fingerprint"].is_string() {
                run.mismatch(format!("{cell}: expected version 2 and a fingerprint: {v}"));
            }
            // New data keys go to the new version.
            let (s, dk) = data_key_on(server, fx, key).await;
            run.side_checks += 1;
            if s != StatusCode::OK || dk["version"] != json!(2) {
                run.mismatch(format!(
                    "{cell}: data key after rotation -> {s}, expected 200 on version 2: {dk}"
                ));
            }
        }
        // The policy is set, and the first scheduled rotation is one period after the request.
        Route::Configure
            if v["rotation_period_secs"] != json!(ROTATION_PERIOD_SECS)
                || !v["next_rotation_at"].as_i64().is_some_and(|at| {
                    (sent_at + ROTATION_PERIOD_SECS * 1000..=now_ms() + ROTATION_PERIOD_SECS * 1000)
                        .contains(&at)
                }) =>
        {
            run.mismatch(format!(
                "{cell}: expected rotation_period_secs {ROTATION_PERIOD_SECS} and the next \
                 rotation one period from now: {v}"
            ));
        }
        Route::Disable | Route::Enable | Route::Destroy | Route::CancelDestroy => {
            let (body_ok, usable) = match route {
                Route::Disable => (v["state"] == json!("disabled"), false),
                Route::Enable => (v["state"] == json!("enabled"), true),
                Route::Destroy => {
                    // Scheduled `WAITING_PERIOD` after the request, not earlier.
                    let at = v["destroy_at"].as_i64().unwrap_or(0);
                    let window = sent_at + WAITING_PERIOD_MS..=now_ms() + WAITING_PERIOD_MS;
                    (window.contains(&at), false)
                }
                _ => (v["cancelled"] == json!(true), true),
            };
            if !body_ok {
                run.mismatch(format!("{cell}: unexpected answer: {v}"));
            }
            // Whether the key still makes data keys: 409 key_disabled while disabled or
            // scheduled for destruction, 200 once enabled again.
            let (s, dk) = data_key_on(server, fx, key).await;
            run.side_checks += 1;
            let fine = if usable {
                s == StatusCode::OK
            } else {
                s == StatusCode::CONFLICT && dk["error"]["code"] == json!("key_disabled")
            };
            if !fine {
                let want = if usable { "200" } else { "409 key_disabled" };
                run.mismatch(format!(
                    "{cell}: data key afterwards -> {s}, expected {want}: {dk}"
                ));
            }
        }
        Route::Rewrap | Route::RewrapBatch => {
            let text = v.to_string();
            if text.contains("plaintext") || text.contains(&fx.rewrap_plain_a) {
                run.mismatch(format!("{cell}: the answer reveals the data key: {v}"));
                return;
            }
            let result = if route == Route::Rewrap {
                Some(v)
            } else {
                match v["results"].as_array().map(Vec::as_slice) {
                    Some([one]) => Some(one),
                    _ => None,
                }
            };
            let Some(result) = result else {
                run.mismatch(format!("{cell}: expected exactly one result: {v}"));
                return;
            };
            let Some(wrapped) = result["wrapped_key"].as_str() else {
                run.mismatch(format!("{cell}: no wrapped_key: {v}"));
                return;
            };
            if wrapped == fx.rewrap_a
                || result["version"] != json!(2)
                || result["from_version"] != json!(1)
            {
                run.mismatch(format!(
                    "{cell}: expected a new wrapped key moved from version 1 to 2: {v}"
                ));
            }
            // It opens, through decrypt, to the same data key as the original.
            let (s, d) = server
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{TENANT_A}/keys/{REWRAP_KEY}/decrypt"),
                    Some(&fx.a.decrypt),
                    Some(json!({ "wrapped_key": wrapped, "context": fx.ctx })),
                )
                .await;
            run.side_checks += 1;
            if s != StatusCode::OK
                || d["plaintext"] != json!(fx.rewrap_plain_a)
                || d["version"] != json!(2)
            {
                run.mismatch(format!(
                    "{cell}: the re-wrapped key decrypts to {s} {d}, expected the original \
                     data key under version 2"
                ));
            }
        }
        _ => {}
    }
}

async fn matrix(server: &TestServer, backend: Backend) -> Run {
    let fx = setup(server).await;
    let mut run = Run {
        backend,
        cells: 0,
        side_checks: 0,
        mismatches: Vec::new(),
        seq: 0,
    };
    let mut answers: HashMap<(Route, Target, Caller), (u16, Value)> = HashMap::new();
    let mut denied_tenants = Vec::new();
    let mut denied_keys = Vec::new();
    let mut allowed_keys = Vec::new();

    for &(route, target, _) in TABLE {
        for caller in CALLERS {
            let want = expected(route, target, caller);
            let req = prepare(server, &fx, &mut run, route, target).await;
            let token = fx.token(server, caller);
            let sent_at = now_ms();
            let (status, v) = server
                .call(
                    req.method.clone(),
                    &req.path,
                    token.as_deref(),
                    req.body.clone(),
                )
                .await;
            run.cells += 1;
            let got = status.as_u16();
            if got != want {
                run.mismatch(format!(
                    "{caller:?} {} {} -> {got}, expected {want} ({route:?} on {target:?}): {v}",
                    req.method, req.path
                ));
            } else if status.is_success() {
                check_body(
                    server, &mut run, &fx, route, target, caller, &req, sent_at, &v,
                )
                .await;
            } else if v["error"]["code"].as_str().is_none() {
                run.mismatch(format!(
                    "{caller:?} {} {} -> {got} without an error body: {v}",
                    req.method, req.path
                ));
            }
            let name = req
                .body
                .as_ref()
                .and_then(|b| b["name"].as_str())
                .map(str::to_owned);
            match (route, status.is_success(), name) {
                (Route::CreateTenant, false, Some(n)) => denied_tenants.push(n),
                (Route::CreateKey, false, Some(n)) if target == Target::Own => denied_keys.push(n),
                (Route::CreateKey, true, Some(n)) if target == Target::Own => allowed_keys.push(n),
                _ => {}
            }
            // A revoke takes effect immediately, and a refused one changes nothing.
            if let Some((victim, owner)) = &req.victim {
                let (s, pv) = server
                    .call(Method::GET, &public_key_path(owner), Some(victim), None)
                    .await;
                run.side_checks += 1;
                let should = if want == 204 { 401 } else { 200 };
                if s.as_u16() != should {
                    run.mismatch(format!(
                        "after {caller:?} DELETE {} ({got}): the target token answers {s}, \
                         expected {should}: {pv}",
                        req.path
                    ));
                }
            }
            // A refused lifecycle call changes nothing on the key.
            if let Some(subj) = &req.subject
                && !status.is_success()
            {
                let after = key_info(server, subj.tenant, &subj.admin, &subj.key).await;
                run.side_checks += 1;
                if after != subj.before {
                    run.mismatch(format!(
                        "after {caller:?} {} {} ({got}): the key changed from {} to {after}",
                        req.method, req.path, subj.before
                    ));
                }
            }
            answers.insert((route, target, caller), (got, v));
        }
    }

    // Another tenant, existing or not, must look the same: identical status and body.
    for route in ROUTES {
        if !route.targets().contains(&Target::Ghost) {
            continue;
        }
        for caller in CALLERS {
            // Only refusals must match (the operator's 200 audit reads differ by content).
            let want = expected(route, Target::Other, caller);
            if want != expected(route, Target::Ghost, caller) || want < 400 {
                continue;
            }
            let other = &answers[&(route, Target::Other, caller)];
            let ghost = &answers[&(route, Target::Ghost, caller)];
            run.side_checks += 1;
            if other != ghost {
                run.mismatch(format!(
                    "{caller:?} {route:?}: existing tenant B answers {} {}, ghost answers {} {} \
                     (existence revealed)",
                    other.0, other.1, ghost.0, ghost.1
                ));
            }
        }
    }

    // Refused creations created nothing; allowed ones did.
    for name in denied_tenants {
        let (s, v) = server
            .call(
                Method::POST,
                "/v1/tenants",
                Some(&server.operator),
                Some(json!({ "name": name })),
            )
            .await;
        run.side_checks += 1;
        if s != StatusCode::CREATED {
            run.mismatch(format!(
                "a refused create of tenant {name} left a trace: {s} {v}"
            ));
        }
    }
    let (s, v) = server
        .call(
            Method::GET,
            &format!("/v1/tenants/{TENANT_A}/keys"),
            Some(&fx.a.admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let listed: Vec<&str> = v["keys"]
        .as_array()
        .map(|ks| ks.iter().filter_map(|k| k["name"].as_str()).collect())
        .unwrap_or_default();
    for name in &denied_keys {
        run.side_checks += 1;
        if listed.contains(&name.as_str()) {
            run.mismatch(format!(
                "a refused create of key {name} created it: {listed:?}"
            ));
        }
    }
    for name in &allowed_keys {
        run.side_checks += 1;
        if !listed.contains(&name.as_str()) {
            run.mismatch(format!("created key {name} is not listed: {listed:?}"));
        }
    }

    // A tenant admin cannot revoke another tenant's token through its own tenant's path.
    let (b_token, b_id) = server.token(TENANT_B, &["encrypt"], None).await;
    let path = format!("/v1/tenants/{TENANT_A}/tokens/{b_id}");
    let (s, v) = server
        .call(Method::DELETE, &path, Some(&fx.a.admin), None)
        .await;
    run.side_checks += 1;
    if s != StatusCode::NOT_FOUND {
        run.mismatch(format!(
            "TenantAdmin DELETE {path} (a token of B) -> {s}, expected 404: {v}"
        ));
    }
    let (s, v) = server
        .call(
            Method::GET,
            &public_key_path(TENANT_B),
            Some(&b_token),
            None,
        )
        .await;
    run.side_checks += 1;
    if s != StatusCode::OK {
        run.mismatch(format!(
            "B's token after A's admin tried to revoke it -> {s}: {v}"
        ));
    }
    // B's own tokens stay confined to B.
    let (s, v) = server
        .call(
            Method::GET,
            &public_key_path(TENANT_A),
            Some(&fx.b.encrypt),
            None,
        )
        .await;
    run.side_checks += 1;
    if s != StatusCode::FORBIDDEN {
        run.mismatch(format!(
            "B's encrypt token on A's public key -> {s}, expected 403: {v}"
        ));
    }

    // The chain survived the whole matrix.
    let (s, v) = server
        .call(
            Method::GET,
            "/v1/audit/verify",
            Some(&server.operator),
            None,
        )
        .await;
    run.side_checks += 1;
    if s != StatusCode::OK || v["ok"] != json!(true) {
        run.mismatch(format!("audit chain after the matrix: {s} {v}"));
    }
    run
}

#[tokio::test]
async fn authorization_matrix() {
    // The table covers every route with every target it takes, once.
    for route in ROUTES {
        for &target in route.targets() {
            let rows = TABLE
                .iter()
                .filter(|(r, t, _)| *r == route && *t == target)
                .count();
            assert_eq!(
                rows, 1,
                "{route:?} on {target:?} must have exactly one table row"
            );
        }
    }
    let rows: usize = ROUTES.iter().map(|r| r.targets().len()).sum();
    assert_eq!(TABLE.len(), rows, "table rows outside the route/target set");

    let started = Instant::now();
    let mut runs = Vec::new();
    for backend in backends() {
        let server = TestServer::start(backend).await;
        let run = matrix(&server, backend).await;
        server.stop().await;
        assert!(
            run.cells >= MIN_CELLS_PER_BACKEND,
            "{backend:?}: only {} cells ran, expected at least {MIN_CELLS_PER_BACKEND}",
            run.cells
        );
        runs.push(run);
    }

    let counts: Vec<String> = runs
        .iter()
        .map(|r| {
            let name = match r.backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres => "postgres",
            };
            format!(
                "{} cells (+{} side checks) on {name}",
                r.cells, r.side_checks
            )
        })
        .collect();
    let mismatches: Vec<&String> = runs.iter().flat_map(|r| &r.mismatches).collect();
    let verdict = if mismatches.is_empty() {
        "all as expected".to_owned()
    } else {
        format!("{} MISMATCHES", mismatches.len())
    };
    eprintln!(
        "authz matrix: {}, {verdict} ({:.1}s)",
        counts.join(", "),
        started.elapsed().as_secs_f64()
    );
    for m in &mismatches {
        eprintln!("  MISMATCH {m}");
    }
    assert!(
        mismatches.is_empty(),
        "{} authorization mismatches (listed above)",
        mismatches.len()
    );
}
