//! Configuration: one struct, three sources. Precedence: command-line flags > `MAASBOX_*`
//! environment variables > the TOML file > defaults.
//!
//! All sources are merged as TOML values first and deserialized once with unknown keys denied,
//! so an unknown key or a bad value — from any source — stops startup with the key named.
//! Environment variables are `MAASBOX_<SECTION>_<KEY>`, e.g. `MAASBOX_SERVER_PORT=9000` or
//! `MAASBOX_CRYPTO_GM_MODE=true`. `MAASBOX_URL` and `MAASBOX_TOKEN` belong to the CLI client
//! and are not configuration.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening and HTTP edge.
    pub server: ServerConfig,
    /// Where data lives.
    pub storage: StorageConfig,
    /// Logging.
    pub log: LogConfig,
    /// Sessions, passwords and login throttling.
    pub auth: AuthConfig,
    /// 国密 mode.
    pub crypto: CryptoConfig,
    /// Audit chain.
    pub audit: AuditConfig,
    /// Local inference.
    pub engine: EngineConfig,
    /// Default quotas of every user.
    pub quotas: QuotaConfig,
    /// Upstream providers.
    pub upstreams: UpstreamConfig,
    /// The knowledge index.
    pub knowledge: KnowledgeConfig,
    /// How long usage detail and chat history are kept.
    pub retention: RetentionConfig,
}

/// `[retention]`: days kept (0 = forever). Pruned once an hour. The audit chain is never pruned
/// (export it); daily usage totals are kept for the dashboard and quotas.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Per-request usage rows.
    pub usage_days: u32,
    /// Conversations not changed for this long (all users).
    pub conversations_days: u32,
}

/// `[knowledge]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeConfig {
    /// The embedding model (`name:tag`) of a new knowledge base that names none.
    pub default_embedding_model: String,
    /// Default chunk size in tokens of the embedding model.
    pub chunk_tokens: usize,
    /// Default tokens shared by consecutive chunks.
    pub chunk_overlap: usize,
    /// Largest upload (all files of one request together).
    pub max_upload_bytes: usize,
    /// Passages retrieved for a chat request that gives no `top_k`.
    pub rag_top_k: usize,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        Self {
            default_embedding_model: "all-minilm-l6-v2:latest".into(),
            chunk_tokens: 256,
            chunk_overlap: 32,
            max_upload_bytes: 64 * 1024 * 1024,
            rag_top_k: 4,
        }
    }
}

/// `[upstreams]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Seconds between health checks (`GET {base_url}/models`) of each upstream.
    pub health_interval_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self { health_interval_secs: 30 }
    }
}

/// `[quotas]`: what a user without limits of their own gets (0 = no limit). API keys add their
/// own limits on top; the stricter applies.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Requests started per rolling minute.
    pub requests_per_minute: u64,
    /// Tokens (prompt + completion) per UTC day.
    pub tokens_per_day: u64,
    /// Tokens per UTC calendar month.
    pub tokens_per_month: u64,
    /// Requests in flight at once.
    pub concurrent: u64,
}

impl QuotaConfig {
    /// As [`maasbox_types::Limits`] (every field set; 0 = no limit).
    pub fn limits(&self) -> maasbox_types::Limits {
        maasbox_types::Limits {
            requests_per_minute: Some(self.requests_per_minute),
            tokens_per_day: Some(self.tokens_per_day),
            tokens_per_month: Some(self.tokens_per_month),
            concurrent: Some(self.concurrent),
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind (loopback by default).
    pub bind: IpAddr,
    /// Port.
    pub port: u16,
    /// Share on the LAN: bind 0.0.0.0 instead of `bind`.
    pub lan: bool,
    /// Required to serve plain HTTP on a non-loopback address (TLS is not built in yet).
    pub allow_plain_http_on_lan: bool,
    /// Origins allowed to make cross-origin requests; empty = none (deny by default).
    pub cors_origins: Vec<String>,
    /// Host names accepted in the `Host` header besides localhost/127.0.0.1/[::1] and the
    /// bind address (protects loopback servers from DNS rebinding).
    pub allowed_hosts: Vec<String>,
    /// Largest request body, in bytes.
    pub body_limit_bytes: usize,
    /// Longest a request may take, in seconds.
    pub request_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 8686,
            lan: false,
            allow_plain_http_on_lan: false,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            body_limit_bytes: 10 * 1024 * 1024,
            request_timeout_secs: 60,
        }
    }
}

