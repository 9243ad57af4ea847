//! `/api/v1/keys`: API keys. Users manage their own; admins everyone's.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use maasbox_store::{apps, keys, users, WriteOutcome};
use maasbox_types::{now_secs, ApiKey, ErrorCode, Limits, Permission, Role, UserStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{key_mac, Principal};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_keys, create_key)).routes(routes!(update_key, revoke_key))
}

/// A list of keys.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    /// Live keys.
    pub data: Vec<ApiKey>,
}

/// `GET /api/v1/keys` filters.
#[derive(Deserialize, IntoParams)]
pub struct KeyQuery {
    /// Admins: only this user's keys; `all=true` lists everyone's.
    pub user_id: Option<i64>,
    /// Admins: list every user's keys.
    #[serde(default)]
    pub all: bool,
}

/// `POST /api/v1/keys`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Label, 1–128 characters.
    pub name: String,
    /// Owner (admins only; default: the caller).
    #[serde(default)]
    pub user_id: Option<i64>,
    /// Models this key may call; omitted = all the owner may use.
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
    /// Expiry as Unix seconds.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Expiry in days from now (alternative to `expires_at`).
    #[serde(default)]
    pub expires_in_days: Option<u32>,
    /// Quotas of this key (the owner's apply as well; the stricter wins). Setting them needs
    /// the right to manage everyone's keys.
    #[serde(default)]
    pub limits: Option<Limits>,
    /// Scope the key to one app: it may only call `model: "app:<name>"`.
    #[serde(default)]
    pub app: Option<String>,
}

/// `PATCH /api/v1/keys/{id}`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// New label.
    #[serde(default)]
    pub name: Option<String>,
    /// New quotas, replacing the old ones (admins only: a user must not lift their own key's
    /// limits).
    #[serde(default)]
    pub limits: Option<Limits>,
    /// New model allow-list; an empty list is refused (revoke the key instead).
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
}

fn check_name(name: &str) -> ApiResult<String> {
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::field("name", "name must be 1-128 characters"));
    }
    Ok(name)
}

fn check_models(models: &Option<Vec<String>>) -> ApiResult<()> {
    if let Some(models) = models {
        if models.is_empty() || models.len() > 256 || models.iter().any(|m| m.trim().is_empty() || m.len() > 256) {
            return Err(ApiError::field(
                "allowed_models",
                "allowed_models must be a list of 1 to 256 non-empty model names",
            ));
        }
    }
    Ok(())
}

/// A created key: the only response that ever contains the secret.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The key's description.
    #[serde(flatten)]
    pub key: ApiKey,
    /// `mbx_<id>_<secret>`: shown once, store it now.
    pub secret: String,
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", security(("bearer" = [])), params(KeyQuery), responses((status = 200, body = KeyList)))]
async fn list_keys(State(st): State<AppState>, p: Principal, Query(q): Query<KeyQuery>) -> ApiResult<Json<KeyList>> {
    let scope = if q.all || q.user_id.is_some_and(|u| !p.is_user(u)) || p.user_id.is_none() {
        p.authorize(&st, Permission::KeysManageAll, "key.list").await?;
        if q.all || p.user_id.is_none() && q.user_id.is_none() {
            None
        } else {
            q.user_id
        }
    } else {
        p.authorize(&st, Permission::OwnKeys, "key.list").await?;
        p.user_id
    };
    Ok(Json(KeyList { data: st.store().read(move |c| keys::list(c, scope)).await? }))
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", security(("bearer" = [])), request_body = CreateKey,
    responses((status = 201, body = CreatedKey), (status = 400, body = crate::error::ErrorBody)))]
