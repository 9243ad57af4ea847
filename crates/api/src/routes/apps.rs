//! `/api/v1/apps`: assistants — a model with a system prompt, default parameters and knowledge
//! bases, called through `/v1/chat/completions` as `model: "app:<name>"` and metered and
//! audited as itself.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use maasbox_store::{apps, models, Connection, StoreError, WriteOutcome};
use maasbox_types::{App, AppParams, Permission};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::routes::gateway::sees;
use crate::routes::openai::validate_app_params;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_apps, create_app)).routes(routes!(get_app, update_app, delete_app))
}

/// Apps the caller may use.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct AppList {
    /// By name.
    pub data: Vec<App>,
}

/// `POST /api/v1/apps`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApp {
    /// Unique name: 1–64 letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// The model it runs on (`name[:tag]`, must exist).
    pub model: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// The system message put before every conversation.
    #[serde(default)]
    pub system_prompt: String,
    /// Default sampling; a request's own values win.
    #[serde(default)]
    pub params: AppParams,
    /// Knowledge bases it retrieves from (each must exist).
    #[serde(default)]
    pub knowledge_bases: Vec<String>,
}

/// `PATCH /api/v1/apps/{name}`: fields given replace the old ones.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApp {
    /// New model.
    #[serde(default)]
    pub model: Option<String>,
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New system prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// New default parameters.
    #[serde(default)]
    pub params: Option<AppParams>,
    /// New knowledge bases.
    #[serde(default)]
    pub knowledge_bases: Option<Vec<String>>,
}

const MAX_PROMPT_CHARS: usize = 32_768;

