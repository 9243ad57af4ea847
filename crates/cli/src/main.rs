//! `maasbox`: the headless appliance (`maasbox serve`) and its admin CLI.
//!
//! The binary is thin: `serve` hands a listener to `maasbox_api::serve`; the admin commands are
//! HTTP clients of a running server (so every change goes through the same permission checks and
//! the audit chain); only `audit verify --offline` and `admin reset-password` open the data
//! directory directly.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod client;
mod offline;

// mimalloc: the default glibc allocator was ~12% of a profile of the authenticated read path
// (many small, short-lived allocations per request across threads).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages on its 1 GiB arena, so every thread's first small
/// allocation faults in a whole 2 MiB page: an idle server held ~45 MiB of mostly empty huge
/// pages (66 MiB RSS against 27 MiB without). Turning THP off for this process is what
/// `MIMALLOC_ALLOW_THP=0` does; done here it needs no environment. llama.cpp's buffers come from
/// glibc's malloc and model weights are file mappings, so inference is not affected on systems
/// where THP is `madvise` (the common default); on `always` systems its KV cache loses them too.
fn no_huge_pages_for_the_heap() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("warning: cannot turn transparent huge pages off: {e}");
    }
}

/// maasbox — model-as-a-service in one box.
#[derive(Parser, Debug)]
#[command(name = "maasbox", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (API, audit chain, and later inference and the UI).
    Serve(ServeArgs),
    /// Manage users (admin).
    #[command(subcommand)]
    User(UserCmd),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Verify and export the audit chain.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Manage the model registry and loaded models.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Signed offline bundles of models, for air-gapped sites.
    #[command(subcommand)]
    Bundle(BundleCmd),
    /// Upstream OpenAI-compatible providers that model names route to (admins).
    #[command(subcommand)]
    Upstream(UpstreamCmd),
    /// Manage apps (assistants called as `app:<name>`).
    #[command(subcommand)]
    App(AppCmd),
    /// Knowledge bases: create, add documents, search.
    #[command(subcommand)]
    Kb(KbCmd),
    /// Usage of /v1 from the daily rollup (your own, or everyone's for admins and auditors).
    Usage(UsageArgs),
    /// Offline recovery commands that work with the server stopped.
    #[command(subcommand)]
    Admin(AdminCmd),
}

