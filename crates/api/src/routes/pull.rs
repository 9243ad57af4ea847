//! Importing a model from a URL: a background job per download, resumable with HTTP `Range`
//! (after a dropped connection, and across a restart from the partial file), hashed while it
//! downloads, checked against the expected SHA-256 and read as GGUF before it is registered.
//! Progress is a `watch` channel: `GET /api/v1/models/imports/{id}/events` streams it as SSE.
//! A failed, cancelled or mismatching download registers nothing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use maasbox_types::{now_secs, ErrorCode, ModelRecord, Permission};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::routes::models::{blobs_dir, register_blob, Blob};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_imports))
        .routes(routes!(get_import, cancel_import))
        .routes(routes!(import_events))
}

/// Where a download is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Connecting or receiving bytes.
    Downloading,
    /// Checking the digest and the GGUF header.
    Verifying,
    /// Registered.
    Done,
    /// Stopped with an error; nothing was registered.
    Failed,
    /// Cancelled; nothing was registered.
    Cancelled,
}

impl Phase {
    fn is_final(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed | Phase::Cancelled)
    }
}

/// A download's state, as the API shows it and as each SSE event carries it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportProgress {
    /// Job id.
    pub id: String,
    /// Source.
    pub url: String,
    /// `name:tag` it will be registered as.
    pub model: String,
    /// Phase.
    pub phase: Phase,
    /// Bytes on disk so far.
    pub bytes: u64,
    /// Size announced by the server, when it announced one.
    pub total: Option<u64>,
    /// Recent download rate.
    pub rate_bytes_per_sec: f64,
    /// Connections made (more than one means the download resumed).
    pub attempts: u32,
    /// Bytes that were already on disk when the last connection resumed.
    pub resumed_from: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The registered model, once done.
    pub record: Option<ModelRecord>,
    /// Who started it.
    pub created_by: String,
    /// When (Unix seconds).
    pub created_at: i64,
}

struct Job {
    owner: Option<i64>,
    progress: watch::Sender<ImportProgress>,
    cancel: watch::Sender<bool>,
}

/// The import jobs of this process (finished ones are kept for an hour).
#[derive(Default)]
pub(crate) struct Imports {
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

/// What `POST /api/v1/models` needs to start a download.
pub(crate) struct PullRequest {
    pub url: String,
    pub name: String,
    pub tag: String,
    pub sha256: Option<String>,
    pub base: Option<String>,
}

const MAX_ATTEMPTS: u32 = 6;

/// Validate and start a download; returns its first progress.
pub(crate) async fn start(st: &AppState, p: &Principal, req: PullRequest) -> ApiResult<Response> {
    let url = reqwest::Url::parse(&req.url).map_err(|e| ApiError::field("url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ApiError::field("url", "only http:// and https:// URLs can be imported"));
    }
    if let Some(h) = &req.sha256 {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::field("sha256", "sha256 must be 64 hex digits"));
        }
    }
    let id = maasbox_crypto::random_hex(8);
    let model = format!("{}:{}", req.name, req.tag);
    let progress = ImportProgress {
        id: id.clone(),
        url: req.url.clone(),
        model: model.clone(),
        phase: Phase::Downloading,
        bytes: 0,
        total: None,
        rate_bytes_per_sec: 0.0,
        attempts: 0,
        resumed_from: 0,
        error: None,
        record: None,
        created_by: p.username.clone(),
        created_at: now_secs(),
    };
    let job = Arc::new(Job {
        owner: p.user_id,
        progress: watch::channel(progress.clone()).0,
        cancel: watch::channel(false).0,
    });
    {
        let mut jobs = st.0.imports.jobs.lock();
        jobs.retain(|_, j| {
            let pr = j.progress.borrow();
            !(pr.phase.is_final() && now_secs() - pr.created_at > 3600)
        });
        // Two downloads of one URL would write the same partial file.
        let busy = jobs.values().any(|j| {
            let pr = j.progress.borrow();
            !pr.phase.is_final() && (pr.url == req.url || pr.model == model)
        });
        if busy {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("an import of this URL or of '{model}' is already running"),
            ));
        }
        jobs.insert(id.clone(), job.clone());
    }
    let ev =
        p.event("model.pull", format!("model:{model}"), json!({"url": req.url, "import": id, "sha256": req.sha256}));
    crate::auth::audit_only(st, ev).await?;
    let (st2, p2) = (st.clone(), p.clone());
    tokio::spawn(async move { run(st2, p2, job, req).await });
    Ok((StatusCode::ACCEPTED, Json(progress)).into_response())
}

