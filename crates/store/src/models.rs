//! The model registry: `name:tag` → content-addressed blob, with the GGUF metadata.

use maasbox_types::{now_secs, ModelRecord, Visibility};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{conflict_on_unique, Result, StoreError};

fn row(r: &Row<'_>) -> rusqlite::Result<ModelRecord> {
    let name: String = r.get(0)?;
    let tag: String = r.get(1)?;
    let info: String = r.get(4)?;
    Ok(ModelRecord {
        id: format!("{name}:{tag}"),
        name,
        tag,
        sha256: r.get(2)?,
        size: r.get(3)?,
        info: serde_json::from_str(&info).unwrap_or_default(),
        source: r.get(5)?,
        created_by: r.get(6)?,
        created_at: r.get(7)?,
        visibility: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
        base: r.get(9)?,
    })
}

const COLUMNS: &str = "name, tag, blob, size, info, source, created_by, created_at, visibility, base";

/// Split `name[:tag]` (tag defaults to `latest`) and validate both parts.
pub fn parse_ref(s: &str) -> Result<(String, String)> {
    let (name, tag) = match s.rsplit_once(':') {
        Some((n, t)) => (n, t),
        None => (s, "latest"),
    };
    let ok = |p: &str, max: usize| {
        !p.is_empty()
            && p.len() <= max
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && !p.starts_with(['.', '-'])
    };
    if !ok(name, 128) || !ok(tag, 64) {
        return Err(StoreError::Invalid(format!(
            "invalid model name '{s}': use name[:tag] with letters, digits, '.', '_', '-'"
        )));
    }
    Ok((name.to_ascii_lowercase(), tag.to_ascii_lowercase()))
}

/// Record a model. Fails with a conflict when `name:tag` exists.
pub fn insert(conn: &Connection, m: &ModelRecord) -> Result<ModelRecord> {
    conn.execute(
        &format!("INSERT INTO models ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
        params![
            m.name,
            m.tag,
            m.sha256,
            m.size,
            m.info.to_string(),
            m.source,
            m.created_by,
            now_secs(),
            serde_json::to_string(&m.visibility).unwrap_or_default(),
            m.base
        ],
    )
    .map_err(|e| conflict_on_unique(e, format!("a model named '{}:{}' already exists", m.name, m.tag)))?;
    get(conn, &m.name, &m.tag)
}

/// All models, by name and tag.
pub fn list(conn: &Connection) -> Result<Vec<ModelRecord>> {
    let mut st = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM models ORDER BY name, tag"))?;
    let rows = st.query_map([], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One model.
pub fn get(conn: &Connection, name: &str, tag: &str) -> Result<ModelRecord> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM models WHERE name = ?1 AND tag = ?2"))?
        .query_row([name, tag], row)
        .optional()?
        .ok_or(StoreError::NotFound("model"))
}

/// The LoRA adapters attached to `base` (`name:tag`).
pub fn adapters_of(conn: &Connection, base: &str) -> Result<Vec<ModelRecord>> {
    let mut st = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM models WHERE base = ?1 ORDER BY name, tag"))?;
    let rows = st.query_map([base], row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Remove `name:tag`; returns the record and whether its blob is now unreferenced. A base
/// model with adapters attached is refused.
pub fn delete(conn: &Connection, name: &str, tag: &str) -> Result<(ModelRecord, bool)> {
    let m = get(conn, name, tag)?;
    let adapters = adapters_of(conn, &m.id)?;
    if !adapters.is_empty() {
        let names: Vec<&str> = adapters.iter().map(|a| a.id.as_str()).collect();
        return Err(StoreError::Conflict(format!(
            "'{}' has LoRA adapters attached ({}); remove them first",
            m.id,
            names.join(", ")
        )));
    }
    conn.execute("DELETE FROM models WHERE name = ?1 AND tag = ?2", [name, tag])?;
    let refs: i64 = conn.query_row("SELECT COUNT(*) FROM models WHERE blob = ?1", [&m.sha256], |r| r.get(0))?;
    Ok((m, refs == 0))
}

/// Set who may see `name:tag`; returns the record before and after.
pub fn set_visibility(conn: &Connection, name: &str, tag: &str, v: &Visibility) -> Result<(ModelRecord, ModelRecord)> {
    let before = get(conn, name, tag)?;
    conn.execute(
        "UPDATE models SET visibility = ?3 WHERE name = ?1 AND tag = ?2",
        params![name, tag, serde_json::to_string(v).unwrap_or_default()],
    )?;
    Ok((before, get(conn, name, tag)?))
}
