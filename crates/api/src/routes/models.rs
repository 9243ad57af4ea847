//! `/api/v1/models`: the model registry (import a local GGUF, list, show, delete, load, unload).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use maasbox_engine::{AdapterSpec, KeepAlive, LoadedModel, ModelSpec, RunningModel};
use maasbox_store::{models, users, StoreError, WriteOutcome};
use maasbox_types::{ErrorCode, ModelRecord, Permission, Visibility};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::routes::gateway::sees;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models, import_model))
        .routes(routes!(get_model, update_model, delete_model))
        .routes(routes!(load_model))
        .routes(routes!(unload_model))
        .routes(routes!(running))
}

/// `POST /api/v1/models/upload`: the GGUF is the raw request body (any size: this route has no
/// body limit and no timeout; only callers allowed to import reach the body).
pub(crate) fn upload_router() -> axum::Router<AppState> {
    axum::Router::new().route("/api/v1/models/upload", axum::routing::post(upload_model))
}

/// `POST /api/v1/models/upload` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// `name[:tag]` (default: the file name without extension).
    pub name: Option<String>,
    /// The uploaded file's name (for the default name and the recorded source).
    pub filename: Option<String>,
    /// For a LoRA adapter: the model it applies to.
    pub base: Option<String>,
}

/// Stream the request body into a temporary file beside the blobs, hashing as it goes.
async fn receive_hashed(body: axum::body::Body, dir: &Path) -> std::io::Result<(String, u64, PathBuf)> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".upload-{}", maasbox_crypto::random_hex(8)));
    let result = async {
        let file = tokio::fs::File::create(&tmp).await?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            hasher.update(&chunk);
            out.write_all(&chunk).await?;
            size += chunk.len() as u64;
        }
        out.flush().await?;
        out.into_inner().sync_all().await?;
        Ok((hex::encode(hasher.finalize()), size))
    }
    .await;
    match result {
        Ok((h, s)) => Ok((h, s, tmp)),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

async fn upload_model(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query<UploadQuery>,
    body: axum::body::Body,
) -> ApiResult<Response> {
    p.authorize(&st, Permission::ModelsImport, "model.import").await?;
    let filename = q.filename.as_deref().map(|f| f.rsplit(['/', '\\']).next().unwrap_or(f).to_owned());
    let default_name = filename
        .as_deref()
        .and_then(|f| Path::new(f).file_stem())
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (name, tag) = resolve(q.name.as_deref().unwrap_or(&default_name))?;
    let base = match &q.base {
        Some(b) => {
            let (n, t) = models::parse_ref(b).map_err(|e| ApiError::field("base", e.to_string()))?;
            Some(format!("{n}:{t}"))
        }
        None => None,
    };
    let dir = blobs_dir(&st);
    let (sha, size, tmp) =
        receive_hashed(body, &dir).await.map_err(|e| ApiError::field("file", format!("upload interrupted: {e}")))?;
    let info = {
        let tmp = tmp.clone();
        tokio::task::spawn_blocking(move || maasbox_engine::gguf::read_info(&tmp)).await.map_err(ApiError::internal)?
    };
    let info = match info {
        Ok(i) => i,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(ApiError::field("file", format!("not a usable GGUF model: {e}")));
        }
    };
    let source = format!("upload:{}", filename.unwrap_or_default());
    let rec = register_blob(&st, &p, Blob { tmp, sha256: sha, size, info }, (name, tag), source, base).await?;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

/// Registry entries.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Models by name and tag, with `loaded` when in memory.
    pub data: Vec<ModelView>,
}

/// A registry entry and whether it is loaded.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ModelView {
    /// The record.
    #[serde(flatten)]
    pub record: ModelRecord,
    /// In memory now.
    pub loaded: bool,
}

