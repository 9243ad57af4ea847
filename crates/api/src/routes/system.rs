//! Health, metrics, the OpenAPI document and the offline API docs page.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use maasbox_engine::EngineStatus;
use serde::Serialize;
use serde_json::json;

use crate::state::AppState;

/// `GET /health`
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
    /// maasbox version.
    pub version: &'static str,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// True until the first admin exists.
    pub setup_required: bool,
}

pub(crate) async fn health(State(st): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: st.0.started.elapsed().as_secs(),
        setup_required: st.0.setup_code.lock().is_some(),
    })
}

pub(crate) async fn health_db(State(st): State<AppState>) -> Response {
    match st.store().ping().await {
        Ok(v) => Json(json!({
            "status": "ok",
            "schema_version": v,
            "audit_queue_depth": st.store().queue_depth(),
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "database health check failed");
            metrics::counter!("maasbox_db_errors_total").increment(1);
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "error", "message": "database unavailable"})))
                .into_response()
        }
    }
}

pub(crate) async fn health_engine(State(st): State<AppState>) -> Json<EngineStatus> {
    Json(st.engine().status())
}

pub(crate) async fn metrics_text(State(st): State<AppState>) -> Response {
    metrics::gauge!("maasbox_audit_queue_depth").set(st.store().queue_depth() as f64);
    metrics::gauge!("maasbox_uptime_seconds").set(st.0.started.elapsed().as_secs_f64());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::metrics_handle().render())
        .into_response()
}

pub(crate) async fn docs() -> Html<&'static str> {
    Html(include_str!("../../assets/docs.html"))
}
