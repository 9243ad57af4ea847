//! `/api/v1/knowledge`: knowledge bases, document ingestion (a background job per upload with
//! SSE progress and cancel), and search. Grants are checked here, before the index is touched:
//! a base the caller may not read answers 404 exactly like a missing one.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Multipart, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use maasbox_engine::LoadedModel;
use maasbox_knowledge::{
    chunk, parse, Begin, Document, Embedded, Hit, Knowledge, KnowledgeBase, KnowledgeError, Mode, NewBase, Query,
};
use maasbox_types::{now_secs, ErrorCode, Permission, Role, Visibility};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{audit_only, Principal};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::routes::models::ensure_loaded;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_bases, create_base))
        .routes(routes!(search_many))
        .routes(routes!(get_base, update_base, delete_base))
        .routes(routes!(list_documents))
        .routes(routes!(get_document, delete_document))
        .routes(routes!(search_one))
        .routes(routes!(get_job, cancel_job))
        .routes(routes!(job_events))
}

/// The upload route, kept apart so it can have its own (larger) body limit.
pub(crate) fn upload_router() -> Router<AppState> {
    Router::new().route("/api/v1/knowledge/{kb}/documents", post(upload))
}

/// Names that are routes under `/api/v1/knowledge`.
const RESERVED: &[&str] = &["search", "jobs"];

impl From<KnowledgeError> for ApiError {
    fn from(e: KnowledgeError) -> Self {
        match e {
            KnowledgeError::NotFound(m) => ApiError::new(ErrorCode::NotFound, m),
            KnowledgeError::Conflict(m) => ApiError::new(ErrorCode::Conflict, m),
            KnowledgeError::Invalid(m) => ApiError::new(ErrorCode::InvalidField, m),
            e @ KnowledgeError::Store(_) => ApiError::internal(e),
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, KnowledgeError> + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?.map_err(ApiError::from)
}

fn missing(name: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("there is no knowledge base named '{name}'"))
}

/// Whether `b`'s grants let `p` read it: the owner token, admins, the owner, and whoever its
/// visibility names.
fn granted(p: &Principal, b: &KnowledgeBase) -> bool {
    p.user_id.is_none()
        || p.role == Role::Admin
        || b.owner.eq_ignore_ascii_case(&p.username)
        || b.visibility.allows(p.role, &p.username)
}

/// Whether `p` may search `b` directly. Keys scoped to an app reach knowledge only through it.
pub(crate) fn readable(p: &Principal, b: &KnowledgeBase) -> bool {
    p.key_app.is_none() && granted(p, b)
}

/// Whether `p`, calling app `app`, may have passages of `b`: the same grants as a direct read;
/// a key scoped to this app counts as its holder.
pub(crate) fn readable_through_app(p: &Principal, b: &KnowledgeBase, app: &str) -> bool {
    p.key_app.as_deref().is_none_or(|k| k == app) && granted(p, b)
}

/// Whether `p` may change `b` (documents, settings, deletion).
fn writable(p: &Principal, b: &KnowledgeBase) -> bool {
    p.key_app.is_none() && (p.user_id.is_none() || p.role == Role::Admin || b.owner.eq_ignore_ascii_case(&p.username))
}

/// The base `name` if `p` may read it; otherwise 404 as if it did not exist.
fn base_for(st: &AppState, p: &Principal, name: &str) -> ApiResult<KnowledgeBase> {
    match st.knowledge().base(name) {
        Ok(b) if readable(p, &b) => Ok(b),
        Ok(_) | Err(KnowledgeError::NotFound(_)) => Err(missing(name)),
        Err(e) => Err(e.into()),
    }
}

/// The base `name` if `p` may change it: 404 when unreadable, 403 when read-only.
fn base_to_change(st: &AppState, p: &Principal, name: &str) -> ApiResult<KnowledgeBase> {
    let b = base_for(st, p, name)?;
    if writable(p, &b) {
        Ok(b)
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, format!("only the owner of '{name}' or an admin may change it")))
    }
}

/// Bases the caller may read.
#[derive(Serialize, ToSchema)]
pub struct BaseList {
    /// By name.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<KnowledgeBase>,
}