/// The partial file of a URL: the same URL resumes where an earlier attempt stopped.
fn partial_path(st: &AppState, url: &str) -> PathBuf {
    let h = hex::encode(Sha256::digest(url.as_bytes()));
    blobs_dir(st).join(format!(".pull-{}", &h[..32]))
}

async fn run(st: AppState, p: Principal, job: Arc<Job>, req: PullRequest) {
    let partial = partial_path(&st, &req.url);
    let result = download(&job, &req.url, &partial).await;
    let outcome = match result {
        Ok((sha, size)) => finish(&st, &p, &job, &req, &partial, sha, size).await,
        Err(Stop::Cancelled) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err((Phase::Cancelled, "cancelled".to_owned()))
        }
        // The partial file stays: importing the same URL again resumes from it.
        Err(Stop::Failed(e)) => Err((Phase::Failed, e)),
    };
    match outcome {
        Ok(rec) => job.progress.send_modify(|pr| {
            pr.phase = Phase::Done;
            pr.record = Some(rec);
        }),
        Err((phase, e)) => {
            let ev = p
                .event("model.pull", format!("model:{}:{}", req.name, req.tag), json!({"url": req.url, "error": e}))
                .failed(if phase == Phase::Cancelled { "cancelled" } else { "download_failed" });
            if let Err(err) = crate::auth::audit_only(&st, ev).await {
                tracing::warn!(error = %err.message, "could not audit a failed model download");
            }
            job.progress.send_modify(|pr| {
                pr.phase = phase;
                pr.error = Some(e);
            });
        }
    }
}

async fn finish(
    st: &AppState,
    p: &Principal,
    job: &Job,
    req: &PullRequest,
    partial: &std::path::Path,
    sha: String,
    size: u64,
) -> Result<ModelRecord, (Phase, String)> {
    job.progress.send_modify(|pr| pr.phase = Phase::Verifying);
    let discard = |e: String| {
        let _ = std::fs::remove_file(partial);
        (Phase::Failed, e)
    };
    if let Some(want) = &req.sha256 {
        if !want.eq_ignore_ascii_case(&sha) {
            return Err(discard(format!("SHA-256 mismatch: expected {want}, got {sha}; the download was discarded")));
        }
    }
    let path = partial.to_owned();
    let info = tokio::task::spawn_blocking(move || maasbox_engine::gguf::read_info(&path))
        .await
        .map_err(|e| discard(e.to_string()))?
        .map_err(|e| discard(format!("the downloaded file is not a usable GGUF: {e}")))?;
    // Move out of the partial name first so a concurrent pull of the URL cannot touch it.
    let tmp = blobs_dir(st).join(format!(".import-{}", maasbox_crypto::random_hex(8)));
    std::fs::rename(partial, &tmp).map_err(|e| discard(e.to_string()))?;
    let blob = Blob { tmp, sha256: sha, size, info };
    register_blob(st, p, blob, (req.name.clone(), req.tag.clone()), format!("url:{}", req.url), req.base.clone())
        .await
        .map_err(|e| (Phase::Failed, e.message))
}

enum Stop {
    Cancelled,
    Failed(String),
}

