//! Settings changed at run time (web UI, desktop tray): JSON values by key. They take precedence
//! over the configuration file; the API layer decides which keys exist and validates them.

use maasbox_types::now_secs;
use rusqlite::{params, Connection};

use crate::Result;

/// Every stored setting as (key, JSON value).
pub fn all(conn: &Connection) -> Result<Vec<(String, serde_json::Value)>> {
    let mut st = conn.prepare_cached("SELECT key, value FROM settings ORDER BY key")?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows.into_iter().filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|v| (k, v))).collect())
}

/// Set `key` to `value`, recording who changed it.
pub fn put(conn: &Connection, key: &str, value: &serde_json::Value, by: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO settings (key, value, updated_by, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_by = excluded.updated_by,
                                        updated_at = excluded.updated_at",
        params![key, value.to_string(), by, now_secs()],
    )?;
    Ok(())
}
