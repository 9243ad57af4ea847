//! maasbox-api: the only crate that knows HTTP and OpenAI JSON.
//!
//! Entry points: [`AppState::open`] prepares the data directory, [`router`] builds the axum
//! app, and [`serve`] runs it until a shutdown signal, then drains the audit writer. The
//! headless `maasbox serve` and the desktop shell both call `serve`, so they cannot drift apart.
//!
//! The tower stack, outermost first: request id (set, then propagated to the response) →
//! access log span → metrics → Host check → CORS (deny by default) → error normaliser → timeout
//! → body limit → routes. Auth and audit are per handler: each handler takes a [`Principal`]
//! and asks it for a permission.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub mod auth;
pub mod bundle;
pub mod config;
pub mod error;
mod logging;
pub mod quota;
mod routes;
pub mod settings;
pub mod state;
pub mod upstream;

pub use auth::Principal;
pub use config::Config;
mod ui;
pub use error::{ApiError, ApiResult};
pub use logging::init_logging;
pub use state::{AppState, Startup};

#[derive(OpenApi)]
#[openapi(
    info(title = "maasbox", description = "Model-as-a-service in one box: platform API (/api/v1) and system endpoints."),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Setup, login, sessions"),
        (name = "users", description = "Accounts and roles"),
        (name = "keys", description = "API keys"),
        (name = "audit", description = "The SM3-chained audit log"),
        (name = "models", description = "The model registry"),
        (name = "apps", description = "Assistants: a model with a system prompt and defaults, called as app:<name>"),
        (name = "usage", description = "Metered use and quotas"),
        (name = "upstreams", description = "OpenAI-compatible providers that model names route to"),
        (name = "knowledge", description = "Knowledge bases, document ingestion and hybrid search"),
        (name = "conversations", description = "Each user's chat history"),
        (name = "settings", description = "LAN sharing, CORS origins, default quotas and retention, changed at run time"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let comps = openapi.components.get_or_insert_with(Default::default);
        comps.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.info.version = env!("CARGO_PKG_VERSION").to_owned();
    }
}

/// The API routes and their OpenAPI document.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::auth::router())
        .merge(routes::users::router())
        .merge(routes::keys::router())
        .merge(routes::audit::router())
        .merge(routes::models::router())
        .merge(routes::pull::router())
        .merge(routes::bundles::router())
        .merge(routes::apps::router())
        .merge(routes::knowledge::router())
        .merge(routes::upstreams::router())
        .merge(routes::usage::router())
        .merge(routes::conversations::router())
        .merge(routes::settings::router())
        .split_for_parts()
}

/// The OpenAPI document, generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api();
    let system = [
        ("/health", "Liveness, version, whether setup is needed"),
        ("/health/db", "Database reachability and schema version"),
        ("/health/engine", "Inference engine status"),
        ("/metrics", "Prometheus metrics"),
        ("/openapi.json", "This document"),
        ("/docs", "Human-readable API docs, served offline"),
        ("/v1/models", "OpenAI: models the caller may use"),
    ];
    for (path, summary) in system {
        let op = utoipa::openapi::path::OperationBuilder::new()
            .summary(Some(summary))
            .tag("system")
            .response("200", utoipa::openapi::ResponseBuilder::new().description("OK").build())
            .build();
        doc.paths.add_path_operation(path, vec![utoipa::openapi::HttpMethod::Get], op);
    }
    for (path, summary) in [
        ("/v1/chat/completions", "OpenAI: chat completion (streaming with SSE when stream=true)"),
        ("/v1/completions", "OpenAI: text completion"),
        ("/v1/embeddings", "OpenAI: embeddings (string or array input; float or base64)"),
    ] {
        let op = utoipa::openapi::path::OperationBuilder::new()
            .summary(Some(summary))
            .tag("openai")
            .response("200", utoipa::openapi::ResponseBuilder::new().description("OK").build())
            .build();
        doc.paths.add_path_operation(path, vec![utoipa::openapi::HttpMethod::Post], op);
    }
    doc
}