/// `POST /api/v1/knowledge`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBase {
    /// Unique name: 1–64 letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Embedding model `name[:tag]` (default `[knowledge] default_embedding_model`).
    #[serde(default)]
    pub embedding_model: Option<String>,
    /// Chunk size in tokens (default `[knowledge] chunk_tokens`).
    #[serde(default)]
    pub chunk_tokens: Option<usize>,
    /// Overlap in tokens (default `[knowledge] chunk_overlap`).
    #[serde(default)]
    pub chunk_overlap: Option<usize>,
    /// Who may search it besides the owner and admins. Absent: only the owner; `{}`: every user.
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

/// `PATCH /api/v1/knowledge/{kb}`: given fields replace the old ones (chunking applies to
/// documents added afterwards).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBase {
    /// New description.
    #[serde(default)]
    pub description: Option<String>,
    /// New chunk size.
    #[serde(default)]
    pub chunk_tokens: Option<usize>,
    /// New overlap.
    #[serde(default)]
    pub chunk_overlap: Option<usize>,
    /// New visibility.
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

#[utoipa::path(get, path = "/api/v1/knowledge", tag = "knowledge", security(("bearer" = [])), responses((status = 200, body = BaseList)))]
async fn list_bases(State(st): State<AppState>, p: Principal) -> ApiResult<Json<BaseList>> {
    p.authorize(&st, Permission::Inference, "knowledge.list").await?;
    let k = st.knowledge().clone();
    let data = blocking(move || k.bases()).await?.into_iter().filter(|b| readable(&p, b)).collect();
    Ok(Json(BaseList { data }))
}

/// The embedding model `name` must be registered, visible to the caller and an embedding
/// model; it is loaded to learn its vector size.
async fn embedding_model(st: &AppState, p: &Principal, name: &str) -> ApiResult<Arc<LoadedModel>> {
    let (n, t) =
        maasbox_store::models::parse_ref(name).map_err(|e| ApiError::field("embedding_model", e.to_string()))?;
    let p2 = p.clone();
    let (n2, t2) = (n.clone(), t.clone());
    let visible = st
        .store()
        .read(move |c| {
            Ok(maasbox_store::models::get(c, &n2, &t2).is_ok_and(|r| crate::routes::gateway::sees(&p2, &r.visibility)))
        })
        .await?;
    if !visible {
        return Err(ApiError::field(
            "embedding_model",
            format!("there is no model named '{n}:{t}' (import the embedding model first)"),
        ));
    }
    let m = ensure_loaded(st, &format!("{n}:{t}"), None, None).await?;
    if !m.info().embedding {
        return Err(ApiError::field("embedding_model", format!("'{n}:{t}' is not an embedding model")));
    }
    Ok(m)
}

