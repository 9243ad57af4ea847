//! Settings that change at run time — LAN sharing, CORS origins, default quotas, retention —
//! from the settings page (`PATCH /api/v1/settings`) or the desktop tray. The configuration gives
//! their starting values; a change is stored in SQLite (with its audit event, in one
//! transaction) and from then on takes precedence over the file. Readers take a snapshot
//! ([`AppState::settings`]): one `Arc` clone, no lock held across an await.
//!
//! LAN sharing re-binds the listener in place: [`crate::serve`] owns the listeners and takes
//! [`NetCommand`]s, so turning sharing on or off needs no restart and drops no request in flight.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use maasbox_store::WriteOutcome;
use maasbox_types::NewAuditEvent;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::config::{Config, QuotaConfig, RetentionConfig};
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// The settings in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Settings {
    /// Listen on every interface (`0.0.0.0`) instead of the configured bind address.
    pub lan: bool,
    /// Browser origins allowed to call the API cross-origin (empty = none).
    pub cors_origins: Vec<String>,
    /// Quotas of every user without limits of their own (0 = no limit).
    pub quotas: QuotaConfig,
    /// Days kept (0 = forever).
    pub retention: RetentionConfig,
}

/// `PATCH /api/v1/settings`: fields given replace the old ones.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Share on the LAN.
    #[serde(default)]
    pub lan: Option<bool>,
    /// Consent to serving the LAN over plain HTTP (required to turn `lan` on unless the
    /// configuration already allows it: TLS is not built in yet).
    #[serde(default)]
    pub allow_plain_http: bool,
    /// New CORS origins (`scheme://host[:port]`).
    #[serde(default)]
    pub cors_origins: Option<Vec<String>>,
    /// New default quotas.
    #[serde(default)]
    pub quotas: Option<QuotaConfig>,
    /// New retention.
    #[serde(default)]
    pub retention: Option<RetentionConfig>,
}

impl Settings {
    /// The configuration's values with the stored changes on top (a stored value that no longer
    /// parses is skipped with a warning).
    pub(crate) fn load(config: &Config, stored: Vec<(String, serde_json::Value)>) -> Settings {
        let mut s = Settings {
            lan: config.server.lan,
            cors_origins: config.server.cors_origins.clone(),
            quotas: config.quotas.clone(),
            retention: config.retention.clone(),
        };
        for (key, value) in stored {
            let ok = match key.as_str() {
                "lan" => serde_json::from_value(value).map(|v| s.lan = v).is_ok(),
                "cors_origins" => serde_json::from_value(value).map(|v| s.cors_origins = v).is_ok(),
                "quotas" => serde_json::from_value(value).map(|v| s.quotas = v).is_ok(),
                "retention" => serde_json::from_value(value).map(|v| s.retention = v).is_ok(),
                _ => true,
            };
            if !ok {
                tracing::warn!(%key, "ignoring a stored setting that does not parse");
            }
        }
        s
    }

    /// The changed keys as (key, JSON value).
    fn changes(&self, before: &Settings) -> Vec<(&'static str, serde_json::Value)> {
        let mut out = Vec::new();
        if self.lan != before.lan {
            out.push(("lan", json!(self.lan)));
        }
        if self.cors_origins != before.cors_origins {
            out.push(("cors_origins", json!(self.cors_origins)));
        }
        if self.quotas != before.quotas {
            out.push(("quotas", json!(self.quotas)));
        }
        if self.retention != before.retention {
            out.push(("retention", json!(self.retention)));
        }
        out
    }
}

/// A browser origin: `http(s)://host[:port]`, nothing after. `*` is refused: credentials
/// must never be offered to every site.
fn validate_origin(o: &str) -> Result<(), String> {
    let rest = o.strip_prefix("https://").or_else(|| o.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && !r.contains(['/', '?', '#', '@', ' '])
            && r.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    });
    if ok {
        Ok(())
    } else {
        Err(format!("'{o}' is not an origin like https://app.example.com or http://localhost:5173"))
    }
}

