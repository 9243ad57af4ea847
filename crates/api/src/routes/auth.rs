//! `/api/v1/auth`: first-run setup, login, refresh, logout, me.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use maasbox_store::{sessions, users, WriteOutcome};
use maasbox_types::{now_secs, AuthMethod, ErrorCode, Role, User};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{audit_only, issue_access_token, parse_refresh_token, refresh_mac, ClientInfo, Principal};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(setup_status, setup))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}

/// Whether first-run setup is still needed.
#[derive(Serialize, ToSchema)]
pub struct SetupStatus {
    /// True until the first admin exists.
    pub setup_required: bool,
}

/// `POST /api/v1/auth/setup`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    /// The setup code printed at startup (also in `<data_dir>/setup.token`).
    pub code: String,
    /// The first admin's username.
    pub username: String,
    /// The first admin's password.
    pub password: String,
    /// Optional display name.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `POST /api/v1/auth/login`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username (case-insensitive).
    pub username: String,
    /// Password.
    pub password: String,
}

/// Tokens for a session.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// Short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// One-time token for `/auth/refresh` (rotated on each use).
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: u64,
    /// The signed-in user.
    pub user: User,
}

/// `POST /api/v1/auth/refresh` and `/logout`
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token.
    pub refresh_token: String,
}

/// `GET /api/v1/auth/me`
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MeResponse {
    /// The user (absent for the owner token).
    pub user: Option<User>,
    /// Username, or `owner`.
    pub username: String,
    /// Effective role.
    pub role: Role,
    /// How this request authenticated.
    pub auth_method: AuthMethod,
    /// The API key used, if any.
    pub key_id: Option<String>,
    /// Must change password before doing anything else.
    pub must_change_password: bool,
}

#[utoipa::path(get, path = "/api/v1/auth/setup", tag = "auth", responses((status = 200, body = SetupStatus)))]
async fn setup_status(State(st): State<AppState>) -> Json<SetupStatus> {
    Json(SetupStatus { setup_required: st.0.setup_code.lock().is_some() })
}

