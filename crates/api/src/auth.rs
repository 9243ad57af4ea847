//! Who is calling: bearer credentials (session JWT, API key, owner token) become a
//! [`Principal`]; every handler then asks it for a [`Permission`].
//!
//! Token formats: API keys are `mbx_<key id>_<secret>`, refresh tokens `mbr_<session id>_<secret>`,
//! the owner token `mbo_<secret>`; anything else is tried as a JWT. Secrets are never stored:
//! the database holds HMAC-SM3 MACs under keys derived from the master key, compared in
//! constant time. Failed attempts are audited and throttled per client address.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use maasbox_store::keys::KeyAuth;
use maasbox_store::WriteOutcome;
use maasbox_types::{now_secs, AuthMethod, ErrorCode, NewAuditEvent, Permission, Role, User, UserStatus};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Where a request came from.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// Peer address.
    pub ip: Option<IpAddr>,
    /// `x-request-id` (set by the edge layer when the client sent none).
    pub request_id: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(client_info(parts))
    }
}

fn client_info(parts: &Parts) -> ClientInfo {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    ClientInfo {
        ip: parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()),
        request_id: header("x-request-id"),
        user_agent: header("user-agent"),
    }
}

impl ClientInfo {
    /// A successful audit event from this client by `actor`; refine it with the builder
    /// methods of [`NewAuditEvent`].
    pub fn event(&self, actor: &str, method: AuthMethod, action: &str) -> NewAuditEvent {
        NewAuditEvent {
            actor: actor.to_owned(),
            auth_method: method,
            key_id: None,
            client_ip: self.ip.map(|i| i.to_string()),
            request_id: self.request_id.clone(),
            action: action.to_owned(),
            resource: "-".to_owned(),
            outcome: "success".to_owned(),
            details: serde_json::json!({}),
        }
    }
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The user, or `None` for the owner token.
    pub user_id: Option<i64>,
    /// Username, or `owner`.
    pub username: String,
    /// Effective role (the owner token acts as admin).
    pub role: Role,
    /// How they authenticated.
    pub method: AuthMethod,
    /// The API key, when one was used.
    pub key_id: Option<String>,
    /// The session, when a session token was used.
    pub session_id: Option<String>,
    /// Models the key may call (`None` = no key restriction).
    pub allowed_models: Option<Vec<String>>,
    /// The key's own quotas (empty without a key).
    pub key_limits: maasbox_types::Limits,
    /// The app the key is scoped to, if any.
    pub key_app: Option<String>,
    /// The account must change its password before anything else (sessions only).
    pub must_change_password: bool,
    /// The user record as of authentication (at most a minute old; `None` for the owner).
    pub user: Option<User>,
    /// Request origin.
    pub client: ClientInfo,
}

impl Principal {
    /// An audit event by this principal.
    pub fn event(&self, action: &str, resource: impl Into<String>, details: serde_json::Value) -> NewAuditEvent {
        self.client.event(&self.username, self.method, action).key(self.key_id.clone()).on(resource).details(details)
    }

    /// Check `perm`; a refusal is audited (as `outcome = denied`) before the 403 is returned.
    pub async fn authorize(&self, st: &AppState, perm: Permission, action: &str) -> ApiResult<()> {
        let err = if self.must_change_password && self.method == AuthMethod::Session {
            Some(ApiError::new(ErrorCode::PasswordChangeRequired, "change your password before doing anything else"))
        } else if !self.role.allows(perm) {
            Some(ApiError::forbidden())
        } else {
            None
        };
        match err {
            None => Ok(()),
            Some(e) => {
                let ev = self.event(action, "-", serde_json::json!({})).denied(e.code.info().code);
                audit_only(st, ev).await?;
                Err(e)
            }
        }
    }

    /// Whether this caller's key allows `model_id` (`name:tag`); a key entry without a tag
    /// allows every tag of that name.
    pub fn may_use_model(&self, model_id: &str) -> bool {
        let Some(allowed) = &self.allowed_models else { return true };
        let name = model_id.split(':').next().unwrap_or(model_id);
        allowed.iter().any(|a| a == model_id || (!a.contains(':') && a == name) || a == &format!("{model_id}:latest"))
    }

    /// Whether this principal is `user_id`.
    pub fn is_user(&self, user_id: i64) -> bool {
        self.user_id == Some(user_id)
    }
}