/// `POST /api/v1/models`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportModel {
    /// A GGUF file on the server's filesystem (give `path` or `url`).
    #[serde(default)]
    pub path: Option<String>,
    /// An http(s) URL to download from in the background (resumable); the answer is 202 with
    /// the import job, followed at `/api/v1/models/imports/{id}/events`.
    #[serde(default)]
    pub url: Option<String>,
    /// Expected SHA-256 of a download (hex); a mismatch registers nothing.
    #[serde(default)]
    pub sha256: Option<String>,
    /// `name[:tag]`; default: the file name without extension, tag `latest`.
    #[serde(default)]
    pub name: Option<String>,
    /// For a LoRA adapter GGUF: the registry model it applies to (required for adapters).
    /// Requests then name `base+adapter`, or the adapter's own name.
    #[serde(default)]
    pub base: Option<String>,
}

/// Models in memory.
#[derive(Serialize, ToSchema)]
pub struct RunningList {
    /// Loaded models with their activity, pin and keep-alive countdown.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<RunningModel>,
}

/// `POST /api/v1/models/{name}/load` (the body is optional).
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadRequest {
    /// How long to stay loaded after the last request: seconds, or `"30s"`, `"10m"`, `"2h"`;
    /// negative keeps it loaded; 0 unloads it as soon as it is idle.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub keep_alive: Option<serde_json::Value>,
    /// `true` pins (never unloaded for idleness or evicted), `false` unpins.
    #[serde(default)]
    pub pin: Option<bool>,
}

/// Parse a `keep_alive` value: a number of seconds or a duration string (Ollama's forms).
pub(crate) fn parse_keep_alive(v: &serde_json::Value) -> ApiResult<KeepAlive> {
    let bad = || {
        ApiError::field(
            "keep_alive",
            "keep_alive must be seconds (a number) or a duration such as \"30s\", \"10m\", \"2h\"; negative keeps the model loaded",
        )
    };
    let secs: f64 = match v {
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            let (num, unit) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
                Some((i, _)) => (&s[..i], &s[i..]),
                None => (s, "s"),
            };
            let n: f64 = num.trim().parse().map_err(|_| bad())?;
            n * match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    };
    if !secs.is_finite() {
        return Err(bad());
    }
    Ok(if secs < 0.0 { KeepAlive::Forever } else { KeepAlive::For(std::time::Duration::from_secs_f64(secs.min(1e9))) })
}

/// `DELETE` options.
#[derive(Deserialize, IntoParams)]
pub struct DeleteQuery {
    /// Unload first if the model is loaded.
    #[serde(default)]
    pub force: bool,
}

pub(crate) fn blobs_dir(st: &AppState) -> PathBuf {
    st.data_dir().join("models").join("blobs")
}

/// The blob path of a record.
pub(crate) fn blob_path(st: &AppState, sha256: &str) -> PathBuf {
    blobs_dir(st).join(format!("sha256-{sha256}"))
}

fn resolve(name: &str) -> ApiResult<(String, String)> {
    models::parse_ref(name).map_err(|e| ApiError::field("model", e.to_string()))
}

/// Load `name` if needed (blocking work off the async threads), evicting the least recently
/// used idle, unpinned model when the configured maximum is reached. `keep_alive`, when given,
/// becomes the model's keep-alive until another request sets one.
pub(crate) async fn ensure_loaded(
    st: &AppState,
    model: &str,
    adapter: Option<&str>,
    keep_alive: Option<KeepAlive>,
) -> ApiResult<Arc<LoadedModel>> {
    let m = load_or_get(st, model, adapter).await?;
    if let Some(k) = keep_alive {
        m.set_keep_alive(k);
    }
    Ok(m)
}

/// Whether `m` carries `adapter` (or none is needed).
fn has_adapter(m: &LoadedModel, adapter: Option<&str>) -> bool {
    adapter.is_none_or(|a| m.info().adapters.iter().any(|x| x == a))
}

