//! Commands that open the data directory directly: offline verification and password reset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use maasbox_crypto::{password, Keyring, Sm2KeyPair, Sm2PublicKey};
use maasbox_store::{audit, users, Store, StoreOptions, WriteOutcome};
use maasbox_types::{AuthMethod, NewAuditEvent, UserStatus};
use serde_json::{json, Value};

use crate::ConfigArgs;

/// `FILE.manifest.json` beside an export.
pub(crate) fn manifest_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".manifest.json");
    PathBuf::from(p)
}

pub(crate) fn print_report(v: &Value) {
    if v["valid"].as_bool() == Some(true) {
        println!(
            "audit chain OK: {} events, last seq {}, {} signed checkpoints verified",
            v["events"], v["last_seq"], v["checkpoints_verified"]
        );
        println!("last hash {}", v["last_hash"].as_str().unwrap_or_default());
    } else {
        println!(
            "audit chain BROKEN at seq {}: {}",
            v["first_bad_seq"].as_i64().map_or("?".into(), |s| s.to_string()),
            v["reason"].as_str().unwrap_or("unknown")
        );
    }
}

fn finish(report: &maasbox_types::ChainReport, json_out: bool) -> anyhow::Result<()> {
    let v = serde_json::to_value(report)?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_report(&v);
    }
    if !report.valid {
        bail!("audit chain is broken");
    }
    Ok(())
}

/// The appliance's public key from the data directory, without creating anything.
fn appliance_key(data_dir: &Path) -> Option<Sm2PublicKey> {
    let keys = data_dir.join("keys");
    if let Ok(hex) = std::fs::read_to_string(keys.join("sm2.key")) {
        if let Ok(kp) = Sm2KeyPair::from_private_hex(hex.trim()) {
            return Some(kp.public_key());
        }
    }
    std::fs::read_to_string(keys.join("sm2.pub")).ok().and_then(|h| Sm2PublicKey::from_hex(h.trim()).ok())
}

pub(crate) fn verify(cfg: &ConfigArgs, json_out: bool) -> anyhow::Result<()> {
    let cfg = cfg.load(Vec::new())?;
    let dir = maasbox_api::state::expand_home(&cfg.storage.data_dir);
    let trusted = appliance_key(&dir);
    if trusted.is_none() {
        eprintln!("warning: no appliance key in {}; checkpoint signers cannot be pinned", dir.join("keys").display());
    }
    let report = maasbox_store::verify_database(&dir.join("maasbox.db"), trusted.as_ref())
        .with_context(|| format!("reading {}", dir.join("maasbox.db").display()))?;
    finish(&report, json_out)
}

pub(crate) fn verify_export(file: &Path, trust: Option<&str>, json_out: bool) -> anyhow::Result<()> {
    let data = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mpath = manifest_path(file);
    let manifest: audit::ExportManifest = serde_json::from_slice(
        &std::fs::read(&mpath).with_context(|| format!("reading the manifest {}", mpath.display()))?,
    )
    .context("the manifest is not a maasbox export manifest")?;
    let trusted = trust.map(Sm2PublicKey::from_hex).transpose().context("--trust is not an SM2 public key")?;
    if trusted.is_none() {
        eprintln!("note: without --trust, the signature is checked against the key inside the manifest only");
    }
    let report = audit::verify_export(&data, &manifest, trusted.as_ref());
    finish(&report, json_out)
}

pub(crate) fn reset_password(cfg: &ConfigArgs, username: &str) -> anyhow::Result<()> {
    let cfg = cfg.load(Vec::new())?;
    let dir = maasbox_api::state::expand_home(&cfg.storage.data_dir);
    if !dir.join("maasbox.db").exists() {
        bail!("no maasbox database in {}", dir.display());
    }
    let _lock = maasbox_api::state::lock_data_dir(&dir)?;
    let Keyring { signing, .. } = Keyring::load_or_create(&dir.join("keys"))?;
    let store = Store::open(
        &dir.join("maasbox.db"),
        Arc::new(signing),
        StoreOptions { checkpoint_every: cfg.audit.checkpoint_every, batch_max: cfg.audit.batch_max },
    )?;
    let name = username.to_owned();
    let user = store
        .read_blocking(move |c| users::by_name(c, &name))
        .map_err(|_| anyhow::anyhow!("no user named '{username}'"))?;
    let temp = format!("Reset-{}", maasbox_crypto::random_hex(8));
    let alg = if cfg.crypto.gm_mode { password::Algorithm::Pbkdf2Sm3 } else { password::Algorithm::Argon2id };
    let hash = password::hash(&temp, alg)?;
    let os_user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let ev = NewAuditEvent {
        actor: format!("local:{os_user}"),
        auth_method: AuthMethod::Local,
        key_id: None,
        client_ip: None,
        request_id: None,
        action: "user.password.reset_offline".into(),
        resource: format!("user:{}", user.id),
        outcome: "success".into(),
        details: json!({"username": user.username, "reenabled": user.status == UserStatus::Disabled}),
    };
    let id = user.id;
    store.write_blocking(move |c| {
        users::set_password(c, id, &hash, true)?;
        users::update(c, id, &users::UserPatch { status: Some(UserStatus::Active), ..Default::default() })?;
        Ok(WriteOutcome::audited((), ev))
    })?;
    store.shutdown();
    println!("password of {} reset; all their sessions were ended.", user.username);
    println!("temporary password (must be changed at next login): {temp}");
    Ok(())
}