/// Append an event that records no other change (failed or denied attempts).
pub async fn audit_only(st: &AppState, ev: NewAuditEvent) -> ApiResult<()> {
    st.store().write(move |_| Ok(WriteOutcome::audited((), ev))).await?;
    Ok(())
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let client = client_info(parts);
        let Some(token) = bearer(parts) else {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "missing credentials: send 'Authorization: Bearer <API key or access token>'",
            ));
        };
        if let Some(ip) = client.ip {
            if let Err(wait) = st.0.limiter.check_ip(ip) {
                return Err(ApiError::new(
                    ErrorCode::RateLimited,
                    "too many failed authentication attempts from this address",
                )
                .retry_after(wait.as_secs()));
            }
        }
        let result = authenticate(st, &token, &client).await;
        if let Err((e, actor, method, key_id)) = result {
            if let Some(ip) = client.ip {
                st.0.limiter.record_failure(None, ip);
            }
            let mut ev = client.event(&actor, method, "auth.failure").key(key_id).failed(e.code.info().code);
            ev.details["path"] = parts.uri.path().into();
            audit_only(st, ev).await?;
            return Err(e);
        }
        result.map_err(|(e, ..)| e)
    }
}

fn bearer(parts: &Parts) -> Option<String> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned()).filter(|t| !t.is_empty())
}

type AuthFailure = (ApiError, String, AuthMethod, Option<String>);

async fn authenticate(st: &AppState, token: &str, client: &ClientInfo) -> Result<Principal, AuthFailure> {
    if let Some(rest) = token.strip_prefix("mbx_") {
        return api_key(st, rest, client).await;
    }
    if token.starts_with("mbo_") {
        let fail = |e| (e, "owner".to_owned(), AuthMethod::OwnerToken, None);
        let mac = maasbox_crypto::hmac_sm3(st.0.master.derive("maasbox/owner-token-mac/v1").as_ref(), token.as_bytes());
        if !maasbox_crypto::ct_eq(&mac, &st.0.owner_mac) {
            return Err(fail(ApiError::new(ErrorCode::InvalidToken, "invalid owner token")));
        }
        if !client.ip.is_some_and(|ip| ip.is_loopback()) {
            return Err(fail(ApiError::new(
                ErrorCode::OwnerTokenNotLocal,
                "the owner token is only accepted from this machine (loopback)",
            )));
        }
        return Ok(Principal {
            user_id: None,
            username: "owner".into(),
            role: Role::Admin,
            method: AuthMethod::OwnerToken,
            key_id: None,
            session_id: None,
            allowed_models: None,
            key_limits: Default::default(),
            key_app: None,
            must_change_password: false,
            user: None,
            client: client.clone(),
        });
    }
    session(st, token, client).await
}

async fn api_key(st: &AppState, rest: &str, client: &ClientInfo) -> Result<Principal, AuthFailure> {
    let bad = |id: Option<&str>| {
        (
            ApiError::new(ErrorCode::InvalidApiKey, "invalid API key"),
            "anonymous".to_owned(),
            AuthMethod::ApiKey,
            id.map(str::to_owned),
        )
    };
    let Some((id, secret)) = rest.split_once('_') else {
        return Err(bad(None));
    };
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(None));
    }
    let ka = match st.0.auth_cache.key(id) {
        Some(k) => Some(k),
        None => {
            let idc = id.to_owned();
            let found =
                st.store().read(move |c| maasbox_store::keys::auth_lookup(c, &idc)).await.map_err(|e| {
                    (ApiError::from(e), "anonymous".to_owned(), AuthMethod::ApiKey, Some(id.to_owned()))
                })?;
            if let Some(k) = &found {
                st.0.auth_cache.put_key(k.clone());
            }
            found
        }
    };
    let Some(ka) = ka else {
        return Err(bad(Some(id)));
    };
    let mac = st.0.key_mac_key.mac(secret.as_bytes());
    if !maasbox_crypto::ct_eq(&mac, &ka.secret_mac) {
        return Err(bad(Some(id)));
    }
    let owner = ka.key.username.clone();
    if ka.user.status != UserStatus::Active {
        return Err((
            ApiError::new(ErrorCode::InvalidApiKey, "this API key's owner is disabled"),
            owner,
            AuthMethod::ApiKey,
            Some(id.to_owned()),
        ));
    }
    if ka.key.expires_at.is_some_and(|t| t <= now_secs()) {
        return Err((
            ApiError::new(ErrorCode::InvalidApiKey, "this API key has expired"),
            owner,
            AuthMethod::ApiKey,
            Some(id.to_owned()),
        ));
    }
    {
        let mut uses = st.0.key_uses.lock();
        match uses.get_mut(id) {
            Some(t) => *t = now_secs(),
            None => {
                uses.insert(id.to_owned(), now_secs());
            }
        }
    }
    Ok(Principal {
        user_id: Some(ka.key.user_id),
        username: owner,
        role: ka.user.role,
        method: AuthMethod::ApiKey,
        key_id: Some(id.to_owned()),
        session_id: None,
        allowed_models: ka.key.allowed_models.clone(),
        key_limits: ka.key.limits,
        key_app: ka.key.app.clone(),
        // Keys keep working for a user who must change their password; only sessions are gated.
        must_change_password: false,
        user: Some(ka.user),
        client: client.clone(),
    })
}

/// Claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Session id.
    pub sid: String,
    /// Issued at.
    pub iat: i64,
    /// Expiry.
    pub exp: i64,
    /// Issuer, always `maasbox`.
    pub iss: String,
}

async fn session(st: &AppState, token: &str, client: &ClientInfo) -> Result<Principal, AuthFailure> {
    let fail = |m: &str| (ApiError::new(ErrorCode::InvalidToken, m), "anonymous".to_owned(), AuthMethod::Session, None);
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&["maasbox"]);
    v.leeway = 5;
    let data = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(st.0.jwt_key.as_ref()), &v).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                fail("access token has expired; refresh it or log in again")
            }
            _ => fail("invalid access token"),
        },
    )?;
    let sid = data.claims.sid;
    let user = match st.0.auth_cache.session(&sid) {
        Some(u) => Some(u),
        None => {
            let s = sid.clone();
            let found = st
                .store()
                .read(move |c| maasbox_store::sessions::live_user(c, &s))
                .await
                .map_err(|e| (ApiError::from(e), "anonymous".to_owned(), AuthMethod::Session, None))?;
            if let Some(u) = &found {
                st.0.auth_cache.put_session(&sid, u.clone());
            }
            found
        }
    };
    let Some(user) = user else {
        return Err(fail("this session has ended (logged out, revoked or the account is disabled)"));
    };
    if user.id.to_string() != data.claims.sub {
        return Err(fail("invalid access token"));
    }
    Ok(Principal {
        user_id: Some(user.id),
        username: user.username.clone(),
        role: user.role,
        method: AuthMethod::Session,
        key_id: None,
        session_id: Some(sid),
        allowed_models: None,
        key_limits: Default::default(),
        key_app: None,
        must_change_password: user.must_change_password,
        user: Some(user),
        client: client.clone(),
    })
}

/// Issue an access token for a session.
pub fn issue_access_token(st: &AppState, user_id: i64, sid: &str) -> ApiResult<(String, u64)> {
    let ttl = st.config().auth.access_token_ttl_secs;
    let now = now_secs();
    let claims = Claims {
        sub: user_id.to_string(),
        sid: sid.to_owned(),
        iat: now,
        exp: now + ttl as i64,
        iss: "maasbox".into(),
    };
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(st.0.jwt_key.as_ref()))
            .map_err(ApiError::internal)?;
    Ok((token, ttl))
}

/// MAC of a refresh-token secret.
pub fn refresh_mac(st: &AppState, secret: &str) -> [u8; 32] {
    maasbox_crypto::hmac_sm3(st.0.refresh_mac_key.as_ref(), secret.as_bytes())
}

/// MAC of an API-key secret.
pub fn key_mac(st: &AppState, secret: &str) -> [u8; 32] {
    st.0.key_mac_key.mac(secret.as_bytes())
}