#[utoipa::path(post, path = "/api/v1/knowledge", tag = "knowledge", security(("bearer" = [])), request_body = CreateBase,
    responses((status = 201, body = Object), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn create_base(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateBase>,
) -> ApiResult<(StatusCode, Json<KnowledgeBase>)> {
    p.authorize(&st, Permission::KnowledgeCreate, "knowledge.create").await?;
    let name = req.name.trim().to_owned();
    maasbox_knowledge::check_name(&name).map_err(|e| ApiError::field("name", e.to_string()))?;
    if RESERVED.contains(&name.as_str()) {
        return Err(ApiError::field("name", format!("'{name}' is reserved")));
    }
    if req.description.chars().count() > 1024 {
        return Err(ApiError::field("description", "description must be at most 1024 characters"));
    }
    let cfg = &st.config().knowledge;
    let model_name = req.embedding_model.unwrap_or_else(|| cfg.default_embedding_model.clone());
    let model = embedding_model(&st, &p, &model_name).await?;
    let dim = model.info().n_embd.max(0) as usize;
    let new = NewBase {
        name,
        description: req.description,
        owner: p.username.clone(),
        embedding_model: model.info().name.clone(),
        dim,
        chunk_tokens: req.chunk_tokens.unwrap_or(cfg.chunk_tokens),
        chunk_overlap: req.chunk_overlap.unwrap_or(cfg.chunk_overlap),
        visibility: req.visibility.unwrap_or_else(|| Visibility { roles: vec![], users: vec![p.username.clone()] }),
    };
    let k = st.knowledge().clone();
    let b = blocking(move || k.create_base(new)).await?;
    audit_only(&st, p.event("knowledge.create", format!("knowledge:{}", b.name), json!({"base": b}))).await?;
    Ok((StatusCode::CREATED, Json(b)))
}

#[utoipa::path(get, path = "/api/v1/knowledge/{kb}", tag = "knowledge", security(("bearer" = [])), params(("kb" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody)))]
async fn get_base(State(st): State<AppState>, p: Principal, Path(kb): Path<String>) -> ApiResult<Json<KnowledgeBase>> {
    p.authorize(&st, Permission::Inference, "knowledge.read").await?;
    Ok(Json(base_for(&st, &p, &kb)?))
}

#[utoipa::path(patch, path = "/api/v1/knowledge/{kb}", tag = "knowledge", security(("bearer" = [])), params(("kb" = String, Path)), request_body = UpdateBase,
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody)))]
async fn update_base(
    State(st): State<AppState>,
    p: Principal,
    Path(kb): Path<String>,
    ApiJson(req): ApiJson<UpdateBase>,
) -> ApiResult<Json<KnowledgeBase>> {
    p.authorize(&st, Permission::Inference, "knowledge.update").await?;
    base_to_change(&st, &p, &kb)?;
    if req.description.as_ref().is_some_and(|d| d.chars().count() > 1024) {
        return Err(ApiError::field("description", "description must be at most 1024 characters"));
    }
    let k = st.knowledge().clone();
    let kb2 = kb.clone();
    let changes = json!({"description": req.description, "chunk_tokens": req.chunk_tokens, "chunk_overlap": req.chunk_overlap, "visibility": req.visibility});
    let b = blocking(move || {
        k.update_base(&kb2, |b| {
            if let Some(d) = req.description {
                b.description = d;
            }
            if let Some(n) = req.chunk_tokens {
                b.chunk_tokens = n;
            }
            if let Some(n) = req.chunk_overlap {
                b.chunk_overlap = n;
            }
            if let Some(v) = req.visibility {
                b.visibility = v;
            }
        })
    })
    .await?;
    audit_only(&st, p.event("knowledge.update", format!("knowledge:{kb}"), json!({"changes": changes}))).await?;
    Ok(Json(b))
}

#[utoipa::path(delete, path = "/api/v1/knowledge/{kb}", tag = "knowledge", security(("bearer" = [])), params(("kb" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn delete_base(State(st): State<AppState>, p: Principal, Path(kb): Path<String>) -> ApiResult<StatusCode> {
    p.authorize(&st, Permission::Inference, "knowledge.delete").await?;
    base_to_change(&st, &p, &kb)?;
    // Running ingestions of this base stop.
    for j in st.0.ingests.jobs.lock().values() {
        if j.base == kb {
            let _ = j.cancel.send(true);
        }
    }
    let k = st.knowledge().clone();
    let kb2 = kb.clone();
    let b = blocking(move || k.delete_base(&kb2)).await?;
    audit_only(
        &st,
        p.event("knowledge.delete", format!("knowledge:{kb}"), json!({"documents": b.documents, "chunks": b.chunks})),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A base's documents.
#[derive(Serialize, ToSchema)]
pub struct DocumentList {
    /// Newest first.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Document>,
}

#[utoipa::path(get, path = "/api/v1/knowledge/{kb}/documents", tag = "knowledge", security(("bearer" = [])), params(("kb" = String, Path)),
    responses((status = 200, body = DocumentList), (status = 404, body = crate::error::ErrorBody)))]
async fn list_documents(
    State(st): State<AppState>,
    p: Principal,
    Path(kb): Path<String>,
) -> ApiResult<Json<DocumentList>> {
    p.authorize(&st, Permission::Inference, "knowledge.documents").await?;
    base_for(&st, &p, &kb)?;
    let k = st.knowledge().clone();
    Ok(Json(DocumentList { data: blocking(move || k.documents(&kb)).await? }))
}

