//! The crate's one error type.

use core::fmt;

/// An error answer of the service: the HTTP status, its `{"error": {"code", "message"}}` body and
/// the `X-Request-Id` to quote when reporting a problem. The message is for humans and may change;
/// branch on the [`Error`] variant instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// HTTP status code.
    pub status: u16,
    /// The `code` of the error body (`"forbidden"`, ...), or `""` when the body had none.
    pub code: String,
    /// The `message` of the error body.
    pub message: String,
    /// The `X-Request-Id` header of the answer, when present.
    pub request_id: Option<String>,
    /// `key_destroyed` only: when the key material was destroyed (Unix ms).
    pub destroyed_at: Option<i64>,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)?;
        if let Some(id) = &self.request_id {
            write!(f, " (request {id})")?;
        }
        Ok(())
    }
}

/// Why a client operation failed.
///
/// The first group maps the service's error codes one to one (see docs/API.md, "Errors"); each
/// carries the [`ServiceError`] details. Then come transport failures, then local ones.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// 400 `bad_request`: the request is malformed (a bad name, an unknown role, ...).
    BadRequest(ServiceError),
    /// 401 `unauthorized`: missing, unknown, expired or revoked token.
    Unauthorized(ServiceError),
    /// 403 `forbidden`: the token's roles or tenant scope do not allow this.
    Forbidden(ServiceError),
    /// 404 `not_found`: no such tenant, key or token inside the caller's scope.
    NotFound(ServiceError),
    /// 409 `conflict`: the name is taken.
    Conflict(ServiceError),
    /// 409 `key_disabled`: the key version needed is disabled or scheduled for destruction (or the
    /// key has no enabled version). Recoverable: an admin can enable it or cancel the destruction.
    KeyDisabled(ServiceError),
    /// 409 `version_retired`: the wrapped key names a version below the key's
    /// `min_decryption_version`. Re-wrap it ([`Client::rewrap`](crate::Client::rewrap)) or have an
    /// admin lower the floor.
    VersionRetired(ServiceError),
    /// 409 `invalid_state`: a lifecycle request matched no version in a state it applies to
    /// (disabling a disabled version, cancelling when nothing is scheduled, ...).
    InvalidState(ServiceError),
    /// 413 `body_too_large`.
    BodyTooLarge(ServiceError),
    /// 422 `decryption_failed`: the wrapped key does not open with this tenant, key and context.
    /// Uniform on purpose: the cause is not revealed.
    DecryptionFailed(ServiceError),
    /// 410 `key_destroyed`: the key version was crypto-shredded; data under it is gone for good.
    /// [`ServiceError::destroyed_at`] says when. Do not retry.
    KeyDestroyed(ServiceError),
    /// 500 `internal`: server-side failure; quote the request id to the operator.
    Internal(ServiceError),
    /// 503 `unavailable`: retried with backoff before being returned.
    Unavailable(ServiceError),
    /// Any other error answer (an unknown code or status).
    Unexpected(ServiceError),
    /// The service could not be reached (connection refused, DNS, TLS). Retried before returned.
    Connect(reqwest::Error),
    /// The request or the connection timed out. Not retried: the service may have acted on it.
    Timeout(reqwest::Error),
    /// Another transport failure (the connection dropped mid-answer, ...).
    Transport(reqwest::Error),
    /// A success answer that does not have the documented shape.
    InvalidResponse(String),
    /// A local cryptographic operation failed. A field that does not decrypt — tampered, moved to
    /// another row or field, or under another data key — is `Crypto(Error::Decryption)`.
    Crypto(pqkms_envelope::Error),
    /// The tenant public key the service returned does not have the pinned fingerprint.
    FingerprintMismatch {
        /// The fingerprint the caller pinned.
        expected: String,
        /// The fingerprint of the key the service returned.
        actual: String,
    },
    /// A decrypted field is not a valid value of the requested type (for example a 5-byte `i64`).
    InvalidValue(String),
    /// The client was configured with an invalid value (base URL, limits, ...).
    Config(String),
}

impl Error {
    /// The service's error code for service errors (`"decryption_failed"`, ...), else `None`.
    pub fn code(&self) -> Option<&str> {
        self.service_error().map(|e| e.code.as_str())
    }

