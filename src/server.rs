//! Starting the service: data directory, root key, store, bootstrap token, HTTP listener, graceful
//! shutdown.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pqkms_envelope::RootKey;
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::audit::NewAuditEntry;
use crate::auth::new_token;
use crate::config::Config;
use crate::http::{AppParts, AppState, Limits, metrics::Metrics, router};
use crate::keys::KeyService;
use crate::store::{Directory, SqlStore, Store, TokenRow};

/// Root key file format: `pqkms-root-key-v1 <version> <64 hex digits>`.
const ROOT_KEY_HEADER: &str = "pqkms-root-key-v1";

/// Why the service could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn err(msg: impl Into<String>) -> StartError {
    StartError(msg.into())
}

/// Parse the root key file format. The message never contains the key.
pub fn parse_root_key(text: &str) -> Result<RootKey, StartError> {
    let mut parts = text.split_whitespace();
    let (Some(ROOT_KEY_HEADER), Some(version), Some(hex_key), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(err(format!(
            "root key must read `{ROOT_KEY_HEADER} <version> <64 hex digits>`"
        )));
    };
    let version: u32 = version
        .parse()
        .map_err(|_| err("root key version is not a number"))?;
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(hex_key, &mut bytes[..])
        .map_err(|_| err("root key is not 64 hex digits"))?;
    RootKey::from_bytes(version, &bytes).map_err(|e| err(format!("root key: {e}")))
}

/// A new root key file (mode 0600, must not exist) for `pqkms root-key generate`.
pub fn generate_root_key_file(path: &Path, version: u32) -> Result<(), StartError> {
    let key = RootKey::generate(version).map_err(|e| err(format!("root key: {e}")))?;
    let text = Zeroizing::new(format!(
        "{ROOT_KEY_HEADER} {} {}\n",
        key.version(),
        hex::encode(key.expose_secret())
    ));
    write_private_file(path, text.as_bytes())
        .map_err(|e| err(format!("cannot create {}: {e}", path.display())))
}

/// Write `contents` to a new file readable by the owner only. Fails if the file exists.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

fn load_root_key(config: &Config, embedded: bool) -> Result<RootKey, StartError> {
    if let Some(inline) = &config.root_key_inline {
        return parse_root_key(inline.expose_secret());
    }
    let (path, may_create) = match &config.root_key_file {
        Some(p) => (p.clone(), false),
        None if embedded => (config.data_dir.join("root.key"), true),
        None => {
            return Err(err(
                "PostgreSQL needs a root key shared by every node: set --root-key-file \
                 (PQKMS_ROOT_KEY_FILE) or PQKMS_ROOT_KEY",
            ));
        }
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse_root_key(&Zeroizing::new(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
            let key = RootKey::generate(1).map_err(|e| err(format!("root key: {e}")))?;
            let text = Zeroizing::new(format!(
                "{ROOT_KEY_HEADER} {} {}\n",
                key.version(),
                hex::encode(key.expose_secret())
            ));
            write_private_file(&path, text.as_bytes())
                .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
            tracing::info!(path = %path.display(), "created a new root key (mode 0600); back it up");
            Ok(key)
        }
        Err(e) => Err(err(format!("cannot read root key {}: {e}", path.display()))),
    }
}

fn create_data_dir(dir: &Path) -> Result<(), StartError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err(format!("cannot restrict {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// On an empty store, create the first operator token and write it to
/// `<data dir>/operator.token` (0600). The token itself is never logged.
async fn bootstrap(store: &dyn Store, data_dir: &Path) -> Result<(), StartError> {
    if !store
        .is_empty()
        .await
        .map_err(|e| err(format!("database: {e}")))?
    {
        return Ok(());
    }
    let path = data_dir.join("operator.token");
    let (token, id) = new_token().map_err(|_| err("random number generator failed"))?;
    write_private_file(&path, format!("{}\n", token.as_str()).as_bytes())
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))?;
    let now = crate::now_ms();
    let row = TokenRow {
        id: id.clone(),
        token_hash: crate::auth::token_hash(&token),
        tenant_id: None,
        tenant_name: None,
        roles: "operator".into(),
        created_at: now,
        expires_at: None,
        revoked_at: None,
    };
    let audit = NewAuditEntry {
        time_ms: now,
        principal: "bootstrap".into(),
        tenant: None,
        key: None,
        version: None,
        operation: "token.create.operator".into(),
        outcome: "ok".into(),
        request_id: "bootstrap".into(),
        context_hash: None,
        detail: None,
    };
    if let Err(e) = store.create_token(&row, audit).await {
        let _ = std::fs::remove_file(&path);
        return Err(err(format!("database: {e}")));
    }
    tracing::info!(path = %path.display(), token_id = %id, "wrote the bootstrap operator token");
    Ok(())
}

/// A started service.
pub struct Running {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The state (tests reach the store and key cache through it).
    pub state: AppState,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    worker_stop: tokio::sync::watch::Sender<bool>,
    worker: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish, close the database.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(());
        let r = self.task.await.map_err(std::io::Error::other)?;
        let _ = self.worker_stop.send(true);
        let _ = self.worker.await;
        self.state.store.close().await;
        r
    }
}