#[utoipa::path(get, path = "/api/v1/knowledge/{kb}/documents/{doc}", tag = "knowledge", security(("bearer" = [])), params(("kb" = String, Path), ("doc" = u64, Path)),
    responses((status = 200, body = Object), (status = 404, body = crate::error::ErrorBody)))]
async fn get_document(
    State(st): State<AppState>,
    p: Principal,
    Path((kb, doc)): Path<(String, u64)>,
) -> ApiResult<Json<Document>> {
    p.authorize(&st, Permission::Inference, "knowledge.documents").await?;
    base_for(&st, &p, &kb)?;
    let k = st.knowledge().clone();
    Ok(Json(blocking(move || k.document(&kb, doc)).await?))
}

#[utoipa::path(delete, path = "/api/v1/knowledge/{kb}/documents/{doc}", tag = "knowledge", security(("bearer" = [])), params(("kb" = String, Path), ("doc" = u64, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn delete_document(
    State(st): State<AppState>,
    p: Principal,
    Path((kb, doc)): Path<(String, u64)>,
) -> ApiResult<StatusCode> {
    p.authorize(&st, Permission::Inference, "knowledge.document.delete").await?;
    base_to_change(&st, &p, &kb)?;
    let k = st.knowledge().clone();
    let kb2 = kb.clone();
    let d = blocking(move || k.delete_document(&kb2, doc)).await?;
    audit_only(
        &st,
        p.event(
            "knowledge.document.delete",
            format!("knowledge:{kb}"),
            json!({"document": d.id, "name": d.name, "sha256": d.sha256, "chunks": d.chunks}),
        ),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------------
// Ingestion

/// Where one file of an upload is.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FileProgress {
    /// The document id (also for a duplicate: the existing document).
    pub document: u64,
    /// The file name.
    pub name: String,
    /// `queued`, `parsing`, `chunking`, `embedding`, `ready`, `failed`, `duplicate`, `cancelled`.
    pub status: String,
    /// Chunks made.
    pub chunks: usize,
    /// Chunks embedded.
    pub embedded: usize,
    /// Why it failed.
    pub error: Option<String>,
}

/// An ingestion job as the API shows it and as each SSE event carries it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct IngestProgress {
    /// Job id.
    pub id: String,
    /// The base.
    pub base: String,
    /// `queued`, `running`, `done`, `cancelled`.
    pub phase: String,
    /// Files parsed so far.
    pub parsed: usize,
    /// Chunks made so far.
    pub chunked: usize,
    /// Chunks embedded so far.
    pub embedded: usize,
    /// Each file.
    pub files: Vec<FileProgress>,
    /// Who uploaded.
    pub created_by: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl IngestProgress {
    fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "done" | "cancelled")
    }
}

pub(crate) struct IngestJob {
    owner: Option<i64>,
    base: String,
    progress: watch::Sender<IngestProgress>,
    cancel: watch::Sender<bool>,
}

/// Ingestion jobs of this process; one runs at a time (they share the embedding model).
#[derive(Default)]
pub(crate) struct Ingests {
    jobs: Mutex<HashMap<String, Arc<IngestJob>>>,
    run: tokio::sync::Mutex<()>,
}

struct Upload {
    name: String,
    bytes: Vec<u8>,
    doc: Option<u64>,
}

