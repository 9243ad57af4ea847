//! Usage metering: one row per `/v1` request and a daily rollup kept in the same transaction,
//! so the rollup never disagrees with the rows. Quota counters are rebuilt from these tables at
//! startup, which is why restarting the server refills nothing.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// One metered request.
#[derive(Clone, Debug)]
pub struct UsageRow {
    /// When the request started (ms since the epoch).
    pub ts_ms: i64,
    /// Caller (`None` for the owner token).
    pub user_id: Option<i64>,
    /// Caller's name.
    pub username: String,
    /// Key used, if any.
    pub key_id: Option<String>,
    /// Model that served it (`name:tag`).
    pub model: String,
    /// App it was made through, if any.
    pub app: Option<String>,
    /// `chat`, `completion` or `embeddings`.
    pub endpoint: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Generated tokens.
    pub completion_tokens: i64,
    /// Wall time.
    pub latency_ms: i64,
    /// HTTP status answered (499 = the client went away).
    pub status: u16,
}

/// The UTC day of `ts_ms` as `YYYY-MM-DD`.
pub fn day_of(ts_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ts_ms).unwrap_or_default().format("%Y-%m-%d").to_string()
}

/// The first day of the UTC month of `ts_ms` as `YYYY-MM-DD`.
pub fn month_of(ts_ms: i64) -> String {
    let d = DateTime::<Utc>::from_timestamp_millis(ts_ms).unwrap_or_default();
    format!("{:04}-{:02}-01", d.year(), d.month())
}

/// Seconds from `ts_ms` to the next UTC midnight.
pub fn secs_to_next_day(ts_ms: i64) -> u64 {
    let d = DateTime::<Utc>::from_timestamp_millis(ts_ms).unwrap_or_default().date_naive();
    let next = d.succ_opt().unwrap_or(d).and_hms_opt(0, 0, 0).unwrap_or_default().and_utc().timestamp_millis();
    ((next - ts_ms).max(1000) / 1000) as u64
}

/// Seconds from `ts_ms` to the first second of the next UTC month.
pub fn secs_to_next_month(ts_ms: i64) -> u64 {
    let d = DateTime::<Utc>::from_timestamp_millis(ts_ms).unwrap_or_default();
    let (y, m) = if d.month() == 12 { (d.year() + 1, 1) } else { (d.year(), d.month() + 1) };
    let next = NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|n| n.and_hms_opt(0, 0, 0))
        .map(|n| n.and_utc().timestamp_millis())
        .unwrap_or(ts_ms + 1000);
    ((next - ts_ms).max(1000) / 1000) as u64
}

/// Record one request and add it to the day's rollup.
pub fn record(conn: &Connection, u: &UsageRow) -> Result<()> {
    let day = day_of(u.ts_ms);
    conn.prepare_cached(
        "INSERT INTO usage (ts_ms, day, user_id, username, key_id, model, app, endpoint, prompt_tokens,
                            completion_tokens, latency_ms, status)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        u.ts_ms,
        day,
        u.user_id,
        u.username,
        u.key_id,
        u.model,
        u.app,
        u.endpoint,
        u.prompt_tokens,
        u.completion_tokens,
        u.latency_ms,
        u.status
    ])?;
    let error = i64::from(u.status >= 400);
    conn.prepare_cached(
        "INSERT INTO usage_daily (day, user_id, username, key_id, model, app, requests, errors, prompt_tokens,
                                  completion_tokens, latency_ms_sum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, ?10)
         ON CONFLICT (day, user_id, key_id, model, app) DO UPDATE SET
            requests = requests + 1, errors = errors + excluded.errors,
            prompt_tokens = prompt_tokens + excluded.prompt_tokens,
            completion_tokens = completion_tokens + excluded.completion_tokens,
            latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum, username = excluded.username",
    )?
    .execute(params![
        day,
        u.user_id.unwrap_or(0),
        u.username,
        u.key_id.as_deref().unwrap_or(""),
        u.model,
        u.app.as_deref().unwrap_or(""),
        error,
        u.prompt_tokens,
        u.completion_tokens,
        u.latency_ms
    ])?;
    Ok(())
}

/// Tokens used by one user or key, today and this month.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spent {
    /// Tokens since UTC midnight.
    pub day: u64,
    /// Tokens since the first of the UTC month.
    pub month: u64,
}