/// Create the embedded database file with mode 0600 before SQLite opens it; SQLite gives its
/// `-wal` and `-shm` files the same mode.
fn create_private_db_file(config: &Config) -> Result<(), StartError> {
    if config.database_url.is_some() {
        return Ok(());
    }
    let path = config.data_dir.join("pqkms.db");
    match write_private_file(&path, b"") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(format!("cannot create {}: {e}", path.display()))),
    }
}

/// The database URL the config implies.
pub fn database_url(config: &Config) -> String {
    config.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            config.data_dir.join("pqkms.db").display()
        )
    })
}

/// Start the service in the background.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    create_data_dir(&config.data_dir)?;
    let url = database_url(config);
    let embedded = config
        .database_url
        .as_deref()
        .is_none_or(|u| u.starts_with("sqlite:"));
    let root = load_root_key(config, embedded)?;
    let previous = config
        .previous_root_key_files
        .iter()
        .map(|p| {
            let text = Zeroizing::new(
                std::fs::read_to_string(p)
                    .map_err(|e| err(format!("cannot read {}: {e}", p.display())))?,
            );
            parse_root_key(&text)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if previous.iter().any(|r| r.version() == root.version()) {
        return Err(err(
            "a previous root key has the same version as the current one",
        ));
    }
    create_private_db_file(config)?;
    let store = SqlStore::connect(&url, config.max_connections)
        .await
        .map_err(|e| err(format!("database {}: {e}", crate::config::redact_url(&url))))?;
    let store: Arc<dyn Store> = Arc::new(store);
    bootstrap(store.as_ref(), &config.data_dir).await?;

    let state = AppState::new(AppParts {
        directory: Arc::new(Directory::new(store.clone(), config.key_cache_capacity)),
        store,
        keys: Arc::new(KeyService::new(root, previous, config.key_cache_capacity)),
        metrics: Arc::new(Metrics::default()),
        min_destroy_waiting_secs: config.min_destroy_waiting_secs,
    });
    let app = router(
        state.clone(),
        Limits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: Duration::from_secs(config.request_timeout_secs),
        },
    );
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| err(format!("cannot listen on {}: {e}", config.bind)))?;
    let addr = listener.local_addr().map_err(|e| err(e.to_string()))?;
    // Answers are small and each one is written whole: send it now rather than let Nagle hold the
    // tail of a response for the client's ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
    });
    let (worker_stop, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(crate::http::lifecycle_worker(
        state.clone(),
        Duration::from_millis(config.lifecycle_interval_ms.max(10)),
        stop_rx,
    ));
    tracing::info!(%addr, database = %crate::config::redact_url(&url), "pqkms listening");
    Ok(Running {
        addr,
        state,
        shutdown: tx,
        task,
        worker_stop,
        worker,
    })
}

/// Run until SIGINT or SIGTERM, then shut down gracefully.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let running = start(&config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    running.stop().await.map_err(|e| err(e.to_string()))?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Where `pqkms serve` writes the bootstrap token.
pub fn operator_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("operator.token")
}
