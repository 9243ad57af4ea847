//! Apps (assistants): a model with a system prompt, default parameters and knowledge bases.

use maasbox_types::{now_secs, App};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{conflict_on_unique, Result, StoreError};

const COLUMNS: &str =
    "name, description, model, system_prompt, params, knowledge_bases, created_by, created_at, updated_at";

fn row(r: &Row<'_>) -> rusqlite::Result<App> {
    Ok(App {
        name: r.get(0)?,
        description: r.get(1)?,
        model: r.get(2)?,
        system_prompt: r.get(3)?,
        params: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
        knowledge_bases: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
        created_by: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

/// Validate an app name: 1–64 characters of ASCII letters, digits, `.`, `_`, `-`.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid("app name must be 1-64 characters of letters, digits, '.', '_', '-'".into()))
    }
}

/// Insert an app (its `created_*` fields are set here).
pub fn create(conn: &Connection, a: &App) -> Result<App> {
    validate_name(&a.name)?;
    let now = now_secs();
    conn.execute(
        &format!("INSERT INTO apps ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)"),
        params![
            a.name,
            a.description,
            a.model,
            a.system_prompt,
            serde_json::to_string(&a.params).unwrap_or_default(),
            serde_json::to_string(&a.knowledge_bases).unwrap_or_default(),
            a.created_by,
            now
        ],
    )
    .map_err(|e| conflict_on_unique(e, format!("an app named '{}' already exists", a.name)))?;
    get(conn, &a.name)
}

/// Replace an app's editable fields; returns it before and after.
pub fn update(conn: &Connection, a: &App) -> Result<(App, App)> {
    let before = get(conn, &a.name)?;
    conn.execute(
        "UPDATE apps SET description = ?2, model = ?3, system_prompt = ?4, params = ?5, knowledge_bases = ?6,
                         updated_at = ?7 WHERE name = ?1",
        params![
            a.name,
            a.description,
            a.model,
            a.system_prompt,
            serde_json::to_string(&a.params).unwrap_or_default(),
            serde_json::to_string(&a.knowledge_bases).unwrap_or_default(),
            now_secs()
        ],
    )?;
    Ok((before, get(conn, &a.name)?))
}

/// All apps by name.
pub fn list(conn: &Connection) -> Result<Vec<App>> {
    let mut st = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM apps ORDER BY name"))?;
    let rows = st.query_map([], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One app.
pub fn get(conn: &Connection, name: &str) -> Result<App> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM apps WHERE name = ?1"))?
        .query_row([name], row)
        .optional()?
        .ok_or(StoreError::NotFound("app"))
}

/// Delete an app; keys scoped to it are revoked in the same transaction.
pub fn delete(conn: &Connection, name: &str) -> Result<(App, usize)> {
    let a = get(conn, name)?;
    conn.execute("DELETE FROM apps WHERE name = ?1", [name])?;
    let revoked = conn.execute(
        "UPDATE api_keys SET revoked_at = ?2 WHERE app = ?1 AND revoked_at IS NULL",
        params![name, now_secs()],
    )?;
    Ok((a, revoked))
}
