//! `/api/v1/users`: accounts and roles.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use maasbox_crypto::password;
use maasbox_store::{users, WriteOutcome};
use maasbox_types::{ErrorCode, Limits, Permission, Role, User, UserStatus};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(set_password))
}

/// A list of users.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UserList {
    /// Users by id.
    pub data: Vec<User>,
}

/// `POST /api/v1/users`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Login name.
    pub username: String,
    /// Initial password; when omitted a random one is generated, returned once, and must be
    /// changed at first login.
    #[serde(default)]
    pub password: Option<String>,
    /// Role (default `user`).
    #[serde(default)]
    pub role: Option<Role>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Force a password change at first login (default: true when the password was generated).
    #[serde(default)]
    pub must_change_password: Option<bool>,
}

/// A created user, with the generated password if there is one.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct CreatedUser {
    /// The user.
    #[serde(flatten)]
    pub user: User,
    /// Shown once: the generated initial password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_password: Option<String>,
}

/// `PATCH /api/v1/users/{id}`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New display name (users may change their own).
    #[serde(default)]
    pub display_name: Option<String>,
    /// New role (admins only).
    #[serde(default)]
    pub role: Option<Role>,
    /// `active` or `disabled` (admins only). Disabling ends the user's sessions and stops their
    /// keys at once.
    #[serde(default)]
    pub status: Option<UserStatus>,
    /// Quotas (admins only), replacing the user's old ones; unset fields take `[quotas]`.
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// `POST /api/v1/users/{id}/password`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    /// The new password.
    pub password: String,
    /// The current password (required when changing one's own).
    #[serde(default)]
    pub current_password: Option<String>,
    /// When an admin sets someone else's password: must they change it at next login?
    /// Default true.
    #[serde(default)]
    pub must_change_password: Option<bool>,
}

/// Check the policy and hash on the blocking pool (argon2 takes tens of milliseconds).
pub(crate) async fn hash_password(st: &AppState, pw: &str, username: &str) -> ApiResult<String> {
    password::check_policy(pw, username, st.config().auth.min_password_length)
        .map_err(|e| ApiError::new(ErrorCode::WeakPassword, e.to_string()).param("password"))?;
    let alg = if st.config().crypto.gm_mode { password::Algorithm::Pbkdf2Sm3 } else { password::Algorithm::Argon2id };
    let pw = pw.to_owned();
    tokio::task::spawn_blocking(move || password::hash(&pw, alg))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// A random password that meets the policy: 20 characters with every class present.
fn generate_password() -> String {
    let hex = maasbox_crypto::random_hex(12);
    let upper: String = hex[..8].to_ascii_uppercase();
    format!("{}-{}-{}", upper, &hex[8..16], &hex[16..])
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])), responses((status = 200, body = UserList)))]
async fn list_users(State(st): State<AppState>, p: Principal) -> ApiResult<Json<UserList>> {
    p.authorize(&st, Permission::UsersRead, "user.list").await?;
    Ok(Json(UserList { data: st.store().read(users::list).await? }))
}

#[utoipa::path(post, path = "/api/v1/users", tag = "users", security(("bearer" = [])), request_body = CreateUser,
    responses((status = 201, body = CreatedUser), (status = 409, body = crate::error::ErrorBody)))]
async fn create_user(
    State(st): State<AppState>,
    p: Principal,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    p.authorize(&st, Permission::UsersManage, "user.create").await?;
    users::validate_username(&req.username).map_err(|e| ApiError::field("username", e.to_string()))?;
    let (pw, generated) = match req.password {
        Some(pw) => (pw, false),
        None => (generate_password(), true),
    };
    let hash = hash_password(&st, &pw, &req.username).await?;
    let role = req.role.unwrap_or(Role::User);
    let must_change = req.must_change_password.unwrap_or(generated);
    let display = req.display_name.unwrap_or_default();
    let username = req.username;
    let mut ev =
        p.event("user.create", "", json!({"username": username, "role": role, "must_change_password": must_change}));
    let user = st
        .store()
        .write(move |c| {
            let u = users::create(
                c,
                &users::NewUser {
                    username: &username,
                    display_name: &display,
                    role,
                    password_hash: &hash,
                    must_change_password: must_change,
                },
            )?;
            ev.resource = format!("user:{}", u.id);
            Ok(WriteOutcome::audited(u, ev))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedUser { user, initial_password: generated.then_some(pw) })))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = User), (status = 404, body = crate::error::ErrorBody)))]
