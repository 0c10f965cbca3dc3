//! Key lifecycle handlers: rotate, re-wrap, retire (min_decryption_version), rotation policy,
//! disable / enable, scheduled destruction and its cancellation. Destruction itself happens in the
//! background worker (`keys::lifecycle`) when the waiting period is over.

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pqkms_envelope::KeyRef;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;

use super::handlers::{
    Opened, Retired, audit, authorize, context_of, crypto, current_version, key, open_wrapped,
    tenant,
};
use super::{ApiError, ApiJson, ApiPath as Path, AppState, Auth, RequestId};
use crate::auth::Action;
use crate::config::parse_duration_secs;
use crate::keys::{key_id, tenant_id};
use crate::store::{Read, StoreError, Versions, guard};

type ApiResult<T> = Result<T, ApiError>;

/// Largest batch a re-wrap request may carry.
const MAX_BATCH: usize = 100;
/// Default destruction waiting period: 30 days.
const DEFAULT_WAITING_SECS: i64 = 30 * 86_400;

fn not_in_state(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |e| {
        match e {
        StoreError::NotFound => ApiError::KeyState("invalid_state", what.into()),
        // blind_index_secret_leaving: the version holds the blind-index secret and it could not
        // be moved to another enabled version (the holding version is disabled, or it raced).
        StoreError::Conflict => ApiError::KeyState(
            "invalid_state",
            "this version holds the key's blind-index secret, which could not be moved to another enabled version; enable this version first (the secret then moves), or retry".into(),
        ),
        e => e.into(),
    }
    }
}

fn versions(v: Option<i64>) -> Versions {
    v.map_or(Versions::All, Versions::One)
}