/// The whole application with its middleware stack.
pub fn router(state: AppState) -> Router {
    let (api_routes, _) = api();
    let doc = openapi();
    let cfg = state.config().server.clone();
    let request_id = HeaderName::from_static("x-request-id");

    // The request timeout covers the platform API; /v1 streams may run as long as generation.
    let timed = Router::new()
        .merge(api_routes)
        .route("/health", get(routes::system::health))
        .route("/health/db", get(routes::system::health_db))
        .route("/health/engine", get(routes::system::health_engine))
        .route("/metrics", get(routes::system::metrics_text))
        .route("/openapi.json", get(move || std::future::ready(axum::Json(doc.clone()))))
        .route("/docs", get(routes::system::docs))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(cfg.request_timeout_secs),
        ));
    let app = Router::new()
        .merge(timed)
        .merge(routes::openai::router())
        .fallback(ui::fallback)
        .layer(RequestBodyLimitLayer::new(cfg.body_limit_bytes))
        .layer(axum::extract::DefaultBodyLimit::max(cfg.body_limit_bytes));
    // Document uploads get their own, larger limit.
    let upload_limit = state.config().knowledge.max_upload_bytes;
    let uploads = routes::knowledge::upload_router()
        .layer(RequestBodyLimitLayer::new(upload_limit))
        .layer(axum::extract::DefaultBodyLimit::max(upload_limit));
    // Model uploads stream to disk: no body limit, no timeout (a GGUF is gigabytes).
    let app =
        app.merge(uploads).merge(routes::models::upload_router()).layer(middleware::from_fn(error::normalize_errors));

    let app = app.layer(cors_layer(state.clone()));

    app.layer(middleware::from_fn_with_state(state.clone(), check_host))
        .layer(middleware::from_fn(record_metrics))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
        }))
        .layer(SetRequestIdLayer::new(request_id, SequentialRequestId::default()))
        .with_state(state)
}

/// Request ids `<boot id>-<counter>`: unique per server lifetime and cheap (no syscall per
/// request, unlike random UUIDs); the random boot id keeps ids from different runs apart.
#[derive(Clone)]
struct SequentialRequestId {
    boot: std::sync::Arc<str>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for SequentialRequestId {
    fn default() -> Self {
        Self { boot: maasbox_crypto::random_hex(6).into(), next: Default::default() }
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:08x}", self.boot)).ok().map(RequestId::new)
    }
}

/// CORS from the live settings: an origin is allowed only when listed (none by default; the
/// UI is same-origin and needs none). A change on the settings page applies to the next request.
fn cors_layer(state: AppState) -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            state.settings().cors_origins.iter().any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
        }))
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("x-request-id")])
        .expose_headers([HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(600))
}

