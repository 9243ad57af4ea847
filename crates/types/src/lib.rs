//! maasbox-types: the vocabulary every other crate shares — roles and permissions, users, API
//! keys, audit events, and the one table of error codes. No I/O lives here.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod error;
pub use error::{ErrorCode, ErrorInfo};

/// Seconds since the Unix epoch, the unit of every timestamp in the API.
pub type UnixSeconds = i64;

/// Current time in seconds since the Unix epoch.
pub fn now_secs() -> UnixSeconds {
    now_millis() / 1000
}

/// Current time in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A role decides what a user may do (see [`Role::allows`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Inference, own keys, import models, create knowledge bases.
    Developer,
    /// Inference on granted models, own keys.
    User,
    /// Read audit and usage, verify and export the chain; no other change.
    Auditor,
}

impl Role {
    /// All roles, most powerful first.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Developer, Role::User, Role::Auditor];

    /// The role's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Auditor => "auditor",
        }
    }

    /// Parse a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role grants `p`. This table is the single source of truth for access.
    pub fn allows(self, p: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Developer => matches!(p, OwnKeys | Inference | ModelsImport | KnowledgeCreate | AppsManage),
            Role::User => matches!(p, OwnKeys | Inference),
            Role::Auditor => matches!(p, AuditRead | AuditVerify | AuditExport | UsersRead | UsageRead),
        }
    }
}

/// Something a caller may be allowed to do. Every endpoint checks one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// List and read all users.
    UsersRead,
    /// Create, change, disable and delete users.
    UsersManage,
    /// Create, list and revoke one's own API keys.
    OwnKeys,
    /// List and revoke everyone's keys; create keys for others.
    KeysManageAll,
    /// Read audit events and statistics.
    AuditRead,
    /// Verify the audit chain.
    AuditVerify,
    /// Export the audit chain with a signed manifest.
    AuditExport,
    /// Call the OpenAI-compatible endpoints.
    Inference,
    /// Import models.
    ModelsImport,
    /// Create knowledge bases.
    KnowledgeCreate,
    /// Read usage of all users.
    UsageRead,
    /// Change appliance settings.
    Settings,
    /// Decide who may see which model.
    ModelsManage,
    /// Create, change and delete apps.
    AppsManage,
    /// Add, change and remove upstream providers.
    UpstreamsManage,
}

/// Whether an account may sign in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    /// May sign in and use keys.
    Active,
    /// Sessions and keys are refused.
    Disabled,
}

impl UserStatus {
    /// The status as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Disabled => "disabled",
        }
    }
}

/// A user as the API shows it (never with the password hash).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// Numeric id.
    pub id: i64,
    /// Unique (case-insensitive) login name.
    pub username: String,
    /// Name shown in the UI.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Active or disabled.
    pub status: UserStatus,
    /// The next action must be a password change.
    pub must_change_password: bool,
    /// Creation time (Unix seconds).
    pub created_at: UnixSeconds,
    /// Last change (Unix seconds).
    pub updated_at: UnixSeconds,
    /// Last successful login (Unix seconds).
    pub last_login_at: Option<UnixSeconds>,
    /// Quotas set for this user; unset fields take `[quotas]` from the configuration.
    #[serde(default)]
    pub limits: Limits,
}

/// An API key's public description (the secret is shown once at creation and never stored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    /// The key id, the middle part of `mbx_<id>_<secret>`.
    pub id: String,
    /// Owner's user id.
    pub user_id: i64,
    /// Owner's username.
    pub username: String,
    /// Human label.
    pub name: String,
    /// Models this key may call; `None` means every model the owner may use.
    pub allowed_models: Option<Vec<String>>,
    /// Expiry (Unix seconds), if any.
    pub expires_at: Option<UnixSeconds>,
    /// Creation time.
    pub created_at: UnixSeconds,
    /// Last time the key authenticated a request (updated in the background, ~10 s lag).
    pub last_used_at: Option<UnixSeconds>,
    /// Quotas of this key, on top of its owner's (the stricter applies).
    #[serde(default)]
    pub limits: Limits,
    /// The one app this key may call (`model: "app:<name>"`); `None` = not scoped to an app.
    #[serde(default)]
    pub app: Option<String>,
}

