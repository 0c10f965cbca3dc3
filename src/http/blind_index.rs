//! `POST /v1/tenants/{tenant}/keys/{key}/blind-index-key`: the key a client uses to compute blind
//! indexes (equality search on an encrypted column) of one field.
//!
//! Each key has one **index secret**: 32 random bytes, created on the first request and stored
//! only as a wrapped data key (`PQWK`) under one version of that key, bound to the context
//! `{"pqkms:purpose": "blind-index"}`. A field's key is
//! `HKDF-SHA256(ikm = secret, salt = none, info = "pqkms/v1/blind-index" || field)`, 32 bytes.
//! So the field keys
//!
//! - survive a root-key rotation (the secret is wrapped to a tenant key version, which a re-seal
//!   carries over unchanged);
//! - survive key rotation: the secret is opened with the version it is wrapped to and moved to the
//!   current version (compare-and-swap on the old version, so concurrent movers agree), on use and
//!   before its version is disabled or scheduled for destruction;
//! - die with crypto-shredding: once the version holding it is destroyed nothing can open it, and
//!   the route answers 410 `key_destroyed` for good.
//!
//! Opening goes through [`open_wrapped`], the one implementation behind decrypt and re-wrap, so a
//! disabled or destroyed version refuses here exactly as it does there. See docs/CRYPTO.md.

use axum::Json;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hkdf::Hkdf;
use pqkms_envelope::{DataKey, EncryptionContext};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::handlers::{
    Opened, Retired, audit, authorize, crypto, current_version, key, open_wrapped, tenant,
};
use super::{ApiError, ApiJson, ApiPath as Path, AppState, Auth, RequestId};
use crate::auth::Action;
use std::sync::Arc;

use crate::store::{BlindIndexSecretRow, KeyRow, Read, TenantRow, VersionRow, guard};

type ApiResult<T> = Result<T, ApiError>;

/// HKDF `info` prefix of a field key; the field name follows it.
const KDF_LABEL: &[u8] = b"pqkms/v1/blind-index";
/// Longest accepted field name, bytes (UTF-8).
pub(super) const MAX_FIELD_BYTES: usize = 128;

/// The encryption context the index secret is wrapped under.
fn secret_context() -> EncryptionContext {
    let mut context = EncryptionContext::new();
    context.insert("pqkms:purpose", "blind-index");
    context
}

/// The blind-index key of `field`: HKDF-SHA256 of the key's index secret.
fn field_key(secret: &DataKey, field: &str) -> ApiResult<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, secret.expose_secret())
        .expand_multi_info(&[KDF_LABEL, field.as_bytes()], &mut out[..])
        .map_err(|_| ApiError::Internal("hkdf output length".into()))?;
    Ok(out)
}

fn check_field(field: &str) -> ApiResult<()> {
    if (1..=MAX_FIELD_BYTES).contains(&field.len()) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "field must be 1-{MAX_FIELD_BYTES} bytes"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlindIndexKeyRequest {
    field: String,
}

pub async fn blind_index_key(
    State(state): State<AppState>,
    Extension(req): Extension<RequestId>,
    Auth(p): Auth,
    Path((tenant_name, key_name)): Path<(String, String)>,
    ApiJson(body): ApiJson<BlindIndexKeyRequest>,
) -> ApiResult<Response> {
    authorize(&p, Action::DeriveBlindIndexKey(&tenant_name))?;
    check_field(&body.field)?;
    let t = tenant(&state, &tenant_name, Read::Fresh).await?;
    let k = key(&state, &t, &key_name, Read::Fresh).await?;

    let mut entry = audit(&p, &req, "blind_index_key.derive", Some(&tenant_name));
    entry.key = Some(key_name);
    let mut detail = json!({ "field": body.field });
    let secret = index_secret(&state, &t, &k).await?;
    entry.version = secret.opened.version();
    entry.outcome = secret.opened.outcome().into();
    if secret.created {
        detail["secret_created"] = json!(true);
    }
    if let Some(to) = secret.moved_to {
        detail["secret_moved_to"] = json!(to);
    }
    entry.detail = Some(detail.to_string());
    // Fail closed: the field key leaves only after its audit entry is committed (refusals are
    // recorded too, as for decrypt).
    // The guard: the token and the key's version states this was decided on must still hold at
    // that commit (a revocation or disable on another node meanwhile releases nothing).
    state
        .store
        .append_key_use(entry, guard(&p.token_id, &k, &secret.versions))
        .await?;
    let (_, index_secret) = match secret.opened {
        // The secret is the service's own: one that does not open is a server-side problem.
        Opened::Unopenable => {
            return Err(ApiError::Internal(format!(
                "the blind-index secret of key {} does not open",
                k.id
            )));
        }
        opened => opened.into_result()?,
    };
    let field_key = field_key(&index_secret, &body.field)?;
    let encoded = Zeroizing::new(B64.encode(&field_key[..]));
    Ok(Json(BlindIndexKeyAnswer { key: &encoded }).into_response())
}

/// The answer, serialized straight from the zeroized string (no unwiped `serde_json::Value` copy).
#[derive(serde::Serialize)]
struct BlindIndexKeyAnswer<'a> {
    key: &'a str,
}

/// The key's index secret as opened, and what this request did to it.
struct IndexSecret {
    opened: Opened,
    /// The key's versions as read for this decision.
    versions: Arc<Vec<VersionRow>>,
    created: bool,
    moved_to: Option<i64>,
}