async fn create_key(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<CreatedKey>)> {
    let for_other = req.user_id.is_some_and(|u| !p.is_user(u)) || p.user_id.is_none();
    if for_other {
        p.authorize(&st, Permission::KeysManageAll, "key.create").await?;
    } else {
        p.authorize(&st, Permission::OwnKeys, "key.create").await?;
    }
    if req.limits.is_some() && !for_other {
        // A user may lower their own key's limits only through an admin; otherwise a user could
        // mint unlimited keys beside a limited one. Keys still obey the owner's own limits.
        p.authorize(&st, Permission::KeysManageAll, "key.create").await?;
    }
    let name = check_name(&req.name)?;
    check_models(&req.allowed_models)?;
    let expires_at = match (req.expires_at, req.expires_in_days) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("expires_at", "give expires_at or expires_in_days, not both"))
        }
        (Some(t), None) if t <= now_secs() => {
            return Err(ApiError::field("expires_at", "expires_at must be in the future"))
        }
        (Some(t), None) => Some(t),
        (None, Some(0)) => return Err(ApiError::field("expires_in_days", "expires_in_days must be at least 1")),
        (None, Some(d)) => Some(now_secs() + i64::from(d) * 86_400),
        (None, None) => None,
    };
    // The owner token acts for the first active admin when no user is named.
    let owner_id = match (req.user_id, p.user_id) {
        (Some(u), _) => u,
        (None, Some(me)) => me,
        (None, None) => st
            .store()
            .read(|c| Ok(users::list(c)?.into_iter().find(|u| u.role == Role::Admin && u.status == UserStatus::Active)))
            .await?
            .map(|u| u.id)
            .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "no admin exists yet; complete setup first"))?,
    };
    let id = maasbox_crypto::random_hex(8);
    let secret = maasbox_crypto::random_hex(32);
    let mac = key_mac(&st, &secret);
    let ev = p.event(
        "key.create",
        format!("key:{id}"),
        json!({"name": name, "owner_id": owner_id, "allowed_models": req.allowed_models, "expires_at": expires_at,
               "limits": req.limits, "app": req.app}),
    );
    let (kid, models, limits, app) = (id.clone(), req.allowed_models, req.limits.unwrap_or_default(), req.app);
    let key = st
        .store()
        .write(move |c| {
            let owner = users::get(c, owner_id)?;
            if owner.status != UserStatus::Active {
                return Err(maasbox_store::StoreError::Invalid("cannot create a key for a disabled user".into()));
            }
            if owner.role == Role::Auditor {
                return Err(maasbox_store::StoreError::Invalid("auditors cannot hold API keys".into()));
            }
            if let Some(a) = &app {
                apps::get(c, a)
                    .map_err(|_| maasbox_store::StoreError::Invalid(format!("there is no app named '{a}'")))?;
            }
            let k = keys::create(
                c,
                &keys::NewKey {
                    id: &kid,
                    user_id: owner_id,
                    name: &name,
                    secret_mac: &mac,
                    allowed_models: models.as_deref(),
                    expires_at,
                    limits,
                    app: app.as_deref(),
                },
            )?;
            let mut ev = ev;
            ev.details["owner"] = json!(owner.username);
            Ok(WriteOutcome::audited(k, ev))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, secret: format!("mbx_{id}_{secret}") })))
}

#[utoipa::path(patch, path = "/api/v1/keys/{id}", tag = "keys", security(("bearer" = [])), params(("id" = String, Path)), request_body = UpdateKey,
    responses((status = 200, body = ApiKey), (status = 404, body = crate::error::ErrorBody)))]
async fn update_key(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateKey>,
) -> ApiResult<Json<ApiKey>> {
    let kid = id.clone();
    let key = st.store().read(move |c| keys::get(c, &kid)).await?;
    let own = p.is_user(key.user_id);
    if !own && !p.role.allows(Permission::KeysManageAll) {
        // Other users' keys are invisible, not forbidden.
        return Err(ApiError::not_found("API key"));
    }
    let perm = if own && req.limits.is_none() { Permission::OwnKeys } else { Permission::KeysManageAll };
    p.authorize(&st, perm, "key.update").await?;
    let name = req.name.as_deref().map(check_name).transpose()?;
    check_models(&req.allowed_models)?;
    let patch = keys::KeyPatch { name, limits: req.limits, allowed_models: req.allowed_models.map(Some) };
    let ev = p.event("key.update", format!("key:{id}"), json!({}));
    let key = st
        .store()
        .write(move |c| {
            let (before, after) = keys::update(c, &id, &patch)?;
            let mut ev = ev;
            let mut changes = serde_json::Map::new();
            if before.name != after.name {
                changes.insert("name".into(), json!([before.name, after.name]));
            }
            if before.limits != after.limits {
                changes.insert("limits".into(), json!([before.limits, after.limits]));
            }
            if before.allowed_models != after.allowed_models {
                changes.insert("allowed_models".into(), json!([before.allowed_models, after.allowed_models]));
            }
            ev.details = json!({"owner": after.username, "changes": changes});
            Ok(WriteOutcome::audited(after, ev))
        })
        .await?;
    st.0.auth_cache.clear();
    Ok(Json(key))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn revoke_key(State(st): State<AppState>, p: Principal, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let kid = id.clone();
    let key = st.store().read(move |c| keys::get(c, &kid)).await?;
    if p.is_user(key.user_id) {
        p.authorize(&st, Permission::OwnKeys, "key.revoke").await?;
    } else if p.role.allows(Permission::KeysManageAll) {
        p.authorize(&st, Permission::KeysManageAll, "key.revoke").await?;
    } else {
        // Other users' keys are invisible, not forbidden: do not confirm they exist.
        return Err(ApiError::not_found("API key"));
    }
    let ev = p.event("key.revoke", format!("key:{id}"), json!({"name": key.name, "owner": key.username}));
    st.store()
        .write(move |c| {
            keys::revoke(c, &id)?;
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    st.0.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}