impl SettingsPatch {
    /// The settings after this patch, or the field that is wrong.
    fn apply(&self, before: &Settings, config: &Config) -> ApiResult<Settings> {
        let mut s = before.clone();
        if let Some(lan) = self.lan {
            if lan && !before.lan && !self.allow_plain_http && !config.server.allow_plain_http_on_lan {
                return Err(ApiError::field(
                    "allow_plain_http",
                    "LAN sharing serves plain HTTP (TLS is not built in yet): anyone on the network could read \
                     traffic. Send allow_plain_http: true to accept that, or put a TLS proxy in front",
                ));
            }
            s.lan = lan;
        }
        if let Some(origins) = &self.cors_origins {
            if origins.len() > 32 {
                return Err(ApiError::field("cors_origins", "at most 32 origins"));
            }
            let mut list = Vec::with_capacity(origins.len());
            for o in origins {
                let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
                validate_origin(&o).map_err(|m| ApiError::field("cors_origins", m))?;
                if !list.contains(&o) {
                    list.push(o);
                }
            }
            s.cors_origins = list;
        }
        if let Some(q) = &self.quotas {
            s.quotas = q.clone();
        }
        if let Some(r) = &self.retention {
            if r.usage_days > 36_500 || r.conversations_days > 36_500 {
                return Err(ApiError::field("retention", "retention is at most 36500 days (0 = forever)"));
            }
            s.retention = r.clone();
        }
        Ok(s)
    }
}

/// Asks the serving loop to listen somewhere else.
pub(crate) struct NetCommand {
    pub lan: bool,
    pub reply: oneshot::Sender<Result<SocketAddr, String>>,
}

/// The serving loop's side: where it listens and how to reach it.
#[derive(Default)]
pub(crate) struct Net {
    pub commands: parking_lot::Mutex<Option<mpsc::Sender<NetCommand>>>,
    pub listening: parking_lot::Mutex<Option<SocketAddr>>,
}

/// Where to listen for these settings.
pub(crate) fn listen_ip(config: &Config, lan: bool) -> IpAddr {
    if lan {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        config.server.bind
    }
}

impl AppState {
    /// A snapshot of the settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.0.settings.read().clone()
    }

    /// The address to bind at startup (the configured port; every interface when LAN sharing
    /// is on, whether from the configuration or a stored change).
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(listen_ip(self.config(), self.settings().lan), self.config().server.port)
    }

    /// Where the server listens now (`None` before [`crate::serve`] runs).
    pub fn listening(&self) -> Option<SocketAddr> {
        *self.0.net.listening.lock()
    }

    /// Whether only this machine can reach the server (decides the DNS-rebinding guard).
    pub(crate) fn loopback_only(&self) -> bool {
        !self.settings().lan && self.config().server.bind.is_loopback()
    }

    /// Apply `patch` on behalf of `event`'s actor: validate, re-bind when LAN sharing changes,
    /// then store the changed keys with one audit event (`settings.update`, before and after).
    /// Nothing changes when any step fails. The desktop shell calls this for its tray toggle.
    pub async fn update_settings(&self, patch: SettingsPatch, event: NewAuditEvent) -> ApiResult<Arc<Settings>> {
        let _one_at_a_time = self.0.settings_lock.lock().await;
        let before = self.settings();
        let after = patch.apply(&before, self.config())?;
        let changes = after.changes(&before);
        if changes.is_empty() {
            return Ok(before);
        }
        let rebound = if after.lan != before.lan { Some(self.rebind(after.lan).await?) } else { None };
        let mut ev = event;
        let keys: Vec<&str> = changes.iter().map(|(k, _)| *k).collect();
        ev.details =
            json!({"changed": keys, "before": *before, "after": after, "listening": rebound.map(|a| a.to_string())});
        let by = ev.actor.clone();
        let written = self
            .store()
            .write(move |c| {
                for (k, v) in &changes {
                    maasbox_store::settings::put(c, k, v, &by)?;
                }
                Ok(WriteOutcome::audited((), ev))
            })
            .await;
        if let Err(e) = written {
            if rebound.is_some() {
                if let Err(back) = self.rebind(before.lan).await {
                    tracing::error!(error = %back, "could not return to the previous listening address");
                }
            }
            return Err(e.into());
        }
        let after = Arc::new(after);
        *self.0.settings.write() = after.clone();
        tracing::info!(lan = after.lan, "settings changed");
        Ok(after)
    }

    /// Ask the serving loop to listen for `lan`; resolves once the new listener accepts.
    async fn rebind(&self, lan: bool) -> ApiResult<SocketAddr> {
        let tx = self.0.net.commands.lock().clone();
        let Some(tx) = tx else {
            return Err(ApiError::internal("the server is not listening yet"));
        };
        let (reply, rx) = oneshot::channel();
        tx.send(NetCommand { lan, reply }).await.map_err(|_| ApiError::internal("the server is stopping"))?;
        match rx.await {
            Ok(Ok(addr)) => Ok(addr),
            Ok(Err(e)) => Err(ApiError::field("lan", e)),
            Err(_) => Err(ApiError::internal("the server is stopping")),
        }
    }

    /// Delete usage rows and conversations older than the retention settings; audited (as the
    /// system) when something was deleted.
    pub(crate) async fn prune(&self) -> anyhow::Result<(usize, usize)> {
        let r = self.settings().retention.clone();
        if r.usage_days == 0 && r.conversations_days == 0 {
            return Ok((0, 0));
        }
        let now = maasbox_types::now_secs();
        let day = 86_400i64;
        let out = self
            .store()
            .write(move |c| {
                let usage = match r.usage_days {
                    0 => 0,
                    d => maasbox_store::usage::prune(c, (now - d as i64 * day) * 1000)?,
                };
                let conversations = match r.conversations_days {
                    0 => 0,
                    d => maasbox_store::conversations::prune(c, now - d as i64 * day)?,
                };
                if usage + conversations == 0 {
                    return Ok(WriteOutcome::unaudited((0, 0)));
                }
                let ev = system_event(
                    "retention.prune",
                    json!({"usage_rows": usage, "conversations": conversations, "retention": r}),
                );
                Ok(WriteOutcome::audited((usage, conversations), ev))
            })
            .await?;
        Ok(out)
    }
}

