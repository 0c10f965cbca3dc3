//! The HTTP API (v1): router, request plumbing, and the handlers in [`handlers`].

mod blind_index;
mod error;
mod handlers;
mod lifecycle;
pub mod metrics;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

pub use error::ApiError;
pub use lifecycle::lifecycle_tick;
pub(crate) use lifecycle::worker as lifecycle_worker;

use crate::auth::{Principal, token_hash};
use crate::keys::KeyService;
use crate::store::{Directory, Read, Store};

/// Shared by every handler: one `Arc`, so the clone axum makes for every extractor and middleware
/// that takes the state is one reference count, not one per part.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    /// Share `parts` with every handler.
    pub fn new(parts: AppParts) -> AppState {
        AppState(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct AppParts {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Key creation and the unsealed-key cache.
    pub keys: Arc<KeyService>,
    /// Cached store rows for the key-use hot path (re-checked at each use's audit commit).
    pub directory: Arc<Directory>,
    /// Counters for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// Shortest destruction waiting period a request may ask for, seconds.
    pub min_destroy_waiting_secs: i64,
}

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a request may take before 503.
    pub request_timeout: Duration,
}

/// The whole API.
pub fn router(state: AppState, limits: Limits) -> Router {
    let api = Router::new()
        .route("/v1/tenants", post(handlers::create_tenant))
        .route("/v1/tenants/{tenant}/tokens", post(handlers::create_token))
        .route(
            "/v1/tenants/{tenant}/tokens/{id}",
            delete(handlers::revoke_token),
        )
        .route(
            "/v1/tenants/{tenant}/keys",
            post(handlers::create_key).get(handlers::list_keys),
        )
        .route("/v1/tenants/{tenant}/keys/{key}", get(handlers::get_key))
        .route(
            "/v1/tenants/{tenant}/keys/{key}/data-key",
            post(handlers::generate_data_key),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/decrypt",
            post(handlers::decrypt_data_key),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/public-key",
            get(handlers::public_key),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/rotate",
            post(lifecycle::rotate),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/rewrap",
            post(lifecycle::rewrap),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/rewrap-batch",
            post(lifecycle::rewrap_batch),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/config",
            post(lifecycle::configure),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/disable",
            post(lifecycle::disable),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/enable",
            post(lifecycle::enable),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/destroy",
            post(lifecycle::destroy),
        )
        .route(
            "/v1/tenants/{tenant}/keys/{key}/cancel-destroy",
            post(lifecycle::cancel_destroy),
        )
        .route("/v1/root-key/reseal", post(lifecycle::reseal_root))
        .route("/v1/audit", get(handlers::read_audit))
        .route("/v1/audit/verify", get(handlers::verify_audit))
        .route("/v1/openapi.json", get(handlers::openapi))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route(
            "/v1/tenants/{tenant}/keys/{key}/blind-index-key",
            post(blind_index::blind_index_key),
        )
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::no_method);
    with_request_context(
        api.layer(DefaultBodyLimit::max(limits.max_body_bytes)),
        state,
        limits,
    )
}

/// Wrap every route of `routes` in [`request_context`].
fn with_request_context(routes: Router<AppState>, state: AppState, limits: Limits) -> Router {
    routes
        .layer(middleware::from_fn_with_state(
            RequestContext {
                state: state.clone(),
                timeout: limits.request_timeout,
            },
            request_context,
        ))
        .with_state(state)
}

/// The request id every response carries and every audit entry records.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What [`request_context`] needs besides the request.
#[derive(Clone)]
struct RequestContext {
    state: AppState,
    timeout: Duration,
}

/// Every request's one middleware: assign a request id, answer 503 past the time limit, count the
/// answer by route and status. One layer rather than one per concern: each `from_fn` layer boxes
/// a future and clones the inner service per request.
async fn request_context(
    axum::extract::State(cx): axum::extract::State<RequestContext>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = next_request_id();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", request_id = %id, method = %req.method(), route = %route);
    let answer = async move {
        match tokio::time::timeout(cx.timeout, next.run(req)).await {
            Ok(response) => response,
            // Inside the span: the 503's log line carries the request id too.
            Err(_) => axum::response::IntoResponse::into_response(ApiError::Unavailable(
                "request timed out".into(),
            )),
        }
    };
    let mut response = tracing::Instrument::instrument(answer, span).await;
    cx.state.metrics.record(route, response.status().as_u16());
    tracing::debug!(request_id = %id, route = %route, status = response.status().as_u16(), "answered");
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// A request id: the first 64 bits of SHA-256 over a per-process random key and a counter — a
/// keyed PRF of the counter, so ids are unique within the process up to 64-bit collisions, like
/// the random ids they replaced, and as unpredictable (a bare counter would tell every client how
/// many requests others make), without a `getrandom` system call per request.
fn next_request_id() -> String {
    static KEY: LazyLock<[u8; 32]> = LazyLock::new(|| {
        let mut key = [0u8; 32];
        // Without OS randomness no key operation works either; ids would then only lose their
        // unpredictability, not their uniqueness.
        let _ = getrandom::fill(&mut key);
        key
    });
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let digest = Sha256::new()
        .chain_update(*KEY)
        .chain_update(n.to_le_bytes())
        .finalize();
    format!("req_{}", crate::hex_lower(&digest[..8]))
}

/// JSON body extractor whose rejections use our error format: 413 over the limit, 400 otherwise.
/// The body must be a JSON object: serde would otherwise accept a struct written as an array.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::BadRequest(
                "Expected request with `Content-Type: application/json`".into(),
            ));
        }
        let body = match Bytes::from_request(req, state).await {
            Ok(body) => body,
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiError::TooLarge);
            }
            Err(rejection) => return Err(ApiError::BadRequest(rejection.body_text())),
        };
        // Parsed once, straight into the type. A document that starts with `{` is an object if it
        // parses at all; anything else is refused before serde could read a struct from an array.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(
                match serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
                    Ok(_) => ApiError::BadRequest("the body must be a JSON object".into()),
                    Err(e) => body_error(&e),
                },
            );
        }
        serde_json::from_slice(&body)
            .map(ApiJson)
            .map_err(|e| body_error(&e))
    }
}

