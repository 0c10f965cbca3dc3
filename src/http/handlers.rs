//! The v1 handlers. Each one: authenticate (the `Auth` extractor), authorize against the tenant
//! named in the path *before* looking anything up (so a foreign tenant's existence never shows),
//! do the work, and append the audit entry — in the same transaction for state changes, and
//! before answering for key uses (fail closed: no audit entry, no key).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use pqkms_envelope::{EncryptionContext, KeyRef, WrappedDataKey};
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use super::{
    ApiError, ApiJson, ApiPath as Path, ApiQuery as Query, AppState, Auth, Caller, RequestId,
};
use crate::audit::{AuditQuery, NewAuditEntry, verify_chain};
use crate::auth::{Action, Principal, Role, new_token};
use crate::keys::{key_id, tenant_id};
use crate::store::{KeyRow, Read, TenantRow, TokenRow, VersionRow, guard};

type ApiResult<T> = Result<T, ApiError>;

/// Longest accepted token lifetime: ten years.
const MAX_TTL_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// Tenant and key names: 1-64 of `[a-z0-9-]`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_name(name: &str) -> ApiResult<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(
            "names are 1-64 characters of a-z, 0-9 and '-'".into(),
        ))
    }
}

pub(super) fn authorize(p: &Principal, action: Action<'_>) -> ApiResult<()> {
    p.authorize(action).map_err(|_| ApiError::Forbidden)
}

/// The audit entry skeleton for this request.
pub(super) fn audit(
    p: &Principal,
    req: &RequestId,
    operation: &str,
    tenant: Option<&str>,
) -> NewAuditEntry {
    NewAuditEntry {
        time_ms: crate::now_ms(),
        principal: p.token_id.clone(),
        tenant: tenant.map(str::to_owned),
        key: None,
        version: None,
        operation: operation.to_owned(),
        outcome: "ok".to_owned(),
        request_id: req.0.clone(),
        context_hash: None,
        detail: None,
    }
}

pub(super) async fn tenant(state: &AppState, name: &str, read: Read) -> ApiResult<Arc<TenantRow>> {
    state
        .directory
        .tenant(name, read)
        .await?
        .ok_or(ApiError::NotFound("no such tenant"))
}

pub(super) async fn key(
    state: &AppState,
    tenant: &TenantRow,
    name: &str,
    read: Read,
) -> ApiResult<Arc<KeyRow>> {
    state
        .directory
        .key(&tenant.id, name, read)
        .await?
        .ok_or(ApiError::NotFound("no such key"))
}

/// The newest enabled, non-retired version: what new data keys are wrapped to. A key with none
/// answers 410 if every version was destroyed, 409 `key_disabled` otherwise.
pub(super) fn current_version<'a>(
    key: &KeyRow,
    versions: &'a [VersionRow],
) -> ApiResult<&'a VersionRow> {
    if let Some(v) = versions
        .iter()
        .rev()
        .find(|v| v.state == "enabled" && v.version >= key.min_decryption_version)
    {
        return Ok(v);
    }
    match versions.iter().filter_map(|v| v.destroyed_at).max() {
        Some(at) if versions.iter().all(|v| v.state == "destroyed") => Err(ApiError::Destroyed(at)),
        _ => Err(ApiError::KeyState(
            "key_disabled",
            "no enabled version of this key: it is disabled or scheduled for destruction".into(),
        )),
    }
}

/// A refusal decided on cached rows is not final: the rows may predate an enable or a rotation on
/// another node, and a refusal has no audit commit to re-check them. Such refusals become `Stale`
/// so [`with_fresh_retry`] decides again on fresh rows.
pub(super) fn decided<T>(result: ApiResult<T>, read: Read) -> ApiResult<T> {
    match result {
        Err(ApiError::KeyState(..) | ApiError::Destroyed(_)) if read == Read::Cached => {
            Err(ApiError::Stale)
        }
        other => other,
    }
}

/// How many times a key use is decided on fresh rows before the client is told to retry (503
/// `retry`): each fresh attempt can still go stale if the key changes again before its audit
/// commit, which a burst of rotations does.
const FRESH_ATTEMPTS: usize = 3;

