//! API keys. Only a MAC of each secret is stored; the API layer computes and compares MACs.

use maasbox_types::{now_secs, ApiKey, Limits, User};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{Result, StoreError};

const COLUMNS: &str =
    "k.id, k.user_id, u.username, k.name, k.allowed_models, k.expires_at, k.created_at, k.last_used_at, k.limits, k.app";

fn row_to_key(r: &Row<'_>) -> rusqlite::Result<ApiKey> {
    let models: Option<String> = r.get(4)?;
    Ok(ApiKey {
        id: r.get(0)?,
        user_id: r.get(1)?,
        username: r.get(2)?,
        name: r.get(3)?,
        allowed_models: models.and_then(|m| serde_json::from_str(&m).ok()),
        expires_at: r.get(5)?,
        created_at: r.get(6)?,
        last_used_at: r.get(7)?,
        limits: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
        app: r.get(9)?,
    })
}

/// Fields of a new key.
pub struct NewKey<'a> {
    /// Key id.
    pub id: &'a str,
    /// Owner.
    pub user_id: i64,
    /// Label.
    pub name: &'a str,
    /// MAC of the secret.
    pub secret_mac: &'a [u8],
    /// Allowed models (`None` = all).
    pub allowed_models: Option<&'a [String]>,
    /// Expiry.
    pub expires_at: Option<i64>,
    /// Quotas of the key.
    pub limits: Limits,
    /// The app the key is scoped to.
    pub app: Option<&'a str>,
}

/// Insert a key.
pub fn create(conn: &Connection, k: &NewKey<'_>) -> Result<ApiKey> {
    let models = k.allowed_models.map(|m| serde_json::to_string(m).unwrap_or_default());
    conn.execute(
        "INSERT INTO api_keys (id, user_id, name, secret_mac, allowed_models, expires_at, created_at, limits, app)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            k.id,
            k.user_id,
            k.name,
            k.secret_mac,
            models,
            k.expires_at,
            now_secs(),
            serde_json::to_string(&k.limits).unwrap_or_default(),
            k.app
        ],
    )?;
    get(conn, k.id)
}

/// One live (not revoked) key.
pub fn get(conn: &Connection, id: &str) -> Result<ApiKey> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = ?1 AND k.revoked_at IS NULL"
    ))?
    .query_row([id], row_to_key)
    .optional()?
    .ok_or(StoreError::NotFound("API key"))
}

/// Live keys, of one user or of everyone.
pub fn list(conn: &Connection, user_id: Option<i64>) -> Result<Vec<ApiKey>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.revoked_at IS NULL AND (?1 IS NULL OR k.user_id = ?1) ORDER BY k.created_at, k.id"
    ))?;
    let rows = st.query_map([user_id], row_to_key)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// A change to a key; `None` fields stay as they are.
#[derive(Default)]
pub struct KeyPatch {
    /// New label.
    pub name: Option<String>,
    /// New quotas (replacing the old ones).
    pub limits: Option<Limits>,
    /// New model allow-list (`Some(None)` = all models).
    pub allowed_models: Option<Option<Vec<String>>>,
}

/// Apply `patch`; returns the key before and after.
pub fn update(conn: &Connection, id: &str, patch: &KeyPatch) -> Result<(ApiKey, ApiKey)> {
    let before = get(conn, id)?;
    let models =
        patch.allowed_models.as_ref().map(|m| m.as_ref().map(|m| serde_json::to_string(m).unwrap_or_default()));
    conn.execute(
        "UPDATE api_keys SET name = COALESCE(?2, name), limits = COALESCE(?3, limits),
                             allowed_models = CASE WHEN ?4 THEN ?5 ELSE allowed_models END
         WHERE id = ?1",
        params![
            id,
            patch.name,
            patch.limits.map(|l| serde_json::to_string(&l).unwrap_or_default()),
            models.is_some(),
            models.flatten()
        ],
    )?;
    Ok((before, get(conn, id)?))
}

/// Revoke a key.
pub fn revoke(conn: &Connection, id: &str) -> Result<ApiKey> {
    let key = get(conn, id)?;
    conn.execute("UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1", params![id, now_secs()])?;
    Ok(key)
}

/// What authentication needs to know about a key: its MAC and its owner.
#[derive(Clone, Debug)]
pub struct KeyAuth {
    /// The key.
    pub key: ApiKey,
    /// MAC of the secret.
    pub secret_mac: Vec<u8>,
    /// The owner as they are now (role and status decide what the key may do).
    pub user: User,
}

/// Look a live key up for authentication.
pub fn auth_lookup(conn: &Connection, id: &str) -> Result<Option<KeyAuth>> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, k.secret_mac FROM api_keys k JOIN users u ON u.id = k.user_id
             WHERE k.id = ?1 AND k.revoked_at IS NULL"
        ))?
        .query_row([id], |r| Ok((row_to_key(r)?, r.get::<_, Vec<u8>>(10)?)))
        .optional()?;
    match found {
        Some((key, secret_mac)) => {
            let user = crate::users::get(conn, key.user_id)?;
            Ok(Some(KeyAuth { key, secret_mac, user }))
        }
        None => Ok(None),
    }
}

/// Record last use of several keys at once (batched by the API, not audited).
pub fn touch(conn: &Connection, uses: &[(String, i64)]) -> Result<()> {
    let mut st =
        conn.prepare_cached("UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?2) WHERE id = ?1")?;
    for (id, at) in uses {
        st.execute(params![id, at])?;
    }
    Ok(())
}