/// `POST /api/v1/knowledge/{kb}/documents` (multipart/form-data; every part with a file name
/// is a document). Answers 202 with the job; identical content already in the base is
/// reported as `duplicate` and not processed again.
async fn upload(
    State(st): State<AppState>,
    p: Principal,
    Path(kb): Path<String>,
    mut mp: Multipart,
) -> ApiResult<Response> {
    p.authorize(&st, Permission::Inference, "knowledge.upload").await?;
    let base = base_to_change(&st, &p, &kb)?;
    let mut files = Vec::new();
    loop {
        let field = mp.next_field().await.map_err(|e| ApiError::field("file", format!("bad multipart body: {e}")))?;
        let Some(field) = field else { break };
        let Some(name) = field.file_name().map(|n| n.rsplit(['/', '\\']).next().unwrap_or(n).trim().to_owned()) else {
            continue;
        };
        if name.is_empty() || name.len() > 255 {
            return Err(ApiError::field("file", "file names must be 1–255 bytes"));
        }
        let bytes = field.bytes().await.map_err(|e| ApiError::field("file", format!("reading '{name}': {e}")))?;
        if bytes.is_empty() {
            return Err(ApiError::field("file", format!("'{name}' is empty")));
        }
        files.push(Upload { name, bytes: bytes.to_vec(), doc: None });
    }
    if files.is_empty() {
        return Err(ApiError::field("file", "send at least one file (multipart/form-data parts with a filename)"));
    }
    if files.len() > 100 {
        return Err(ApiError::field("file", "at most 100 files per upload"));
    }
    let id = maasbox_crypto::random_hex(8);
    let mut progress = IngestProgress {
        id: id.clone(),
        base: base.name.clone(),
        phase: "queued".into(),
        parsed: 0,
        chunked: 0,
        embedded: 0,
        files: Vec::new(),
        created_by: p.username.clone(),
        created_at: now_secs(),
    };
    let mut audit_files = Vec::new();
    for f in &mut files {
        let sha = hex::encode(Sha256::digest(&f.bytes));
        let (k, kb2, name, user, job, size) =
            (st.knowledge().clone(), kb.clone(), f.name.clone(), p.username.clone(), id.clone(), f.bytes.len() as u64);
        let sha2 = sha.clone();
        let begun = blocking(move || k.begin_document(&kb2, &name, &sha2, size, &user, &job)).await?;
        let (doc, status) = match begun {
            Begin::New(d) => {
                f.doc = Some(d.id);
                (d.id, "queued")
            }
            Begin::Duplicate(d) => (d.id, "duplicate"),
        };
        audit_files.push(
            json!({"document": doc, "name": f.name, "sha256": sha, "bytes": size, "duplicate": status == "duplicate"}),
        );
        progress.files.push(FileProgress {
            document: doc,
            name: f.name.clone(),
            status: status.into(),
            chunks: 0,
            embedded: 0,
            error: None,
        });
    }
    audit_only(&st, p.event("knowledge.upload", format!("knowledge:{kb}"), json!({"job": id, "files": audit_files})))
        .await?;
    let job = Arc::new(IngestJob {
        owner: p.user_id,
        base: base.name.clone(),
        progress: watch::channel(progress.clone()).0,
        cancel: watch::channel(false).0,
    });
    {
        let mut jobs = st.0.ingests.jobs.lock();
        jobs.retain(|_, j| {
            let pr = j.progress.borrow();
            !(pr.finished() && now_secs() - pr.created_at > 3600)
        });
        jobs.insert(id.clone(), job.clone());
    }
    let (st2, p2) = (st.clone(), p.clone());
    tokio::spawn(async move { ingest(st2, p2, job, base, files).await });
    Ok((StatusCode::ACCEPTED, Json(progress)).into_response())
}

/// Embedding inputs per engine call.
const EMBED_BATCH: usize = 32;