/// Load the base model `model` with every LoRA adapter attached to it. A loaded model that
/// lacks `adapter` (attached after it was loaded) is reloaded when idle.
async fn load_or_get(st: &AppState, model: &str, adapter: Option<&str>) -> ApiResult<Arc<LoadedModel>> {
    let (name, tag) = resolve(model)?;
    let id = format!("{name}:{tag}");
    if let Some(m) = st.engine().get(&id).filter(|m| has_adapter(m, adapter)) {
        return Ok(m);
    }
    let _guard = st.0.load_lock.lock().await;
    if let Some(m) = st.engine().get(&id) {
        if has_adapter(&m, adapter) {
            return Ok(m);
        }
        if m.active_requests() > 0 || m.pinned() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("'{id}' was loaded before this adapter was added and is busy; retry when it is idle"),
            )
            .retry_after(5));
        }
        tracing::info!(model = %id, "reloading to pick up a new LoRA adapter");
        st.engine().unload(&id);
    }
    let (n, t) = (name.clone(), tag.clone());
    let rec = st.store().read(move |c| models::get(c, &n, &t)).await.map_err(|e| match e {
        maasbox_store::StoreError::NotFound(_) => {
            ApiError::new(ErrorCode::ModelNotFound, format!("the model '{model}' does not exist")).param("model")
        }
        e => e.into(),
    })?;
    let base_id = id.clone();
    let adapters = st
        .store()
        .read(move |c| models::adapters_of(c, &base_id))
        .await?
        .into_iter()
        .map(|a| AdapterSpec { path: blob_path(st, &a.sha256), name: a.id, scale: 1.0 })
        .collect();
    let cfg = &st.config().engine;
    while st.engine().loaded_count() >= cfg.max_loaded_models {
        match st.engine().evict_least_recently_used() {
            Some(victim) => tracing::info!(model = %victim, "unloaded the least recently used model to make room"),
            None => {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "cannot load '{id}': all {} loaded models are pinned or busy (engine.max_loaded_models = {}); \
                         unload one or retry later",
                        st.engine().loaded_count(),
                        cfg.max_loaded_models
                    ),
                ))
            }
        }
    }
    let spec = ModelSpec {
        name: id.clone(),
        path: blob_path(st, &rec.sha256),
        n_ctx: (cfg.context_size > 0).then_some(cfg.context_size),
        parallel: cfg.parallel,
        kv_unified: cfg.kv_unified,
        n_batch: cfg.batch_size,
        n_threads: cfg.effective_threads(),
        n_gpu_layers: cfg.gpu_layers(),
        adapters,
    };
    let engine = st.engine().clone();
    let keep = KeepAlive::For(std::time::Duration::from_secs(cfg.keep_alive_secs));
    tokio::task::spawn_blocking(move || engine.load(&spec, keep))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("could not load model '{id}': {e}")))
}

#[utoipa::path(get, path = "/api/v1/models", tag = "models", security(("bearer" = [])), responses((status = 200, body = ModelList)))]
async fn list_models(State(st): State<AppState>, p: Principal) -> ApiResult<Json<ModelList>> {
    p.authorize(&st, Permission::Inference, "model.list").await?;
    let recs = st.store().read(models::list).await?;
    let data = recs
        .into_iter()
        .filter(|r| p.may_use_model(&r.id) && sees(&p, &r.visibility))
        .map(|r| ModelView { loaded: st.engine().get(&r.id).is_some(), record: r })
        .collect();
    Ok(Json(ModelList { data }))
}

#[utoipa::path(get, path = "/api/v1/models/{name}", tag = "models", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 200, body = ModelView), (status = 404, body = crate::error::ErrorBody)))]
async fn get_model(
    State(st): State<AppState>,
    p: Principal,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<Json<ModelView>> {
    p.authorize(&st, Permission::Inference, "model.read").await?;
    let (n, t) = resolve(&name)?;
    let rec = st.store().read(move |c| models::get(c, &n, &t)).await?;
    if !p.may_use_model(&rec.id) || !sees(&p, &rec.visibility) {
        return Err(ApiError::not_found("model"));
    }
    Ok(Json(ModelView { loaded: st.engine().get(&rec.id).is_some(), record: rec }))
}

/// `PATCH /api/v1/models/{name}`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateModel {
    /// Who may see and call the model: `{}` = everyone, or `{"roles": [...], "users": [...]}`.
    pub visibility: Visibility,
}

