//! What every `/v1` request passes through around the engine: which model (or app) its `model`
//! names and whether the caller may see it, quota admission before any work, and — when it
//! ends — one transaction holding its usage row and its audit event.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use maasbox_store::usage::UsageRow;
use maasbox_store::{apps, models, usage, StoreError, WriteOutcome};
use maasbox_types::{now_millis, App, ErrorCode, Permission, Visibility};
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::quota::{Permit, Subject};
use crate::state::AppState;
use crate::upstream::{self, Forwarded, Upstream};

/// The three metered endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completion,
    Embeddings,
}

impl Endpoint {
    pub(crate) fn action(self) -> &'static str {
        match self {
            Endpoint::Chat => "inference.chat",
            Endpoint::Completion => "inference.completion",
            Endpoint::Embeddings => "inference.embeddings",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completion => "completion",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// One place a request can be served.
pub(crate) enum Route {
    /// The local engine (the registry entry `Target::model`).
    Local,
    /// An upstream provider.
    Upstream(Arc<Upstream>),
}

/// What a request's `model` resolved to.
pub(crate) struct Target {
    /// The registry entry that serves it locally (`name:tag`), or the upstream model name.
    pub model: String,
    /// The app it was called through.
    pub app: Option<App>,
    /// The LoRA adapter (registry `name:tag`) applied on the local model.
    pub adapter: Option<String>,
    /// Where to try, in order (local counts as priority 0; lower first).
    pub routes: Vec<Route>,
    /// Retrieval for this request (bases and chunk ids), recorded with its audit event.
    pub knowledge: Option<Value>,
}

impl Target {
    fn resource(&self) -> String {
        match &self.app {
            Some(a) => format!("app:{}", a.name),
            None => format!("model:{}", self.display()),
        }
    }

    /// The model as metered and audited: `base+adapter` when an adapter applies.
    pub(crate) fn display(&self) -> String {
        match &self.adapter {
            Some(a) => format!("{}+{}", self.model, a),
            None => self.model.clone(),
        }
    }
}

/// Whether `p` may see a model with visibility `v` (the owner token sees everything).
pub(crate) fn sees(p: &Principal, v: &Visibility) -> bool {
    p.user_id.is_none() || v.allows(p.role, &p.username)
}

/// Resolve `requested` (a model `name[:tag]` or `app:<name>`) for `p`. Anything the caller may
/// not use — hidden by visibility, outside the key's allow-list, another app than the key's —
/// answers exactly like a model that does not exist.
pub(crate) async fn resolve(st: &AppState, p: &Principal, requested: &str, action: &str) -> ApiResult<Target> {
    p.authorize(st, Permission::Inference, action).await?;
    let missing =
        || ApiError::new(ErrorCode::ModelNotFound, format!("the model '{requested}' does not exist")).param("model");
    let app = match requested.strip_prefix("app:") {
        Some(name) => {
            if p.key_app.as_deref().is_some_and(|a| a != name) {
                return Err(missing());
            }
            let n = name.to_owned();
            match st.store().read(move |c| apps::get(c, &n)).await {
                Ok(a) => Some(a),
                Err(StoreError::NotFound(_)) => return Err(missing()),
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            if let Some(a) = &p.key_app {
                return Err(ApiError::new(ErrorCode::ModelNotFound, format!("this API key may only call 'app:{a}'"))
                    .param("model"));
            }
            None
        }
    };
    let reference = app.as_ref().map_or(requested, |a| a.model.as_str());
    // `base+adapter` names a LoRA adapter on its base; an adapter's own name is an alias.
    let (reference, adapter_ref) = match reference.split_once('+') {
        Some((b, a)) if app.is_none() => (b, Some(a)),
        _ => (reference, None),
    };
    let lookup = |r: &str| -> Option<(String, String)> { models::parse_ref(r).ok() };
    let (base_ref, adapter_ref) = (lookup(reference), adapter_ref.map(lookup));
    if app.is_some() && base_ref.is_none() {
        return Err(ApiError::field("model", format!("the app's model '{reference}' is not a valid name")));
    }
    let found = st
        .store()
        .read(move |c| {
            let get = |(n, t): &(String, String)| match models::get(c, n, t) {
                Ok(r) => Ok(Some(r)),
                Err(StoreError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            };
            let Some(first) = base_ref.as_ref().map(get).transpose()?.flatten() else { return Ok(None) };
            match (&first.base, adapter_ref) {
                // An adapter by its own name: load its base.
                (Some(b), None) => {
                    let base = match models::parse_ref(b) {
                        Ok(r) => get(&r)?,
                        Err(_) => None,
                    };
                    Ok(base.map(|base| (base, Some(first))))
                }
                (None, None) => Ok(Some((first, None))),
                (None, Some(Some(a))) => {
                    let adapter = get(&a)?.filter(|ad| ad.base.as_deref() == Some(first.id.as_str()));
                    Ok(adapter.map(|ad| (first, Some(ad))))
                }
                _ => Ok(None),
            }
        })
        .await?;
    let (local, adapter) = match found {
        Some((base, adapter)) => {
            let key_allows = p.may_use_model(&base.id)
                || adapter.as_ref().is_some_and(|a| p.may_use_model(&a.id))
                || app.as_ref().is_some_and(|a| p.may_use_model(&format!("app:{}", a.name)));
            let visible = sees(p, &base.visibility) && adapter.as_ref().is_none_or(|a| sees(p, &a.visibility));
            if key_allows && visible {
                (Some(base), adapter.map(|a| a.id))
            } else {
                (None, None)
            }
        }
        None => (None, None),
    };
    // Apps run on their local model; plain names may also be served upstream.
    let (upstreams, configured) = if app.is_none() && p.may_use_model(requested) {
        st.0.upstreams.serving(requested)
    } else {
        (Vec::new(), false)
    };
    let mut routes: Vec<(i64, Route)> = upstreams.into_iter().map(|u| (u.rec.priority, Route::Upstream(u))).collect();
    let model = match &local {
        Some(r) => {
            routes.push((0, Route::Local));
            r.id.clone()
        }
        None => requested.to_owned(),
    };
    // Stable: an upstream of priority 0 goes after the local model.
    routes.sort_by_key(|(prio, r)| (*prio, matches!(r, Route::Upstream(_))));
    if routes.is_empty() {
        if configured {
            return Err(ApiError::new(
                ErrorCode::UpstreamFailed,
                format!("every upstream serving '{requested}' is down; retry later"),
            )
            .retry_after(30));
        }
        return Err(missing());
    }
    Ok(Target { model, app, adapter, routes: routes.into_iter().map(|(_, r)| r).collect(), knowledge: None })
}

/// The model named by a raw request body.
fn model_field(body: &Value) -> ApiResult<String> {
    match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(_) => Err(ApiError::field("model", "model must be a non-empty string")),
        None => Err(ApiError::field("model", "missing field `model`")),
    }
}

/// Resolve the body's model and admit the request under the caller's quotas, reserving the
/// tokens it may generate. When a token quota leaves less room than asked for, the body's
/// `max_tokens` is lowered to fit (upstreams then stop there too).
pub(crate) async fn enter(
    st: &AppState,
    p: &Principal,
    endpoint: Endpoint,
    body: &mut Value,
) -> ApiResult<(Target, Permit)> {
    let model = model_field(body)?;
    let target = resolve(st, p, &model, endpoint.action()).await?;
    let asked = ["max_completion_tokens", "max_tokens"].iter().find_map(|k| body.get(*k).and_then(Value::as_u64));
    let reserve = match endpoint {
        Endpoint::Embeddings => 0,
        _ => asked.or(target.app.as_ref().and_then(|a| a.params.max_tokens).map(u64::from)).unwrap_or(
            if endpoint == Endpoint::Completion { 16 } else { st.config().engine.default_max_tokens as u64 },
        ),
    };
    let permit = admit(st, p, endpoint, &target, reserve).await?;
    if endpoint != Endpoint::Embeddings && permit.allowed_tokens() < reserve {
        if let Some(o) = body.as_object_mut() {
            o.remove("max_completion_tokens");
            o.insert("max_tokens".into(), json!(permit.allowed_tokens().max(1)));
        }
    }
    Ok((target, permit))
}

/// Where [`try_upstreams`] left a request.
pub(crate) enum Upstreamed {
    /// Served upstream.
    Done(Response),
    /// Serve it locally.
    Local(Box<(Target, Permit)>),
}

/// Try the target's upstream routes in order until one answers; stop at the local route.
/// A stream is passed through chunk by chunk once the upstream has accepted it; before that,
/// a failed upstream (unreachable, 5xx, 429, auth) falls through to the next target.
pub(crate) async fn try_upstreams(
    st: &AppState,
    p: &Principal,
    endpoint: Endpoint,
    target: Target,
    mut body: Value,
    permit: Permit,
    started: (i64, Instant),
) -> ApiResult<Upstreamed> {
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let wants_usage = body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        // Ask for usage so quotas and metering see real counts; stripped again unless asked.
        body["stream_options"] = json!({"include_usage": true});
    }
    let path = match endpoint {
        Endpoint::Chat => "chat/completions",
        Endpoint::Completion => "completions",
        Endpoint::Embeddings => "embeddings",
    };
    let mut tried: Vec<Value> = Vec::new();
    let mut last: Option<ApiError> = None;
    let routes: Vec<Arc<Upstream>> = {
        let mut v = Vec::new();
        for r in &target.routes {
            match r {
                Route::Local => break,
                Route::Upstream(u) => v.push(u.clone()),
            }
        }
        v
    };
    let goes_local = routes.len() < target.routes.len();
    for u in routes {
        match upstream::forward(&st.0.upstreams, &u, path, &body, stream).await {
            Ok(Forwarded::Json(v)) => {
                let usage = &v["usage"];
                let f = Finished {
                    prompt_tokens: usage["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                    completion_tokens: usage["completion_tokens"].as_u64().unwrap_or(0) as usize,
                    status: 200,
                    failure: None,
                    details: json!({"route": format!("upstream:{}", u.rec.name), "fallbacks": tried, "stream": false}),
                };
                finish(st, p, endpoint, &target, permit, started, f).await?;
                return Ok(Upstreamed::Done(axum::Json(v).into_response()));
            }
            Ok(Forwarded::Stream(resp)) => {
                let route = json!({"route": format!("upstream:{}", u.rec.name), "fallbacks": tried, "stream": true});
                let resp =
                    pass_through(st.clone(), p.clone(), endpoint, target, permit, started, resp, wants_usage, route);
                return Ok(Upstreamed::Done(resp));
            }
            Err(f) => {
                tracing::warn!(upstream = %u.rec.name, reason = %f.reason, "upstream attempt failed");
                tried.push(json!({"upstream": u.rec.name, "error": f.reason}));
                if !f.retry {
                    let fin = Finished {
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        status: f.error.code.info().status,
                        failure: Some("upstream_refused"),
                        details: json!({"fallbacks": tried}),
                    };
                    finish(st, p, endpoint, &target, permit, started, fin).await?;
                    return Err(f.error);
                }
                last = Some(f.error);
            }
        }
    }
    if goes_local {
        return Ok(Upstreamed::Local(Box::new((target, permit))));
    }
    let names: Vec<String> = tried.iter().filter_map(|t| t["upstream"].as_str().map(str::to_owned)).collect();
    let fin = Finished {
        prompt_tokens: 0,
        completion_tokens: 0,
        status: 502,
        failure: Some("upstream_failed"),
        details: json!({"fallbacks": tried}),
    };
    finish(st, p, endpoint, &target, permit, started, fin).await?;
    let mut e = last.unwrap_or_else(|| ApiError::new(ErrorCode::UpstreamFailed, "no upstream answered"));
    if names.len() > 1 {
        e.message = format!("every upstream serving '{}' failed ({})", target.model, names.join(", "));
    }
    Err(e)
}

/// Relay an upstream SSE stream event by event; meter and audit it when it ends (before the
/// final `[DONE]`, as for local streams), also when the client leaves.
#[allow(clippy::too_many_arguments)]
fn pass_through(
    st: AppState,
    p: Principal,
    endpoint: Endpoint,
    target: Target,
    permit: Permit,
    started: (i64, Instant),
    resp: reqwest::Response,
    wants_usage: bool,
    route: Value,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        let mut up = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let (mut usage, mut chars, mut cancelled, mut error) = (None::<Value>, 0usize, false, None::<String>);
        'read: loop {
            let chunk = tokio::select! {
                c = up.next() => c,
                _ = tx.closed() => { cancelled = true; break 'read; }
            };
            match chunk {
                Some(Ok(bytes)) => buf.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    error = Some(format!("the upstream stream broke: {}", e.without_url()));
                    break;
                }
                None => break,
            }
            while let Some(end) = event_end(&buf) {
                let raw: Vec<u8> = buf.drain(..end).collect();
                let text = String::from_utf8_lossy(&raw).replace("\r\n", "\n");
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                    .collect::<Vec<_>>()
                    .join("\n");
                if data == "[DONE]" {
                    continue; // sent by us after metering
                }
                if let Ok(v) = serde_json::from_str::<Value>(&data) {
                    if v["usage"].is_object() {
                        usage = Some(v["usage"].clone());
                        if !wants_usage && v["choices"].as_array().is_none_or(|c| c.is_empty()) {
                            continue;
                        }
                    }
                    for c in v["choices"].as_array().into_iter().flatten() {
                        chars += c["delta"]["content"].as_str().or(c["text"].as_str()).map_or(0, str::len);
                    }
                }
                if tx.send(Ok(Bytes::from(format!("{}\n\n", text.trim_end())))).await.is_err() {
                    cancelled = true;
                    break 'read;
                }
            }
        }
        drop(up);
        let (prompt, completion) = match &usage {
            Some(u) => (
                u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                u["completion_tokens"].as_u64().unwrap_or(0) as usize,
            ),
            // No usage from the upstream (or it broke off): charge an estimate of what was sent.
            None => (0, chars.div_ceil(4)),
        };
        let (status, failure) = if cancelled {
            (499, Some("client_disconnected"))
        } else if error.is_some() {
            (502, Some("upstream_failed"))
        } else {
            (200, None)
        };
        let mut details = route;
        if let Some(e) = &error {
            details["error"] = json!(e);
        }
        let f = Finished { prompt_tokens: prompt, completion_tokens: completion, status, failure, details };
        let audited = finish(&st, &p, endpoint, &target, permit, started, f).await;
        if cancelled {
            return;
        }
        let err = match (audited, error) {
            (Err(e), _) => Some(e),
            (Ok(()), Some(e)) => Some(ApiError::new(ErrorCode::UpstreamFailed, e)),
            _ => None,
        };
        if let Some(e) = err {
            let _ = tx
                .send(Ok(Bytes::from(format!("data: {}\n\n", serde_json::to_string(&e.body()).unwrap_or_default()))))
                .await;
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap_or_else(|_| ApiError::new(ErrorCode::Internal, "could not build the response").into_response())
}

/// End of the first complete SSE event in `buf` (after its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Admit a request under the caller's quotas (user and key), reserving `reserve` tokens. A
/// refusal is metered and audited, then returned as a 429 with `Retry-After`.
pub(crate) async fn admit(
    st: &AppState,
    p: &Principal,
    endpoint: Endpoint,
    target: &Target,
    reserve: u64,
) -> ApiResult<Permit> {
    let mut subjects = Vec::with_capacity(2);
    if let (Some(uid), Some(user)) = (p.user_id, &p.user) {
        subjects.push((Subject::User(uid), user.limits.or(st.settings().quotas.limits())));
    }
    if let Some(k) = &p.key_id {
        subjects.push((Subject::Key(k.clone()), p.key_limits));
    }
    let now = now_millis();
    match st.0.meter.admit(subjects, reserve, now) {
        Ok(permit) => Ok(permit),
        Err(e) => {
            let ev = p
                .event(endpoint.action(), target.resource(), json!({"model": target.display(), "reason": e.message}))
                .denied(e.code.info().code);
            record(st, usage_row(p, endpoint, target, now, 0, 0, 0, 429), ev).await?;
            Err(e)
        }
    }
}

/// How a metered request ended.
pub(crate) struct Finished {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// HTTP status answered (499 when the client went away).
    pub status: u16,
    /// Why it failed (the audit outcome), if it did.
    pub failure: Option<&'static str>,
    /// Extra audit details (finish reason, time to first token, error).
    pub details: Value,
}

/// Charge the real token count, release the permit, and commit the usage row and the audit
/// event in one transaction (before the caller sends its last byte).
pub(crate) async fn finish(
    st: &AppState,
    p: &Principal,
    endpoint: Endpoint,
    target: &Target,
    permit: Permit,
    started: (i64, Instant),
    f: Finished,
) -> ApiResult<()> {
    let tokens = (f.prompt_tokens + f.completion_tokens) as u64;
    permit.settle(tokens, now_millis());
    let latency_ms = started.1.elapsed().as_millis() as i64;
    let mut details = json!({
        "model": target.display(),
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "latency_ms": latency_ms,
    });
    if let Some(a) = &target.app {
        details["app"] = json!(a.name);
    }
    if let Some(k) = &target.knowledge {
        details["knowledge"] = k.clone();
    }
    if let (Some(d), Value::Object(extra)) = (details.as_object_mut(), f.details) {
        d.extend(extra);
    }
    let mut ev = p.event(endpoint.action(), target.resource(), details);
    if let Some(reason) = f.failure {
        ev = ev.failed(reason);
    }
    let row = usage_row(
        p,
        endpoint,
        target,
        started.0,
        f.prompt_tokens as i64,
        f.completion_tokens as i64,
        latency_ms,
        f.status,
    );
    record(st, row, ev).await
}

#[allow(clippy::too_many_arguments)]
fn usage_row(
    p: &Principal,
    endpoint: Endpoint,
    target: &Target,
    ts_ms: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    latency_ms: i64,
    status: u16,
) -> UsageRow {
    UsageRow {
        ts_ms,
        user_id: p.user_id,
        username: p.username.clone(),
        key_id: p.key_id.clone(),
        model: target.display(),
        app: target.app.as_ref().map(|a| a.name.clone()),
        endpoint: endpoint.name(),
        prompt_tokens,
        completion_tokens,
        latency_ms,
        status,
    }
}

async fn record(st: &AppState, row: UsageRow, ev: maasbox_types::NewAuditEvent) -> ApiResult<()> {
    st.store()
        .write(move |c| {
            usage::record(c, &row)?;
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    Ok(())
}