/// Download `url` into `partial`, resuming with `Range` from what is there; returns the
/// SHA-256 and size of the whole file.
async fn download(job: &Job, url: &str, partial: &std::path::Path) -> Result<(String, u64), Stop> {
    let failed = |e: String| Stop::Failed(e);
    if let Some(dir) = partial.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| failed(e.to_string()))?;
    }
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let mut cancel = job.cancel.subscribe();
    let mut hasher = Sha256::new();
    // Bytes of the partial file already fed to the hasher.
    let mut hashed = 0u64;
    let mut last_error = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if *cancel.borrow() {
            return Err(Stop::Cancelled);
        }
        let have = tokio::fs::metadata(partial).await.map(|m| m.len()).unwrap_or(0);
        if have > hashed {
            // A partial file from an earlier process: hash what is there before appending.
            let (path, h) = (partial.to_owned(), std::mem::take(&mut hasher));
            hasher = tokio::task::spawn_blocking(move || hash_prefix(&path, h, hashed, have))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(e.to_string()))?;
            hashed = have;
        }
        job.progress.send_modify(|pr| {
            pr.attempts = attempt;
            pr.resumed_from = have;
            pr.bytes = have;
        });
        let mut rq = http.get(url);
        if have > 0 {
            rq = rq.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = tokio::select! {
            r = rq.send() => r,
            _ = cancel.changed() => return Err(Stop::Cancelled),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                last_error = format!("cannot reach {url}: {e}");
                backoff(attempt, &mut cancel).await?;
                continue;
            }
        };
        let status = resp.status();
        let (append, total) = match status.as_u16() {
            206 if have > 0 => (true, content_range_total(&resp).or(resp.content_length().map(|n| n + have))),
            200 => (false, resp.content_length()),
            416 if have > 0 => {
                // Nothing past what we have: the file may be complete; verification decides.
                return Ok((hex::encode(hasher.finalize()), have));
            }
            s if (500..600).contains(&s) || s == 429 => {
                last_error = format!("the server answered HTTP {status}");
                backoff(attempt, &mut cancel).await?;
                continue;
            }
            _ => return Err(failed(format!("the server answered HTTP {status} for {url}"))),
        };
        let file = if append {
            tokio::fs::OpenOptions::new().append(true).open(partial).await
        } else {
            hasher = Sha256::new();
            hashed = 0;
            tokio::fs::File::create(partial).await
        }
        .map_err(|e| failed(e.to_string()))?;
        // Chunks arrive in tens of kilobytes; each tokio file write is a trip to the blocking
        // pool, so gather a few megabytes per write.
        let mut file = tokio::io::BufWriter::with_capacity(4 << 20, file);
        let mut bytes = if append { have } else { 0 };
        job.progress.send_modify(|pr| {
            pr.total = total;
            pr.bytes = bytes;
        });
        let mut body = resp.bytes_stream();
        let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
        let ended = loop {
            let chunk = tokio::select! {
                c = body.next() => c,
                _ = cancel.changed() => {
                    let _ = file.flush().await;
                    return Err(Stop::Cancelled);
                }
            };
            match chunk {
                Some(Ok(c)) => {
                    file.write_all(&c).await.map_err(|e| failed(format!("cannot write the download: {e}")))?;
                    hasher.update(&c);
                    bytes += c.len() as u64;
                    hashed = bytes;
                    window_bytes += c.len() as u64;
                    let dt = window_start.elapsed();
                    if dt >= Duration::from_millis(250) {
                        let rate = window_bytes as f64 / dt.as_secs_f64();
                        job.progress.send_modify(|pr| {
                            pr.bytes = bytes;
                            pr.rate_bytes_per_sec = rate;
                        });
                        (window_start, window_bytes) = (Instant::now(), 0);
                    }
                }
                Some(Err(e)) => break Err(format!("the connection broke after {bytes} bytes: {e}")),
                None => break Ok(()),
            }
        };
        file.flush().await.map_err(|e| failed(e.to_string()))?;
        file.get_ref().sync_all().await.map_err(|e| failed(e.to_string()))?;
        job.progress.send_modify(|pr| pr.bytes = bytes);
        match ended {
            Ok(()) if total.is_none_or(|t| t == bytes) => return Ok((hex::encode(hasher.finalize()), bytes)),
            Ok(()) => last_error = format!("the connection ended after {bytes} of {} bytes", total.unwrap_or(0)),
            Err(e) => last_error = e,
        }
        tracing::info!(url, bytes, attempt, error = %last_error, "model download interrupted; resuming");
        backoff(attempt, &mut cancel).await?;
    }
    Err(failed(format!("gave up after {MAX_ATTEMPTS} attempts: {last_error}")))
}