/// A body that is not JSON, or JSON of the wrong shape for its type.
fn body_error(e: &serde_json::Error) -> ApiError {
    ApiError::BadRequest(if e.is_data() {
        format!("invalid body: {e}")
    } else {
        format!("Failed to parse the request body as JSON: {e}")
    })
}

/// `application/json`, or any `application/*+json`, parameters allowed: axum's `Json` rule, with
/// the same parser (`mime`).
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(mime) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<mime::Mime>().ok())
    else {
        return false;
    };
    mime.type_() == "application"
        && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
}

/// Path parameters with our error format on rejection (e.g. invalid percent-encoding).
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|r| ApiError::BadRequest(r.body_text()))
    }
}

/// Query parameters with our error format on rejection.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|r| ApiError::BadRequest(r.body_text()))
    }
}

/// The authenticated caller of an admin route, read fresh from the database. Missing, unknown,
/// expired and revoked tokens are all 401.
pub struct Auth(pub Principal);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = bearer_hash(parts)?;
        authenticate(state, &hash, Read::Fresh).await.map(Auth)
    }
}

/// The caller of a key-use route: authenticated from the token cache (the use's audit commit
/// checks the token is still live; see [`crate::store::Directory`]). [`Caller::principal`] with
/// [`Read::Fresh`] authenticates again from the database, for the retry after a stale guard.
pub struct Caller {
    token_hash: String,
    principal: Principal,
}

impl Caller {
    /// The principal, as read at extraction (`Cached`) or from the database now (`Fresh`).
    pub async fn principal(&self, state: &AppState, read: Read) -> Result<Principal, ApiError> {
        match read {
            Read::Cached => Ok(self.principal.clone()),
            Read::Fresh => authenticate(state, &self.token_hash, Read::Fresh).await,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token_hash = bearer_hash(parts)?;
        let principal = authenticate(state, &token_hash, Read::Cached).await?;
        Ok(Caller {
            token_hash,
            principal,
        })
    }
}

/// The SHA-256 of the bearer token in the `Authorization` header (the token itself goes no
/// further than this function).
fn bearer_hash(parts: &Parts) -> Result<String, ApiError> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::Unauthorized)?;
    // The scheme name is case-insensitive (RFC 9110 §11.1).
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    Ok(token_hash(token))
}

/// The live principal of a token hash; expiry is checked against the clock on every call.
async fn authenticate(state: &AppState, hash: &str, read: Read) -> Result<Principal, ApiError> {
    let row = state
        .directory
        .token(hash, read)
        .await
        .map_err(ApiError::from)?
        .ok_or(ApiError::Unauthorized)?;
    Principal::from_token((*row).clone(), crate::now_ms()).ok_or(ApiError::Unauthorized)
}