async fn ingest(st: AppState, p: Principal, job: Arc<IngestJob>, base: KnowledgeBase, files: Vec<Upload>) {
    let mut cancel = job.cancel.subscribe();
    // Wait for the jobs before this one, unless cancelled while waiting.
    let _turn = tokio::select! {
        turn = st.0.ingests.run.lock() => Some(turn),
        _ = cancel.wait_for(|c| *c) => None,
    };
    let cancelled = || *cancel.borrow();
    job.progress.send_modify(|pr| pr.phase = "running".into());
    let model = if files.iter().any(|f| f.doc.is_some()) && !cancelled() {
        embedding_model(&st, &p, &base.embedding_model).await.map_err(|e| e.message)
    } else {
        Err(String::new())
    };
    let set = |i: usize, f: &dyn Fn(&mut FileProgress)| job.progress.send_modify(|pr| f(&mut pr.files[i]));
    let mut outcomes = Vec::new();
    for (i, f) in files.into_iter().enumerate() {
        let Some(doc) = f.doc else { continue };
        let result = if cancelled() {
            Err("cancelled".to_owned())
        } else {
            match &model {
                Ok(m) => ingest_one(&st, &job, i, &base, m, doc, f.name.clone(), f.bytes, &cancel).await,
                Err(e) => Err(format!("the embedding model '{}' is not available: {e}", base.embedding_model)),
            }
        };
        match result {
            Ok(n) => {
                set(i, &|fp| fp.status = "ready".into());
                outcomes.push(json!({"document": doc, "name": f.name, "status": "ready", "chunks": n}));
            }
            Err(e) => {
                let k = st.knowledge().clone();
                let (kb, reason) = (base.name.clone(), e.clone());
                if let Err(err) = blocking(move || k.fail_document(&kb, doc, &reason)).await {
                    tracing::warn!(error = %err.message, "could not mark a document failed");
                }
                let status = if e == "cancelled" { "cancelled" } else { "failed" };
                set(i, &|fp| {
                    fp.status = status.into();
                    fp.error = Some(e.clone());
                });
                outcomes.push(json!({"document": doc, "name": f.name, "status": status, "error": e}));
            }
        }
    }
    let phase = if cancelled() { "cancelled" } else { "done" };
    if !outcomes.is_empty() {
        let ev = p.event(
            "knowledge.ingest",
            format!("knowledge:{}", base.name),
            json!({"job": job.progress.borrow().id, "documents": outcomes}),
        );
        if let Err(e) = audit_only(&st, ev).await {
            tracing::warn!(error = %e.message, "could not audit an ingestion");
        }
    }
    job.progress.send_modify(|pr| pr.phase = phase.into());
}