fn hash_prefix(path: &std::path::Path, mut h: Sha256, from: u64, to: u64) -> std::io::Result<Sha256> {
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(from))?;
    let mut left = to - from;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = f.read(&mut buf[..left.min(1 << 20) as usize])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h)
}

fn content_range_total(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    v.rsplit('/').next()?.parse().ok()
}

async fn backoff(attempt: u32, cancel: &mut watch::Receiver<bool>) -> Result<(), Stop> {
    let wait = Duration::from_millis(250 * u64::from(attempt.min(8)));
    tokio::select! {
        _ = tokio::time::sleep(wait) => Ok(()),
        _ = cancel.changed() => Err(Stop::Cancelled),
    }
}

/// A job the caller may see: their own, or any for admins.
fn job_for(st: &AppState, p: &Principal, id: &str) -> ApiResult<Arc<Job>> {
    let job = st.0.imports.jobs.lock().get(id).cloned();
    match job {
        Some(j) if j.owner == p.user_id || p.role.allows(Permission::Settings) => Ok(j),
        _ => Err(ApiError::not_found("import")),
    }
}

/// Import jobs.
#[derive(Serialize, ToSchema)]
pub struct ImportList {
    /// Newest first.
    pub data: Vec<ImportProgress>,
}

#[utoipa::path(get, path = "/api/v1/models/imports", tag = "models", security(("bearer" = [])), responses((status = 200, body = ImportList)))]
async fn list_imports(State(st): State<AppState>, p: Principal) -> ApiResult<Json<ImportList>> {
    p.authorize(&st, Permission::ModelsImport, "model.pull.list").await?;
    let admin = p.role.allows(Permission::Settings);
    let mut data: Vec<ImportProgress> =
        st.0.imports
            .jobs
            .lock()
            .values()
            .filter(|j| admin || j.owner == p.user_id)
            .map(|j| j.progress.borrow().clone())
            .collect();
    data.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(Json(ImportList { data }))
}

#[utoipa::path(get, path = "/api/v1/models/imports/{id}", tag = "models", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = ImportProgress), (status = 404, body = crate::error::ErrorBody)))]
async fn get_import(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<ImportProgress>> {
    p.authorize(&st, Permission::ModelsImport, "model.pull.read").await?;
    Ok(Json(job_for(&st, &p, &id)?.progress.borrow().clone()))
}

#[utoipa::path(delete, path = "/api/v1/models/imports/{id}", tag = "models", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 202, body = ImportProgress), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn cancel_import(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<ImportProgress>)> {
    p.authorize(&st, Permission::ModelsImport, "model.pull.cancel").await?;
    let job = job_for(&st, &p, &id)?;
    if job.progress.borrow().phase.is_final() {
        return Err(ApiError::new(ErrorCode::Conflict, "this import has already ended"));
    }
    job.cancel.send_replace(true);
    let pr = job.progress.borrow().clone();
    Ok((StatusCode::ACCEPTED, Json(pr)))
}

#[utoipa::path(get, path = "/api/v1/models/imports/{id}/events", tag = "models", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "Server-sent events, each an ImportProgress; the stream ends after the final phase", content_type = "text/event-stream")))]
async fn import_events(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> ApiResult<Response> {
    p.authorize(&st, Permission::ModelsImport, "model.pull.read").await?;
    let mut rx = job_for(&st, &p, &id)?.progress.subscribe();
    let stream = async_stream_progress(move |tx| async move {
        loop {
            let pr = rx.borrow_and_update().clone();
            let last = pr.phase.is_final();
            let ev = Event::default().event("progress").data(serde_json::to_string(&pr).unwrap_or_default());
            if tx.send(Ok(ev)).await.is_err() || last {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// A stream fed by a task through a small channel.
fn async_stream_progress<F, Fut>(f: F) -> tokio_stream::wrappers::ReceiverStream<Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Event, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
