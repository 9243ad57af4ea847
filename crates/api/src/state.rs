//! `AppState`: what every handler shares — configuration, the store, keys, the auth cache, the
//! login limiter and the engine handle. Built once by [`AppState::open`].

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use maasbox_crypto::{Keyring, MasterKey, Sm2KeyPair};
use maasbox_engine::EngineHandle;
use maasbox_store::{Store, StoreOptions, WriteOutcome};
use parking_lot::Mutex;

use crate::auth::{AuthCache, LoginLimiter};
use crate::config::Config;

/// Shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub config: Config,
    pub data_dir: PathBuf,
    pub store: Store,
    pub signing: Arc<Sm2KeyPair>,
    pub master: MasterKey,
    pub jwt_key: Secret,
    pub key_mac_key: maasbox_crypto::HmacSm3Key,
    pub refresh_mac_key: Secret,
    pub owner_mac: [u8; 32],
    /// The one-time setup code while no user exists.
    pub setup_code: Mutex<Option<String>>,
    pub limiter: LoginLimiter,
    pub auth_cache: AuthCache,
    /// Last use of API keys, flushed to the store in the background.
    pub key_uses: Mutex<HashMap<String, i64>>,
    pub engine: EngineHandle,
    /// Serialises model loads so two requests do not load the same model twice.
    pub load_lock: tokio::sync::Mutex<()>,
    /// Quota counters (rebuilt from the usage tables at startup).
    pub meter: Arc<crate::quota::Meter>,
    /// Model downloads in progress (and finished ones for an hour).
    pub imports: crate::routes::pull::Imports,
    /// Upstream providers with their opened keys and health.
    pub upstreams: crate::upstream::Upstreams,
    /// The knowledge index (sled, in `<data>/knowledge`).
    pub knowledge: Arc<maasbox_knowledge::Knowledge>,
    /// Document ingestion jobs (finished ones for an hour).
    pub ingests: crate::routes::knowledge::Ingests,
    /// Settings in force (configuration + stored changes), replaced whole on a change.
    pub settings: parking_lot::RwLock<Arc<crate::settings::Settings>>,
    /// Serialises settings changes (a LAN re-bind must not race another).
    pub settings_lock: tokio::sync::Mutex<()>,
    /// The serving loop's listeners.
    pub net: crate::settings::Net,
    pub started: Instant,
    /// Held for the life of the server: one process per data directory.
    _lock: File,
}

/// What `serve` prints at startup.
pub struct Startup {
    /// The setup code, when the appliance has no user yet.
    pub setup_code: Option<String>,
    /// Where the setup code file was written.
    pub setup_token_path: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
}

/// A derived 32-byte key, wiped on drop.
pub(crate) type Secret = zeroize::Zeroizing<[u8; 32]>;

/// Expand a leading `~/` to the home directory.
pub fn expand_home(p: &Path) -> PathBuf {
    match p.strip_prefix("~") {
        Ok(rest) => dirs::home_dir().map(|h| h.join(rest)).unwrap_or_else(|| p.to_owned()),
        Err(_) => p.to_owned(),
    }
}

/// Take the data directory's lock file; fails when another maasbox process holds it.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("maasbox.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.try_lock().map_err(|_| {
        anyhow::anyhow!("another maasbox process is using the data directory {} (stop it first)", data_dir.display())
    })?;
    Ok(f)
}

/// Create the data directory with owner-only permissions.
pub fn ensure_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

