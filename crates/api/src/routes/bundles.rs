//! `/api/v1/bundles`: export models as a signed offline bundle and import one (see
//! [`crate::bundle`] for the format and its checks).

use std::path::PathBuf;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use maasbox_crypto::Sm2PublicKey;
use maasbox_store::{models, StoreError, WriteOutcome};
use maasbox_types::{ErrorCode, ModelRecord, Permission};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::bundle::{self, BundleError, BundleModel};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::routes::models::{blob_path, blobs_dir};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_bundle)).routes(routes!(import_bundle))
}

/// `POST /api/v1/bundles`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBundle {
    /// Models (`name[:tag]`) to put in the bundle.
    pub models: Vec<String>,
}

/// `POST /api/v1/bundles/import`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBundle {
    /// The bundle file on the server's filesystem.
    pub path: String,
    /// SM2 public key (hex) the bundle must be signed by; without it any valid signature is
    /// accepted (integrity only) and the signer is recorded.
    #[serde(default)]
    pub trust: Option<String>,
    /// Import a bundle without a signature (digests are still checked).
    #[serde(default)]
    pub allow_unsigned: bool,
}

/// What an import registered.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ImportedBundle {
    /// The registered models.
    pub models: Vec<ModelRecord>,
    /// Whether the bundle carried a valid signature.
    pub signed: bool,
    /// The signer's SM2 public key.
    pub signer: String,
    /// Whether the signer is the key the caller said to trust.
    pub trusted: bool,
}

#[utoipa::path(post, path = "/api/v1/bundles", tag = "models", security(("bearer" = [])), request_body = CreateBundle,
    responses((status = 200, description = "The bundle (a tar stream)", content_type = "application/x-tar"), (status = 404, body = crate::error::ErrorBody)))]
async fn create_bundle(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateBundle>,
) -> ApiResult<Response> {
    p.authorize(&st, Permission::ModelsImport, "bundle.create").await?;
    if req.models.is_empty() || req.models.len() > 64 {
        return Err(ApiError::field("models", "name 1 to 64 models"));
    }
    let mut refs = Vec::new();
    for m in &req.models {
        refs.push(models::parse_ref(m).map_err(|e| ApiError::field("models", e.to_string()))?);
    }
    let recs = st
        .store()
        .read(move |c| refs.iter().map(|(n, t)| models::get(c, n, t)).collect::<Result<Vec<_>, _>>())
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => {
                ApiError::new(ErrorCode::ModelNotFound, "a model in 'models' does not exist").param("models")
            }
            e => e.into(),
        })?;
    let list: Vec<BundleModel> = recs
        .iter()
        .map(|r| BundleModel {
            name: r.name.clone(),
            tag: r.tag.clone(),
            sha256: r.sha256.clone(),
            info: r.info.clone(),
            source: r.source.clone(),
            base: r.base.clone(),
        })
        .collect();
    let ev = p.event(
        "bundle.create",
        "bundle",
        json!({"models": recs.iter().map(|r| &r.id).collect::<Vec<_>>(), "signer": st.0.signing.public_key().to_hex()}),
    );
    crate::auth::audit_only(&st, ev).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let (st2, who) = (st.clone(), p.username.clone());
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter { tx: tx.clone(), buf: Vec::with_capacity(CHUNK) };
        let blobs = |sha: &str| blob_path(&st2, sha);
        if let Err(e) = bundle::write(out, &st2.0.signing, &who, list, blobs) {
            // The client sees a broken stream and its own check of the file fails.
            tracing::error!(error = %e, "writing a bundle failed");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let name = format!("maasbox-bundle-{}.tar", maasbox_types::now_secs());
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

const CHUNK: usize = 1 << 20;

/// `Write` into the response body, a megabyte at a time.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| std::io::Error::other("the client went away"))
    }
}

