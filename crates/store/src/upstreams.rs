//! Upstream providers. The API key is stored only sealed (the API layer seals and opens it).

use maasbox_types::{now_secs, UpstreamRecord};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{conflict_on_unique, Result, StoreError};

const COLUMNS: &str =
    "name, base_url, models, priority, enabled, api_key_sealed IS NOT NULL, created_by, created_at, updated_at";

fn row(r: &Row<'_>) -> rusqlite::Result<UpstreamRecord> {
    Ok(UpstreamRecord {
        name: r.get(0)?,
        base_url: r.get(1)?,
        models: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
        priority: r.get(3)?,
        enabled: r.get(4)?,
        has_api_key: r.get(5)?,
        created_by: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

/// An upstream and its sealed key.
pub type WithKey = (UpstreamRecord, Option<Vec<u8>>);

/// Insert an upstream.
pub fn create(conn: &Connection, u: &UpstreamRecord, sealed_key: Option<&[u8]>) -> Result<UpstreamRecord> {
    let now = now_secs();
    conn.execute(
        "INSERT INTO upstreams (name, base_url, api_key_sealed, models, priority, enabled, created_by, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        params![
            u.name,
            u.base_url,
            sealed_key,
            serde_json::to_string(&u.models).unwrap_or_default(),
            u.priority,
            u.enabled,
            u.created_by,
            now
        ],
    )
    .map_err(|e| conflict_on_unique(e, format!("an upstream named '{}' already exists", u.name)))?;
    get(conn, &u.name)
}

/// Replace the editable fields; `sealed_key`: `None` keeps the key, `Some(None)` removes it.
pub fn update(
    conn: &Connection,
    u: &UpstreamRecord,
    sealed_key: Option<Option<&[u8]>>,
) -> Result<(UpstreamRecord, UpstreamRecord)> {
    let before = get(conn, &u.name)?;
    conn.execute(
        "UPDATE upstreams SET base_url = ?2, models = ?3, priority = ?4, enabled = ?5, updated_at = ?6,
                api_key_sealed = CASE WHEN ?7 THEN ?8 ELSE api_key_sealed END WHERE name = ?1",
        params![
            u.name,
            u.base_url,
            serde_json::to_string(&u.models).unwrap_or_default(),
            u.priority,
            u.enabled,
            now_secs(),
            sealed_key.is_some(),
            sealed_key.flatten()
        ],
    )?;
    Ok((before, get(conn, &u.name)?))
}

/// One upstream.
pub fn get(conn: &Connection, name: &str) -> Result<UpstreamRecord> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM upstreams WHERE name = ?1"))?
        .query_row([name], row)
        .optional()?
        .ok_or(StoreError::NotFound("upstream"))
}

/// Every upstream with its sealed key, by priority then name.
pub fn list_with_keys(conn: &Connection) -> Result<Vec<WithKey>> {
    let mut st =
        conn.prepare_cached(&format!("SELECT {COLUMNS}, api_key_sealed FROM upstreams ORDER BY priority, name"))?;
    let rows = st.query_map([], |r| Ok((row(r)?, r.get(9)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Remove an upstream.
pub fn delete(conn: &Connection, name: &str) -> Result<UpstreamRecord> {
    let u = get(conn, name)?;
    conn.execute("DELETE FROM upstreams WHERE name = ?1", [name])?;
    Ok(u)
}