/// Quotas of a user or an API key. `None` = not set here (a user then takes the configured
/// default, a key adds no limit of its own); `0` = no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests started per rolling minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt + completion) per UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// Tokens (prompt + completion) per UTC calendar month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_month: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<u64>,
}

impl Limits {
    /// Fields set here win; unset fields come from `fallback`.
    pub fn or(self, fallback: Limits) -> Limits {
        Limits {
            requests_per_minute: self.requests_per_minute.or(fallback.requests_per_minute),
            tokens_per_day: self.tokens_per_day.or(fallback.tokens_per_day),
            tokens_per_month: self.tokens_per_month.or(fallback.tokens_per_month),
            concurrent: self.concurrent.or(fallback.concurrent),
        }
    }

    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// A registry entry: `name:tag` pointing at a content-addressed GGUF blob.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ModelRecord {
    /// `name:tag`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Tag (default `latest`).
    pub tag: String,
    /// SHA-256 of the GGUF (hex); the blob is `models/blobs/sha256-<hex>`.
    pub sha256: String,
    /// Size in bytes.
    pub size: i64,
    /// Metadata read from the GGUF header.
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
    /// Where it came from (a path, URL or bundle).
    pub source: String,
    /// Who imported it.
    pub created_by: String,
    /// When (Unix seconds).
    pub created_at: UnixSeconds,
    /// Who may see and call it.
    #[serde(default)]
    pub visibility: Visibility,
    /// For a LoRA adapter: the base model (`name:tag`) it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Who may see and call a model. Empty (the default) = every user; otherwise users whose role
/// is listed or whose name is listed. Admins see every model. A caller who may not see a model
/// gets 404 for it, as if it did not exist.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Visibility {
    /// Roles that may use it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// Usernames that may use it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

impl Visibility {
    /// Whether a user with `role` and `username` may see the model.
    pub fn allows(&self, role: Role, username: &str) -> bool {
        role == Role::Admin
            || (self.roles.is_empty() && self.users.is_empty())
            || self.roles.contains(&role)
            || self.users.iter().any(|u| u.eq_ignore_ascii_case(username))
    }
}

/// An upstream OpenAI-compatible provider that some model names route to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpstreamRecord {
    /// Unique name.
    pub name: String,
    /// Base URL including the API prefix, e.g. `https://api.example.com/v1`.
    pub base_url: String,
    /// Model names served there (requests use the same name upstream).
    pub models: Vec<String>,
    /// Order among the targets of a model: lower first; the local registry model counts as 0.
    pub priority: i64,
    /// Disabled upstreams receive no requests.
    pub enabled: bool,
    /// Whether an API key is stored (the key itself is never returned).
    pub has_api_key: bool,
    /// Who added it.
    pub created_by: String,
    /// When (Unix seconds).
    pub created_at: UnixSeconds,
    /// Last change.
    pub updated_at: UnixSeconds,
}

/// Default sampling of an app; a request's own values win.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppParams {
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    /// Min-p sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Presence penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// An assistant ("app"): a model with a system prompt, default parameters and knowledge
/// bases, callable as `model: "app:<name>"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct App {
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// The model it runs on (`name:tag`).
    pub model: String,
    /// Prepended to every conversation as the system message.
    pub system_prompt: String,
    /// Default sampling.
    pub params: AppParams,
    /// Knowledge bases it retrieves from.
    pub knowledge_bases: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// When (Unix seconds).
    pub created_at: UnixSeconds,
    /// Last change.
    pub updated_at: UnixSeconds,
}