/// Run a key use on cached rows ([`Read::Cached`]); if its audit guard failed because the token
/// or key changed meanwhile (another node revoked, rotated, disabled...), run it again on fresh
/// rows, which decide exactly as an uncached service would — up to [`FRESH_ATTEMPTS`] times while
/// the state keeps changing under it.
pub(super) async fn with_fresh_retry<F, Fut>(mut attempt: F) -> ApiResult<Response>
where
    F: FnMut(Read) -> Fut,
    Fut: std::future::Future<Output = ApiResult<Response>>,
{
    let mut result = match attempt(Read::Cached).await {
        // A 404 is re-decided too: the caller's token may have been revoked on another node, and
        // a revoked token must get 401, not learn which names exist.
        Err(ApiError::Stale | ApiError::NotFound(_)) => attempt(Read::Fresh).await,
        other => return other,
    };
    for _ in 1..FRESH_ATTEMPTS {
        match result {
            Err(ApiError::Stale) => result = attempt(Read::Fresh).await,
            other => return other,
        }
    }
    result
}

pub(super) fn context_of(map: Option<BTreeMap<String, String>>) -> EncryptionContext {
    map.map(EncryptionContext::from).unwrap_or_default()
}

// ------------------------------------------------------------------ tenants

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
}

pub async fn create_tenant(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    ApiJson(body): ApiJson<CreateTenant>,
) -> ApiResult<Response> {
    authorize(&p, Action::CreateTenant)?;
    check_name(&body.name)?;
    let now = crate::now_ms();
    let tenant_id = pqkms_envelope::TenantId::random().map_err(crypto)?;
    let key_id = pqkms_envelope::KeyId::random().map_err(crypto)?;
    let version = state.keys.new_version(KeyRef {
        tenant: tenant_id,
        key: key_id,
        version: 1,
    })?;
    let tenant = TenantRow {
        id: tenant_id.to_string(),
        name: body.name.clone(),
        created_at: now,
    };
    let key = KeyRow {
        id: key_id.to_string(),
        tenant_id: tenant.id.clone(),
        name: "default".into(),
        created_at: now,
        min_decryption_version: 1,
        rotation_period_secs: None,
        next_rotation_at: None,
    };
    let mut entry = audit(&p, &req, "tenant.create", Some(&body.name));
    entry.key = Some("default".into());
    entry.version = Some(1);
    state
        .store
        .create_tenant(&tenant, &key, &version, entry)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict => ApiError::Conflict("tenant already exists"),
            e => e.into(),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "tenant": tenant.name, "id": tenant.id, "default_key": "default" })),
    )
        .into_response())
}

pub(super) fn crypto(e: pqkms_envelope::Error) -> ApiError {
    ApiError::Internal(format!("crypto: {e}"))
}

// ------------------------------------------------------------------ tokens

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    roles: Vec<String>,
    ttl_seconds: Option<i64>,
}

pub async fn create_token(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path(tenant_name): Path<String>,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageTokens(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let bad_roles =
        || ApiError::BadRequest("roles: one or more of tenant-admin, encrypt, decrypt".into());
    let mut roles: Vec<Role> = Vec::new();
    for name in &body.roles {
        let role = Role::parse(name)
            .filter(|r| *r != Role::Operator)
            .ok_or_else(bad_roles)?;
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    if roles.is_empty() {
        return Err(bad_roles());
    }
    let now = crate::now_ms();
    let expires_at = match body.ttl_seconds {
        None => None,
        Some(ttl) if (1..=MAX_TTL_SECONDS).contains(&ttl) => Some(now + ttl * 1000),
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "ttl_seconds must be between 1 and {MAX_TTL_SECONDS}"
            )));
        }
    };
    let (token, id) = new_token().map_err(|_| ApiError::Internal("rng".into()))?;
    let role_names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let row = TokenRow {
        id: id.clone(),
        token_hash: crate::auth::token_hash(&token),
        tenant_id: Some(t.id.clone()),
        tenant_name: None,
        roles: role_names.join(","),
        created_at: now,
        expires_at,
        revoked_at: None,
    };
    state
        .store
        .create_token(&row, {
            let mut entry = audit(&p, &req, "token.create", Some(&tenant_name));
            entry.detail = Some(
                json!({ "token_id": id, "roles": role_names, "expires_at": expires_at })
                    .to_string(),
            );
            entry
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token.as_str(), "id": id, "roles": role_names, "expires_at": expires_at })),
    )
        .into_response())
}

pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, token_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageTokens(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    state
        .store
        .revoke_token(Some(&t.id), &token_id, crate::now_ms(), {
            let mut entry = audit(&p, &req, "token.revoke", Some(&tenant_name));
            entry.detail = Some(json!({ "token_id": token_id }).to_string());
            entry
        })
        .await
        .map_err(|e| match e {
            crate::store::StoreError::NotFound => ApiError::NotFound("no such active token"),
            e => e.into(),
        })?;
    state.directory.forget_tokens();
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ------------------------------------------------------------------ keys

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: String,
}

#[derive(Serialize)]
struct VersionInfo {
    version: i64,
    state: String,
    created_at: i64,
    fingerprint: String,
    destroy_at: Option<i64>,
    destroyed_at: Option<i64>,
}

#[derive(Serialize)]
struct KeyInfo {
    name: String,
    id: String,
    created_at: i64,
    current_version: Option<i64>,
    min_decryption_version: i64,
    rotation_period_secs: Option<i64>,
    next_rotation_at: Option<i64>,
    versions: Vec<VersionInfo>,
}

async fn key_info(state: &AppState, key: KeyRow) -> ApiResult<KeyInfo> {
    let versions = state.store.versions(&key.id).await?;
    let current_version = versions
        .iter()
        .rev()
        .find(|v| v.state == "enabled" && v.version >= key.min_decryption_version)
        .map(|v| v.version);
    Ok(KeyInfo {
        name: key.name,
        id: key.id,
        created_at: key.created_at,
        current_version,
        min_decryption_version: key.min_decryption_version,
        rotation_period_secs: key.rotation_period_secs,
        next_rotation_at: key.next_rotation_at,
        versions: versions
            .into_iter()
            .map(|v| VersionInfo {
                version: v.version,
                state: v.state,
                created_at: v.created_at,
                fingerprint: v.fingerprint,
                destroy_at: v.destroy_at,
                destroyed_at: v.destroyed_at,
            })
            .collect(),
    })
}