#[utoipa::path(post, path = "/api/v1/bundles/import", tag = "models", security(("bearer" = [])), request_body = ImportBundle,
    responses((status = 201, body = ImportedBundle), (status = 400, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn import_bundle(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<ImportBundle>,
) -> ApiResult<(StatusCode, Json<ImportedBundle>)> {
    p.authorize(&st, Permission::ModelsImport, "bundle.import").await?;
    let trusted = req
        .trust
        .as_deref()
        .map(|k| Sm2PublicKey::from_hex(k.trim()))
        .transpose()
        .map_err(|_| ApiError::field("trust", "trust must be an SM2 public key in hex"))?;
    let path = PathBuf::from(&req.path);
    let dir = blobs_dir(&st);
    std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
    let (t2, allow) = (trusted.clone(), req.allow_unsigned);
    let checked = tokio::task::spawn_blocking(move || {
        let v = bundle::read(&path, t2.as_ref(), allow, Some(&dir))?;
        // Every blob must also be a GGUF this build can serve.
        for (sha, file) in &v.files {
            if let Err(e) = maasbox_engine::gguf::read_info(file) {
                v.discard();
                return Err(BundleError::Malformed(format!("blob {sha} is not a usable GGUF: {e}")));
            }
        }
        Ok(v)
    })
    .await
    .map_err(ApiError::internal)?;
    let v = match checked {
        Ok(v) => v,
        Err(e) => {
            let reason = match &e {
                BundleError::Unsigned => "unsigned",
                BundleError::BadSignature | BundleError::Untrusted { .. } => "bad_signature",
                BundleError::Digest(_) => "digest_mismatch",
                _ => "malformed",
            };
            let ev =
                p.event("bundle.import", "bundle", json!({"path": req.path, "error": e.to_string()})).failed(reason);
            crate::auth::audit_only(&st, ev).await?;
            return Err(match e {
                BundleError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ApiError::field("path", format!("{} does not exist", req.path))
                }
                e => ApiError::field("path", e.to_string()),
            });
        }
    };
    // Move blobs into place, then register every model in one transaction.
    let mut placed = Vec::new();
    for (sha, tmp) in &v.files {
        let dest = blob_path(&st, sha);
        if dest.exists() {
            let _ = std::fs::remove_file(tmp);
        } else {
            std::fs::rename(tmp, &dest).map_err(ApiError::internal)?;
            placed.push(dest);
        }
    }
    let m = v.manifest.clone();
    let signed = v.signed;
    let trusted_ok = trusted.is_some() && signed;
    let source = format!("bundle:{}", req.path);
    let ev = p.event(
        "bundle.import",
        "bundle",
        json!({"path": req.path, "signer": m.signer, "signed": signed, "trusted": trusted_ok, "created_by": m.created_by,
               "created_at": m.created_at,
               "models": m.models.iter().map(|x| format!("{}:{}", x.name, x.tag)).collect::<Vec<_>>(),
               "blobs": m.blobs.iter().map(|b| json!({"sha256": b.sha256, "sm3": b.sm3})).collect::<Vec<_>>()}),
    );
    let (who, src) = (p.username.clone(), source);
    let result = st
        .store()
        .write(move |c| {
            let mut out = Vec::new();
            // Base models before the adapters that name them.
            let mut ordered: Vec<&BundleModel> = m.models.iter().collect();
            ordered.sort_by_key(|bm| bm.base.is_some());
            for bm in ordered {
                let size = m.blobs.iter().find(|b| b.sha256 == bm.sha256).map_or(0, |b| b.size) as i64;
                let (name, tag) = models::parse_ref(&format!("{}:{}", bm.name, bm.tag))?;
                let rec = ModelRecord {
                    id: format!("{name}:{tag}"),
                    name,
                    tag,
                    sha256: bm.sha256.clone(),
                    size,
                    info: bm.info.clone(),
                    source: src.clone(),
                    created_by: who.clone(),
                    created_at: 0,
                    visibility: Default::default(),
                    base: bm.base.clone(),
                };
                let kind = bm.info["kind"].as_str().unwrap_or("model").to_owned();
                crate::routes::models::check_base(c, &rec, &kind)?;
                out.push(models::insert(c, &rec)?);
            }
            Ok(WriteOutcome::audited(out, ev))
        })
        .await;
    match result {
        Ok(models) => Ok((
            StatusCode::CREATED,
            Json(ImportedBundle { models, signed, signer: v.manifest.signer.clone(), trusted: trusted_ok }),
        )),
        Err(e) => {
            for p in placed {
                let _ = std::fs::remove_file(p);
            }
            Err(e.into())
        }
    }
}