impl AppState {
    /// Open the data directory: lock it, load or create keys, open the database, and prepare
    /// the owner token and (before the first admin exists) the setup code.
    pub fn open(config: Config, engine: EngineHandle) -> anyhow::Result<(Self, Startup)> {
        let data_dir = expand_home(&config.storage.data_dir);
        ensure_data_dir(&data_dir)?;
        let lock = lock_data_dir(&data_dir)?;
        let Keyring { master, signing } = Keyring::load_or_create(&data_dir.join("keys"))?;
        let signing = Arc::new(signing);
        let store = Store::open(
            &data_dir.join("maasbox.db"),
            signing.clone(),
            StoreOptions { checkpoint_every: config.audit.checkpoint_every, batch_max: config.audit.batch_max },
        )?;

        let derive = |label: &str| -> Secret { master.derive(label) };
        let jwt_key = derive("maasbox/jwt/v1");
        let key_mac_key = derive("maasbox/api-key-mac/v1");
        let refresh_mac_key = derive("maasbox/refresh-mac/v1");
        let owner_mac_key = derive("maasbox/owner-token-mac/v1");

        let owner_path = data_dir.join("owner.token");
        let owner_token = match std::fs::read_to_string(&owner_path) {
            Ok(t) => t.trim().to_owned(),
            Err(_) => {
                let t = format!("mbo_{}", maasbox_crypto::random_hex(32));
                maasbox_crypto::write_secret_file(&owner_path, t.as_bytes())?;
                t
            }
        };
        let owner_mac = maasbox_crypto::hmac_sm3(owner_mac_key.as_ref(), owner_token.as_bytes());

        let setup_token_path = data_dir.join("setup.token");
        let users = store.read_blocking(maasbox_store::users::count)?;
        let setup_code = if users == 0 {
            let code = match std::fs::read_to_string(&setup_token_path) {
                Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
                _ => {
                    let _ = std::fs::remove_file(&setup_token_path);
                    let code = new_setup_code();
                    maasbox_crypto::write_secret_file(&setup_token_path, code.as_bytes())?;
                    code
                }
            };
            Some(code)
        } else {
            let _ = std::fs::remove_file(&setup_token_path);
            None
        };

        let limiter = LoginLimiter::new(&config.auth);
        let upstreams = crate::upstream::Upstreams::default();
        upstreams.reload(store.read_blocking(maasbox_store::upstreams::list_with_keys)?, &master);
        let meter = Arc::new(crate::quota::Meter::default());
        let now = maasbox_types::now_millis();
        meter.restore(store.read_blocking(move |c| maasbox_store::usage::counters(c, now))?, now);
        let knowledge = Arc::new(
            maasbox_knowledge::Knowledge::open(&data_dir.join("knowledge")).context("opening the knowledge index")?,
        );
        let settings = crate::settings::Settings::load(&config, store.read_blocking(maasbox_store::settings::all)?);
        let state = AppState(Arc::new(Inner {
            data_dir: data_dir.clone(),
            store,
            signing,
            master,
            jwt_key,
            key_mac_key: maasbox_crypto::HmacSm3Key::new(key_mac_key.as_ref()),
            refresh_mac_key,
            owner_mac,
            setup_code: Mutex::new(setup_code.clone()),
            limiter,
            auth_cache: AuthCache::default(),
            key_uses: Mutex::new(HashMap::new()),
            engine,
            load_lock: tokio::sync::Mutex::new(()),
            meter,
            imports: Default::default(),
            upstreams,
            knowledge,
            ingests: Default::default(),
            settings: parking_lot::RwLock::new(Arc::new(settings)),
            settings_lock: tokio::sync::Mutex::new(()),
            net: Default::default(),
            started: Instant::now(),
            config,
            _lock: lock,
        }));
        Ok((state, Startup { setup_code, setup_token_path, data_dir }))
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The knowledge index.
    pub fn knowledge(&self) -> &Arc<maasbox_knowledge::Knowledge> {
        &self.0.knowledge
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.0.store
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.0.data_dir
    }

    /// The engine handle.
    pub fn engine(&self) -> &EngineHandle {
        &self.0.engine
    }

    /// The master key (sealing secrets at rest).
    pub fn master_key(&self) -> &MasterKey {
        &self.0.master
    }

    /// Append a system event (start, stop) to the audit chain.
    pub async fn audit_system(&self, action: &str, details: serde_json::Value) -> anyhow::Result<()> {
        let ev = crate::settings::system_event(action, details);
        self.0.store.write(move |_| Ok(WriteOutcome::audited((), ev))).await?;
        Ok(())
    }

    /// Re-read the upstreams after a change.
    pub async fn reload_upstreams(&self) -> anyhow::Result<()> {
        let rows = self.0.store.read(maasbox_store::upstreams::list_with_keys).await?;
        self.0.upstreams.reload(rows, &self.0.master);
        Ok(())
    }

    /// Check every enabled upstream once; a change of state is logged and audited.
    pub async fn check_upstreams(&self) {
        for u in self.0.upstreams.all().into_iter().filter(|u| u.rec.enabled) {
            let result = self.0.upstreams.check(&u).await;
            let up = result.is_ok();
            if u.mark(up, result.clone().err()) {
                let action = if up { "upstream.up" } else { "upstream.down" };
                tracing::warn!(upstream = %u.rec.name, error = ?result.as_ref().err(), "{action}");
                let details = serde_json::json!({"upstream": u.rec.name, "error": result.err()});
                if let Err(e) = self.audit_system(action, details).await {
                    tracing::warn!(error = %e, "could not audit an upstream state change");
                }
            }
        }
    }

    /// Write recorded API-key uses to the store (not audited: a read is not a change).
    pub async fn flush_key_uses(&self) {
        let uses: Vec<(String, i64)> = self.0.key_uses.lock().drain().collect();
        if uses.is_empty() {
            return;
        }
        if let Err(e) = self
            .0
            .store
            .write(move |c| {
                maasbox_store::keys::touch(c, &uses)?;
                Ok(WriteOutcome::unaudited(()))
            })
            .await
        {
            tracing::warn!(error = %e, "could not record API key last-use times");
        }
    }
}

/// A setup code: 20 characters from an unambiguous alphabet, grouped for reading aloud.
fn new_setup_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % ALPHABET.len();
    let mut chars = Vec::with_capacity(20);
    while chars.len() < 20 {
        for b in maasbox_crypto::random_bytes(32) {
            if (b as usize) < limit && chars.len() < 20 {
                chars.push(ALPHABET[b as usize % ALPHABET.len()] as char);
            }
        }
    }
    chars.chunks(5).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join("-")
}