#[utoipa::path(patch, path = "/api/v1/models/{name}", tag = "models", security(("bearer" = [])), params(("name" = String, Path)), request_body = UpdateModel,
    responses((status = 200, body = ModelView), (status = 404, body = crate::error::ErrorBody)))]
async fn update_model(
    State(st): State<AppState>,
    p: Principal,
    UrlPath(name): UrlPath<String>,
    ApiJson(req): ApiJson<UpdateModel>,
) -> ApiResult<Json<ModelView>> {
    p.authorize(&st, Permission::ModelsManage, "model.update").await?;
    let (n, t) = resolve(&name)?;
    let mut v = req.visibility;
    if v.users.len() > 1024 || v.roles.len() > 8 {
        return Err(ApiError::field("visibility", "at most 1024 users and 8 roles"));
    }
    v.users.sort_by_key(|u| u.to_lowercase());
    v.users.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    v.roles.dedup();
    let ev = p.event("model.update", format!("model:{n}:{t}"), json!({}));
    let rec = st
        .store()
        .write(move |c| {
            for u in &v.users {
                users::by_name(c, u)
                    .map_err(|_| maasbox_store::StoreError::Invalid(format!("there is no user named '{u}'")))?;
            }
            let (before, after) = models::set_visibility(c, &n, &t, &v)?;
            let mut ev = ev;
            ev.details = json!({"visibility": [before.visibility, after.visibility]});
            Ok(WriteOutcome::audited(after, ev))
        })
        .await?;
    Ok(Json(ModelView { loaded: st.engine().get(&rec.id).is_some(), record: rec }))
}