/// How a caller proved who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A session access token (JWT).
    Session,
    /// An API key.
    ApiKey,
    /// The owner token from the data directory, over loopback.
    OwnerToken,
    /// The first-run setup code.
    SetupCode,
    /// Username and password.
    Password,
    /// A refresh token.
    RefreshToken,
    /// A local command with direct access to the data directory (e.g. offline password reset).
    Local,
    /// The server itself.
    System,
    /// No credentials, or credentials that failed.
    None,
}

impl AuthMethod {
    /// The method as stored in the audit chain.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Session => "session",
            AuthMethod::ApiKey => "api_key",
            AuthMethod::OwnerToken => "owner_token",
            AuthMethod::SetupCode => "setup_code",
            AuthMethod::Password => "password",
            AuthMethod::RefreshToken => "refresh_token",
            AuthMethod::Local => "local",
            AuthMethod::System => "system",
            AuthMethod::None => "none",
        }
    }
}

/// An audit event before it joins the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewAuditEvent {
    /// Who acted (username, `owner`, `system`, or the name attempted in a failed login).
    pub actor: String,
    /// How they authenticated.
    pub auth_method: AuthMethod,
    /// The API key used, if any.
    pub key_id: Option<String>,
    /// The client address.
    pub client_ip: Option<String>,
    /// The request id (`x-request-id`).
    pub request_id: Option<String>,
    /// Dotted action name, e.g. `user.create`, `auth.login`.
    pub action: String,
    /// What was acted on, e.g. `user:3`, `key:ab12…`.
    pub resource: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Structured details (never secrets).
    pub details: serde_json::Value,
}

impl NewAuditEvent {
    /// What was acted on.
    pub fn on(mut self, resource: impl Into<String>) -> Self {
        self.resource = resource.into();
        self
    }

    /// Mark the event failed, with a machine-readable reason in the details.
    pub fn failed(mut self, reason: &str) -> Self {
        self.outcome = "failure".into();
        self.details["reason"] = serde_json::Value::String(reason.into());
        self
    }

    /// Mark the event denied (throttled or forbidden), with a reason.
    pub fn denied(self, reason: &str) -> Self {
        let mut ev = self.failed(reason);
        ev.outcome = "denied".into();
        ev
    }

    /// Replace the details.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// The API key involved.
    pub fn key(mut self, key_id: Option<String>) -> Self {
        self.key_id = key_id;
        self
    }
}

/// An audit event in the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Sequence number, 1-based, gap-free.
    pub seq: i64,
    /// Time in Unix milliseconds.
    pub ts_ms: i64,
    /// Who acted.
    pub actor: String,
    /// How they authenticated.
    pub auth_method: String,
    /// API key id, if any.
    pub key_id: Option<String>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Request id.
    pub request_id: Option<String>,
    /// Action name.
    pub action: String,
    /// Resource acted on.
    pub resource: String,
    /// `success`, `failure` or `denied`.
    pub outcome: String,
    /// Structured details.
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// Hash of the previous event (hex); 64 zeros for the first.
    pub prev_hash: String,
    /// SM3(prev_hash || canonical event), hex.
    pub hash: String,
}

/// The result of walking the audit chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChainReport {
    /// True when every link, hash and checkpoint checks out.
    pub valid: bool,
    /// Events examined.
    pub events: i64,
    /// Last sequence number seen.
    pub last_seq: i64,
    /// Hash of the last event (hex).
    pub last_hash: String,
    /// Signed checkpoints that verified.
    pub checkpoints_verified: i64,
    /// The first sequence number at which the chain is broken.
    pub first_bad_seq: Option<i64>,
    /// Why the chain is broken there.
    pub reason: Option<String>,
}

/// A conversation without its messages.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Conversation {
    /// Opaque id.
    pub id: String,
    /// Shown in the history list.
    pub title: String,
    /// The model last used in it.
    pub model: String,
    /// Messages in it.
    pub message_count: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

/// One stored message.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
    /// What the UI shows beside it (citations, finish reason, usage); free-form JSON.
    #[serde(default)]
    pub meta: serde_json::Value,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: i64,
}
