//! Service configuration: defaults, then a TOML file, then `PQKMS_*` environment variables and
//! command-line flags (clap merges those two; flags win).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Default bind address.
pub const DEFAULT_BIND: &str = "127.0.0.1:8650";
/// Default data directory (SQLite database, root key file, bootstrap token).
pub const DEFAULT_DATA_DIR: &str = "./pqkms-data";

/// The effective configuration of `pqkms serve`.
#[derive(Clone)]
pub struct Config {
    /// Where to listen.
    pub bind: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; `None` means the embedded SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Root key: a file path. `None` means `<data_dir>/root.key`, created on first start, and is
    /// only allowed with the embedded database.
    pub root_key_file: Option<PathBuf>,
    /// Root key given inline (`PQKMS_ROOT_KEY`), in the root key file's format.
    pub root_key_inline: Option<secrecy::SecretString>,
    /// Older root key files, used only to unseal during a root-key rotation.
    pub previous_root_key_files: Vec<PathBuf>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Unsealed tenant private keys kept in memory.
    pub key_cache_capacity: usize,
    /// Database connections.
    pub max_connections: u32,
    /// Per-request time limit, seconds.
    pub request_timeout_secs: u64,
    /// Shortest destruction waiting period a request may ask for, seconds (default 7 days).
    pub min_destroy_waiting_secs: i64,
    /// How often each node runs due destructions and rotations and sweeps its key cache, ms.
    pub lifecycle_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: DEFAULT_BIND
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8650))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            database_url: None,
            root_key_file: None,
            root_key_inline: None,
            previous_root_key_files: Vec::new(),
            max_body_bytes: 64 * 1024,
            key_cache_capacity: 10_000,
            max_connections: 8,
            request_timeout_secs: 30,
            min_destroy_waiting_secs: 7 * 24 * 3600,
            lifecycle_interval_ms: 5000,
        }
    }
}

/// Credentials never print: the inline root key is elided, and a password in the database URL is
/// masked.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("bind", &self.bind)
            .field("data_dir", &self.data_dir)
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("root_key_file", &self.root_key_file)
            .field(
                "root_key_inline",
                &self.root_key_inline.as_ref().map(|_| "[redacted]"),
            )
            .field("previous_root_key_files", &self.previous_root_key_files)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("key_cache_capacity", &self.key_cache_capacity)
            .field("max_connections", &self.max_connections)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("min_destroy_waiting_secs", &self.min_destroy_waiting_secs)
            .field("lifecycle_interval_ms", &self.lifecycle_interval_ms)
            .finish()
    }
}

/// `postgres://user:secret@host/db` -> `postgres://user:***@host/db`; also masks `password=`
/// query parameters.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find("password=") {
        let start = q + "password=".len();
        let end = out[start..].find('&').map_or(out.len(), |i| start + i);
        out.replace_range(start..end, "***");
    }
    out
}

/// The TOML file's shape; every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    bind: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    root_key_file: Option<PathBuf>,
    previous_root_key_files: Option<Vec<PathBuf>>,
    max_body_bytes: Option<usize>,
    key_cache_capacity: Option<usize>,
    max_connections: Option<u32>,
    request_timeout_secs: Option<u64>,
    min_destroy_waiting_secs: Option<i64>,
    lifecycle_interval_ms: Option<u64>,
}

impl FileConfig {
    /// Read a TOML file. The root key itself is never accepted in the file: point to it.
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))
    }

    /// Apply on top of defaults.
    pub fn apply(self, c: &mut Config) {
        if let Some(v) = self.bind {
            c.bind = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if self.database_url.is_some() {
            c.database_url = self.database_url;
        }
        if self.root_key_file.is_some() {
            c.root_key_file = self.root_key_file;
        }
        if let Some(v) = self.previous_root_key_files {
            c.previous_root_key_files = v;
        }
        if let Some(v) = self.max_body_bytes {
            c.max_body_bytes = v;
        }
        if let Some(v) = self.key_cache_capacity {
            c.key_cache_capacity = v;
        }
        if let Some(v) = self.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = self.request_timeout_secs {
            c.request_timeout_secs = v;
        }
        if let Some(v) = self.min_destroy_waiting_secs {
            c.min_destroy_waiting_secs = v;
        }
        if let Some(v) = self.lifecycle_interval_ms {
            c.lifecycle_interval_ms = v;
        }
    }
}

/// Longest duration accepted anywhere (waiting periods, rotation periods): 100 years. Keeps
/// `now + duration` far from overflow.
pub const MAX_DURATION_SECS: i64 = 100 * 365 * 86_400;

/// Parse a duration like `90d`, `12h`, `30m`, `45s` into seconds (at most 100 years).
pub fn parse_duration_secs(s: &str) -> Option<i64> {
    let s = s.trim();
    // The unit is one ASCII letter; anything else (including a multi-byte last character) is
    // not a duration.
    let unit = s.chars().last().filter(char::is_ascii)?;
    let (n, unit) = (&s[..s.len() - 1], unit.to_string());
    let unit = unit.as_str();
    let n: i64 = n.parse().ok().filter(|n| *n >= 0)?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
        .filter(|secs| *secs <= MAX_DURATION_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_secs("90d"), Some(90 * 86_400));
        assert_eq!(parse_duration_secs("12h"), Some(43_200));
        assert_eq!(parse_duration_secs("1s"), Some(1));
        assert_eq!(parse_duration_secs("36500d"), Some(MAX_DURATION_SECS));
        for bad in [
            "",
            "d",
            "-1d",
            "10",
            "10w",
            "1.5h",
            "36501d",
            "106751991167d",
            "99999999999999999d",
        ] {
            assert_eq!(parse_duration_secs(bad), None, "{bad}");
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = Config {
            database_url: Some("postgres://kms:hunter2@db:5432/kms?sslmode=require&password=alsosecret".into()),
            root_key_inline: Some("pqkms-root-key-v1 1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into()),
            ..Config::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("alsosecret"), "{shown}");
        assert!(!shown.contains("00112233"), "{shown}");
        assert!(shown.contains("postgres://kms:***@db:5432/kms"), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
    }

    #[test]
    fn file_rejects_unknown_fields_such_as_an_inline_root_key() {
        let r: Result<FileConfig, _> = toml::from_str("root_key = \"abc\"");
        assert!(r.is_err());
        let f: FileConfig =
            toml::from_str("bind = \"127.0.0.1:9000\"\nmax_body_bytes = 10").unwrap();
        let mut c = Config::default();
        f.apply(&mut c);
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.max_body_bytes, 10);
    }
}