pub async fn rotate(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageKeys(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;
    let make = version_maker(state.keys.clone(), tenant_id(&t.id)?, key_id(&k.id)?);
    let mut entry = audit(&p, &req, "key.rotate", Some(&tenant_name));
    entry.key = Some(key_name);
    let (v, _) = rotate_audited(&state, &k.id, None, &make, entry).await?;
    state.directory.forget_key(&k.id);
    Ok(Json(json!({ "version": v.version, "fingerprint": v.fingerprint })).into_response())
}

/// What `Store::rotate_key` calls inside its transaction: a new sealed key pair for the version
/// number the transaction settled on.
fn version_maker(
    keys: std::sync::Arc<crate::keys::KeyService>,
    tenant: pqkms_envelope::TenantId,
    key: pqkms_envelope::KeyId,
) -> impl Fn(i64) -> Result<crate::store::VersionRow, String> + Send + Sync {
    move |version: i64| {
        let version = u32::try_from(version).map_err(|_| "version overflow".to_owned())?;
        keys.new_version(KeyRef {
            tenant,
            key,
            version,
        })
        .map_err(|e| e.to_string())
    }
}

/// Rotation; the store writes the new version number into the audit entry inside the same
/// transaction, so concurrent rotations are recorded exactly.
async fn rotate_audited(
    state: &AppState,
    key_id: &str,
    due_at: Option<i64>,
    make: &(dyn Fn(i64) -> Result<crate::store::VersionRow, String> + Send + Sync),
    entry: crate::audit::NewAuditEntry,
) -> ApiResult<(crate::store::VersionRow, crate::audit::AuditEntry)> {
    state
        .store
        .rotate_key(key_id, due_at, make, entry)
        .await
        .map_err(|e| match e {
            StoreError::NotFound if due_at.is_none() => ApiError::KeyState(
                "invalid_state",
                "every version of this key is destroyed or scheduled for destruction".into(),
            ),
            e => e.into(),
        })
}

/// Scheduled rotation of one due key (background worker). `Ok(false)`: not due any more.
pub(crate) async fn rotate_due(
    state: &AppState,
    tenant_id_hex: &str,
    tenant_name: &str,
    key: &crate::store::KeyRow,
) -> Result<bool, ApiError> {
    let make = version_maker(
        state.keys.clone(),
        tenant_id(tenant_id_hex)?,
        key_id(&key.id)?,
    );
    let entry = crate::audit::NewAuditEntry {
        time_ms: crate::now_ms(),
        principal: "scheduler".into(),
        tenant: Some(tenant_name.to_owned()),
        key: Some(key.name.clone()),
        version: None,
        operation: "key.rotate".into(),
        outcome: "ok".into(),
        request_id: "scheduled".into(),
        context_hash: None,
        detail: Some(json!({ "reason": "rotation_period" }).to_string()),
    };
    match state
        .store
        .rotate_key(&key.id, Some(crate::now_ms()), &make, entry)
        .await
    {
        Ok(_) => {
            state.directory.forget_key(&key.id);
            Ok(true)
        }
        Err(StoreError::NotFound) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapOne {
    wrapped_key: String,
    context: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapBatch {
    items: Vec<RewrapOne>,
}

/// Open with its version, wrap the same data key to the newest enabled version, never return
/// the data key. One audit entry per item.
async fn rewrap_one(
    state: &AppState,
    p: &crate::auth::Principal,
    req: &RequestId,
    t: &crate::store::TenantRow,
    k: &crate::store::KeyRow,
    item: RewrapOne,
) -> ApiResult<Value> {
    let blob = B64
        .decode(item.wrapped_key.as_bytes())
        .map_err(|_| ApiError::BadRequest("wrapped_key is not standard base64".into()))?;
    let context = context_of(item.context);
    let mut entry = audit(p, req, "data_key.rewrap", Some(&t.name));
    entry.key = Some(k.name.clone());
    entry.context_hash = Some(crate::hex_lower(context.digest().as_bytes()));
    let versions = state.directory.versions(&k.id, Read::Fresh).await?;
    let opened = open_wrapped(state, t, k, &versions, &blob, &context, Retired::Allow).await?;
    let (from, data_key) = match opened {
        Opened::Key(v, dk) => (v, dk),
        other => {
            entry.version = other.version();
            entry.outcome = other.outcome().into();
            state
                .store
                .append_key_use(entry, guard(&p.token_id, k, &versions))
                .await?;
            return Err(other.into_result().err().unwrap_or(ApiError::Unopenable));
        }
    };
    // The key was opened: whatever happens next is audited too.
    let rewrapped = async {
        let target = current_version(k, &versions)?;
        let public = state.keys.public_key(target)?;
        let wrapped = public.wrap_data_key(&data_key, &context).map_err(crypto)?;
        Ok::<_, ApiError>((target.version, wrapped))
    }
    .await;
    entry.detail = Some(json!({ "from_version": from }).to_string());
    let (target, wrapped) = match rewrapped {
        Ok(done) => done,
        Err(e) => {
            entry.version = Some(from);
            entry.outcome = "refused".into();
            state
                .store
                .append_key_use(entry, guard(&p.token_id, k, &versions))
                .await?;
            return Err(e);
        }
    };
    entry.version = Some(target);
    state
        .store
        .append_key_use(entry, guard(&p.token_id, k, &versions))
        .await?;
    Ok(
        json!({ "wrapped_key": B64.encode(wrapped.as_bytes()), "version": target, "from_version": from }),
    )
}

pub async fn rewrap(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<RewrapOne>,
) -> ApiResult<Response> {
    authorize(&p, Action::RewrapDataKey(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;
    Ok(Json(rewrap_one(&state, &p, &req, &t, &k, body).await?).into_response())
}

/// Many wrapped keys per request, each with its own result (`{"wrapped_key","version"}` or
/// `{"error":{"code","message"}}`), in order.
pub async fn rewrap_batch(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<RewrapBatch>,
) -> ApiResult<Response> {
    authorize(&p, Action::RewrapDataKey(&tenant_name))?;
    if body.items.len() > MAX_BATCH {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_BATCH} items per batch"
        )));
    }
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;
    let mut results = Vec::with_capacity(body.items.len());
    for item in body.items {
        results.push(match rewrap_one(&state, &p, &req, &t, &k, item).await {
            Ok(v) => v,
            Err(e @ (ApiError::Internal(_) | ApiError::Unavailable(_))) => return Err(e),
            Err(e) => e.body(),
        });
    }
    Ok(Json(json!({ "results": results })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configure {
    min_decryption_version: Option<i64>,
    /// `"90d"`, or `"off"` to stop scheduled rotation; absent or `null` keeps the current policy.
    rotation_period: Option<String>,
}

pub async fn configure(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<Configure>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageKeys(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;
    let newest = state
        .store
        .versions(&k.id)
        .await?
        .last()
        .map_or(1, |v| v.version);
    let min = body
        .min_decryption_version
        .unwrap_or(k.min_decryption_version);
    if !(1..=newest).contains(&min) {
        return Err(ApiError::BadRequest(format!(
            "min_decryption_version must be between 1 and the newest version ({newest})"
        )));
    }
    let rotation = match body.rotation_period.as_deref() {
        None => None,
        Some("off") => Some((None, None)),
        Some(text) => {
            let secs = parse_duration_secs(text)
                .filter(|s| *s >= 60)
                .ok_or_else(|| {
                    ApiError::BadRequest("rotation_period: like \"90d\", at least 1m".into())
                })?;
            Some((Some(secs), Some(crate::now_ms() + secs * 1000)))
        }
    };
    // What the answer reports when the request leaves rotation alone: the row as read.
    let (period, next) = rotation.unwrap_or((k.rotation_period_secs, k.next_rotation_at));
    let mut entry = audit(&p, &req, "key.configure", Some(&tenant_name));
    entry.key = Some(key_name.clone());
    entry.detail =
        Some(json!({ "min_decryption_version": min, "rotation_period_secs": period }).to_string());
    state.store.set_policy(&k.id, min, rotation, entry).await?;
    state.directory.forget_key(&k.id);
    Ok(Json(json!({
        "key": key_name, "min_decryption_version": min,
        "rotation_period_secs": period, "next_rotation_at": next,
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VersionSelector {
    version: Option<i64>,
}

/// Run `change`, which takes `leaving` (one version, or `None`: nothing to keep) out of use, after
/// moving the key's blind-index secret off that version (see blind_index.rs). The store refuses
/// the change (`Conflict`) if a concurrent request moved the secret back meanwhile: move it again
/// and retry, up to three times. The outer error is the move's, the inner one the change's.
async fn moving_blind_index_secret<T, F, Fut>(
    state: &AppState,
    t: &crate::store::TenantRow,
    k: &crate::store::KeyRow,
    leaving: Option<i64>,
    mut change: F,
) -> ApiResult<Result<T, StoreError>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempts = 0;
    loop {
        super::blind_index::keep_from_version(state, t, k, leaving).await?;
        attempts += 1;
        match change().await {
            Err(StoreError::Conflict) if attempts < 3 => continue,
            done => return Ok(done),
        }
    }
}

async fn change_state(
    state: AppState,
    req: RequestId,
    p: crate::auth::Principal,
    tenant_name: String,
    key_name: String,
    version: Option<i64>,
    (from, to, op): (&'static str, &'static str, &'static str),
) -> ApiResult<Response> {
    authorize(&p, Action::ManageKeys(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;
    let mut entry = audit(&p, &req, op, Some(&tenant_name));
    entry.key = Some(key_name.clone());
    entry.version = version;
    // Disabling a version moves the blind-index secret off it first.
    let leaving = if to == "disabled" { version } else { None };
    moving_blind_index_secret(&state, &t, &k, leaving, || {
        state
            .store
            .set_state(&k.id, versions(version), from, to, entry.clone())
    })
    .await?
    .map_err(not_in_state(
        "no version of this key is in a state this applies to",
    ))?;
    state.directory.forget_key(&k.id);
    if to != "enabled" {
        evict(&state, &k.id, version).await?;
    }
    Ok(Json(json!({ "key": key_name, "version": version, "state": to })).into_response())
}

/// Drop unsealed copies on this node right away (other nodes: their next sweep; every node
/// checks the version's state in the database before each use anyway).
async fn evict(state: &AppState, key_id: &str, version: Option<i64>) -> ApiResult<()> {
    let all = state.store.versions(key_id).await?;
    for v in all
        .iter()
        .filter(|v| version.is_none_or(|n| n == v.version))
    {
        state.keys.evict(key_id, v.version);
    }
    Ok(())
}

pub async fn disable(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<VersionSelector>,
) -> ApiResult<Response> {
    change_state(
        state,
        req,
        p,
        tenant_name,
        key_name,
        body.version,
        ("enabled", "disabled", "key.disable"),
    )
    .await
}

pub async fn enable(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<VersionSelector>,
) -> ApiResult<Response> {
    change_state(
        state,
        req,
        p,
        tenant_name,
        key_name,
        body.version,
        ("disabled", "enabled", "key.enable"),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destroy {
    version: Option<i64>,
    /// Like `"30d"` (default); at least the service's configured minimum.
    waiting_period: Option<String>,
}

pub async fn destroy(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<Destroy>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageKeys(&tenant_name))?;
    let wait = match body.waiting_period.as_deref() {
        None => DEFAULT_WAITING_SECS.max(state.min_destroy_waiting_secs),
        Some(text) => parse_duration_secs(text)
            .ok_or_else(|| ApiError::BadRequest("waiting_period: like \"30d\"".into()))?,
    };
    if wait < state.min_destroy_waiting_secs {
        return Err(ApiError::BadRequest(format!(
            "waiting_period must be at least {} seconds on this service",
            state.min_destroy_waiting_secs
        )));
    }
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;
    let destroy_at = crate::now_ms() + wait * 1000;
    let mut entry = audit(&p, &req, "key.destroy.schedule", Some(&tenant_name));
    entry.key = Some(key_name.clone());
    entry.version = body.version;
    entry.detail =
        Some(json!({ "destroy_at": destroy_at, "waiting_period_secs": wait }).to_string());
    moving_blind_index_secret(&state, &t, &k, body.version, || {
        state.store.schedule_destroy(
            &k.id,
            versions(body.version),
            destroy_at,
            &p.token_id,
            entry.clone(),
        )
    })
    .await?
    .map_err(not_in_state("no enabled or disabled version to schedule"))?;
    state.directory.forget_key(&k.id);
    evict(&state, &k.id, body.version).await?;
    Ok(
        Json(json!({ "key": key_name, "version": body.version, "destroy_at": destroy_at }))
            .into_response(),
    )
}

pub async fn cancel_destroy(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<VersionSelector>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageKeys(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;
    let mut entry = audit(&p, &req, "key.destroy.cancel", Some(&tenant_name));
    entry.key = Some(key_name.clone());
    entry.version = body.version;
    state
        .store
        .cancel_destroy(&k.id, versions(body.version), entry)
        .await
        .map_err(not_in_state(
            "nothing scheduled for destruction (or already destroyed)",
        ))?;
    state.directory.forget_key(&k.id);
    Ok(
        Json(json!({ "key": key_name, "version": body.version, "cancelled": true }))
            .into_response(),
    )
}

/// The per-node background worker: every `every`, carry out due destructions (each with its
/// receipt in the audit chain), due scheduled rotations, and drop unusable keys from this node's
/// cache. Safe on several nodes at once: each change re-checks its condition inside its
/// transaction, which the audit-head lock serializes, so nothing happens twice.
pub(crate) async fn worker(
    state: AppState,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = lifecycle_tick(&state).await {
            let (status, _) = e.status_and_body();
            tracing::error!(status = status.as_u16(), "lifecycle worker pass failed");
        }
    }
}

/// One pass of the worker (also called directly by tests).
pub async fn lifecycle_tick(state: &AppState) -> Result<(), ApiError> {
    let now = crate::now_ms();
    for due in state.store.due_destructions(now).await? {
        let receipt = crate::audit::NewAuditEntry {
            time_ms: now,
            principal: "scheduler".into(),
            tenant: Some(due.tenant.clone()),
            key: Some(due.key_name.clone()),
            version: Some(due.version),
            operation: "key.destroyed".into(),
            outcome: "ok".into(),
            request_id: "scheduled".into(),
            context_hash: None,
            detail: Some(
                json!({
                    "receipt": "crypto-shred",
                    "fingerprint": due.fingerprint,
                    "requested_by": due.requested_by,
                    "requested_at": due.requested_at,
                    "destroy_at": due.destroy_at,
                    "waiting_period_secs": (due.destroy_at - due.requested_at) / 1000,
                    "destroyed_at": now,
                })
                .to_string(),
            ),
        };
        match state
            .store
            .destroy_version(&due.key_id, due.version, now, receipt)
            .await
        {
            Ok(_) => {
                state.keys.evict(&due.key_id, due.version);
                state.directory.forget_key(&due.key_id);
                tracing::info!(tenant = %due.tenant, key = %due.key_name, version = due.version,
                    fingerprint = %due.fingerprint, "key version destroyed");
            }
            Err(StoreError::NotFound) => {} // cancelled meanwhile, or another node did it
            // One failing item must not block the others: log it and go on.
            Err(e) => {
                tracing::error!(key_id = %due.key_id, version = due.version, error = %e, "destruction failed; will retry")
            }
        }
    }
    for (tenant_id_hex, tenant_name, key) in state.store.due_rotations(now).await? {
        let rotated = match rotate_due(state, &tenant_id_hex, &tenant_name, &key).await {
            Ok(r) => r,
            Err(e) => {
                let (status, _) = e.status_and_body();
                tracing::error!(key_id = %key.id, status = status.as_u16(), "scheduled rotation failed; will retry");
                false
            }
        };
        if rotated {
            tracing::info!(tenant = %tenant_name, key = %key.name, "scheduled rotation");
        }
    }
    for (key_id, version) in state.store.unusable_versions().await? {
        state.keys.evict(&key_id, version);
        state.directory.forget_if_enabled(&key_id, version);
    }
    Ok(())
}

/// Re-seal every tenant key version not yet under the current root key (step 3 of a root-key
/// rotation; see docs/OPERATIONS.md). Operator only. Idempotent: run it until `remaining` is 0.
pub async fn reseal_root(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageRootKey)?;
    let current = i64::from(state.keys.root_version());
    let rows = state.store.sealed_under_other_roots(current).await?;
    // A node still on an older root key must not move rows back from a newer one.
    if rows.iter().any(|(_, r)| r.root_version > current) {
        return Err(ApiError::KeyState(
            "invalid_state",
            "some key versions are sealed under a newer root key than this node's; re-seal from a node running the newest root key".into(),
        ));
    }
    let mut updates = Vec::with_capacity(rows.len());
    for (tenant_hex, row) in &rows {
        let sealed = state.keys.reseal(tenant_id(tenant_hex)?, row)?;
        updates.push((row.key_id.clone(), row.version, row.root_version, sealed));
    }
    let entry = audit(&p, &req, "root_key.reseal", None);
    let resealed = state.store.reseal(&updates, current, entry).await?;
    // Cached version rows hold the blobs sealed under the old root key.
    state.directory.clear();
    let remaining = state.store.sealed_under_other_roots(current).await?.len();
    Ok(
        Json(json!({ "root_version": current, "resealed": resealed, "remaining": remaining }))
            .into_response(),
    )
}