pub async fn create_key(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path(tenant_name): Path<String>,
    ApiJson(body): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageKeys(&tenant_name))?;
    check_name(&body.name)?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let key_id = pqkms_envelope::KeyId::random().map_err(crypto)?;
    let version = state.keys.new_version(KeyRef {
        tenant: tenant_id(&t.id)?,
        key: key_id,
        version: 1,
    })?;
    let key = KeyRow {
        id: key_id.to_string(),
        tenant_id: t.id.clone(),
        name: body.name.clone(),
        created_at: crate::now_ms(),
        min_decryption_version: 1,
        rotation_period_secs: None,
        next_rotation_at: None,
    };
    let mut entry = audit(&p, &req, "key.create", Some(&tenant_name));
    entry.key = Some(body.name.clone());
    entry.version = Some(1);
    state
        .store
        .create_key(&key, &version, entry)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict => ApiError::Conflict("key already exists"),
            e => e.into(),
        })?;
    let info = key_info(&state, key).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn list_keys(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path(tenant_name): Path<String>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageKeys(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let mut keys = Vec::new();
    for k in state.store.list_keys(&t.id).await? {
        keys.push(key_info(&state, k).await?);
    }
    Ok(Json(json!({ "tenant": tenant_name, "keys": keys })).into_response())
}

pub async fn get_key(
    State(state): State<AppState>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
) -> ApiResult<Response> {
    authorize(&p, Action::ManageKeys(&tenant_name))?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;
    Ok(Json(key_info(&state, (*k).clone()).await?).into_response())
}

pub async fn public_key(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    caller: Caller,
    Path((tenant_name, key_name)): Path<(String, String)>,
) -> ApiResult<Response> {
    with_fresh_retry(|read| public_key_once(&state, &req, &caller, &tenant_name, &key_name, read))
        .await
}

async fn public_key_once(
    state: &AppState,
    req: &RequestId,
    caller: &Caller,
    tenant_name: &str,
    key_name: &str,
    read: Read,
) -> ApiResult<Response> {
    let p = caller.principal(state, read).await?;
    authorize(&p, Action::ReadPublicKey(tenant_name))?;
    let t = tenant(state, tenant_name, read).await?;
    let k = key(state, &t, key_name, read).await?;
    let versions = state.directory.versions(&k.id, read).await?;
    let v = decided(current_version(&k, &versions), read)?;
    let mut entry = audit(&p, req, "public_key.read", Some(tenant_name));
    entry.key = Some(key_name.to_owned());
    entry.version = Some(v.version);
    state
        .store
        .append_key_use(entry, guard(&p.token_id, &k, &versions))
        .await?;
    Ok(Json(json!({
        "version": v.version,
        "public_key": B64.encode(&v.public_key),
        "fingerprint": v.fingerprint,
    }))
    .into_response())
}

// ------------------------------------------------------------------ data keys

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateDataKey {
    context: Option<BTreeMap<String, String>>,
    include_plaintext: Option<bool>,
}

pub async fn generate_data_key(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    caller: Caller,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<GenerateDataKey>,
) -> ApiResult<Response> {
    with_fresh_retry(|read| {
        generate_once(&state, &req, &caller, &tenant_name, &key_name, &body, read)
    })
    .await
}

async fn generate_once(
    state: &AppState,
    req: &RequestId,
    caller: &Caller,
    tenant_name: &str,
    key_name: &str,
    body: &GenerateDataKey,
    read: Read,
) -> ApiResult<Response> {
    let p = caller.principal(state, read).await?;
    authorize(&p, Action::GenerateDataKey(tenant_name))?;
    let t = tenant(state, tenant_name, read).await?;
    let k = key(state, &t, key_name, read).await?;
    let versions = state.directory.versions(&k.id, read).await?;
    let v = decided(current_version(&k, &versions), read)?;
    let public = state.keys.public_key(v)?;
    let context = context_of(body.context.clone());
    let mut entry = audit(&p, req, "data_key.generate", Some(tenant_name));
    entry.key = Some(key_name.to_owned());
    entry.version = Some(v.version);
    entry.context_hash = Some(crate::hex_lower(context.digest().as_bytes()));

    // The entry records what was asked (key, version, context), not what the encapsulation
    // returns, so it is committed while the encapsulation runs: the request waits for the longer
    // of the two instead of their sum. Fail closed still: the key leaves only after its entry is
    // durable, and only if the token and key state it was decided on still hold at that commit.
    // If the encapsulation fails after the entry committed, the chain over-reports one use; if
    // either fails first, the other is dropped (an entry not yet taken into a group is not written;
    // a generated key is zeroized).
    let ((data_key, wrapped), _) = tokio::try_join!(
        async {
            crypto_task(move || public.generate_data_key(&context))
                .await?
                .map_err(crypto)
        },
        async {
            let appended = state
                .store
                .append_key_use(entry, guard(&p.token_id, &k, &versions))
                .await;
            appended.map_err(ApiError::from)
        },
    )?;

    let wrapped_key = B64.encode(wrapped.as_bytes());
    let plaintext = body
        .include_plaintext
        .unwrap_or(true)
        .then(|| Zeroizing::new(B64.encode(data_key.expose_secret())));
    Ok(DataKeyAnswer {
        wrapped_key: Some(&wrapped_key),
        plaintext: plaintext.as_deref().map(String::as_str),
        version: v.version,
    }
    .into_response())
}

/// A data key's answer, serialized straight from borrowed fields: the plaintext's base64 exists
/// only in a zeroized string and in the response body, not in an unwiped `serde_json::Value` too.
#[derive(Serialize)]
struct DataKeyAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    wrapped_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<&'a str>,
    version: i64,
}