#[cfg(test)]
mod tests {
    use super::{ApiError, ApiJson, json_content_type, next_request_id};
    use axum::extract::{FromRequest, Request};
    use axum::http::HeaderMap;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
    }

    async fn extract(content_type: Option<&str>, body: &str) -> Result<String, String> {
        let mut req = Request::builder().method("POST").uri("/");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let req = req
            .body(axum::body::Body::from(body.to_owned()))
            .expect("request");
        match ApiJson::<Body>::from_request(req, &()).await {
            Ok(ApiJson(b)) => Ok(b.name),
            Err(ApiError::BadRequest(m)) => Err(m),
            Err(other) => Err(format!("not a 400: {other:?}")),
        }
    }

    /// One parse straight into the type, with the answers the two-step parse gave: objects only,
    /// syntax and data errors told apart, JSON content types only.
    #[tokio::test]
    async fn json_bodies_are_objects_of_the_right_shape() {
        let json = Some("application/json");
        assert_eq!(extract(json, r#"{"name":"a"}"#).await, Ok("a".into()));
        assert_eq!(
            extract(
                Some("application/json; charset=utf-8"),
                " \n\t{\"name\":\"b\"} "
            )
            .await,
            Ok("b".into())
        );
        assert_eq!(
            extract(Some("Application/Problem+JSON"), r#"{"name":"c"}"#).await,
            Ok("c".into())
        );
        for (body, expected) in [
            (r#"["a"]"#, "the body must be a JSON object"),
            ("null", "the body must be a JSON object"),
            (" 5", "the body must be a JSON object"),
            ("", "Failed to parse the request body as JSON"),
            ("hello", "Failed to parse the request body as JSON"),
            (r#"{"name":"#, "Failed to parse the request body as JSON"),
            (
                r#"{"name":"a"} x"#,
                "Failed to parse the request body as JSON",
            ),
            (r#"{"name":5}"#, "invalid body: invalid type"),
            (r#"{"name":"a","other":1}"#, "invalid body: unknown field"),
            ("{}", "invalid body: missing field"),
            // Refused since the one-step parse (the `Value` step kept the last): an ambiguous
            // body is not guessed at.
            (
                r#"{"name":"a","name":"b"}"#,
                "invalid body: duplicate field",
            ),
        ] {
            let got = extract(json, body).await;
            assert!(
                matches!(&got, Err(m) if m.starts_with(expected)),
                "{body:?}: {got:?}"
            );
        }
        for ct in [
            None,
            Some("text/plain"),
            Some("application/xml"),
            Some("json"),
        ] {
            assert!(
                extract(ct, r#"{"name":"a"}"#).await.is_err(),
                "{ct:?} accepted"
            );
        }
    }

    /// A request past the time limit answers 503 in the error shape, and still carries its request
    /// id and is counted, like every other answer.
    #[tokio::test]
    async fn a_request_past_the_time_limit_answers_503_with_its_id() {
        use super::{AppParts, AppState, Limits, metrics::Metrics, with_request_context};
        use crate::keys::KeyService;
        use crate::store::{Directory, SqlStore, Store};
        use axum::routing::get;
        use std::sync::Arc;
        use std::time::Duration;

        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let store: Arc<dyn Store> = Arc::new(SqlStore::connect(&url, 2).await.expect("store"));
        let root = pqkms_envelope::RootKey::generate(1).expect("root key");
        let state = AppState::new(AppParts {
            directory: Arc::new(Directory::new(store.clone(), 8)),
            store,
            keys: Arc::new(KeyService::new(root, Vec::new(), 8)),
            metrics: Arc::new(Metrics::default()),
            min_destroy_waiting_secs: 0,
        });
        let routes = axum::Router::new()
            .route(
                "/slow",
                get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }),
            )
            .route("/fast", get(|| async { "ok" }));
        let limits = Limits {
            max_body_bytes: 1024,
            request_timeout: Duration::from_millis(50),
        };
        let app = with_request_context(routes, state.clone(), limits);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let get = |path: &str| client.get(format!("{base}{path}")).send();

        let slow = get("/slow").await.expect("answer");
        assert_eq!(slow.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
        assert!(slow.headers().contains_key("x-request-id"));
        let v: serde_json::Value = slow.json().await.expect("JSON");
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        let fast = get("/fast").await.expect("answer");
        assert_eq!(fast.status(), reqwest::StatusCode::OK);

        let counted = state.metrics.render(0, Default::default());
        assert!(
            counted.contains(r#"route="/slow",status="503"} 1"#),
            "{counted}"
        );
        assert!(
            counted.contains(r#"route="/fast",status="200"} 1"#),
            "{counted}"
        );
    }

    #[test]
    fn json_content_types() {
        let accepts = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("content-type", v.parse().expect("header"));
            json_content_type(&h)
        };
        assert!(accepts("application/json"));
        assert!(accepts("application/json; charset=utf-8"));
        assert!(accepts("application/vnd.api+json"));
        assert!(accepts("application/json+xml"));
        assert!(!accepts("application/jsonx"));
        assert!(!accepts("application/json; foo"));
        assert!(!accepts("text/json"));
        assert!(!json_content_type(&HeaderMap::new()));
    }

    /// Request ids keep their format, do not repeat, and do not count: neighbours differ in many
    /// bits (a counter, or a counter under a fixed offset, would differ in a few low ones).
    #[test]
    fn request_ids_are_unique_and_do_not_reveal_a_count() {
        let ids: Vec<u64> = (0..10_000)
            .map(|_| {
                let id = next_request_id();
                assert_eq!(id.len(), 20, "{id}");
                let hex = id.strip_prefix("req_").expect("req_ prefix");
                u64::from_str_radix(hex, 16).expect("16 hex digits")
            })
            .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let mean_bits_changed = ids
            .windows(2)
            .map(|w| (w[0] ^ w[1]).count_ones())
            .sum::<u32>() as f64
            / (ids.len() - 1) as f64;
        assert!(
            (28.0..36.0).contains(&mean_bits_changed),
            "{mean_bits_changed}"
        );
    }
}