async fn get_user(State(st): State<AppState>, p: Principal, Path(id): Path<i64>) -> ApiResult<Json<User>> {
    if !p.is_user(id) {
        p.authorize(&st, Permission::UsersRead, "user.read").await?;
    }
    Ok(Json(st.store().read(move |c| users::get(c, id)).await?))
}

#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)), request_body = UpdateUser,
    responses((status = 200, body = User), (status = 409, body = crate::error::ErrorBody)))]
async fn update_user(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<User>> {
    if !(p.is_user(id) && req.role.is_none() && req.status.is_none() && req.limits.is_none()) {
        p.authorize(&st, Permission::UsersManage, "user.update").await?;
    }
    if req.display_name.as_ref().is_some_and(|d| d.chars().count() > 128) {
        return Err(ApiError::field("display_name", "display_name must be at most 128 characters"));
    }
    let patch =
        users::UserPatch { display_name: req.display_name, role: req.role, status: req.status, limits: req.limits };
    let ev = p.event("user.update", format!("user:{id}"), json!({}));
    let user = st
        .store()
        .write(move |c| {
            let (before, after) = users::update(c, id, &patch)?;
            let mut ev = ev;
            let mut changes = serde_json::Map::new();
            if before.role != after.role {
                changes.insert("role".into(), json!([before.role, after.role]));
            }
            if before.status != after.status {
                changes.insert("status".into(), json!([before.status, after.status]));
            }
            if before.limits != after.limits {
                changes.insert("limits".into(), json!([before.limits, after.limits]));
            }
            if before.display_name != after.display_name {
                changes.insert("display_name".into(), json!([before.display_name, after.display_name]));
            }
            ev.details = json!({"username": after.username, "changes": changes});
            Ok(WriteOutcome::audited(after, ev))
        })
        .await?;
    st.0.auth_cache.clear();
    Ok(Json(user))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 204), (status = 409, body = crate::error::ErrorBody)))]
async fn delete_user(State(st): State<AppState>, p: Principal, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    p.authorize(&st, Permission::UsersManage, "user.delete").await?;
    let ev = p.event("user.delete", format!("user:{id}"), json!({}));
    st.store()
        .write(move |c| {
            let u = users::delete(c, id)?;
            let mut ev = ev;
            ev.details = json!({"username": u.username, "role": u.role});
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    st.0.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/users/{id}/password", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)), request_body = SetPassword,
    responses((status = 204), (status = 400, body = crate::error::ErrorBody)))]
async fn set_password(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<SetPassword>,
) -> ApiResult<StatusCode> {
    let own = p.is_user(id);
    if !own {
        p.authorize(&st, Permission::UsersManage, "user.password").await?;
    }
    let target = st.store().read(move |c| users::get(c, id)).await?;
    if own {
        let current = req
            .current_password
            .as_deref()
            .ok_or_else(|| {
                ApiError::field("current_password", "current_password is required to change your own password")
            })?
            .to_owned();
        let stored = st.store().read(move |c| users::password_hash(c, id)).await?;
        let ok = tokio::task::spawn_blocking(move || password::verify(&current, &stored))
            .await
            .map_err(ApiError::internal)?;
        if !ok {
            let ev = p.event("user.password", format!("user:{id}"), json!({})).failed("wrong_current_password");
            crate::auth::audit_only(&st, ev).await?;
            return Err(
                ApiError::new(ErrorCode::InvalidCredentials, "current password is wrong").param("current_password")
            );
        }
        if req.current_password.as_deref() == Some(req.password.as_str()) {
            return Err(ApiError::new(ErrorCode::WeakPassword, "the new password must differ from the current one")
                .param("password"));
        }
    }
    let hash = hash_password(&st, &req.password, &target.username).await?;
    let must_change = !own && req.must_change_password.unwrap_or(true);
    let ev = p.event(
        "user.password",
        format!("user:{id}"),
        json!({"username": target.username, "must_change_password": must_change}),
    );
    st.store()
        .write(move |c| {
            users::set_password(c, id, &hash, must_change)?;
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    st.0.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}