/// Where configuration comes from (shared by `serve` and the offline commands).
#[derive(Args, Debug, Clone, Default)]
struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (overrides storage.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl ConfigArgs {
    fn load(&self, extra: Vec<(&'static str, toml::Value)>) -> anyhow::Result<maasbox_api::Config> {
        let mut overrides = extra;
        if let Some(d) = &self.data_dir {
            overrides.push(("storage.data_dir", toml::Value::String(d.display().to_string())));
        }
        let cfg = maasbox_api::config::load(self.config.as_deref(), std::env::vars(), &overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Address to bind (default 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    bind: Option<IpAddr>,
    /// Port (default 8686).
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Share on the LAN (binds 0.0.0.0).
    #[arg(long)]
    lan: bool,
    /// Log filter (e.g. `debug`).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

/// How the client commands reach the server.
#[derive(Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    /// Server URL.
    #[arg(long, env = "MAASBOX_URL", default_value = "http://127.0.0.1:8686", global = true)]
    server: String,
    /// API key or access token; without it the owner token in the data directory is used.
    #[arg(long, env = "MAASBOX_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Create a user. Without --password-stdin a random password is generated and printed once.
    Add {
        /// Username.
        username: String,
        /// admin, developer, user or auditor.
        #[arg(long, default_value = "user")]
        role: String,
        /// Display name.
        #[arg(long)]
        display_name: Option<String>,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Disable a user: their sessions and keys stop working at once.
    Disable {
        /// Username or id.
        user: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Enable a disabled user.
    Enable {
        /// Username or id.
        user: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Set a user's password (prompts, or --password-stdin).
    Passwd {
        /// Username or id.
        user: String,
        /// Read the password from standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Set a user's quotas (replacing the old ones; unset flags take the configured default).
    Limits {
        /// Username or id.
        user: String,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete a user and their keys.
    Rm {
        /// Username or id.
        user: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

/// Quotas of a user or key; 0 = no limit. Unset flags leave the quota unset (a user then takes
/// `[quotas]` from the configuration).
#[derive(Args, Debug, Default)]
pub(crate) struct LimitArgs {
    /// Requests per minute.
    #[arg(long, value_name = "N")]
    pub rpm: Option<u64>,
    /// Tokens per UTC day.
    #[arg(long, value_name = "N")]
    pub tpd: Option<u64>,
    /// Tokens per UTC month.
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long, value_name = "N")]
    pub concurrent: Option<u64>,
}

/// `maasbox usage`
#[derive(Args, Debug)]
struct UsageArgs {
    /// user, model, key, day or app.
    #[arg(long, default_value = "day")]
    by: String,
    /// First UTC day (YYYY-MM-DD; default 30 days ago).
    #[arg(long)]
    from: Option<String>,
    /// Last UTC day (default today).
    #[arg(long)]
    to: Option<String>,
    /// Only this user (username or id; admins and auditors).
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    c: ClientArgs,
}

#[derive(Subcommand, Debug)]
enum BundleCmd {
    /// Write models (GGUF blobs, manifest with SHA-256 and SM3 digests, SM2 signature by this
    /// appliance) to a tar file, then check the file.
    Create {
        /// name[:tag]; repeat for several.
        #[arg(long = "model", required = true)]
        models: Vec<String>,
        /// Output file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Verify a bundle (every digest and the signature) and register its models.
    Import {
        /// The bundle (on this machine, which must be the server's).
        file: PathBuf,
        /// SM2 public key (hex) it must be signed by.
        #[arg(long, value_name = "PUBKEY")]
        trust: Option<String>,
        /// Accept a bundle without a signature.
        #[arg(long, conflicts_with = "trust")]
        allow_unsigned: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum UpstreamCmd {
    /// Add an upstream; its API key is read from standard input with --api-key-stdin.
    Add {
        /// Name.
        name: String,
        /// Base URL with the API prefix, e.g. http://10.0.0.5:8686/v1.
        #[arg(long)]
        url: String,
        /// Comma-separated model names to route there.
        #[arg(long, value_delimiter = ',', required = true)]
        models: Vec<String>,
        /// Lower is tried first; a local model of the same name counts as 0.
        #[arg(long, default_value_t = 10, allow_hyphen_values = true)]
        priority: i64,
        /// Read the upstream's API key from standard input.
        #[arg(long)]
        api_key_stdin: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List upstreams with their health.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Stop routing to an upstream without removing it.
    Disable {
        /// Name.
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Route to a disabled upstream again.
    Enable {
        /// Name.
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Remove an upstream.
    Rm {
        /// Name.
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum KbCmd {
    /// Create a knowledge base (private to you unless --public, --users or --roles).
    Create {
        /// Name.
        name: String,
        /// What it holds.
        #[arg(long, default_value = "")]
        description: String,
        /// Embedding model (default: the server's [knowledge] default_embedding_model).
        #[arg(long)]
        embedding_model: Option<String>,
        /// Chunk size in tokens.
        #[arg(long)]
        chunk_tokens: Option<usize>,
        /// Tokens shared by consecutive chunks.
        #[arg(long)]
        chunk_overlap: Option<usize>,
        /// Every user may search it.
        #[arg(long, conflicts_with_all = ["users", "roles"])]
        public: bool,
        /// Comma-separated usernames that may search it.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        /// Comma-separated roles that may search it.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List the knowledge bases you may read.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete a knowledge base with all its documents.
    Rm {
        /// Name.
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Add documents (txt, md, html, pdf, docx, ofd) and wait until they are indexed.
    Add {
        /// Knowledge base.
        name: String,
        /// Files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List a knowledge base's documents.
    Docs {
        /// Knowledge base.
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Search one or more knowledge bases.
    Search {
        /// Comma-separated knowledge bases.
        #[arg(value_delimiter = ',')]
        bases: Vec<String>,
        /// The query.
        #[arg(long, short)]
        query: String,
        /// Results.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// hybrid, vector or keyword.
        #[arg(long, default_value = "hybrid")]
        mode: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AppCmd {
    /// Create an app on a model with a system prompt and default parameters.
    Create {
        /// Name (called as `app:<NAME>`).
        name: String,
        /// The model it runs on.
        #[arg(long)]
        model: String,
        /// System prompt (or --system-prompt-file).
        #[arg(long, conflicts_with = "system_prompt_file")]
        system_prompt: Option<String>,
        /// Read the system prompt from a file.
        #[arg(long, value_name = "FILE")]
        system_prompt_file: Option<PathBuf>,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Default temperature.
        #[arg(long)]
        temperature: Option<f32>,
        /// Default max_tokens.
        #[arg(long)]
        max_tokens: Option<u32>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List apps.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show one app.
    Show {
        /// Name.
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Delete an app (keys scoped to it are revoked).
    Rm {
        /// Name.
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Create an API key; the secret is printed once.
    Create {
        /// Label.
        #[arg(long)]
        name: String,
        /// Owner (username or id; admins only; default: yourself).
        #[arg(long)]
        user: Option<String>,
        /// Comma-separated models the key may call.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Expire after this many days.
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Scope the key to one app: it may only call `app:<NAME>`.
        #[arg(long, value_name = "NAME")]
        app: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Change a key's label or quotas (quotas: admins).
    Update {
        /// Key id (the part after `mbx_`).
        id: String,
        /// New label.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List keys (yours, or everyone's with --all).
    List {
        /// Every user's keys (admins).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Revoke a key by id.
    Revoke {
        /// Key id (the part after `mbx_`).
        id: String,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Verify the chain: through the server, directly from the database (--offline), or an
    /// exported file against its signed manifest (--file).
    Verify {
        /// Read the database in the data directory directly (works with the server stopped).
        #[arg(long)]
        offline: bool,
        /// Verify an export made by `audit export` (its manifest is FILE.manifest.json).
        #[arg(long, value_name = "FILE", conflicts_with = "offline")]
        file: Option<PathBuf>,
        /// SM2 public key (hex) the export must be signed with.
        #[arg(long, value_name = "PUBKEY")]
        trust: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Export the chain as JSON Lines plus a signed manifest (FILE.manifest.json).
    Export {
        /// Output file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// First sequence number.
        #[arg(long)]
        from_seq: Option<i64>,
        /// Last sequence number.
        #[arg(long)]
        to_seq: Option<i64>,
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum ModelCmd {
    /// Import a GGUF file on the server's machine into the registry (copied and hashed).
    Import {
        /// Path to the .gguf file (as the server sees it; made absolute here).
        path: PathBuf,
        /// name[:tag] (default: the file name, tag latest).
        #[arg(long)]
        name: Option<String>,
        /// For a LoRA adapter GGUF: the model it applies to (then call `BASE+NAME` or `NAME`).
        #[arg(long)]
        base: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// List registry models.
    List {
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Show one model's GGUF details.
    Show {
        /// name[:tag].
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Remove a model (its blob goes when no tag points to it).
    Rm {
        /// name[:tag].
        name: String,
        /// Unload it first if it is loaded.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Load a model into memory now.
    Load {
        /// name[:tag].
        name: String,
        /// Stay loaded this long after the last request: seconds or 30s/10m/2h; -1 = always.
        #[arg(long, allow_hyphen_values = true)]
        keep_alive: Option<String>,
        /// Pin: never unloaded for idleness nor evicted to make room.
        #[arg(long, conflicts_with = "unpin")]
        pin: bool,
        /// Remove a pin.
        #[arg(long)]
        unpin: bool,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Unload a model.
    Unload {
        /// name[:tag].
        name: String,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Download a GGUF from an http(s) URL into the registry, with a progress bar. Resumes
    /// after dropped connections; run it again to resume an interrupted download.
    Pull {
        /// The URL.
        url: String,
        /// name[:tag] (default: the file name).
        #[arg(long)]
        name: Option<String>,
        /// Expected SHA-256 (hex); a mismatch registers nothing.
        #[arg(long)]
        sha256: Option<String>,
        /// For a LoRA adapter: the model it applies to.
        #[arg(long)]
        base: Option<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Decide who may see and call a model (admins). Without --roles or --users: everyone.
    Visibility {
        /// name[:tag].
        name: String,
        /// Comma-separated roles.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Comma-separated usernames.
        #[arg(long, value_delimiter = ',')]
        users: Vec<String>,
        #[command(flatten)]
        c: ClientArgs,
    },
    /// Models loaded now.
    Ps {
        #[command(flatten)]
        c: ClientArgs,
    },
}

#[derive(Subcommand, Debug)]
enum AdminCmd {
    /// Reset a user's password with the server stopped (lockout recovery). Prints a temporary
    /// password that must be changed at next login; re-enables the account. Audited.
    ResetPassword {
        /// Username.
        user: String,
        #[command(flatten)]
        cfg: ConfigArgs,
    },
}

fn main() -> ExitCode {
    no_huge_pages_for_the_heap();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::User(cmd) => client::user(cmd).await,
        Command::Key(cmd) => client::key(cmd).await,
        Command::Model(cmd) => client::model(cmd).await,
        Command::App(cmd) => client::app(cmd).await,
        Command::Kb(cmd) => client::kb(cmd).await,
        Command::Bundle(cmd) => client::bundle(cmd).await,
        Command::Upstream(cmd) => client::upstream(cmd).await,
        Command::Usage(a) => client::usage(&a.c, &a.by, a.from, a.to, a.user).await,
        // The offline commands block on SQLite and the store's writer: off the async threads.
        Command::Audit(AuditCmd::Verify { offline: true, c, .. }) => {
            blocking(move || offline::verify(&c.cfg, c.json)).await
        }
        Command::Audit(AuditCmd::Verify { file: Some(f), trust, c, .. }) => {
            blocking(move || offline::verify_export(&f, trust.as_deref(), c.json)).await
        }
        Command::Audit(cmd) => client::audit(cmd).await,
        Command::Admin(AdminCmd::ResetPassword { user, cfg }) => {
            blocking(move || offline::reset_password(&cfg, &user)).await
        }
    }
}

async fn blocking(f: impl FnOnce() -> anyhow::Result<()> + Send + 'static) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(f).await?
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut overrides = Vec::new();
    if let Some(b) = a.bind {
        overrides.push(("server.bind", toml::Value::String(b.to_string())));
    }
    if let Some(p) = a.port {
        overrides.push(("server.port", toml::Value::Integer(i64::from(p))));
    }
    if a.lan {
        overrides.push(("server.lan", toml::Value::Boolean(true)));
    }
    if let Some(l) = a.log_level {
        overrides.push(("log.level", toml::Value::String(l)));
    }
    let cfg = a.cfg.load(overrides)?;
    let data_dir = maasbox_api::state::expand_home(&cfg.storage.data_dir);
    maasbox_api::state::ensure_data_dir(&data_dir)?;
    let _guard = maasbox_api::init_logging(&cfg.log, &data_dir.join("logs"))?;
    let (state, startup) = maasbox_api::AppState::open(cfg, maasbox_engine::EngineHandle::new())?;
    // LAN sharing may have been turned on from the settings page since the config was written.
    let addr = state.listen_addr();
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    println!(
        "maasbox {} listening on http://{local} (data: {})",
        env!("CARGO_PKG_VERSION"),
        startup.data_dir.display()
    );
    if let Some(code) = &startup.setup_code {
        println!();
        println!("maasbox has no users yet. One-time setup code: {code}");
        println!("(also written to {}, readable only by you)", startup.setup_token_path.display());
        println!("Create the first admin:");
        println!(
            "  curl -sX POST http://{local}/api/v1/auth/setup -H 'content-type: application/json' \\\n    -d '{{\"code\":\"{code}\",\"username\":\"admin\",\"password\":\"<a strong password>\"}}'"
        );
        println!();
    }
    maasbox_api::serve(listener, state, maasbox_api::shutdown_signal()).await
}