/// An audit event by the server itself.
pub(crate) fn system_event(action: &str, details: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        actor: "system".into(),
        auth_method: maasbox_types::AuthMethod::System,
        key_id: None,
        client_ip: None,
        request_id: None,
        action: action.into(),
        resource: "system".into(),
        outcome: "success".into(),
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_be_bare_http_origins() {
        for ok in ["http://localhost:5173", "https://app.example.com", "http://[::1]:8080"] {
            assert!(validate_origin(ok).is_ok(), "{ok}");
        }
        for bad in ["*", "app.example.com", "https://a.example/path", "ftp://a.example", "https://", "http://a b"] {
            assert!(validate_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lan_needs_consent_and_patches_only_what_they_name() {
        let cfg = Config::default();
        let before = Settings::load(&cfg, vec![]);
        let on = SettingsPatch { lan: Some(true), ..Default::default() };
        assert_eq!(on.apply(&before, &cfg).unwrap_err().param.as_deref(), Some("allow_plain_http"));
        let on = SettingsPatch { lan: Some(true), allow_plain_http: true, ..Default::default() };
        let after = on.apply(&before, &cfg).unwrap();
        assert!(after.lan);
        assert_eq!(after.changes(&before).len(), 1);
        let origins = SettingsPatch {
            cors_origins: Some(vec!["HTTP://Localhost:5173/".into(), "http://localhost:5173".into()]),
            ..Default::default()
        };
        assert_eq!(origins.apply(&before, &cfg).unwrap().cors_origins, vec!["http://localhost:5173"]);
    }

    #[test]
    fn stored_values_override_the_config_and_bad_ones_are_skipped() {
        let cfg = Config::default();
        let s = Settings::load(
            &cfg,
            vec![
                ("lan".into(), json!(true)),
                ("quotas".into(), json!({"requests_per_minute": 7})),
                ("retention".into(), json!("not a table")),
            ],
        );
        assert!(s.lan);
        assert_eq!(s.quotas.requests_per_minute, 7);
        assert_eq!(s.retention, cfg.retention);
    }
}