/// Read (or create) the key's index secret, open it, and move it to the current version if it is
/// wrapped to an older one.
async fn index_secret(state: &AppState, t: &TenantRow, k: &KeyRow) -> ApiResult<IndexSecret> {
    let context = secret_context();
    let mut versions = state.directory.versions(&k.id, Read::Fresh).await?;
    let mut created = false;
    let row = match state.store.blind_index_secret(&k.id).await? {
        Some(row) => row,
        None => {
            // Like data-key: a key with no usable version cannot start an index (409 / 410).
            let target = current_version(k, &versions)?;
            let (_, wrapped) = state
                .keys
                .public_key(target)?
                .generate_data_key(&context)
                .map_err(crypto)?;
            let mine = BlindIndexSecretRow {
                key_id: k.id.clone(),
                version: target.version,
                wrapped: wrapped.as_bytes().to_vec(),
                created_at: crate::now_ms(),
            };
            // Insert if absent, then use whatever is stored: concurrent first requests agree.
            state.store.insert_blind_index_secret(&mine).await?;
            let row = state
                .store
                .blind_index_secret(&k.id)
                .await?
                .ok_or_else(|| ApiError::Internal("blind-index secret vanished".into()))?;
            created = row.wrapped == mine.wrapped;
            row
        }
    };
    if !versions.iter().any(|v| v.version == row.version) {
        // Stored by a concurrent request under a version newer than the rows read above.
        versions = state.directory.versions(&k.id, Read::Fresh).await?;
    }
    // Retired versions may be opened: moving the secret off them is the way out, as for re-wrap.
    let opened = open_wrapped(
        state,
        t,
        k,
        &versions,
        &row.wrapped,
        &context,
        Retired::Allow,
    )
    .await?;
    let mut moved_to = None;
    if let Opened::Key(from, secret) = &opened
        && let Ok(current) = current_version(k, &versions)
        && current.version > *from
        && move_secret(state, k, *from, current, secret).await?
    {
        moved_to = Some(current.version);
    }
    Ok(IndexSecret {
        opened,
        versions,
        created,
        moved_to,
    })
}

/// Wrap the opened secret to `target` and store it if it is still wrapped to `from`.
async fn move_secret(
    state: &AppState,
    k: &KeyRow,
    from: i64,
    target: &VersionRow,
    secret: &DataKey,
) -> ApiResult<bool> {
    let wrapped = state
        .keys
        .public_key(target)?
        .wrap_data_key(secret, &secret_context())
        .map_err(crypto)?;
    Ok(state
        .store
        .move_blind_index_secret(&k.id, from, target.version, wrapped.as_bytes())
        .await?)
}

/// Called before `version` of `k` is disabled or scheduled for destruction: if the index secret
/// is wrapped to it, move it to the version that stays — the current version, else the newest
/// other enabled or disabled one — so that retiring an old version after a rotation keeps the
/// key's blind indexes. With `None` (the whole key), or when no other version is left, nothing
/// moves: destroying the key destroys its blind indexes.
pub(super) async fn keep_from_version(
    state: &AppState,
    t: &TenantRow,
    k: &KeyRow,
    version: Option<i64>,
) -> ApiResult<()> {
    let Some(leaving) = version else {
        return Ok(());
    };
    let Some(row) = state.store.blind_index_secret(&k.id).await? else {
        return Ok(());
    };
    if row.version != leaving {
        return Ok(());
    }
    let versions = state.directory.versions(&k.id, Read::Fresh).await?;
    let target = current_version(k, &versions)
        .ok()
        .filter(|v| v.version != leaving)
        .or_else(|| {
            versions
                .iter()
                .rev()
                .find(|v| v.version != leaving && (v.state == "enabled" || v.state == "disabled"))
        });
    let Some(target) = target else {
        return Ok(());
    };
    // A secret that cannot be opened (its version already disabled) stays where it is.
    if let Opened::Key(from, secret) = open_wrapped(
        state,
        t,
        k,
        &versions,
        &row.wrapped,
        &secret_context(),
        Retired::Allow,
    )
    .await?
    {
        move_secret(state, k, from, target, &secret).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_keys_match_an_independent_hkdf() {
        // Python: HKDF-SHA256 (RFC 5869) with hmac/hashlib, salt = 32 zero bytes (= none),
        // ikm = 0x0b * 32, info = b"pqkms/v1/blind-index" + field.
        let secret = DataKey::from_bytes(&[0x0b; 32]);
        let hex = |field| hex::encode(&field_key(&secret, field).unwrap()[..]);
        assert_eq!(
            hex("email"),
            "1f55eb99117f59f686fd74f4faf72e57c0857e60a5b424d3d5efd7843508c454"
        );
        assert_eq!(
            hex("ssn"),
            "1c0017546262890b5415f7b95e615a1a782398ad51cf463576ff0ae02449cc82"
        );
    }

    #[test]
    fn field_names_are_bounded() {
        assert!(check_field("").is_err());
        assert!(check_field("e").is_ok());
        assert!(check_field(&"x".repeat(MAX_FIELD_BYTES)).is_ok());
        assert!(check_field(&"x".repeat(MAX_FIELD_BYTES + 1)).is_err());
        // Bytes, not characters: 43 three-byte characters are 129 bytes.
        assert!(check_field(&"€".repeat(43)).is_err());
    }
}