/// DNS-rebinding guard: a loopback server only answers to loopback host names (plus configured
/// ones); a LAN server answers to any.
async fn check_host(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let cfg = &st.config().server;
    if st.loopback_only() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().host().map(str::to_owned));
        let ok = host.as_deref().map(strip_port).is_some_and(|h| {
            let h = h.to_ascii_lowercase();
            h == "localhost"
                || h == "127.0.0.1"
                || h == "[::1]"
                || h == cfg.bind.to_string()
                || cfg.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(&h))
        });
        if !ok {
            return ApiError::new(
                maasbox_types::ErrorCode::BadHost,
                "this server only answers to localhost; add the host name to server.allowed_hosts to allow it",
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn strip_port(h: &str) -> &str {
    if let Some(end) = h.strip_prefix('[').and_then(|r| r.find(']')) {
        return &h[..end + 2];
    }
    h.rsplit_once(':').map(|(a, _)| a).unwrap_or(h)
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    };
    let resp = next.run(req).await;
    let status = status_label(resp.status().as_u16());
    metrics::counter!("maasbox_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("maasbox_http_request_duration_seconds", "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Status codes as static labels (no allocation per request).
fn status_label(code: u16) -> &'static str {
    const CODES: &[(u16, &str)] = &[
        (200, "200"),
        (201, "201"),
        (204, "204"),
        (304, "304"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (409, "409"),
        (413, "413"),
        (415, "415"),
        (421, "421"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
    ];
    let class = match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    CODES.iter().find(|(c, _)| *c == code).map_or(class, |(_, s)| s)
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("maasbox_http_request_duration_seconds".into()),
                &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
            )
            .expect("static bucket list is non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (e.g. by an embedding app); then ours
        // renders an empty page rather than failing startup.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Serve `state` on `listener` until `shutdown` resolves, then stop accepting, finish
/// in-flight requests, record the stop in the audit chain and drain the writer.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    metrics_handle();
    let addr = listener.local_addr()?;
    state
        .audit_system(
            "system.start",
            serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "addr": addr.to_string()}),
        )
        .await?;
    let flusher = {
        let st = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                st.flush_key_uses().await;
            }
        })
    };
    let reaper = {
        let st = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                for name in st.engine().unload_expired() {
                    tracing::info!(model = %name, "unloaded after keep_alive");
                }
            }
        })
    };
    let health = {
        let st = state.clone();
        let every = Duration::from_secs(st.config().upstreams.health_interval_secs.max(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                st.check_upstreams().await;
            }
        })
    };
    let pruner = {
        let st = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                match st.prune().await {
                    Ok((0, 0)) => {}
                    Ok((usage, conversations)) => tracing::info!(usage, conversations, "pruned by retention"),
                    Err(e) => tracing::warn!(error = %e, "retention pruning failed"),
                }
            }
        })
    };
    let app = router(state.clone());
    tracing::info!(%addr, "maasbox listening");
    serve_listeners(listener, &state, app, shutdown).await?;
    pruner.abort();
    flusher.abort();
    reaper.abort();
    health.abort();
    state.flush_key_uses().await;
    state.audit_system("system.stop", serde_json::json!({})).await?;
    let store = state.store().clone();
    tokio::task::spawn_blocking(move || store.shutdown()).await?;
    tracing::info!("maasbox stopped; audit writer drained");
    Ok(())
}

/// One accept loop per listener; a LAN change starts a new listener and retires the old one
/// (it stops accepting at once; its open connections finish their requests).
async fn serve_listeners(
    listener: tokio::net::TcpListener,
    state: &AppState,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    type Running = (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>);
    let start = |listener: tokio::net::TcpListener| -> std::io::Result<Running> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = app.clone().into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(async move {
            axum::serve(listener, svc)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok((addr, stop, task))
    };
    let (tx, mut commands) = tokio::sync::mpsc::channel::<settings::NetCommand>(4);
    *state.0.net.commands.lock() = Some(tx);
    let mut current = start(listener)?;
    *state.0.net.listening.lock() = Some(current.0);
    let mut retired = Vec::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(cmd) = commands.recv() => {
                let old = current.0;
                let addr = SocketAddr::new(settings::listen_ip(state.config(), cmd.lan), old.port());
                if addr == old {
                    let _ = cmd.reply.send(Ok(addr));
                    continue;
                }
                let (_, stop, task) = current;
                let _ = stop.send(());
                retired.push(task);
                let (next, result) = match bind_soon(addr).await {
                    Ok(l) => (l, Ok(addr)),
                    Err(e) => {
                        let msg = format!("cannot listen on {addr}: {e}");
                        (bind_soon(old).await?, Err(msg))
                    }
                };
                current = start(next)?;
                *state.0.net.listening.lock() = Some(current.0);
                tracing::info!(addr = %current.0, "maasbox listening");
                let _ = cmd.reply.send(result);
            }
        }
    }
    state.0.net.commands.lock().take();
    let _ = current.1.send(());
    retired.push(current.2);
    for task in retired {
        task.await??;
    }
    Ok(())
}

/// Bind `addr`, retrying for up to two seconds while the retired listener on the same port is
/// still being dropped by its accept loop.
async fn bind_soon(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 100 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_are_stripped() {
        assert_eq!(strip_port("localhost:8686"), "localhost");
        assert_eq!(strip_port("[::1]:8686"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("127.0.0.1"), "127.0.0.1");
    }
}