impl ServerConfig {
    /// The address actually bound.
    pub fn effective_bind(&self) -> IpAddr {
        if self.lan {
            IpAddr::from([0, 0, 0, 0])
        } else {
            self.bind
        }
    }
}

/// `[storage]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory (database, keys, logs, models).
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { data_dir: default_data_dir() }
    }
}

/// The OS data directory for maasbox (e.g. `~/.local/share/maasbox`).
pub fn default_data_dir() -> PathBuf {
    dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("maasbox")
}

/// `[log]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `maasbox_api=debug,info`. `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
    /// Also write daily-rolling files under `<data_dir>/logs`.
    pub file: bool,
    /// How many daily log files to keep.
    pub max_files: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text, file: true, max_files: 14 }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[auth]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of a session access token (JWT), seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token, seconds (each refresh extends it).
    pub refresh_token_ttl_secs: u64,
    /// Minimum password length.
    pub min_password_length: usize,
    /// Failed logins per username within the window before further attempts are refused.
    pub max_failed_logins_per_user: u32,
    /// Failed logins per client address within the window before further attempts are refused.
    pub max_failed_logins_per_ip: u32,
    /// The failed-login window, seconds.
    pub failed_login_window_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            access_token_ttl_secs: 900,
            refresh_token_ttl_secs: 30 * 86_400,
            min_password_length: 10,
            max_failed_logins_per_user: 5,
            max_failed_logins_per_ip: 20,
            failed_login_window_secs: 900,
        }
    }
}

/// `[crypto]`
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CryptoConfig {
    /// Use national algorithms only: PBKDF2-HMAC-SM3 for new password hashes.
    pub gm_mode: bool,
}

/// `[audit]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Sign a checkpoint every this many events.
    pub checkpoint_every: i64,
    /// Most writes group-committed in one transaction.
    pub batch_max: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { checkpoint_every: 1000, batch_max: 512 }
    }
}

/// `[engine]`
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Sequences decoded together per model (continuous-batching slots).
    pub parallel: usize,
    /// CPU threads per model; 0 = all available cores.
    pub threads: usize,
    /// Context size per model in tokens, shared by its slots (0 = the model's own, up to 8192).
    pub context_size: u32,
    /// One KV pool that any slot may fill (a request may use the whole context) instead of an
    /// equal share per slot (context_size / parallel each; attention then reads only the
    /// slot's own cells, which is much faster with many slots, as llama-server does).
    pub kv_unified: bool,
    /// Most tokens decoded in one engine step (prompt chunks plus one per generating slot).
    /// Larger: new requests' prompts are read together and the slots decode in lockstep (more
    /// tokens/s under load, llama-server's 2048); smaller: prompts interleave with decoding
    /// (earlier first tokens, less throughput).
    pub batch_size: u32,
    /// Layers to offload to the GPU: "auto" (all that fit the build's backend) or a number.
    pub gpu_layers: String,
    /// Unload a model idle this long (seconds); a request may override with `keep_alive`.
    pub keep_alive_secs: u64,
    /// Most models loaded at once; the least recently used idle one is unloaded first.
    pub max_loaded_models: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            parallel: 4,
            threads: 0,
            context_size: 0,
            kv_unified: false,
            batch_size: 2048,
            gpu_layers: "auto".into(),
            keep_alive_secs: 300,
            max_loaded_models: 3,
            default_max_tokens: 1024,
        }
    }
}

impl EngineConfig {
    /// Threads to use.
    pub fn effective_threads(&self) -> i32 {
        if self.threads > 0 {
            self.threads as i32
        } else {
            std::thread::available_parallelism().map_or(2, |n| n.get() as i32)
        }
    }

    /// `gpu_layers` as a number (`None` = auto).
    pub fn gpu_layers(&self) -> Option<u32> {
        self.gpu_layers.parse().ok()
    }
}

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax {
        /// File.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A key is unknown or its value is invalid.
    #[error("invalid configuration key `{key}`: {message}")]
    Key {
        /// Dotted key, e.g. `server.port`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An environment variable does not name a configuration key.
    #[error(
        "unknown environment variable {var}: it does not name a configuration key (expected MAASBOX_<SECTION>_<KEY>)"
    )]
    UnknownEnv {
        /// Variable name.
        var: String,
    },
}