/// Hash while copying into a temporary file beside the blobs; returns (sha256 hex, size, tmp).
fn copy_hashed(src: &Path, dir: &Path) -> std::io::Result<(String, u64, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".import-{}", maasbox_crypto::random_hex(8)));
    let result = (|| {
        let mut input = std::fs::File::open(src)?;
        let mut out = std::fs::File::create(&tmp)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        out.sync_all()?;
        Ok((hex::encode(hasher.finalize()), size))
    })();
    match result {
        Ok((h, s)) => Ok((h, s, tmp)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[utoipa::path(post, path = "/api/v1/models", tag = "models", security(("bearer" = [])), request_body = ImportModel,
    responses((status = 201, body = ModelRecord), (status = 202, body = crate::routes::pull::ImportProgress),
        (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn import_model(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<ImportModel>,
) -> ApiResult<Response> {
    p.authorize(&st, Permission::ModelsImport, "model.import").await?;
    let source = match (&req.path, &req.url) {
        (Some(p), None) => p.clone(),
        (None, Some(u)) => u.clone(),
        _ => return Err(ApiError::field("path", "give either 'path' (a file on the server) or 'url'")),
    };
    let default_name = Path::new(source.split(['?', '#']).next().unwrap_or_default())
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let (name, tag) = resolve(req.name.as_deref().unwrap_or(&default_name))?;
    let base = match &req.base {
        Some(b) => {
            let (n, t) = models::parse_ref(b).map_err(|e| ApiError::field("base", e.to_string()))?;
            Some(format!("{n}:{t}"))
        }
        None => None,
    };
    if let Some(url) = req.url {
        let pull = crate::routes::pull::PullRequest { url, name, tag, sha256: req.sha256, base };
        return crate::routes::pull::start(&st, &p, pull).await;
    }
    if req.sha256.is_some() {
        return Err(ApiError::field("sha256", "sha256 applies to downloads ('url')"));
    }
    let req_path = source;
    let src = PathBuf::from(&req_path);
    // Read the header first: nothing is copied for a file that is not a usable GGUF.
    let info = {
        let src = src.clone();
        tokio::task::spawn_blocking(move || maasbox_engine::gguf::read_info(&src))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::field("path", format!("{req_path}: {e}")))?
    };
    let dir = blobs_dir(&st);
    let (sha, size, tmp) = {
        let (src, dir) = (src.clone(), dir.clone());
        tokio::task::spawn_blocking(move || copy_hashed(&src, &dir))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::field("path", format!("cannot read {req_path}: {e}")))?
    };
    let source = format!("file:{req_path}");
    let rec = register_blob(&st, &p, Blob { tmp, sha256: sha, size, info }, (name, tag), source, base).await?;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

/// A LoRA adapter needs an existing base model of its architecture; a model has no base.
pub(crate) fn check_base(c: &maasbox_store::Connection, rec: &ModelRecord, kind: &str) -> Result<(), StoreError> {
    let invalid = |m: String| StoreError::Invalid(m);
    match (kind, &rec.base) {
        ("lora", None) => {
            Err(invalid(format!("'{}' is a LoRA adapter: name the model it applies to with 'base'", rec.id)))
        }
        ("lora", Some(b)) => {
            let (n, t) = models::parse_ref(b)?;
            let base = models::get(c, &n, &t).map_err(|_| invalid(format!("there is no base model named '{b}'")))?;
            let arch = |v: &serde_json::Value| v["architecture"].as_str().unwrap_or_default().to_owned();
            if base.base.is_some() || base.info["kind"] == "lora" {
                return Err(invalid(format!("'{b}' is itself an adapter")));
            }
            if arch(&base.info) != arch(&rec.info) {
                return Err(invalid(format!(
                    "the adapter is for '{}' models but '{b}' is '{}'",
                    arch(&rec.info),
                    arch(&base.info)
                )));
            }
            Ok(())
        }
        (_, Some(_)) => Err(invalid("'base' applies only to LoRA adapter GGUFs".into())),
        _ => Ok(()),
    }
}

/// A verified GGUF in a temporary file beside the blobs.
pub(crate) struct Blob {
    pub tmp: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub info: maasbox_engine::gguf::GgufInfo,
}

/// Move `blob` into place (content-addressed; an identical blob already there is kept) and
/// record `name:tag` → blob with its audit event. On any failure nothing is left behind.
pub(crate) async fn register_blob(
    st: &AppState,
    p: &Principal,
    blob: Blob,
    (name, tag): (String, String),
    source: String,
    base: Option<String>,
) -> ApiResult<ModelRecord> {
    let path = blobs_dir(st).join(format!("sha256-{}", blob.sha256));
    let fresh = !path.exists();
    if fresh {
        std::fs::rename(&blob.tmp, &path).map_err(ApiError::internal)?;
    } else {
        let _ = std::fs::remove_file(&blob.tmp);
    }
    let rec = ModelRecord {
        visibility: Default::default(),
        id: format!("{name}:{tag}"),
        name,
        tag,
        sha256: blob.sha256,
        size: blob.size as i64,
        info: serde_json::to_value(&blob.info).unwrap_or_default(),
        source,
        created_by: p.username.clone(),
        created_at: 0,
        base,
    };
    let ev = p.event(
        "model.import",
        format!("model:{}", rec.id),
        json!({"sha256": rec.sha256, "size": blob.size, "source": rec.source, "architecture": blob.info.architecture,
               "kind": blob.info.kind, "base": rec.base}),
    );
    let r2 = rec.clone();
    let kind = blob.info.kind.clone();
    let written = st
        .store()
        .write(move |c| {
            check_base(c, &r2, &kind)?;
            Ok(WriteOutcome::audited(models::insert(c, &r2)?, ev))
        })
        .await;
    match written {
        Ok(saved) => Ok(saved),
        Err(e) => {
            if fresh {
                let _ = std::fs::remove_file(&path);
            }
            Err(e.into())
        }
    }
}

#[utoipa::path(delete, path = "/api/v1/models/{name}", tag = "models", security(("bearer" = [])), params(("name" = String, Path), DeleteQuery),
    responses((status = 204), (status = 409, body = crate::error::ErrorBody)))]
async fn delete_model(
    State(st): State<AppState>,
    p: Principal,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    p.authorize(&st, Permission::ModelsImport, "model.delete").await?;
    let (n, t) = resolve(&name)?;
    let id = format!("{n}:{t}");
    // Refuse before unloading anything: a base with adapters stays.
    let i2 = id.clone();
    let adapters = st.store().read(move |c| models::adapters_of(c, &i2)).await?;
    if !adapters.is_empty() {
        let names: Vec<&str> = adapters.iter().map(|a| a.id.as_str()).collect();
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("'{id}' has LoRA adapters attached ({}); remove them first", names.join(", ")),
        ));
    }
    if st.engine().get(&id).is_some() {
        if !q.force {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("model '{id}' is loaded; unload it first or pass ?force=true"),
            ));
        }
        st.engine().unload(&id);
    }
    let ev = p.event("model.delete", format!("model:{id}"), json!({"forced": q.force}));
    let (rec, orphan) = st.store().write(move |c| Ok(WriteOutcome::audited(models::delete(c, &n, &t)?, ev))).await?;
    if orphan {
        let _ = std::fs::remove_file(blob_path(&st, &rec.sha256));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/models/{name}/load", tag = "models", security(("bearer" = [])), params(("name" = String, Path)),
    request_body(content = Option<LoadRequest>),
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody), (status = 503, body = crate::error::ErrorBody)))]
async fn load_model(
    State(st): State<AppState>,
    p: Principal,
    UrlPath(name): UrlPath<String>,
    body: Bytes,
) -> ApiResult<Json<RunningModel>> {
    p.authorize(&st, Permission::ModelsImport, "model.load").await?;
    let req: LoadRequest = if body.iter().all(u8::is_ascii_whitespace) {
        LoadRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::new(ErrorCode::InvalidField, e.to_string()))?
    };
    let keep = req.keep_alive.as_ref().map(parse_keep_alive).transpose()?;
    // An adapter loads on its base.
    let (n, t) = resolve(&name)?;
    let rec = st.store().read(move |c| models::get(c, &n, &t)).await?;
    let m = match &rec.base {
        Some(base) => ensure_loaded(&st, base, Some(&rec.id), keep).await?,
        None => ensure_loaded(&st, &rec.id, None, keep).await?,
    };
    if let Some(pin) = req.pin {
        m.set_pinned(pin);
    }
    let ev = p.event(
        "model.load",
        format!("model:{}", m.info().name),
        json!({"n_ctx": m.info().n_ctx, "parallel": m.info().parallel, "pinned": m.pinned(), "keep_alive": m.keep_alive()}),
    );
    crate::auth::audit_only(&st, ev).await?;
    let running = st.engine().status().loaded_models.into_iter().find(|r| r.info.name == m.info().name);
    running.map(Json).ok_or_else(|| ApiError::new(ErrorCode::Conflict, "the model was unloaded meanwhile"))
}

#[utoipa::path(post, path = "/api/v1/models/{name}/unload", tag = "models", security(("bearer" = [])), params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn unload_model(
    State(st): State<AppState>,
    p: Principal,
    UrlPath(name): UrlPath<String>,
) -> ApiResult<StatusCode> {
    p.authorize(&st, Permission::ModelsImport, "model.unload").await?;
    let (n, t) = resolve(&name)?;
    let id = format!("{n}:{t}");
    if !st.engine().unload(&id) {
        return Err(ApiError::new(ErrorCode::NotFound, format!("model '{id}' is not loaded")));
    }
    crate::auth::audit_only(&st, p.event("model.unload", format!("model:{id}"), json!({}))).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/models/running", tag = "models", security(("bearer" = [])), responses((status = 200, body = RunningList)))]
async fn running(State(st): State<AppState>, p: Principal) -> ApiResult<Json<RunningList>> {
    p.authorize(&st, Permission::Inference, "model.ps").await?;
    Ok(Json(RunningList { data: st.engine().status().loaded_models }))
}
