//! What every `/v1` request passes through around the engine: which model (or app) its `model`
//! names and whether the caller may see it, quota admission before any work, and — when it
//! ends — one transaction holding its usage row and its audit event.

use std::time::Instant;

use maasbox_store::usage::UsageRow;
use maasbox_store::{apps, models, usage, StoreError, WriteOutcome};
use maasbox_types::{now_millis, App, ErrorCode, Permission, Visibility};
use serde_json::{json, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::quota::{Permit, Subject};
use crate::state::AppState;

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

/// What a request's `model` resolved to.
pub(crate) struct Target {
    /// The registry entry that serves it (`name:tag`).
    pub model: String,
    /// The app it was called through.
    pub app: Option<App>,
}

impl Target {
    fn resource(&self) -> String {
        match &self.app {
            Some(a) => format!("app:{}", a.name),
            None => format!("model:{}", self.model),
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
    let (name, tag) = models::parse_ref(reference).map_err(|e| ApiError::field("model", e.to_string()))?;
    let record = match st.store().read(move |c| models::get(c, &name, &tag)).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    let key_allows =
        p.may_use_model(&record.id) || app.as_ref().is_some_and(|a| p.may_use_model(&format!("app:{}", a.name)));
    if !sees(p, &record.visibility) || !key_allows {
        return Err(missing());
    }
    Ok(Target { model: record.id, app })
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
        subjects.push((Subject::User(uid), user.limits.or(st.config().quotas.limits())));
    }
    if let Some(k) = &p.key_id {
        subjects.push((Subject::Key(k.clone()), p.key_limits));
    }
    let now = now_millis();
    match st.0.meter.admit(subjects, reserve, now) {
        Ok(permit) => Ok(permit),
        Err(e) => {
            let ev = p
                .event(endpoint.action(), target.resource(), json!({"model": target.model, "reason": e.message}))
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
        "model": target.model,
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "latency_ms": latency_ms,
    });
    if let Some(a) = &target.app {
        details["app"] = json!(a.name);
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
        model: target.model.clone(),
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