/// Environment variables of the CLI client, not configuration.
pub const CLIENT_ENV: &[&str] = &["MAASBOX_URL", "MAASBOX_TOKEN"];

/// Load configuration. `file` is `--config`; `env` is the process environment (passed in so
/// tests need not mutate it); `overrides` are flag values as `(dotted key, TOML value)`.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, toml::Value)],
) -> Result<Config, ConfigError> {
    let mut root = toml::Table::try_from(Config::default())
        .map_err(|e| ConfigError::Key { key: String::new(), message: e.to_string() })?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax { path: path.into(), message: e.to_string() })?;
        merge(&mut root, table, "")?;
    }
    let sections: Vec<String> = root.keys().cloned().collect();
    let mut env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k.starts_with("MAASBOX_")).collect();
    env.sort();
    for (var, value) in env {
        if CLIENT_ENV.contains(&var.as_str()) {
            continue;
        }
        let rest = var["MAASBOX_".len()..].to_ascii_lowercase();
        let Some(section) = sections.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            return Err(ConfigError::UnknownEnv { var });
        };
        let key = rest[section.len() + 1..].to_owned();
        set(&mut root, section, &key, env_value(&value))?;
    }
    for (dotted, value) in overrides {
        let (section, key) = dotted.split_once('.').unwrap_or(("", dotted));
        set(&mut root, section, key, value.clone())?;
    }
    let de = toml::Value::Table(root);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        // toml's "unknown field" message names the field; put it into the key path.
        let key = match inner.split('`').nth(1) {
            Some(field) if inner.starts_with("unknown field") => {
                if key == "." || key.is_empty() {
                    field.to_owned()
                } else {
                    format!("{key}.{field}")
                }
            }
            _ => key,
        };
        ConfigError::Key { key, message: inner.lines().next().unwrap_or_default().to_owned() }
    })
}