    /// The details of a service error answer, else `None`.
    pub fn service_error(&self) -> Option<&ServiceError> {
        match self {
            Error::BadRequest(e)
            | Error::Unauthorized(e)
            | Error::Forbidden(e)
            | Error::NotFound(e)
            | Error::Conflict(e)
            | Error::KeyDisabled(e)
            | Error::VersionRetired(e)
            | Error::InvalidState(e)
            | Error::BodyTooLarge(e)
            | Error::DecryptionFailed(e)
            | Error::KeyDestroyed(e)
            | Error::Internal(e)
            | Error::Unavailable(e)
            | Error::Unexpected(e) => Some(e),
            _ => None,
        }
    }

    /// Map an error answer to its variant: by `code`, falling back to the status.
    pub(crate) fn from_service(e: ServiceError) -> Error {
        let by_code = match e.code.as_str() {
            "bad_request" => Some(Error::BadRequest as fn(ServiceError) -> Error),
            "unauthorized" => Some(Error::Unauthorized as fn(_) -> _),
            "forbidden" => Some(Error::Forbidden as fn(_) -> _),
            "not_found" => Some(Error::NotFound as fn(_) -> _),
            "conflict" => Some(Error::Conflict as fn(_) -> _),
            "key_disabled" => Some(Error::KeyDisabled as fn(_) -> _),
            "version_retired" => Some(Error::VersionRetired as fn(_) -> _),
            "invalid_state" => Some(Error::InvalidState as fn(_) -> _),
            "body_too_large" => Some(Error::BodyTooLarge as fn(_) -> _),
            "decryption_failed" => Some(Error::DecryptionFailed as fn(_) -> _),
            "key_destroyed" => Some(Error::KeyDestroyed as fn(_) -> _),
            "internal" => Some(Error::Internal as fn(_) -> _),
            "unavailable" => Some(Error::Unavailable as fn(_) -> _),
            _ => None,
        };
        let variant = by_code.unwrap_or(match e.status {
            400 => Error::BadRequest,
            401 => Error::Unauthorized,
            403 => Error::Forbidden,
            404 => Error::NotFound,
            409 => Error::Conflict,
            410 => Error::KeyDestroyed,
            413 => Error::BodyTooLarge,
            422 => Error::DecryptionFailed,
            500 => Error::Internal,
            503 => Error::Unavailable,
            _ => Error::Unexpected,
        });
        variant(e)
    }

    pub(crate) fn from_transport(e: reqwest::Error) -> Error {
        if e.is_connect() {
            Error::Connect(e)
        } else if e.is_timeout() {
            Error::Timeout(e)
        } else {
            Error::Transport(e)
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(e) = self.service_error() {
            return write!(f, "pqkms service error: {e}");
        }
        match self {
            Error::Connect(e) => write!(f, "cannot connect to the pqkms service: {e}"),
            Error::Timeout(e) => write!(f, "pqkms request timed out: {e}"),
            Error::Transport(e) => write!(f, "pqkms request failed: {e}"),
            Error::InvalidResponse(m) => write!(f, "unexpected answer from the pqkms service: {m}"),
            Error::Crypto(e) => write!(f, "{e}"),
            Error::FingerprintMismatch { expected, actual } => write!(
                f,
                "tenant public key fingerprint {actual} does not match the pinned {expected}"
            ),
            Error::InvalidValue(m) => write!(f, "decrypted field is not a valid value: {m}"),
            Error::Config(m) => write!(f, "invalid client configuration: {m}"),
            // Service errors are handled above.
            _ => f.write_str("pqkms service error"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) | Error::Timeout(e) | Error::Transport(e) => Some(e),
            Error::Crypto(e) => Some(e),
            _ => None,
        }
    }
}

impl From<pqkms_envelope::Error> for Error {
    fn from(e: pqkms_envelope::Error) -> Self {
        Error::Crypto(e)
    }
}

/// The HTTP status the service uses for an error `code` (for the per-item errors of a re-wrap
/// batch, which carry a code but no status of their own); 0 for an unknown code.
pub(crate) fn status_of_code(code: &str) -> u16 {
    match code {
        "bad_request" => 400,
        "unauthorized" => 401,
        "forbidden" => 403,
        "not_found" => 404,
        "conflict" | "key_disabled" | "version_retired" | "invalid_state" => 409,
        "key_destroyed" => 410,
        "body_too_large" => 413,
        "decryption_failed" => 422,
        "internal" => 500,
        "unavailable" => 503,
        _ => 0,
    }
}

/// Shorthand used throughout the crate.
pub type Result<T> = core::result::Result<T, Error>;
