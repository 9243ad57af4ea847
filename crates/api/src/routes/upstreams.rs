//! `/api/v1/upstreams`: OpenAI-compatible providers that model names can route to. Their API
//! keys are sealed with SM4-GCM under the master key and never returned.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use maasbox_store::{upstreams, WriteOutcome};
use maasbox_types::{Permission, UpstreamRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;
use crate::upstream::key_aad;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_upstreams, create_upstream)).routes(routes!(
        get_upstream,
        update_upstream,
        delete_upstream
    ))
}

/// An upstream with its health.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UpstreamView {
    /// Configuration (never the key).
    #[serde(flatten)]
    pub upstream: UpstreamRecord,
    /// Whether the last health check or request succeeded.
    pub healthy: bool,
    /// Why it is down.
    pub last_error: Option<String>,
}

/// Upstreams by priority.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UpstreamList {
    /// By priority, then name.
    pub data: Vec<UpstreamView>,
}

/// `POST /api/v1/upstreams`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUpstream {
    /// Unique name (letters, digits, `.`, `_`, `-`).
    pub name: String,
    /// Base URL with the API prefix, e.g. `http://10.0.0.5:8686/v1`.
    pub base_url: String,
    /// Its API key (sealed at rest, never returned).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Model names to route there.
    pub models: Vec<String>,
    /// Lower is tried first; the local model of the same name counts as 0.
    #[serde(default = "default_priority")]
    pub priority: i64,
    /// Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_priority() -> i64 {
    10
}

fn yes() -> bool {
    true
}

/// `PATCH /api/v1/upstreams/{name}`: given fields replace the old ones; `api_key: ""` removes
/// the key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUpstream {
    /// New base URL.
    #[serde(default)]
    pub base_url: Option<String>,
    /// New key (`""` removes it).
    #[serde(default)]
    pub api_key: Option<String>,
    /// New model list.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// New priority.
    #[serde(default)]
    pub priority: Option<i64>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
}

fn validate(u: &UpstreamRecord) -> ApiResult<()> {
    maasbox_store::apps::validate_name(&u.name)
        .map_err(|_| ApiError::field("name", "name must be 1-64 characters of letters, digits, '.', '_', '-'"))?;
    let url = reqwest::Url::parse(&u.base_url).map_err(|e| ApiError::field("base_url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ApiError::field("base_url", "base_url must be an http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ApiError::field("base_url", "put credentials in api_key, not in the URL"));
    }
    if u.models.is_empty() || u.models.len() > 256 {
        return Err(ApiError::field("models", "list 1 to 256 model names"));
    }
    if u.models
        .iter()
        .any(|m| m.is_empty() || m.len() > 256 || m.starts_with("app:") || m.chars().any(char::is_whitespace))
    {
        return Err(ApiError::field("models", "model names must be non-empty, without spaces, not app:…"));
    }
    if !(-1000..=1000).contains(&u.priority) {
        return Err(ApiError::field("priority", "priority must be between -1000 and 1000"));
    }
    Ok(())
}

fn view(st: &AppState, rec: UpstreamRecord) -> UpstreamView {
    let live = st.0.upstreams.all().into_iter().find(|u| u.rec.name == rec.name);
    UpstreamView {
        healthy: live.as_ref().is_none_or(|u| u.healthy()),
        last_error: live.and_then(|u| u.last_error()),
        upstream: rec,
    }
}

fn seal(st: &AppState, name: &str, key: &str) -> Vec<u8> {
    st.master_key().seal(key.as_bytes(), &key_aad(name))
}

#[utoipa::path(get, path = "/api/v1/upstreams", tag = "upstreams", security(("bearer" = [])), responses((status = 200, body = UpstreamList)))]
async fn list_upstreams(State(st): State<AppState>, p: Principal) -> ApiResult<Json<UpstreamList>> {
    p.authorize(&st, Permission::UpstreamsManage, "upstream.list").await?;
    let rows = st.store().read(upstreams::list_with_keys).await?;
    Ok(Json(UpstreamList { data: rows.into_iter().map(|(r, _)| view(&st, r)).collect() }))
}