fn merge(root: &mut toml::Table, file: toml::Table, prefix: &str) -> Result<(), ConfigError> {
    for (k, v) in file {
        match (root.get_mut(&k), v) {
            (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => merge(dst, src, &format!("{prefix}{k}."))?,
            (Some(_), v) | (None, v) => {
                // Unknown keys are kept so the deserializer names them.
                root.insert(k, v);
            }
        }
    }
    Ok(())
}

fn set(root: &mut toml::Table, section: &str, key: &str, value: toml::Value) -> Result<(), ConfigError> {
    match root.get_mut(section) {
        Some(toml::Value::Table(t)) => {
            t.insert(key.to_owned(), value);
            Ok(())
        }
        _ => Err(ConfigError::Key { key: format!("{section}.{key}"), message: "unknown section".into() }),
    }
}

/// An environment value as TOML: booleans, integers, floats and `[..]` arrays are parsed;
/// anything else is a string (so `127.0.0.1` and paths need no quoting).
fn env_value(raw: &str) -> toml::Value {
    let parsed = format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    match parsed {
        Some(
            v @ (toml::Value::Boolean(_) | toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Array(_)),
        ) => v,
        _ => toml::Value::String(raw.to_owned()),
    }
}

impl Config {
    /// Checks that need more than one key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bind = self.server.effective_bind();
        if !bind.is_loopback() && !self.server.allow_plain_http_on_lan {
            return Err(ConfigError::Key {
                key: if self.server.lan { "server.lan".into() } else { "server.bind".into() },
                message: format!(
                    "binding {bind} exposes maasbox beyond this machine over plain HTTP; TLS is not built in yet, \
                     so set server.allow_plain_http_on_lan = true to accept that explicitly (or put a TLS proxy in front)"
                ),
            });
        }
        if self.auth.min_password_length < 8 {
            return Err(ConfigError::Key {
                key: "auth.min_password_length".into(),
                message: "must be at least 8".into(),
            });
        }
        if self.audit.checkpoint_every < 1 {
            return Err(ConfigError::Key {
                key: "audit.checkpoint_every".into(),
                message: "must be at least 1".into(),
            });
        }
        if self.audit.batch_max < 1 {
            return Err(ConfigError::Key { key: "audit.batch_max".into(), message: "must be at least 1".into() });
        }
        if self.engine.gpu_layers != "auto" && self.engine.gpu_layers.parse::<u32>().is_err() {
            return Err(ConfigError::Key {
                key: "engine.gpu_layers".into(),
                message: "must be \"auto\" or a number".into(),
            });
        }
        if !(64..=16384).contains(&self.engine.batch_size) {
            return Err(ConfigError::Key {
                key: "engine.batch_size".into(),
                message: "must be between 64 and 16384".into(),
            });
        }
        if !(1..=64).contains(&self.engine.parallel) {
            return Err(ConfigError::Key { key: "engine.parallel".into(), message: "must be between 1 and 64".into() });
        }
        if self.server.request_timeout_secs == 0 {
            return Err(ConfigError::Key {
                key: "server.request_timeout_secs".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn precedence_flags_over_env_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[server]\nport = 1111\nbody_limit_bytes = 5\n[log]\nlevel = \"debug\"\n").unwrap();
        let c = load(
            Some(&f),
            env(&[("MAASBOX_SERVER_PORT", "2222"), ("MAASBOX_LOG_LEVEL", "warn")]),
            &[("server.port", toml::Value::Integer(3333))],
        )
        .unwrap();
        assert_eq!(c.server.port, 3333, "flag wins");
        assert_eq!(c.log.level, "warn", "env beats file");
        assert_eq!(c.server.body_limit_bytes, 5, "file beats default");
        assert_eq!(c.auth.min_password_length, 10, "default");
        let c = load(Some(&f), env(&[("MAASBOX_SERVER_PORT", "2222")]), &[]).unwrap();
        assert_eq!(c.server.port, 2222);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[server]\nprot = 1\n").unwrap();
        let e = load(Some(&f), vec![], &[]).unwrap_err().to_string();
        assert!(e.contains("server.prot"), "{e}");
        std::fs::write(&f, "[server]\nport = \"eighty\"\n").unwrap();
        let e = load(Some(&f), vec![], &[]).unwrap_err().to_string();
        assert!(e.contains("server.port"), "{e}");
        std::fs::write(&f, "[serve]\nport = 1\n").unwrap();
        let e = load(Some(&f), vec![], &[]).unwrap_err().to_string();
        assert!(e.contains("serve"), "{e}");
        let e = load(None, env(&[("MAASBOX_SERVER_PORT", "99999")]), &[]).unwrap_err().to_string();
        assert!(e.contains("server.port"), "{e}");
        let e = load(None, env(&[("MAASBOX_CRYPTO_GM_MOD", "true")]), &[]).unwrap_err().to_string();
        assert!(e.contains("crypto.gm_mod"), "{e}");
        let e = load(None, env(&[("MAASBOX_NOPE", "1")]), &[]).unwrap_err().to_string();
        assert!(e.contains("MAASBOX_NOPE"), "{e}");
        // Client variables are not configuration.
        load(None, env(&[("MAASBOX_URL", "http://x"), ("MAASBOX_TOKEN", "t")]), &[]).unwrap();
    }

    #[test]
    fn env_values_are_typed() {
        let c = load(
            None,
            env(&[
                ("MAASBOX_CRYPTO_GM_MODE", "true"),
                ("MAASBOX_SERVER_BIND", "127.0.0.2"),
                ("MAASBOX_SERVER_CORS_ORIGINS", "[\"http://a.example\"]"),
            ]),
            &[],
        )
        .unwrap();
        assert!(c.crypto.gm_mode);
        assert_eq!(c.server.bind.to_string(), "127.0.0.2");
        assert_eq!(c.server.cors_origins, vec!["http://a.example".to_string()]);
    }

    #[test]
    fn lan_without_tls_needs_explicit_consent() {
        let mut c = Config::default();
        c.server.lan = true;
        assert!(c.validate().unwrap_err().to_string().contains("server.lan"));
        c.server.allow_plain_http_on_lan = true;
        c.validate().unwrap();
    }

    #[test]
    fn example_config_lists_every_key_and_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/config.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let example: toml::Table = text.parse().unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, keys) in &defaults {
            let keys = keys.as_table().unwrap();
            let ex = example.get(section).and_then(|v| v.as_table()).unwrap_or_else(|| panic!("[{section}] missing"));
            for k in keys.keys() {
                assert!(ex.contains_key(k), "assets/config.example.toml lacks {section}.{k}");
            }
        }
        load(Some(&path), vec![], &[]).unwrap();
    }
}
