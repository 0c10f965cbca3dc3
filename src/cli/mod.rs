//! The `pqkms` command line: `serve`, and client commands in the style of Vault's CLI
//! (`PQKMS_ADDR`, `PQKMS_TOKEN`, human output by default, `--json` for scripts).

mod client;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, FileConfig};

/// pqkms: post-quantum envelope-encryption key management.
#[derive(Parser, Debug)]
#[command(name = "pqkms", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Bearer tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Tenant keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Data keys for envelope encryption.
    #[command(subcommand, name = "data-key")]
    DataKey(DataKeyCmd),
    /// The audit chain.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Root-key rotation (see docs/OPERATIONS.md for the procedure).
    #[command(subcommand, name = "root-key")]
    RootKey(RootKeyCmd),
}

#[derive(Subcommand, Debug)]
enum RootKeyCmd {
    /// Write a new root key file (mode 0600; refuses to overwrite). Offline.
    Generate {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Its version: one more than the current root key's.
        #[arg(long)]
        version: u32,
    },
    /// Ask the service to re-seal every tenant key under its current root key. Operator token.
    Reseal {
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `pqkms serve` options. Each flag also reads a `PQKMS_*` environment variable; both override
/// the TOML file given with `--config`.
#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "PQKMS_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8650].
    #[arg(long, env = "PQKMS_BIND")]
    bind: Option<std::net::SocketAddr>,
    /// Data directory [default: ./pqkms-data].
    #[arg(long, env = "PQKMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database URL (postgres://... for several nodes) [default: SQLite in the data directory].
    #[arg(long, env = "PQKMS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Root key file shared by all nodes [default: <data dir>/root.key, created on first start].
    #[arg(long, env = "PQKMS_ROOT_KEY_FILE")]
    root_key_file: Option<PathBuf>,
    /// An older root key file, kept only to unseal during a root-key rotation (repeatable).
    #[arg(long = "previous-root-key-file")]
    previous_root_key_files: Vec<PathBuf>,
    /// Largest request body in bytes [default: 65536].
    #[arg(long, env = "PQKMS_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
}

/// Where and as whom the client commands talk.
#[derive(Args, Debug, Clone)]
struct ClientArgs {
    /// Service address.
    #[arg(
        long,
        env = "PQKMS_ADDR",
        default_value = "http://127.0.0.1:8650",
        global = true
    )]
    addr: String,
    /// Bearer token.
    #[arg(long, env = "PQKMS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the service's JSON answer instead of a summary.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum TenantCmd {
    /// Create a tenant (and its key `default`). Needs an operator token.
    Create {
        /// 1-64 of a-z, 0-9, '-'.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Schedule destruction of every key the tenant owns (crypto-shredding). Needs a
    /// tenant-admin token of that tenant; cancel per key with `key cancel-destroy`.
    Shred {
        /// Tenant.
        name: String,
        /// Waiting period before the material is deleted, e.g. 30d.
        #[arg(long, default_value = "30d")]
        waiting_period: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Arguments shared by the key lifecycle commands.
#[derive(Args, Debug)]
struct KeyTarget {
    /// Tenant.
    #[arg(long)]
    tenant: String,
    /// Key name.
    #[arg(long, default_value = "default")]
    key: String,
    /// One version (default: every version of the key).
    #[arg(long)]
    version: Option<i64>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a token for a tenant; it is printed once.
    Create {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Role (repeat): tenant-admin, encrypt, decrypt.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<i64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token by id.
    Revoke {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Token id (tok_...).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Create a key.
    Create {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Key name.
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a tenant's keys.
    List {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add a new version; new data keys use it, older versions keep decrypting.
    Rotate {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Key name.
        #[arg(long, default_value = "default")]
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-wrap stored wrapped keys to the newest version: reads one base64 wrapped key per line
    /// (from a file or stdin), writes the new ones in the same order, progress on stderr.
    Rewrap {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Key name.
        #[arg(long, default_value = "default")]
        key: String,
        /// Input file, `-` for stdin.
        #[arg(long, default_value = "-")]
        input: PathBuf,
        /// Encryption context entry `name=value` (repeat); the same for every line.
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop a key (or version) from wrapping and unwrapping.
    Disable(KeyTarget),
    /// Undo `disable`.
    Enable(KeyTarget),
    /// Schedule destruction after a waiting period.
    Destroy {
        #[command(flatten)]
        target: KeyTarget,
        /// Waiting period, e.g. 30d (the service enforces a minimum).
        #[arg(long, default_value = "30d")]
        waiting_period: String,
    },
    /// Cancel a scheduled destruction.
    CancelDestroy(KeyTarget),
    /// Export the current public key (for offline wrapping).
    PublicKey {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Key name.
        #[arg(long, default_value = "default")]
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum DataKeyCmd {
    /// Generate a data key wrapped to the key's current version.
    Generate {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Key name.
        #[arg(long, default_value = "default")]
        key: String,
        /// Encryption context entry `name=value` (repeat).
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        /// Return only the wrapped key.
        #[arg(long)]
        no_plaintext: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Unwrap a data key.
    Decrypt {
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Key name.
        #[arg(long, default_value = "default")]
        key: String,
        /// The wrapped key (base64), or `-` to read it from stdin.
        #[arg(long)]
        wrapped: String,
        /// Encryption context entry `name=value` (repeat); must match the one used to generate.
        #[arg(long = "context", value_parser = parse_pair)]
        context: Vec<(String, String)>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Recompute the hash chain and report the first broken entry.
    Verify {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read entries.
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this operation (e.g. data_key.generate).
        #[arg(long)]
        operation: Option<String>,
        /// Maximum entries.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// POST a lifecycle action on a key (or one version).
async fn lifecycle(t: KeyTarget, action: &str, mut body: serde_json::Value) -> Result<(), String> {
    let c = client::Client::new(&t.client.addr, t.client.token, t.client.json)?;
    if let Some(v) = t.version {
        body["version"] = v.into();
    }
    let v = c
        .post(
            &format!("/v1/tenants/{}/keys/{}/{action}", t.tenant, t.key),
            body,
        )
        .await?;
    c.show(&v, |v| {
        let which = t
            .version
            .map_or("all versions".to_owned(), |n| format!("version {n}"));
        match v.get("destroy_at").and_then(|d| d.as_i64()) {
            Some(at) => format!("{action}: {} {which}, at {at} (Unix ms)", t.key),
            None => format!("{action}: {} {which}", t.key),
        }
    })
}

/// Largest request body the CLI builds for one re-wrap batch: under the service's default
/// 64 KiB body limit (a wrapped key is ~1.7 KB of base64, so ~30 per batch).
const REWRAP_BATCH_BYTES: usize = 56 * 1024;

/// Re-wrap many stored keys in batches (at most 100 items and [`REWRAP_BATCH_BYTES`] each),
/// preserving order; progress on stderr.
async fn rewrap_stream(
    c: &client::Client,
    tenant: &str,
    key: &str,
    input: &std::path::Path,
    context: Vec<(String, String)>,
) -> Result<(), String> {
    use std::io::BufRead;
    let reader: Box<dyn BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(input).map_err(|e| format!("{}: {e}", input.display()))?,
        ))
    };
    let lines: Vec<String> = reader
        .lines()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    let context: std::collections::BTreeMap<_, _> = context.into_iter().collect();
    let (total, mut done, mut failed) = (lines.len(), 0usize, 0usize);
    let item_overhead = serde_json::to_string(&context).map_or(64, |c| c.len() + 40);
    let mut batches: Vec<&[String]> = Vec::new();
    let (mut start, mut bytes) = (0usize, 0usize);
    for (i, line) in lines.iter().enumerate() {
        let size = line.len() + item_overhead;
        if i > start && (i - start == 100 || bytes + size > REWRAP_BATCH_BYTES) {
            batches.push(&lines[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < lines.len() {
        batches.push(&lines[start..]);
    }
    for chunk in batches {
        let items: Vec<_> = chunk
            .iter()
            .map(|w| serde_json::json!({ "wrapped_key": w, "context": context }))
            .collect();
        let v = c
            .post(
                &format!("/v1/tenants/{tenant}/keys/{key}/rewrap-batch"),
                serde_json::json!({ "items": items }),
            )
            .await?;
        for r in v["results"].as_array().into_iter().flatten() {
            match r["wrapped_key"].as_str() {
                Some(w) => println!("{w}"),
                None => {
                    failed += 1;
                    println!("ERROR {}", r["error"]["code"].as_str().unwrap_or("error"));
                }
            }
        }
        done += chunk.len();
        eprintln!("rewrap: {done}/{total} ({failed} failed)");
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {total} wrapped keys could not be re-wrapped"
        ));
    }
    Ok(())
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected name=value, got `{s}`"))
}

fn serve_config(args: ServeArgs) -> Result<Config, String> {
    let mut config = Config::default();
    if let Some(path) = &args.config {
        FileConfig::load(path)?.apply(&mut config);
    }
    if let Some(v) = args.bind {
        config.bind = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if args.database_url.is_some() {
        config.database_url = args.database_url;
    }
    if args.root_key_file.is_some() {
        config.root_key_file = args.root_key_file;
    }
    if !args.previous_root_key_files.is_empty() {
        config.previous_root_key_files = args.previous_root_key_files;
    }
    if let Some(v) = args.max_body_bytes {
        config.max_body_bytes = v;
    }
    if let Ok(inline) = std::env::var("PQKMS_ROOT_KEY") {
        config.root_key_inline = Some(inline.into());
    }
    Ok(config)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PQKMS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(args) => {
            init_logging();
            let config = serve_config(args)?;
            tracing::debug!(?config, "configuration");
            crate::server::serve(config)
                .await
                .map_err(|e| e.to_string())
        }
        Command::Tenant(TenantCmd::Create { name, client }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let v = c
                .post("/v1/tenants", serde_json::json!({ "name": name }))
                .await?;
            c.show(&v, |v| {
                format!(
                    "created tenant {} (id {}) with key `default`",
                    v["tenant"], v["id"]
                )
            })
        }
        Command::Token(TokenCmd::Create {
            tenant,
            roles,
            ttl,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let mut body = serde_json::json!({ "roles": roles });
            if let Some(ttl) = ttl {
                body["ttl_seconds"] = ttl.into();
            }
            let v = c
                .post(&format!("/v1/tenants/{tenant}/tokens"), body)
                .await?;
            c.show(&v, |v| {
                format!(
                    "token id: {}\nroles:    {}\ntoken:    {}\n(shown once; store it now)",
                    v["id"].as_str().unwrap_or(""),
                    v["roles"],
                    v["token"].as_str().unwrap_or("")
                )
            })
        }
        Command::Token(TokenCmd::Revoke { tenant, id, client }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            c.delete(&format!("/v1/tenants/{tenant}/tokens/{id}"))
                .await?;
            c.show(&serde_json::json!({ "revoked": id }), |_| {
                format!("revoked {id}")
            })
        }
        Command::Key(KeyCmd::Create {
            tenant,
            name,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let v = c
                .post(
                    &format!("/v1/tenants/{tenant}/keys"),
                    serde_json::json!({ "name": name }),
                )
                .await?;
            c.show(&v, |v| {
                format!("created key {} version {}", v["name"], v["current_version"])
            })
        }
        Command::Key(KeyCmd::List { tenant, client }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let v = c.get(&format!("/v1/tenants/{tenant}/keys")).await?;
            c.show(&v, |v| {
                let mut out = format!("{:<24} {:>7}  {}", "KEY", "VERSION", "FINGERPRINT");
                for k in v["keys"].as_array().into_iter().flatten() {
                    let current = k["current_version"].as_i64().unwrap_or(0);
                    let fp = k["versions"]
                        .as_array()
                        .and_then(|vs| vs.iter().find(|x| x["version"].as_i64() == Some(current)))
                        .and_then(|x| x["fingerprint"].as_str())
                        .unwrap_or("");
                    out.push_str(&format!(
                        "\n{:<24} {:>7}  {}",
                        k["name"].as_str().unwrap_or(""),
                        current,
                        fp
                    ));
                }
                out
            })
        }
        Command::Tenant(TenantCmd::Shred {
            name,
            waiting_period,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let keys = c.get(&format!("/v1/tenants/{name}/keys")).await?;
            let mut scheduled = Vec::new();
            for k in keys["keys"].as_array().into_iter().flatten() {
                let key = k["name"].as_str().unwrap_or_default();
                let v = c
                    .post(
                        &format!("/v1/tenants/{name}/keys/{key}/destroy"),
                        serde_json::json!({ "waiting_period": waiting_period }),
                    )
                    .await?;
                scheduled.push(serde_json::json!({ "key": key, "destroy_at": v["destroy_at"] }));
            }
            let out = serde_json::json!({ "tenant": name, "scheduled": scheduled });
            c.show(&out, |v| {
                format!(
                    "scheduled destruction of {} key(s) of tenant {name}; cancel with `pqkms key cancel-destroy`",
                    v["scheduled"].as_array().map_or(0, Vec::len)
                )
            })
        }
        Command::Key(KeyCmd::Rotate {
            tenant,
            key,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let v = c
                .post(
                    &format!("/v1/tenants/{tenant}/keys/{key}/rotate"),
                    serde_json::json!({}),
                )
                .await?;
            c.show(&v, |v| format!("rotated {key}: version {}", v["version"]))
        }
        Command::Key(KeyCmd::Rewrap {
            tenant,
            key,
            input,
            context,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            rewrap_stream(&c, &tenant, &key, &input, context).await
        }
        Command::Key(KeyCmd::Disable(t)) => lifecycle(t, "disable", serde_json::json!({})).await,
        Command::Key(KeyCmd::Enable(t)) => lifecycle(t, "enable", serde_json::json!({})).await,
        Command::Key(KeyCmd::CancelDestroy(t)) => {
            lifecycle(t, "cancel-destroy", serde_json::json!({})).await
        }
        Command::Key(KeyCmd::Destroy {
            target,
            waiting_period,
        }) => {
            lifecycle(
                target,
                "destroy",
                serde_json::json!({ "waiting_period": waiting_period }),
            )
            .await
        }
        Command::Key(KeyCmd::PublicKey {
            tenant,
            key,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let v = c
                .get(&format!("/v1/tenants/{tenant}/keys/{key}/public-key"))
                .await?;
            c.show(&v, |v| {
                format!(
                    "version:     {}\nfingerprint: {}\npublic_key:  {}",
                    v["version"],
                    v["fingerprint"].as_str().unwrap_or(""),
                    v["public_key"].as_str().unwrap_or("")
                )
            })
        }
        Command::DataKey(DataKeyCmd::Generate {
            tenant,
            key,
            context,
            no_plaintext,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let body = serde_json::json!({
                "context": context.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "include_plaintext": !no_plaintext,
            });
            let v = c
                .post(&format!("/v1/tenants/{tenant}/keys/{key}/data-key"), body)
                .await?;
            c.show(&v, |v| {
                let mut out = format!(
                    "version:     {}\nwrapped_key: {}",
                    v["version"],
                    v["wrapped_key"].as_str().unwrap_or("")
                );
                if let Some(p) = v["plaintext"].as_str() {
                    out.push_str(&format!("\nplaintext:   {p}"));
                }
                out
            })
        }
        Command::DataKey(DataKeyCmd::Decrypt {
            tenant,
            key,
            wrapped,
            context,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let wrapped = if wrapped == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| e.to_string())?;
                s.trim().to_owned()
            } else {
                wrapped
            };
            let body = serde_json::json!({
                "wrapped_key": wrapped,
                "context": context.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            });
            let v = c
                .post(&format!("/v1/tenants/{tenant}/keys/{key}/decrypt"), body)
                .await?;
            c.show(&v, |v| {
                format!(
                    "version:   {}\nplaintext: {}",
                    v["version"],
                    v["plaintext"].as_str().unwrap_or("")
                )
            })
        }
        Command::RootKey(RootKeyCmd::Generate { out, version }) => {
            crate::server::generate_root_key_file(&out, version).map_err(|e| e.to_string())?;
            println!(
                "wrote root key version {version} to {} (mode 0600)",
                out.display()
            );
            Ok(())
        }
        Command::RootKey(RootKeyCmd::Reseal { client }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let v = c.post("/v1/root-key/reseal", serde_json::json!({})).await?;
            c.show(&v, |v| {
                format!(
                    "re-sealed {} key version(s) under root key {}; {} remaining",
                    v["resealed"], v["root_version"], v["remaining"]
                )
            })
        }
        Command::Audit(AuditCmd::Verify { client }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let v = c.get("/v1/audit/verify").await?;
            c.show(&v, |v| {
                if v["ok"].as_bool() == Some(true) {
                    format!(
                        "audit chain OK: {} entries, head {}",
                        v["entries"],
                        v["head"].as_str().unwrap_or("")
                    )
                } else {
                    format!(
                        "audit chain BROKEN at entry {}: {}",
                        v["first_bad_seq"],
                        v["problem"].as_str().unwrap_or("")
                    )
                }
            })?;
            if v["ok"].as_bool() == Some(true) {
                Ok(())
            } else {
                Err("audit verification failed".into())
            }
        }
        Command::Audit(AuditCmd::List {
            tenant,
            operation,
            limit,
            client,
        }) => {
            let c = client::Client::new(&client.addr, client.token, client.json)?;
            let mut path = format!("/v1/audit?limit={limit}");
            if let Some(t) = tenant {
                path.push_str(&format!("&tenant={t}"));
            }
            if let Some(o) = operation {
                path.push_str(&format!("&operation={o}"));
            }
            let v = c.get(&path).await?;
            c.show(&v, |v| {
                let mut out = String::new();
                for e in v["entries"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "{:>6} {} {:<20} {:<8} tenant={} key={} v={} by {}\n",
                        e["seq"],
                        e["time_ms"],
                        e["operation"].as_str().unwrap_or(""),
                        e["outcome"].as_str().unwrap_or(""),
                        e["tenant"].as_str().unwrap_or("-"),
                        e["key"].as_str().unwrap_or("-"),
                        e["version"]
                            .as_i64()
                            .map_or("-".to_owned(), |v| v.to_string()),
                        e["principal"].as_str().unwrap_or("")
                    ));
                }
                out.trim_end().to_owned()
            })
        }
    }
}