#[allow(clippy::too_many_arguments)]
async fn ingest_one(
    st: &AppState,
    job: &IngestJob,
    i: usize,
    base: &KnowledgeBase,
    model: &Arc<LoadedModel>,
    doc: u64,
    name: String,
    bytes: Vec<u8>,
    cancel: &watch::Receiver<bool>,
) -> Result<usize, String> {
    let set = |f: &dyn Fn(&mut IngestProgress)| job.progress.send_modify(|pr| f(pr));
    set(&|pr| pr.files[i].status = "parsing".into());
    let parsed = tokio::task::spawn_blocking(move || parse::parse(&name, &bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.0)?;
    set(&|pr| {
        pr.parsed += 1;
        pr.files[i].status = "chunking".into();
    });
    // Room for [CLS] and [SEP]; never more than the model's context.
    let limit = (model.info().n_ctx as usize).saturating_sub(2).max(16);
    let (size, overlap) = (base.chunk_tokens.min(limit), base.chunk_overlap);
    let m = model.clone();
    let format = parsed.format;
    let drafts = tokio::task::spawn_blocking(move || {
        chunk::chunk(&parsed.blocks, size, overlap, &|s: &str| m.tokenize(s).len())
    })
    .await
    .map_err(|e| e.to_string())?;
    if drafts.is_empty() {
        return Err("the document has no text".into());
    }
    let n = drafts.len();
    set(&|pr| {
        pr.chunked += n;
        pr.files[i].chunks = n;
        pr.files[i].status = "embedding".into();
    });
    let mut chunks = Vec::with_capacity(n);
    for batch in drafts.chunks(EMBED_BATCH) {
        if *cancel.borrow() {
            return Err("cancelled".into());
        }
        let texts: Vec<String> = batch.iter().map(|d| d.text.clone()).collect();
        // A cancel does not wait for the batch in flight (its result is dropped).
        let mut stop = cancel.clone();
        let (vectors, _) = tokio::select! {
            r = model.embed(&texts) => r.map_err(|e| format!("embedding failed: {e}"))?,
            _ = stop.wait_for(|c| *c) => return Err("cancelled".into()),
        };
        let done = batch.len();
        chunks.extend(batch.iter().cloned().zip(vectors).map(|(draft, vector)| Embedded { draft, vector }));
        set(&|pr| {
            pr.embedded += done;
            pr.files[i].embedded += done;
        });
    }
    if *cancel.borrow() {
        return Err("cancelled".into());
    }
    let k = st.knowledge().clone();
    let kb = base.name.clone();
    let d = tokio::task::spawn_blocking(move || k.commit_document(&kb, doc, format, chunks))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(d.chunks)
}

fn job_for(st: &AppState, p: &Principal, id: &str) -> ApiResult<Arc<IngestJob>> {
    let job = st.0.ingests.jobs.lock().get(id).cloned();
    match job {
        Some(j) if j.owner == p.user_id || p.role == Role::Admin => Ok(j),
        _ => Err(ApiError::new(ErrorCode::NotFound, format!("there is no ingestion job '{id}'"))),
    }
}

#[utoipa::path(get, path = "/api/v1/knowledge/jobs/{id}", tag = "knowledge", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = IngestProgress), (status = 404, body = crate::error::ErrorBody)))]
async fn get_job(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> ApiResult<Json<IngestProgress>> {
    p.authorize(&st, Permission::Inference, "knowledge.job").await?;
    Ok(Json(job_for(&st, &p, &id)?.progress.borrow().clone()))
}

#[utoipa::path(delete, path = "/api/v1/knowledge/jobs/{id}", tag = "knowledge", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = IngestProgress), (status = 404, body = crate::error::ErrorBody)))]
async fn cancel_job(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<IngestProgress>> {
    p.authorize(&st, Permission::Inference, "knowledge.job.cancel").await?;
    let job = job_for(&st, &p, &id)?;
    let _ = job.cancel.send(true);
    audit_only(&st, p.event("knowledge.job.cancel", format!("knowledge:{}", job.base), json!({"job": id}))).await?;
    let mut rx = job.progress.subscribe();
    // The worker notices between embedding batches; wait (briefly) for it to settle.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), rx.wait_for(IngestProgress::finished)).await;
    let pr = job.progress.borrow().clone();
    Ok(Json(pr))
}

#[utoipa::path(get, path = "/api/v1/knowledge/jobs/{id}/events", tag = "knowledge", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream of IngestProgress; ends when the job does")))]
async fn job_events(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> ApiResult<Response> {
    p.authorize(&st, Permission::Inference, "knowledge.job").await?;
    let job = job_for(&st, &p, &id)?;
    let rx = job.progress.subscribe();
    let stream = futures::stream::unfold((rx, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        let pr = rx.borrow_and_update().clone();
        let fin = pr.finished();
        let ev = Event::default().event("progress").data(serde_json::to_string(&pr).unwrap_or_default());
        if !fin && rx.changed().await.is_err() {
            return Some((Ok::<_, Infallible>(ev), (rx, true)));
        }
        Some((Ok(ev), (rx, fin)))
    });
    Ok(Sse::new(stream.boxed()).keep_alive(KeepAlive::default()).into_response())
}

// ---------------------------------------------------------------------------------------------
// Search

/// `POST /api/v1/knowledge/{kb}/search` (without `bases`) and `POST /api/v1/knowledge/search`
/// (with `bases`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Base names (1–16); only on `/api/v1/knowledge/search`.
    #[serde(default)]
    pub bases: Option<Vec<String>>,
    /// The question or keywords.
    pub query: String,
    /// Results (1–50, default 5).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// `hybrid` (default), `vector` or `keyword`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mode: Option<Mode>,
}

/// Search results.
#[derive(Serialize, ToSchema)]
pub struct SearchResults {
    /// Best first.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Hit>,
    /// Server time spent, milliseconds (embedding the query included).
    pub took_ms: f64,
}

/// Search `bases` (each already checked readable by the caller).
pub(crate) async fn search_bases(
    st: &AppState,
    p: &Principal,
    bases: Vec<KnowledgeBase>,
    query: &str,
    top_k: usize,
    mode: Mode,
) -> ApiResult<Vec<Hit>> {
    let mut vectors = HashMap::new();
    if mode != Mode::Keyword {
        let models: HashSet<&str> = bases.iter().map(|b| b.embedding_model.as_str()).collect();
        for name in models {
            let m = embedding_model(st, p, name).await?;
            let (mut v, _) = m.embed(&[query.to_owned()]).await.map_err(|e| {
                ApiError::new(ErrorCode::InvalidRequest, format!("embedding the query: {e}")).param("query")
            })?;
            vectors.insert(name.to_owned(), v.pop().unwrap_or_default());
        }
    }
    let k: Arc<Knowledge> = st.knowledge().clone();
    let names: Vec<String> = bases.into_iter().map(|b| b.name).collect();
    let text = query.to_owned();
    blocking(move || k.search(&Query { bases: &names, text: &text, vectors: &vectors, mode, top_k })).await
}

fn check_query(query: &str, top_k: Option<usize>) -> ApiResult<usize> {
    if query.trim().is_empty() {
        return Err(ApiError::field("query", "query must not be empty"));
    }
    if query.chars().count() > 4096 {
        return Err(ApiError::field("query", "query must be at most 4096 characters"));
    }
    let k = top_k.unwrap_or(5);
    if !(1..=50).contains(&k) {
        return Err(ApiError::field("top_k", "top_k must be between 1 and 50"));
    }
    Ok(k)
}

#[utoipa::path(post, path = "/api/v1/knowledge/{kb}/search", tag = "knowledge", security(("bearer" = [])), params(("kb" = String, Path)), request_body = SearchRequest,
    responses((status = 200, body = SearchResults), (status = 404, body = crate::error::ErrorBody)))]
async fn search_one(
    State(st): State<AppState>,
    p: Principal,
    Path(kb): Path<String>,
    ApiJson(req): ApiJson<SearchRequest>,
) -> ApiResult<Json<SearchResults>> {
    p.authorize(&st, Permission::Inference, "knowledge.search").await?;
    let t = Instant::now();
    if req.bases.is_some() {
        return Err(ApiError::field(
            "bases",
            "bases belongs to POST /api/v1/knowledge/search; this route searches {kb}",
        ));
    }
    let top_k = check_query(&req.query, req.top_k)?;
    let b = base_for(&st, &p, &kb)?;
    let data = search_bases(&st, &p, vec![b], &req.query, top_k, req.mode.unwrap_or_default()).await?;
    Ok(Json(SearchResults { data, took_ms: t.elapsed().as_secs_f64() * 1000.0 }))
}

/// Readable bases among `names` (deduplicated); an unreadable or missing one is a 404.
pub(crate) fn bases_for(st: &AppState, p: &Principal, names: &[String], param: &str) -> ApiResult<Vec<KnowledgeBase>> {
    if names.is_empty() || names.len() > 16 {
        return Err(ApiError::field(param, "name 1 to 16 knowledge bases"));
    }
    let mut seen = HashSet::new();
    names.iter().filter(|n| seen.insert(n.as_str())).map(|n| base_for(st, p, n).map_err(|e| e.param(param))).collect()
}

/// An app's bases: each must exist and be readable by the app's author.
pub(crate) fn bases_for_app(st: &AppState, p: &Principal, names: &[String]) -> ApiResult<()> {
    for n in names {
        base_for(st, p, n).map_err(|e| ApiError::field("knowledge_bases", e.message))?;
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/knowledge/search", tag = "knowledge", security(("bearer" = [])), request_body = SearchRequest,
    responses((status = 200, body = SearchResults), (status = 404, body = crate::error::ErrorBody)))]
async fn search_many(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<SearchRequest>,
) -> ApiResult<Json<SearchResults>> {
    p.authorize(&st, Permission::Inference, "knowledge.search").await?;
    let t = Instant::now();
    let top_k = check_query(&req.query, req.top_k)?;
    let bases = bases_for(&st, &p, req.bases.as_deref().unwrap_or_default(), "bases")?;
    let data = search_bases(&st, &p, bases, &req.query, top_k, req.mode.unwrap_or_default()).await?;
    Ok(Json(SearchResults { data, took_ms: t.elapsed().as_secs_f64() * 1000.0 }))
}
