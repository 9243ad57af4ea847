//! `/api/v1/usage`: metered use of `/v1`, from the daily rollup. Everyone may read their own;
//! admins and auditors everyone's.

use axum::extract::{Query, State};
use axum::Json;
use maasbox_store::usage::{self, GroupBy, UsageGroup};
use maasbox_types::{now_millis, Limits, Permission};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::quota::Subject;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(usage_report)).routes(routes!(my_limits))
}

/// `GET /api/v1/usage` parameters.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// `user`, `model`, `key`, `day` or `app` (default `day`).
    #[serde(default)]
    pub group_by: Option<String>,
    /// First UTC day, `YYYY-MM-DD` (default: 30 days ago).
    #[serde(default)]
    pub from: Option<String>,
    /// Last UTC day, inclusive (default: today).
    #[serde(default)]
    pub to: Option<String>,
    /// Only this user (admins and auditors; others always see only their own).
    #[serde(default)]
    pub user_id: Option<i64>,
}

/// A usage report.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// How the rows are grouped.
    pub group_by: String,
    /// First day.
    pub from: String,
    /// Last day.
    pub to: String,
    /// Whose use: a username, or `all`.
    pub scope: String,
    /// One row per group.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<UsageGroup>,
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", security(("bearer" = [])), params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = crate::error::ErrorBody)))]
async fn usage_report(
    State(st): State<AppState>,
    p: Principal,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<UsageReport>> {
    let group = q.group_by.unwrap_or_else(|| "day".into());
    let by: GroupBy = serde_json::from_value(serde_json::Value::String(group.clone()))
        .map_err(|_| ApiError::field("group_by", "group_by must be user, model, key, day or app"))?;
    let everyone = p.role.allows(Permission::UsageRead);
    let user = match (everyone, q.user_id) {
        (true, u) => u,
        (false, Some(u)) if !p.is_user(u) => {
            // Audited as denied; the role lacks UsageRead, so this is always an error.
            return Err(p
                .authorize(&st, Permission::UsageRead, "usage.read")
                .await
                .err()
                .unwrap_or_else(ApiError::forbidden));
        }
        // Owner-token callers are admins, so `everyone` is true for them.
        (false, _) => Some(p.user_id.unwrap_or(-1)),
    };
    let now = now_millis();
    let to = q.to.unwrap_or_else(|| usage::day_of(now));
    let from = q.from.unwrap_or_else(|| usage::day_of(now - 29 * 86_400_000));
    let (f, t) = (from.clone(), to.clone());
    let data = st.store().read(move |c| usage::report(c, by, &f, &t, user)).await.map_err(|e| match e {
        maasbox_store::StoreError::Invalid(m) => ApiError::field("from", m),
        e => e.into(),
    })?;
    let scope = match user {
        None => "all".to_owned(),
        Some(u) if p.is_user(u) => p.username.clone(),
        Some(u) => format!("user:{u}"),
    };
    Ok(Json(UsageReport { group_by: group, from, to, scope, data }))
}

/// The caller's quotas and what is left of them.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct MyLimits {
    /// The limits in force for the account (own or configured default; 0 or absent = none).
    pub user: Limits,
    /// The key's own limits, when a key was used.
    pub key: Option<Limits>,
    /// Tokens the account used today (UTC).
    pub tokens_today: u64,
    /// Tokens the account used this month (UTC).
    pub tokens_this_month: u64,
    /// Tokens the key used today and this month, when a key was used.
    pub key_tokens_today: Option<u64>,
    /// See `key_tokens_today`.
    pub key_tokens_this_month: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/usage/limits", tag = "usage", security(("bearer" = [])),
    responses((status = 200, body = MyLimits)))]
async fn my_limits(State(st): State<AppState>, p: Principal) -> ApiResult<Json<MyLimits>> {
    let now = now_millis();
    let user = p.user.as_ref().map_or(Limits::default(), |u| u.limits.or(st.settings().quotas.limits()));
    let spent = p.user_id.map(|u| st.0.meter.spent(&Subject::User(u), now)).unwrap_or_default();
    let key_spent = p.key_id.as_ref().map(|k| st.0.meter.spent(&Subject::Key(k.clone()), now));
    Ok(Json(MyLimits {
        user,
        key: p.key_id.as_ref().map(|_| p.key_limits),
        tokens_today: spent.day,
        tokens_this_month: spent.month,
        key_tokens_today: key_spent.as_ref().map(|s| s.day),
        key_tokens_this_month: key_spent.as_ref().map(|s| s.month),
    }))
}