/// What the quota counters need at startup: tokens spent per user and per key (today and this
/// month) and the start times of requests in the last minute, per user and key.
#[derive(Debug, Default)]
pub struct Counters {
    /// `(user_id, spent)`; user 0 is the owner token.
    pub users: Vec<(i64, Spent)>,
    /// `(key_id, spent)`.
    pub keys: Vec<(String, Spent)>,
    /// `(user_id, key_id, ts_ms)` of requests started in the last minute.
    pub recent: Vec<(i64, Option<String>, i64)>,
}

/// Load [`Counters`] as of `now_ms`.
pub fn counters(conn: &Connection, now_ms: i64) -> Result<Counters> {
    let (today, month) = (day_of(now_ms), month_of(now_ms));
    let mut out = Counters::default();
    let sum = |col: &str| -> Result<Vec<(String, Spent)>> {
        let sql = format!(
            "SELECT CAST({col} AS TEXT),
                    SUM(CASE WHEN day = ?1 THEN prompt_tokens + completion_tokens ELSE 0 END),
                    SUM(prompt_tokens + completion_tokens)
             FROM usage_daily WHERE day >= ?2 AND {col} != '' GROUP BY {col}"
        );
        let mut st = conn.prepare(&sql)?;
        let rows = st
            .query_map(params![today, month], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Spent { day: r.get::<_, i64>(1)? as u64, month: r.get::<_, i64>(2)? as u64 },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    };
    out.users = sum("user_id")?.into_iter().filter_map(|(u, s)| u.parse().ok().map(|u| (u, s))).collect();
    out.keys = sum("key_id")?;
    let mut st = conn.prepare(
        "SELECT COALESCE(user_id, 0), key_id, ts_ms FROM usage WHERE ts_ms >= ?1 AND status != 429 ORDER BY ts_ms",
    )?;
    out.recent = st
        .query_map([now_ms - 60_000], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(out)
}

/// How to group a usage report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Per user.
    User,
    /// Per model.
    Model,
    /// Per API key.
    Key,
    /// Per UTC day.
    Day,
    /// Per app.
    App,
}

impl GroupBy {
    fn column(self) -> &'static str {
        match self {
            GroupBy::User => "username",
            GroupBy::Model => "model",
            GroupBy::Key => "key_id",
            GroupBy::Day => "day",
            GroupBy::App => "app",
        }
    }
}

/// One line of a usage report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageGroup {
    /// The group's value (username, model, key id, day or app; empty = none, e.g. no key).
    pub group: String,
    /// Requests.
    pub requests: i64,
    /// Requests answered with an error (including 429s).
    pub errors: i64,
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Generated tokens.
    pub completion_tokens: i64,
    /// Prompt plus generated.
    pub total_tokens: i64,
    /// Mean latency.
    pub avg_latency_ms: f64,
}

/// A usage report from the daily rollup, for days `from..=to` (`YYYY-MM-DD`), optionally for
/// one user only.
pub fn report(conn: &Connection, by: GroupBy, from: &str, to: &str, user_id: Option<i64>) -> Result<Vec<UsageGroup>> {
    for d in [from, to] {
        if NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err() {
            return Err(StoreError::Invalid(format!("'{d}' is not a date (YYYY-MM-DD)")));
        }
    }
    let col = by.column();
    let sql = format!(
        "SELECT {col}, SUM(requests), SUM(errors), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_ms_sum)
         FROM usage_daily WHERE day >= ?1 AND day <= ?2 AND (?3 IS NULL OR user_id = ?3)
         GROUP BY {col} ORDER BY {col}"
    );
    let mut st = conn.prepare(&sql)?;
    let rows = st
        .query_map(params![from, to, user_id], |r| {
            let requests: i64 = r.get(1)?;
            let (p, c): (i64, i64) = (r.get(3)?, r.get(4)?);
            let lat: i64 = r.get(5)?;
            Ok(UsageGroup {
                group: r.get(0)?,
                requests,
                errors: r.get(2)?,
                prompt_tokens: p,
                completion_tokens: c,
                total_tokens: p + c,
                avg_latency_ms: if requests > 0 { lat as f64 / requests as f64 } else { 0.0 },
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Delete per-request usage rows before `before_ms` (daily totals stay); returns how many.
pub fn prune(conn: &Connection, before_ms: i64) -> Result<usize> {
    Ok(conn.execute("DELETE FROM usage WHERE ts_ms < ?1", [before_ms])?)
}
