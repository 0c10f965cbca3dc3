//! One error type for every handler, mapped to `{"error": {"code", "message"}}`. 5xx answers say
//! nothing internal; their cause goes to the log with the request id.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::keys::KeyError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug)]
pub enum ApiError {
    /// 400: the request is not well formed.
    BadRequest(String),
    /// 401: no token, or not a valid one.
    Unauthorized,
    /// 403: the token may not do this (or names a tenant outside its scope).
    Forbidden,
    /// 404: no such resource in the caller's scope.
    NotFound(&'static str),
    /// 409: name taken.
    Conflict(&'static str),
    /// 413: body over the limit.
    TooLarge,
    /// 422: the wrapped key does not open. Uniform, whatever the cause.
    Unopenable,
    /// 409 with a specific code: the key's state forbids this (disabled, retired, no version).
    KeyState(&'static str, String),
    /// 410: the key material was destroyed (crypto-shredded) at this time (Unix ms).
    Destroyed(i64),
    /// 500: logged, never described.
    Internal(String),
    /// 503: the database is unreachable.
    Unavailable(String),
    /// A key use raced a state change on another node (its guard failed); the handler runs again
    /// on fresh rows, so this answers (503, retry) only if that happens twice in a row.
    Stale,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::Conflict("already exists"),
            StoreError::NotFound => ApiError::NotFound("not found"),
            StoreError::Database(cause) => ApiError::Internal(cause),
            StoreError::Stale => ApiError::Stale,
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl ApiError {
    /// The status and the JSON body; batch results carry the body of each failed item.
    pub fn status_and_body(self) -> (StatusCode, serde_json::Value) {
        let (status, code, message) = match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing, invalid, expired or revoked token".into(),
            ),
            ApiError::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "this token may not perform this operation on this tenant".into(),
            ),
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, "not_found", what.into()),
            ApiError::Conflict(what) => (StatusCode::CONFLICT, "conflict", what.into()),
            ApiError::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body exceeds the limit".into(),
            ),
            ApiError::Unopenable => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "decryption_failed",
                "the wrapped key cannot be opened with this tenant, key and context".into(),
            ),
            ApiError::KeyState(code, message) => (StatusCode::CONFLICT, code, message),
            ApiError::Destroyed(at) => {
                return (
                    StatusCode::GONE,
                    json!({ "error": {
                        "code": "key_destroyed",
                        "message": "the key material for this data was destroyed; the data cannot be recovered",
                        "destroyed_at": at,
                    } }),
                );
            }
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log for this request id".into(),
                )
            }
            ApiError::Unavailable(cause) => {
                tracing::error!(%cause, "dependency unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "service temporarily unavailable".into(),
                )
            }
            ApiError::Stale => (
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "the key or token changed during the request; retry".into(),
            ),
        };
        (
            status,
            json!({ "error": { "code": code, "message": message } }),
        )
    }

    /// The JSON body alone.
    pub fn body(self) -> serde_json::Value {
        self.status_and_body().1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.status_and_body();
        (status, Json(body)).into_response()
    }
}
