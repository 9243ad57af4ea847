//! `/api/v1/audit`: read, filter, verify and export the chain. Nothing here changes it.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::Response;
use axum::Json;
use maasbox_store::audit::{self, AuditFilter};
use maasbox_types::{AuditEvent, ChainReport, Permission};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_logs))
        .routes(routes!(get_log))
        .routes(routes!(stats))
        .routes(routes!(verify))
        .routes(routes!(export))
}

/// Filters and paging for `GET /api/v1/audit/logs`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` or `*` (`user.`, `auth.*`).
    pub action: Option<String>,
    /// Resource prefix (`user:`, `key:ab12…`).
    pub resource: Option<String>,
    /// `success`, `failure` or `denied`.
    pub outcome: Option<String>,
    /// From this time, Unix seconds (inclusive).
    pub from: Option<i64>,
    /// Until this time, Unix seconds (exclusive).
    pub to: Option<i64>,
    /// Page backwards: events older than this sequence number.
    pub before_seq: Option<i64>,
    /// Page forwards: events newer than this sequence number (oldest first).
    pub after_seq: Option<i64>,
    /// Page size, 1–1000 (default 50).
    pub limit: Option<i64>,
}

/// A page of audit events.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    /// Events.
    pub data: Vec<AuditEvent>,
    /// Events matching the filter.
    pub total: i64,
    /// Sequence number to pass as `before_seq` (or `after_seq`) for the next page.
    pub next_cursor: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit/logs", tag = "audit", security(("bearer" = [])), params(LogQuery), responses((status = 200, body = LogPage)))]
async fn list_logs(State(st): State<AppState>, p: Principal, Query(q): Query<LogQuery>) -> ApiResult<Json<LogPage>> {
    p.authorize(&st, Permission::AuditRead, "audit.read").await?;
    if q.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::field("limit", "limit must be between 1 and 1000"));
    }
    if let Some(o) = &q.outcome {
        if !["success", "failure", "denied"].contains(&o.as_str()) {
            return Err(ApiError::field("outcome", "outcome must be success, failure or denied"));
        }
    }
    let limit = q.limit.unwrap_or(50);
    let f = AuditFilter {
        actor: q.actor,
        action: q.action,
        resource: q.resource,
        outcome: q.outcome,
        from_ms: q.from.map(|s| s.saturating_mul(1000)),
        to_ms: q.to.map(|s| s.saturating_mul(1000)),
        before_seq: q.before_seq,
        after_seq: q.after_seq,
        limit: Some(limit),
    };
    let page = st.store().read(move |c| audit::list(c, &f)).await?;
    let next_cursor = (page.events.len() as i64 == limit).then(|| page.events.last().map(|e| e.seq)).flatten();
    Ok(Json(LogPage { data: page.events, total: page.total, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/audit/logs/{seq}", tag = "audit", security(("bearer" = [])), params(("seq" = i64, Path)),
    responses((status = 200, body = AuditEvent), (status = 404, body = crate::error::ErrorBody)))]
async fn get_log(State(st): State<AppState>, p: Principal, Path(seq): Path<i64>) -> ApiResult<Json<AuditEvent>> {
    p.authorize(&st, Permission::AuditRead, "audit.read").await?;
    Ok(Json(st.store().read(move |c| audit::get(c, seq)).await?))
}

/// Audit statistics.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// All events.
    pub total: i64,
    /// Events in the last 24 hours.
    pub last_24h: i64,
    /// Failed or denied authentication in the last 24 hours.
    pub auth_failures_24h: i64,
    /// Signed checkpoints.
    pub checkpoints: i64,
    /// Newest sequence number.
    pub last_seq: i64,
    /// Counts by outcome.
    #[schema(value_type = Object)]
    pub by_outcome: serde_json::Value,
    /// Top actions.
    #[schema(value_type = Object)]
    pub by_action: serde_json::Value,
    /// Top actors.
    #[schema(value_type = Object)]
    pub by_actor: serde_json::Value,
}

fn pairs(v: Vec<(String, i64)>) -> serde_json::Value {
    v.into_iter().map(|(k, n)| json!({"name": k, "count": n})).collect()
}

#[utoipa::path(get, path = "/api/v1/audit/stats", tag = "audit", security(("bearer" = [])), responses((status = 200, body = Stats)))]
async fn stats(State(st): State<AppState>, p: Principal) -> ApiResult<Json<Stats>> {
    p.authorize(&st, Permission::AuditRead, "audit.read").await?;
    let s = st.store().read(audit::stats).await?;
    Ok(Json(Stats {
        total: s.total,
        last_24h: s.last_24h,
        auth_failures_24h: s.auth_failures_24h,
        checkpoints: s.checkpoints,
        last_seq: s.last_seq,
        by_outcome: pairs(s.by_outcome),
        by_action: pairs(s.by_action),
        by_actor: pairs(s.by_actor),
    }))
}

/// Verification result with the key checkpoints must be signed with.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct VerifyResponse {
    /// The walk's result.
    #[serde(flatten)]
    pub report: ChainReport,
    /// The appliance's SM2 public key (hex).
    pub public_key: String,
}

#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", security(("bearer" = [])), responses((status = 200, body = VerifyResponse)))]
async fn verify(State(st): State<AppState>, p: Principal) -> ApiResult<Json<VerifyResponse>> {
    p.authorize(&st, Permission::AuditVerify, "audit.verify").await?;
    let pk = st.0.signing.public_key();
    let pk2 = pk.clone();
    let report = st.store().read(move |c| audit::verify(c, Some(&pk2))).await?;
    Ok(Json(VerifyResponse { report, public_key: pk.to_hex() }))
}

/// Range for `GET /api/v1/audit/export`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// First sequence number (default 1).
    pub from_seq: Option<i64>,
    /// Last sequence number (default: the newest).
    pub to_seq: Option<i64>,
}

/// JSON Lines: one audit event per line, then a final line `{"manifest": {...}}` holding the
/// SM2-signed manifest (counts, first/last hash, SM3 of the event lines). Exporting is audited.
#[utoipa::path(get, path = "/api/v1/audit/export", tag = "audit", security(("bearer" = [])), params(ExportQuery),
    responses((status = 200, content_type = "application/x-ndjson", body = String)))]
async fn export(State(st): State<AppState>, p: Principal, Query(q): Query<ExportQuery>) -> ApiResult<Response> {
    p.authorize(&st, Permission::AuditExport, "audit.export").await?;
    let from = q.from_seq.unwrap_or(1).max(1);
    let to = q.to_seq.unwrap_or(i64::MAX);
    if to < from {
        return Err(ApiError::field("to_seq", "to_seq must not be below from_seq"));
    }
    let signer = st.0.signing.clone();
    let (mut body, manifest) = st.store().read(move |c| audit::export(c, &signer, from, to)).await?;
    let ev = p.event(
        "audit.export",
        "audit",
        json!({"first_seq": manifest.first_seq, "last_seq": manifest.last_seq, "count": manifest.count}),
    );
    crate::auth::audit_only(&st, ev).await?;
    serde_json::to_writer(&mut body, &json!({"manifest": manifest})).map_err(ApiError::internal)?;
    body.push(b'\n');
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CONTENT_DISPOSITION, "attachment; filename=\"maasbox-audit.jsonl\"")
        .body(Body::from(body))
        .map_err(ApiError::internal)
}