/// Split `mbr_<sid>_<secret>`.
pub fn parse_refresh_token(t: &str) -> Option<(&str, &str)> {
    let rest = t.strip_prefix("mbr_")?;
    let (sid, secret) = rest.split_once('_')?;
    (sid.len() == 32 && sid.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some((sid, secret))
}

/// Recently authenticated keys and sessions, so the hot path skips SQLite. Every change to
/// users, keys or sessions clears it; entries also expire after a minute.
#[derive(Default)]
pub struct AuthCache {
    keys: RwLock<HashMap<String, (Instant, KeyAuth)>>,
    sessions: RwLock<HashMap<String, (Instant, User)>>,
}

const CACHE_TTL: Duration = Duration::from_secs(60);
const CACHE_MAX: usize = 10_000;

impl AuthCache {
    fn key(&self, id: &str) -> Option<KeyAuth> {
        let g = self.keys.read();
        g.get(id).filter(|(t, _)| t.elapsed() < CACHE_TTL).map(|(_, k)| k.clone())
    }

    fn put_key(&self, k: KeyAuth) {
        let mut g = self.keys.write();
        if g.len() >= CACHE_MAX {
            g.clear();
        }
        g.insert(k.key.id.clone(), (Instant::now(), k));
    }

    fn session(&self, sid: &str) -> Option<User> {
        let g = self.sessions.read();
        g.get(sid).filter(|(t, _)| t.elapsed() < CACHE_TTL).map(|(_, u)| u.clone())
    }

    fn put_session(&self, sid: &str, u: User) {
        let mut g = self.sessions.write();
        if g.len() >= CACHE_MAX {
            g.clear();
        }
        g.insert(sid.to_owned(), (Instant::now(), u));
    }

    /// Forget everything (after any change to users, keys or sessions).
    pub fn clear(&self) {
        self.keys.write().clear();
        self.sessions.write().clear();
    }
}

/// Failed-login throttling per username and per client address (sliding window).
pub struct LoginLimiter {
    per_user: Mutex<HashMap<String, VecDeque<Instant>>>,
    per_ip: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    max_user: u32,
    max_ip: u32,
    window: Duration,
}

impl LoginLimiter {
    /// From `[auth]`.
    pub fn new(c: &AuthConfig) -> Self {
        Self {
            per_user: Mutex::new(HashMap::new()),
            per_ip: Mutex::new(HashMap::new()),
            max_user: c.max_failed_logins_per_user,
            max_ip: c.max_failed_logins_per_ip,
            window: Duration::from_secs(c.failed_login_window_secs),
        }
    }

    fn wait<K: std::hash::Hash + Eq>(
        &self,
        map: &Mutex<HashMap<K, VecDeque<Instant>>>,
        k: &K,
        max: u32,
    ) -> Result<(), Duration> {
        let mut g = map.lock();
        let Some(q) = g.get_mut(k) else { return Ok(()) };
        while q.front().is_some_and(|t| t.elapsed() >= self.window) {
            q.pop_front();
        }
        if q.len() as u32 >= max {
            let oldest = q.front().copied().unwrap_or_else(Instant::now);
            return Err(self.window.saturating_sub(oldest.elapsed()).max(Duration::from_secs(1)));
        }
        Ok(())
    }

    /// May `user` try to log in from `ip` now? `Err` carries how long to wait.
    pub fn check(&self, user: &str, ip: Option<IpAddr>) -> Result<(), Duration> {
        self.wait(&self.per_user, &user.to_lowercase(), self.max_user)?;
        match ip {
            Some(ip) => self.check_ip(ip),
            None => Ok(()),
        }
    }

    /// May `ip` try any credential now?
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Duration> {
        self.wait(&self.per_ip, &ip, self.max_ip)
    }

    /// Count a failure.
    pub fn record_failure(&self, user: Option<&str>, ip: IpAddr) {
        let now = Instant::now();
        if let Some(u) = user {
            let mut g = self.per_user.lock();
            prune(&mut g, self.window);
            g.entry(u.to_lowercase()).or_default().push_back(now);
        }
        let mut g = self.per_ip.lock();
        prune(&mut g, self.window);
        g.entry(ip).or_default().push_back(now);
    }

    /// A successful login clears the user's failures.
    pub fn record_success(&self, user: &str) {
        self.per_user.lock().remove(&user.to_lowercase());
    }
}

/// Keep the maps bounded: drop keys whose failures have all left the window.
fn prune<K: std::hash::Hash + Eq>(map: &mut HashMap<K, VecDeque<Instant>>, window: Duration) {
    if map.len() > 10_000 {
        map.retain(|_, q| q.back().is_some_and(|t| t.elapsed() < window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_after_max_and_success_clears() {
        let c = AuthConfig { max_failed_logins_per_user: 3, max_failed_logins_per_ip: 5, ..AuthConfig::default() };
        let l = LoginLimiter::new(&c);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check("Alice", Some(ip)).is_ok());
            l.record_failure(Some("alice"), ip);
        }
        let wait = l.check("ALICE", None).unwrap_err();
        assert!(wait > Duration::from_secs(800), "{wait:?}");
        assert!(l.check("bob", Some(ip)).is_ok(), "ip has 3 of 5");
        l.record_success("alice");
        assert!(l.check("alice", None).is_ok());
        l.record_failure(Some("bob"), ip);
        l.record_failure(Some("bob"), ip);
        assert!(l.check("carol", Some(ip)).is_err(), "ip now at 5");
    }

    #[test]
    fn refresh_tokens_parse_strictly() {
        let sid = "0123456789abcdef0123456789abcdef";
        assert_eq!(parse_refresh_token(&format!("mbr_{sid}_s3cret")), Some((sid, "s3cret")));
        assert_eq!(parse_refresh_token("mbr_short_s"), None);
        assert_eq!(parse_refresh_token(&format!("mbx_{sid}_s")), None);
        assert_eq!(parse_refresh_token(&format!("mbr_{sid}_")), None);
    }
}