/// Create the first admin with the one-time setup code.
#[utoipa::path(post, path = "/api/v1/auth/setup", tag = "auth", request_body = SetupRequest,
    responses((status = 201, body = TokenResponse), (status = 401, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn setup(
    State(st): State<AppState>,
    client: ClientInfo,
    ApiJson(req): ApiJson<SetupRequest>,
) -> ApiResult<(StatusCode, Json<TokenResponse>)> {
    let Some(code) = st.0.setup_code.lock().clone() else {
        return Err(ApiError::new(ErrorCode::AlreadySetUp, "setup is already complete; log in instead"));
    };
    if let Some(ip) = client.ip {
        if let Err(wait) = st.0.limiter.check_ip(ip) {
            return Err(ApiError::new(ErrorCode::RateLimited, "too many failed attempts from this address")
                .retry_after(wait.as_secs()));
        }
    }
    let given = normalize_code(&req.code);
    if !maasbox_crypto::ct_eq(given.as_bytes(), normalize_code(&code).as_bytes()) {
        if let Some(ip) = client.ip {
            st.0.limiter.record_failure(None, ip);
        }
        let ev = client.event(&req.username, AuthMethod::SetupCode, "auth.setup").failed("invalid_setup_code");
        audit_only(&st, ev).await?;
        return Err(ApiError::new(ErrorCode::InvalidSetupCode, "the setup code is wrong").param("code"));
    }
    users::validate_username(&req.username).map_err(|e| ApiError::field("username", e.to_string()))?;
    let hash = crate::routes::users::hash_password(&st, &req.password, &req.username).await?;
    let display = req.display_name.clone().unwrap_or_default();
    let username = req.username.clone();
    let ev = client.event(&req.username, AuthMethod::SetupCode, "auth.setup").details(json!({"role": "admin"}));
    let created = st
        .store()
        .write(move |c| {
            // Checked inside the writer: two racing setup calls cannot both create an admin.
            if users::count(c)? > 0 {
                return Ok(WriteOutcome::unaudited(None));
            }
            let u = users::create(
                c,
                &users::NewUser {
                    username: &username,
                    display_name: &display,
                    role: Role::Admin,
                    password_hash: &hash,
                    must_change_password: false,
                },
            )?;
            let mut ev = ev;
            ev.resource = format!("user:{}", u.id);
            Ok(WriteOutcome::audited(Some(u), ev))
        })
        .await?;
    let Some(user) = created else {
        return Err(ApiError::new(ErrorCode::AlreadySetUp, "setup is already complete; log in instead"));
    };
    st.0.setup_code.lock().take();
    let _ = std::fs::remove_file(st.data_dir().join("setup.token"));
    tracing::info!(username = %user.username, "first admin created; setup complete");
    let tokens = start_session(&st, user, &client, AuthMethod::SetupCode).await?;
    Ok((StatusCode::CREATED, Json(tokens)))
}

fn normalize_code(c: &str) -> String {
    c.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

/// Open a session for `user`; audited as `auth.login`.
async fn start_session(st: &AppState, user: User, client: &ClientInfo, method: AuthMethod) -> ApiResult<TokenResponse> {
    let sid = maasbox_crypto::random_hex(16);
    let secret = maasbox_crypto::random_hex(32);
    let mac = refresh_mac(st, &secret);
    let refresh_ttl = st.config().auth.refresh_token_ttl_secs;
    let expires = now_secs() + refresh_ttl as i64;
    let ev = client
        .event(&user.username, method, "auth.login")
        .on(format!("user:{}", user.id))
        .details(json!({"session": sid}));
    let (uid, s, ip, ua) = (user.id, sid.clone(), client.ip.map(|i| i.to_string()), client.user_agent.clone());
    st.store()
        .write(move |c| {
            sessions::create(c, &s, uid, &mac, expires, ip.as_deref(), ua.as_deref())?;
            users::touch_login(c, uid)?;
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    let (access_token, expires_in) = issue_access_token(st, user.id, &sid)?;
    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in,
        refresh_token: format!("mbr_{sid}_{secret}"),
        refresh_expires_in: refresh_ttl,
        user,
    })
}

/// Log in with username and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = crate::error::ErrorBody), (status = 429, body = crate::error::ErrorBody)))]
async fn login(
    State(st): State<AppState>,
    client: ClientInfo,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let deny = |reason: &'static str| client.event(&req.username, AuthMethod::Password, "auth.login").failed(reason);
    if let Err(wait) = st.0.limiter.check(&req.username, client.ip) {
        let ev = client.event(&req.username, AuthMethod::Password, "auth.login").denied("rate_limited");
        audit_only(&st, ev).await?;
        return Err(ApiError::new(ErrorCode::RateLimited, "too many failed logins; try again later")
            .retry_after(wait.as_secs()));
    }
    let name = req.username.clone();
    let found = st.store().read(move |c| users::credentials(c, &name)).await?;
    let password = req.password.clone();
    let stored = found.as_ref().map(|(_, h)| h.clone());
    // Unknown users still cost one hash, so timing does not reveal which names exist.
    let ok = tokio::task::spawn_blocking(move || match stored {
        Some(h) => maasbox_crypto::password::verify(&password, &h),
        None => {
            let _ = maasbox_crypto::password::verify(&password, dummy_hash());
            false
        }
    })
    .await
    .map_err(ApiError::internal)?;
    let user = match found {
        Some((u, _)) if ok && u.status == maasbox_types::UserStatus::Active => u,
        Some((u, _)) if ok => {
            audit_only(&st, deny("disabled")).await?;
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                format!("the account '{}' is disabled", u.username),
            ));
        }
        _ => {
            if let Some(ip) = client.ip {
                st.0.limiter.record_failure(Some(&req.username), ip);
            }
            audit_only(&st, deny("invalid_credentials")).await?;
            return Err(ApiError::new(ErrorCode::InvalidCredentials, "wrong username or password"));
        }
    };
    st.0.limiter.record_success(&user.username);
    Ok(Json(start_session(&st, user, &client, AuthMethod::Password).await?))
}

/// A real hash of a random string, verified against when the user does not exist so that the
/// answer takes as long as for a real user.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        maasbox_crypto::password::hash(&maasbox_crypto::random_hex(16), maasbox_crypto::password::Algorithm::Argon2id)
            .unwrap_or_default()
    })
}

