//! Upstream providers at run time: which upstreams serve a model name, whether each is up
//! (a health check every `upstreams.health_interval_secs`, plus a failed connection marking
//! it down at once), and forwarding one `/v1` request — streaming chunk by chunk — to one.
//!
//! Their API keys live here only opened (SM4-GCM under the master key, bound to the
//! upstream's name), in memory wiped on drop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use maasbox_crypto::MasterKey;
use maasbox_store::upstreams::WithKey;
use maasbox_types::{ErrorCode, UpstreamRecord};
use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::ApiError;

/// One upstream, ready to call.
pub struct Upstream {
    /// Its configuration.
    pub rec: UpstreamRecord,
    key: Option<Zeroizing<String>>,
    healthy: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Upstream {
    /// Whether the last health check (or request) succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Why it was marked down.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().clone()
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}", self.rec.base_url.trim_end_matches('/'), path)
    }

    fn request(&self, http: &reqwest::Client, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = http.request(method, self.url(path));
        match &self.key {
            Some(k) => rb.bearer_auth(k.as_str()),
            None => rb,
        }
    }

    /// Record the outcome of a check or a request; returns true when the state changed.
    pub fn mark(&self, up: bool, error: Option<String>) -> bool {
        *self.last_error.lock() = error;
        self.healthy.swap(up, Ordering::Relaxed) != up
    }
}

/// The AAD that binds a sealed key to its upstream.
pub fn key_aad(name: &str) -> Vec<u8> {
    format!("maasbox/upstream-key/{name}").into_bytes()
}

/// All upstreams of the server.
pub struct Upstreams {
    list: RwLock<Vec<Arc<Upstream>>>,
    http: reqwest::Client,
}

impl Default for Upstreams {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .unwrap_or_default();
        Self { list: RwLock::new(Vec::new()), http }
    }
}

impl Upstreams {
    /// Replace the set from the store's rows (keys opened with `master`). Health carries over
    /// for upstreams that stay; new ones start as up until their first check.
    pub fn reload(&self, rows: Vec<WithKey>, master: &MasterKey) {
        let mut list = self.list.write();
        let old: Vec<Arc<Upstream>> = std::mem::take(&mut *list);
        for (rec, sealed) in rows {
            let key = sealed.and_then(|s| match master.open(&s, &key_aad(&rec.name)) {
                Ok(k) => Some(Zeroizing::new(String::from_utf8_lossy(&k).into_owned())),
                Err(_) => {
                    tracing::error!(upstream = %rec.name, "cannot open the sealed API key of an upstream; calling it without one");
                    None
                }
            });
            let prev = old.iter().find(|o| o.rec.name == rec.name);
            let healthy = prev.is_none_or(|p| p.healthy());
            let last_error = prev.and_then(|p| p.last_error());
            list.push(Arc::new(Upstream {
                rec,
                key,
                healthy: AtomicBool::new(healthy),
                last_error: Mutex::new(last_error),
            }));
        }
    }

    /// Every upstream.
    pub fn all(&self) -> Vec<Arc<Upstream>> {
        self.list.read().clone()
    }

    /// Enabled upstreams that list `model` and are up, lowest priority first; and whether any
    /// enabled upstream lists it at all (up or down).
    pub fn serving(&self, model: &str) -> (Vec<Arc<Upstream>>, bool) {
        let list = self.list.read();
        let configured: Vec<_> =
            list.iter().filter(|u| u.rec.enabled && u.rec.models.iter().any(|m| m == model)).cloned().collect();
        let any = !configured.is_empty();
        let mut up: Vec<_> = configured.into_iter().filter(|u| u.healthy()).collect();
        up.sort_by_key(|u| u.rec.priority);
        (up, any)
    }

    /// Check one upstream: `GET {base_url}/models` with its key within 5 s.
    pub async fn check(&self, u: &Upstream) -> Result<(), String> {
        let r = u.request(&self.http, reqwest::Method::GET, "models").timeout(Duration::from_secs(5)).send().await;
        match r {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("GET /models answered HTTP {}", r.status())),
            Err(e) => Err(format!("unreachable: {}", without_url(e))),
        }
    }

    /// The HTTP client for forwarding.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// A reqwest error without the URL (which may carry hosts the caller should not learn).
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    if let Some(src) = std::error::Error::source(&e) {
        s.push_str(": ");
        s.push_str(&src.to_string());
    }
    s
}

/// What forwarding produced.
pub(crate) enum Forwarded {
    /// A complete JSON answer.
    Json(Value),
    /// An SSE stream (status 200), to be passed through.
    Stream(reqwest::Response),
}

/// Why forwarding failed: `retry` = another target may succeed.
pub(crate) struct Failure {
    pub error: ApiError,
    pub retry: bool,
    pub reason: String,
}

/// Forward `body` to `u` at `path` (`chat/completions`, `completions`, `embeddings`).
pub(crate) async fn forward(
    ups: &Upstreams,
    u: &Upstream,
    path: &str,
    body: &Value,
    stream: bool,
) -> Result<Forwarded, Failure> {
    let resp = u.request(ups.http(), reqwest::Method::POST, path).json(body).send().await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            let reason = without_url(e);
            if u.mark(false, Some(reason.clone())) {
                tracing::warn!(upstream = %u.rec.name, error = %reason, "upstream marked down");
            }
            return Err(Failure {
                error: ApiError::new(ErrorCode::UpstreamFailed, format!("upstream '{}' is unreachable", u.rec.name)),
                retry: true,
                reason,
            });
        }
    };
    let status = resp.status();
    if status.is_success() {
        if stream {
            return Ok(Forwarded::Stream(resp));
        }
        return match resp.json::<Value>().await {
            Ok(v) => Ok(Forwarded::Json(v)),
            Err(e) => Err(Failure {
                error: ApiError::new(
                    ErrorCode::UpstreamFailed,
                    format!("upstream '{}' sent an unreadable answer", u.rec.name),
                ),
                retry: true,
                reason: without_url(e),
            }),
        };
    }
    // An OpenAI-shaped error body keeps its message; the code says where it came from.
    let text = resp.text().await.unwrap_or_default();
    let upstream_msg = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect());
    let reason = format!("HTTP {}: {upstream_msg}", status.as_u16());
    let (code, retry) = match status.as_u16() {
        // The caller's request is at fault: every target would say the same.
        400 | 413 | 422 => (ErrorCode::InvalidRequest, false),
        _ => (ErrorCode::UpstreamFailed, true),
    };
    let message = if retry {
        format!("upstream '{}' failed with HTTP {}", u.rec.name, status.as_u16())
    } else {
        format!("upstream '{}' refused the request: {upstream_msg}", u.rec.name)
    };
    Err(Failure { error: ApiError::new(code, message), retry, reason })
}