/// Check every field of `a` that a request could get wrong.
fn validate(a: &App) -> ApiResult<()> {
    apps::validate_name(&a.name).map_err(|e| ApiError::field("name", e.to_string()))?;
    if a.description.chars().count() > 1024 {
        return Err(ApiError::field("description", "description must be at most 1024 characters"));
    }
    if a.system_prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::field(
            "system_prompt",
            format!("system_prompt must be at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    validate_app_params(&a.params)?;
    if a.knowledge_bases.len() > 16 {
        return Err(ApiError::field("knowledge_bases", "at most 16 knowledge bases"));
    }
    Ok(())
}

/// Every knowledge base of the app must exist and be readable by its author (an app cannot
/// publish a base its author may not read).
fn check_bases(st: &AppState, p: &Principal, a: &App) -> ApiResult<()> {
    crate::routes::knowledge::bases_for_app(st, p, &a.knowledge_bases)
}

/// Resolve and check the model inside the write: it must exist and be visible to the caller.
fn check_model(c: &Connection, p: &Principal, model: &str) -> Result<String, StoreError> {
    let (n, t) = models::parse_ref(model)?;
    let rec = models::get(c, &n, &t).map_err(|_| StoreError::Invalid(format!("there is no model named '{model}'")))?;
    if !sees(p, &rec.visibility) {
        return Err(StoreError::Invalid(format!("there is no model named '{model}'")));
    }
    Ok(rec.id)
}

/// Whether `p` may use `app`: its model is visible to them and their key is not scoped elsewhere.
fn visible(p: &Principal, app: &App, c: &Connection) -> bool {
    let Ok((n, t)) = models::parse_ref(&app.model) else { return false };
    models::get(c, &n, &t).is_ok_and(|r| sees(p, &r.visibility)) && p.key_app.as_deref().is_none_or(|k| k == app.name)
}

#[utoipa::path(get, path = "/api/v1/apps", tag = "apps", security(("bearer" = [])), responses((status = 200, body = AppList)))]
async fn list_apps(State(st): State<AppState>, p: Principal) -> ApiResult<Json<AppList>> {
    p.authorize(&st, Permission::Inference, "app.list").await?;
    let p2 = p.clone();
    let data =
        st.store().read(move |c| Ok(apps::list(c)?.into_iter().filter(|a| visible(&p2, a, c)).collect())).await?;
    Ok(Json(AppList { data }))
}

#[utoipa::path(get, path = "/api/v1/apps/{name}", tag = "apps", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = App), (status = 404, body = crate::error::ErrorBody)))]
async fn get_app(State(st): State<AppState>, p: Principal, Path(name): Path<String>) -> ApiResult<Json<App>> {
    p.authorize(&st, Permission::Inference, "app.read").await?;
    let p2 = p.clone();
    let app = st
        .store()
        .read(move |c| {
            let a = apps::get(c, &name)?;
            if visible(&p2, &a, c) {
                Ok(a)
            } else {
                Err(StoreError::NotFound("app"))
            }
        })
        .await?;
    Ok(Json(app))
}

#[utoipa::path(post, path = "/api/v1/apps", tag = "apps", security(("bearer" = [])), request_body = CreateApp,
    responses((status = 201, body = App), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn create_app(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateApp>,
) -> ApiResult<(StatusCode, Json<App>)> {
    p.authorize(&st, Permission::AppsManage, "app.create").await?;
    let mut app = App {
        name: req.name.trim().to_owned(),
        description: req.description,
        model: req.model,
        system_prompt: req.system_prompt,
        params: req.params,
        knowledge_bases: req.knowledge_bases,
        created_by: p.username.clone(),
        created_at: 0,
        updated_at: 0,
    };
    validate(&app)?;
    check_bases(&st, &p, &app)?;
    let ev = p.event("app.create", format!("app:{}", app.name), json!({}));
    let p2 = p.clone();
    let app = st
        .store()
        .write(move |c| {
            app.model = check_model(c, &p2, &app.model)?;
            let a = apps::create(c, &app)?;
            let mut ev = ev;
            ev.details = json!({"app": a});
            Ok(WriteOutcome::audited(a, ev))
        })
        .await
        .map_err(|e| field_error(e, "model"))?;
    Ok((StatusCode::CREATED, Json(app)))
}

/// Store validation failures inside an app write concern the model reference.
fn field_error(e: StoreError, field: &str) -> ApiError {
    match e {
        StoreError::Invalid(m) => ApiError::field(field, m),
        e => e.into(),
    }
}

#[utoipa::path(patch, path = "/api/v1/apps/{name}", tag = "apps", security(("bearer" = [])), params(("name" = String, Path)), request_body = UpdateApp,
    responses((status = 200, body = App), (status = 404, body = crate::error::ErrorBody)))]
async fn update_app(
    State(st): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<UpdateApp>,
) -> ApiResult<Json<App>> {
    p.authorize(&st, Permission::AppsManage, "app.update").await?;
    let n = name.clone();
    let mut app = st.store().read(move |c| apps::get(c, &n)).await?;
    if let Some(v) = req.model {
        app.model = v;
    }
    if let Some(v) = req.description {
        app.description = v;
    }
    if let Some(v) = req.system_prompt {
        app.system_prompt = v;
    }
    if let Some(v) = req.params {
        app.params = v;
    }
    if let Some(v) = req.knowledge_bases {
        app.knowledge_bases = v;
    }
    validate(&app)?;
    check_bases(&st, &p, &app)?;
    let ev = p.event("app.update", format!("app:{name}"), json!({}));
    let p2 = p.clone();
    let app = st
        .store()
        .write(move |c| {
            app.model = check_model(c, &p2, &app.model)?;
            let (before, after) = apps::update(c, &app)?;
            let mut ev = ev;
            ev.details = json!({"before": before, "after": after});
            Ok(WriteOutcome::audited(after, ev))
        })
        .await
        .map_err(|e| field_error(e, "model"))?;
    Ok(Json(app))
}

#[utoipa::path(delete, path = "/api/v1/apps/{name}", tag = "apps", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn delete_app(State(st): State<AppState>, p: Principal, Path(name): Path<String>) -> ApiResult<StatusCode> {
    p.authorize(&st, Permission::AppsManage, "app.delete").await?;
    let ev = p.event("app.delete", format!("app:{name}"), json!({}));
    st.store()
        .write(move |c| {
            let (a, revoked) = apps::delete(c, &name)?;
            let mut ev = ev;
            ev.details = json!({"model": a.model, "revoked_keys": revoked});
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    st.0.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}