/// Exchange a refresh token for new tokens; the old refresh token stops working.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = crate::error::ErrorBody)))]
async fn refresh(
    State(st): State<AppState>,
    client: ClientInfo,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<TokenResponse>> {
    let invalid = || ApiError::new(ErrorCode::InvalidToken, "invalid or expired refresh token; log in again");
    let fail_event = |reason: &str| client.event("anonymous", AuthMethod::RefreshToken, "auth.refresh").failed(reason);
    if let Some(ip) = client.ip {
        if let Err(wait) = st.0.limiter.check_ip(ip) {
            return Err(ApiError::new(ErrorCode::RateLimited, "too many failed attempts from this address")
                .retry_after(wait.as_secs()));
        }
    }
    let Some((sid, secret)) = parse_refresh_token(&req.refresh_token) else {
        audit_only(&st, fail_event("malformed")).await?;
        return Err(invalid());
    };
    let (sid, secret) = (sid.to_owned(), secret.to_owned());
    let s = sid.clone();
    let session = st.store().read(move |c| sessions::get(c, &s)).await?;
    let mac = refresh_mac(&st, &secret);
    let Some(session) = session.filter(|s| s.revoked_at.is_none() && s.expires_at > now_secs()) else {
        if let Some(ip) = client.ip {
            st.0.limiter.record_failure(None, ip);
        }
        audit_only(&st, fail_event("unknown_or_ended_session")).await?;
        return Err(invalid());
    };
    if !maasbox_crypto::ct_eq(&mac, &session.refresh_mac) {
        // A rotated-out token came back: someone holds a copy. End the session for everyone.
        let s = sid.clone();
        let mut ev = fail_event("reused_refresh_token");
        ev.resource = format!("session:{sid}");
        st.store()
            .write(move |c| {
                sessions::revoke(c, &s)?;
                Ok(WriteOutcome::audited((), ev))
            })
            .await?;
        st.0.auth_cache.clear();
        return Err(invalid());
    }
    let user = {
        let uid = session.user_id;
        st.store().read(move |c| users::get(c, uid)).await?
    };
    if user.status != maasbox_types::UserStatus::Active {
        audit_only(&st, fail_event("disabled")).await?;
        return Err(invalid());
    }
    let new_secret = maasbox_crypto::random_hex(32);
    let new_mac = refresh_mac(&st, &new_secret);
    let ttl = st.config().auth.refresh_token_ttl_secs;
    let expires = now_secs() + ttl as i64;
    let ev = client.event(&user.username, AuthMethod::RefreshToken, "auth.refresh").on(format!("session:{sid}"));
    let s = sid.clone();
    let old = session.refresh_mac.clone();
    st.store()
        .write(move |c| {
            sessions::rotate(c, &s, &old, &new_mac, expires)?;
            Ok(WriteOutcome::audited((), ev))
        })
        .await
        .map_err(|e| match e {
            // Lost a race with another refresh of the same token.
            maasbox_store::StoreError::NotFound(_) => invalid(),
            e => e.into(),
        })?;
    let (access_token, expires_in) = issue_access_token(&st, user.id, &sid)?;
    Ok(Json(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in,
        refresh_token: format!("mbr_{sid}_{new_secret}"),
        refresh_expires_in: ttl,
        user,
    }))
}

/// End the current session (or the one the given refresh token belongs to).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = crate::error::ErrorBody)))]
async fn logout(State(st): State<AppState>, p: Principal) -> ApiResult<StatusCode> {
    let Some(sid) = p.session_id.clone() else {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "logout ends a session; this request was not made with a session token",
        ));
    };
    let ev = p.event("auth.logout", format!("session:{sid}"), json!({}));
    st.store()
        .write(move |c| {
            sessions::revoke(c, &sid)?;
            Ok(WriteOutcome::audited((), ev))
        })
        .await?;
    st.0.auth_cache.clear();
    Ok(StatusCode::NO_CONTENT)
}

/// Who am I?
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = crate::error::ErrorBody)))]
async fn me(p: Principal) -> ApiResult<Json<MeResponse>> {
    // Answered from the authenticated principal: no database round trip on this hot path.
    Ok(Json(MeResponse {
        must_change_password: p.user.as_ref().is_some_and(|u| u.must_change_password),
        user: p.user,
        username: p.username,
        role: p.role,
        auth_method: p.method,
        key_id: p.key_id,
    }))
}