#[utoipa::path(get, path = "/api/v1/upstreams/{name}", tag = "upstreams", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = UpstreamView), (status = 404, body = crate::error::ErrorBody)))]
async fn get_upstream(
    State(st): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<UpstreamView>> {
    p.authorize(&st, Permission::UpstreamsManage, "upstream.read").await?;
    let rec = st.store().read(move |c| upstreams::get(c, &name)).await?;
    Ok(Json(view(&st, rec)))
}

#[utoipa::path(post, path = "/api/v1/upstreams", tag = "upstreams", security(("bearer" = [])), request_body = CreateUpstream,
    responses((status = 201, body = UpstreamView), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn create_upstream(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateUpstream>,
) -> ApiResult<(StatusCode, Json<UpstreamView>)> {
    p.authorize(&st, Permission::UpstreamsManage, "upstream.create").await?;
    let rec = UpstreamRecord {
        name: req.name,
        base_url: req.base_url.trim_end_matches('/').to_owned(),
        models: req.models,
        priority: req.priority,
        enabled: req.enabled,
        has_api_key: false,
        created_by: p.username.clone(),
        created_at: 0,
        updated_at: 0,
    };
    validate(&rec)?;
    let sealed = req.api_key.filter(|k| !k.is_empty()).map(|k| seal(&st, &rec.name, &k));
    let ev = p.event(
        "upstream.create",
        format!("upstream:{}", rec.name),
        json!({"base_url": rec.base_url, "models": rec.models, "priority": rec.priority, "api_key": sealed.is_some()}),
    );
    let saved = st
        .store()
        .write(move |c| Ok(WriteOutcome::audited(upstreams::create(c, &rec, sealed.as_deref())?, ev)))
        .await?;
    st.reload_upstreams().await.map_err(ApiError::internal)?;
    Ok((StatusCode::CREATED, Json(view(&st, saved))))
}

#[utoipa::path(patch, path = "/api/v1/upstreams/{name}", tag = "upstreams", security(("bearer" = [])), params(("name" = String, Path)), request_body = UpdateUpstream,
    responses((status = 200, body = UpstreamView), (status = 404, body = crate::error::ErrorBody)))]
async fn update_upstream(
    State(st): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateUpstream>,
) -> ApiResult<Json<UpstreamView>> {
    p.authorize(&st, Permission::UpstreamsManage, "upstream.update").await?;
    let n = name.clone();
    let mut rec = st.store().read(move |c| upstreams::get(c, &n)).await?;
    if let Some(v) = req.base_url {
        rec.base_url = v.trim_end_matches('/').to_owned();
    }
    if let Some(v) = req.models {
        rec.models = v;
    }
    if let Some(v) = req.priority {
        rec.priority = v;
    }
    if let Some(v) = req.enabled {
        rec.enabled = v;
    }
    validate(&rec)?;
    let key_change = req.api_key.map(|k| (!k.is_empty()).then(|| seal(&st, &name, &k)));
    let ev = p.event("upstream.update", format!("upstream:{name}"), json!({}));
    let saved = st
        .store()
        .write(move |c| {
            let (before, after) = upstreams::update(c, &rec, key_change.as_ref().map(|k| k.as_deref()))?;
            let mut ev = ev;
            ev.details = json!({"before": before, "after": after, "api_key_changed": key_change.is_some()});
            Ok(WriteOutcome::audited(after, ev))
        })
        .await?;
    st.reload_upstreams().await.map_err(ApiError::internal)?;
    Ok(Json(view(&st, saved)))
}

#[utoipa::path(delete, path = "/api/v1/upstreams/{name}", tag = "upstreams", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn delete_upstream(State(st): State<AppState>, p: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    p.authorize(&st, Permission::UpstreamsManage, "upstream.delete").await?;
    let ev = p.event("upstream.delete", format!("upstream:{name}"), json!({}));
    st.store()
        .write(move |c| {
            let u = upstreams::delete(c, &name)?;
            let mut ev = ev;
            ev.details = json!({"base_url": u.base_url, "models": u.models});
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    st.reload_upstreams().await.map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}
