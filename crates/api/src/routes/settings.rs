//! `/api/v1/settings`: LAN sharing, CORS origins, default quotas and retention, changed at run
//! time by admins (see [`crate::settings`]).

use axum::extract::State;
use axum::Json;
use maasbox_types::Permission;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiJson, ApiResult};
use crate::settings::{Settings, SettingsPatch};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_settings, update_settings))
}

/// The settings and where the server listens.
#[derive(Serialize, ToSchema)]
pub struct SettingsView {
    /// The settings in force.
    pub settings: Settings,
    /// The address the server listens on now.
    pub listening: Option<String>,
    /// The port (the same on every interface).
    pub port: Option<u16>,
    /// Whether the configuration already allows plain HTTP on the LAN (else turning LAN sharing
    /// on needs `allow_plain_http: true`).
    pub allow_plain_http_on_lan: bool,
}

fn view(st: &AppState, settings: &Settings) -> SettingsView {
    let listening = st.listening();
    SettingsView {
        settings: settings.clone(),
        listening: listening.map(|a| a.to_string()),
        port: listening.map(|a| a.port()),
        allow_plain_http_on_lan: st.config().server.allow_plain_http_on_lan,
    }
}

#[utoipa::path(get, path = "/api/v1/settings", tag = "settings", security(("bearer" = [])),
    responses((status = 200, body = SettingsView), (status = 403, body = crate::error::ErrorBody)))]
async fn get_settings(State(st): State<AppState>, p: Principal) -> ApiResult<Json<SettingsView>> {
    p.authorize(&st, Permission::Settings, "settings.read").await?;
    Ok(Json(view(&st, &st.settings())))
}

#[utoipa::path(patch, path = "/api/v1/settings", tag = "settings", security(("bearer" = [])), request_body = SettingsPatch,
    responses((status = 200, body = SettingsView), (status = 400, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
async fn update_settings(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> ApiResult<Json<SettingsView>> {
    p.authorize(&st, Permission::Settings, "settings.update").await?;
    let after = st.update_settings(patch, p.event("settings.update", "settings", json!({}))).await?;
    Ok(Json(view(&st, &after)))
}