impl DataKeyAnswer<'_> {
    /// The 200 answer, serialized into one buffer of the right size. axum's `Json` starts at 128
    /// bytes and grows four times for a wrapped key's 1.7 kB, leaving behind freed copies of a
    /// plaintext key each time.
    fn into_response(self) -> Response {
        let fields = self.wrapped_key.map_or(0, str::len) + self.plaintext.map_or(0, str::len);
        let mut body = Vec::with_capacity(fields + 64);
        match serde_json::to_writer(&mut body, &self) {
            Ok(()) => (
                [(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => ApiError::Internal(format!("data key answer: {e}")).into_response(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptDataKey {
    wrapped_key: String,
    context: Option<BTreeMap<String, String>>,
}

pub async fn decrypt_data_key(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    caller: Caller,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<DecryptDataKey>,
) -> ApiResult<Response> {
    with_fresh_retry(|read| {
        decrypt_once(&state, &req, &caller, &tenant_name, &key_name, &body, read)
    })
    .await
}

async fn decrypt_once(
    state: &AppState,
    req: &RequestId,
    caller: &Caller,
    tenant_name: &str,
    key_name: &str,
    body: &DecryptDataKey,
    read: Read,
) -> ApiResult<Response> {
    let p = caller.principal(state, read).await?;
    authorize(&p, Action::DecryptDataKey(tenant_name))?;
    let t = tenant(state, tenant_name, read).await?;
    let k = key(state, &t, key_name, read).await?;
    let blob = B64
        .decode(body.wrapped_key.as_bytes())
        .map_err(|_| ApiError::BadRequest("wrapped_key is not standard base64".into()))?;
    let context = context_of(body.context.clone());
    let versions = state.directory.versions(&k.id, read).await?;

    let mut entry = audit(&p, req, "data_key.decrypt", Some(tenant_name));
    entry.key = Some(key_name.to_owned());
    entry.context_hash = Some(crate::hex_lower(context.digest().as_bytes()));

    let opened = open_wrapped(state, &t, &k, &versions, &blob, &context, Retired::Refuse).await?;
    entry.version = opened.version();
    entry.outcome = opened.outcome().into();
    state
        .store
        .append_key_use(entry, guard(&p.token_id, &k, &versions))
        .await?;
    let (version, data_key) = opened.into_result()?;
    let plaintext = Zeroizing::new(B64.encode(data_key.expose_secret()));
    Ok(DataKeyAnswer {
        wrapped_key: None,
        plaintext: Some(&plaintext),
        version,
    }
    .into_response())
}

/// What happened to a wrapped key presented for opening.
pub(super) enum Opened {
    /// It opened under this version.
    Key(i64, pqkms_envelope::DataKey),
    /// It does not open (any cause): the uniform 422.
    Unopenable,
    /// Its version exists but its state forbids use: retired, disabled, or destroyed.
    Refused(i64, ApiError),
}

impl Opened {
    pub(super) fn version(&self) -> Option<i64> {
        match self {
            Opened::Key(v, _) | Opened::Refused(v, _) => Some(*v),
            Opened::Unopenable => None,
        }
    }

    pub(super) fn outcome(&self) -> &'static str {
        match self {
            Opened::Key(..) => "ok",
            Opened::Unopenable => "failed",
            Opened::Refused(..) => "refused",
        }
    }

    pub(super) fn into_result(self) -> ApiResult<(i64, pqkms_envelope::DataKey)> {
        match self {
            Opened::Key(v, k) => Ok((v, k)),
            Opened::Unopenable => Err(ApiError::Unopenable),
            Opened::Refused(_, e) => Err(e),
        }
    }
}

/// Whether versions below `min_decryption_version` may be opened.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Retired {
    /// Decrypt: retired versions refuse (409 `version_retired`).
    Refuse,
    /// Re-wrap: moving data off a retired version is the way out of it, and reveals nothing.
    Allow,
}

/// Open a wrapped key for (tenant, key) against that key's `versions` as read: the one
/// implementation behind decrypt and re-wrap. `Err` is a server-side failure (unusable stored
/// key).
pub(super) async fn open_wrapped(
    state: &AppState,
    t: &TenantRow,
    k: &KeyRow,
    versions: &[VersionRow],
    blob: &[u8],
    context: &EncryptionContext,
    retired: Retired,
) -> ApiResult<Opened> {
    let Ok(wrapped) = WrappedDataKey::parse(blob) else {
        return Ok(Opened::Unopenable);
    };
    let r = *wrapped.key_ref();
    if r.tenant != tenant_id(&t.id)? || r.key != key_id(&k.id)? {
        return Ok(Opened::Unopenable);
    }
    let version = i64::from(r.version);
    let Some(row) = versions.iter().find(|v| v.version == version) else {
        return Ok(Opened::Unopenable);
    };
    let refusal = match row.state.as_str() {
        "destroyed" => Some(ApiError::Destroyed(row.destroyed_at.unwrap_or(0))),
        "enabled" if version < k.min_decryption_version && retired == Retired::Refuse => {
            Some(ApiError::KeyState(
                "version_retired",
                format!(
                    "version {version} is below this key's min_decryption_version ({}); re-wrap data to a newer version",
                    k.min_decryption_version
                ),
            ))
        }
        "enabled" => None,
        _ => Some(ApiError::KeyState(
            "key_disabled",
            format!("version {version} is disabled or scheduled for destruction"),
        )),
    };
    if let Some(e) = refusal {
        return Ok(Opened::Refused(version, e));
    }
    let context = context.clone();
    // Unsealing (on a cache miss) and decapsulation both run off the executor. A cached key is
    // looked up here, so the row goes to the crypto thread only when it must be unsealed.
    let opened = match state.keys.cached_private_key(row) {
        Some(private) => {
            crypto_task(move || Ok(private.unwrap_data_key(&wrapped, &context).ok())).await?
        }
        None => {
            let (keys, row) = (state.keys.clone(), row.clone());
            crypto_task(move || {
                keys.private_key(r.tenant, &row)
                    .map(|private| private.unwrap_data_key(&wrapped, &context).ok())
            })
            .await?
        }
    }?;
    Ok(match opened {
        Some(dk) => Opened::Key(version, dk),
        None => Opened::Unopenable,
    })
}

/// Run CPU-heavy crypto (an X-Wing encapsulation or decapsulation: 30-50 µs) on the
/// [`crate::crypto_pool`], so it never stalls an executor thread that is driving other requests'
/// I/O or the audit group commit.
pub(super) async fn crypto_task<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> ApiResult<T> {
    crate::crypto_pool::run(work)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

// ------------------------------------------------------------------ audit

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    tenant: Option<String>,
    operation: Option<String>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn read_audit(
    State(state): State<AppState>,
    Auth(p): Auth,
    Query(q): Query<AuditParams>,
) -> ApiResult<Response> {
    authorize(&p, Action::ReadAudit)?;
    // A tenant admin reads its own tenant's entries only.
    let tenant = if p.roles.contains(&Role::Operator) {
        q.tenant
    } else {
        match (q.tenant, p.tenant.clone()) {
            (Some(asked), Some(own)) if asked != own => return Err(ApiError::Forbidden),
            (_, own) => Some(own.ok_or(ApiError::Forbidden)?),
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = state
        .store
        .audit_entries(&AuditQuery {
            tenant,
            operation: q.operation,
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            after_seq: q.after.unwrap_or(0),
            limit,
        })
        .await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(json!({ "entries": entries, "next_after": next })).into_response())
}

pub async fn verify_audit(State(state): State<AppState>, Auth(p): Auth) -> ApiResult<Response> {
    authorize(&p, Action::VerifyAudit)?;
    let v = verify_chain(state.store.as_ref()).await?;
    Ok(Json(v).into_response())
}

// ------------------------------------------------------------------ operations

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(e) => ApiError::Unavailable(e.to_string()).into_response(),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(
            state.keys.cached_private_keys(),
            state.store.group_commit_stats(),
        ),
    )
        .into_response()
}

pub async fn no_route() -> Response {
    ApiError::NotFound("no such route").into_response()
}

pub async fn no_method() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({ "error": { "code": "method_not_allowed", "message": "method not allowed on this route" } })),
    )
        .into_response()
}

pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
        .into_response()
}
