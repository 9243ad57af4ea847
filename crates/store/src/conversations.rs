//! Chat history: each user's conversations and their messages. A conversation belongs to one
//! user; every function takes the user id, so one user can never read another's.

use maasbox_types::{now_secs, Conversation, Message};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{Result, StoreError};

const COLUMNS: &str = "c.id, c.title, c.model,
    (SELECT COUNT(*) FROM conversation_messages m WHERE m.conversation_id = c.id), c.created_at, c.updated_at";

fn row(r: &Row<'_>) -> rusqlite::Result<Conversation> {
    Ok(Conversation {
        id: r.get(0)?,
        title: r.get(1)?,
        model: r.get(2)?,
        message_count: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    })
}

/// Start a conversation for `user_id`.
pub fn create(conn: &Connection, user_id: i64, id: &str, title: &str, model: &str) -> Result<Conversation> {
    let now = now_secs();
    conn.execute(
        "INSERT INTO conversations (id, user_id, title, model, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![id, user_id, title, model, now],
    )?;
    get(conn, user_id, id)
}

/// A conversation of `user_id` (another user's is "not found").
pub fn get(conn: &Connection, user_id: i64, id: &str) -> Result<Conversation> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM conversations c WHERE c.id = ?1 AND c.user_id = ?2"),
        params![id, user_id],
        row,
    )
    .optional()?
    .ok_or(StoreError::NotFound("conversation"))
}

/// The user's conversations, most recently changed first; `before` (unix seconds, exclusive)
/// pages back.
pub fn list(conn: &Connection, user_id: i64, before: Option<i64>, limit: i64) -> Result<Vec<Conversation>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM conversations c WHERE c.user_id = ?1 AND c.updated_at < ?2
         ORDER BY c.updated_at DESC, c.id DESC LIMIT ?3"
    ))?;
    let rows = st.query_map(params![user_id, before.unwrap_or(i64::MAX), limit], row)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The messages of a conversation of `user_id`, oldest first.
pub fn messages(conn: &Connection, user_id: i64, id: &str) -> Result<Vec<Message>> {
    get(conn, user_id, id)?;
    let mut st = conn.prepare_cached(
        "SELECT role, content, meta, created_at FROM conversation_messages WHERE conversation_id = ?1 ORDER BY seq",
    )?;
    let rows = st.query_map([id], |r| {
        Ok(Message {
            role: r.get(0)?,
            content: r.get(1)?,
            meta: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
            created_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Change the title and/or model; returns the conversation before and after.
pub fn update(
    conn: &Connection,
    user_id: i64,
    id: &str,
    title: Option<&str>,
    model: Option<&str>,
) -> Result<(Conversation, Conversation)> {
    let before = get(conn, user_id, id)?;
    conn.execute(
        "UPDATE conversations SET title = COALESCE(?3, title), model = COALESCE(?4, model), updated_at = ?5
         WHERE id = ?1 AND user_id = ?2",
        params![id, user_id, title, model, now_secs()],
    )?;
    Ok((before, get(conn, user_id, id)?))
}

/// Append messages; returns the conversation after.
pub fn append(
    conn: &Connection,
    user_id: i64,
    id: &str,
    msgs: &[Message],
    model: Option<&str>,
) -> Result<Conversation> {
    let before = get(conn, user_id, id)?;
    let now = now_secs();
    let mut st = conn.prepare_cached(
        "INSERT INTO conversation_messages (conversation_id, seq, role, content, meta, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (i, m) in msgs.iter().enumerate() {
        st.execute(params![id, before.message_count + i as i64, m.role, m.content, m.meta.to_string(), now])?;
    }
    conn.execute(
        "UPDATE conversations SET updated_at = ?2, model = COALESCE(?3, model) WHERE id = ?1",
        params![id, now, model],
    )?;
    get(conn, user_id, id)
}

/// Delete a conversation of `user_id` with its messages; returns it.
pub fn delete(conn: &Connection, user_id: i64, id: &str) -> Result<Conversation> {
    let before = get(conn, user_id, id)?;
    conn.execute("DELETE FROM conversations WHERE id = ?1 AND user_id = ?2", params![id, user_id])?;
    Ok(before)
}

/// Delete every conversation (of all users) not changed since `before` (unix seconds); returns
/// how many.
pub fn prune(conn: &Connection, before: i64) -> Result<usize> {
    Ok(conn.execute("DELETE FROM conversations WHERE updated_at < ?1", [before])?)
}
