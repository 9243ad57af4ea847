//! Login sessions. A session row holds only a MAC of its current refresh token; refreshing
//! replaces the MAC (rotation), so a refresh token works once.

use maasbox_types::now_secs;
use rusqlite::{params, Connection, OptionalExtension};

use crate::{Result, StoreError};

/// A session as stored.
#[derive(Clone, Debug)]
pub struct Session {
    /// Session id (also the `sid` claim of its access tokens).
    pub id: String,
    /// Owner.
    pub user_id: i64,
    /// MAC of the current refresh token.
    pub refresh_mac: Vec<u8>,
    /// Refresh deadline (Unix seconds).
    pub expires_at: i64,
    /// Set once revoked.
    pub revoked_at: Option<i64>,
}

/// Insert a new session.
pub fn create(
    conn: &Connection,
    id: &str,
    user_id: i64,
    refresh_mac: &[u8],
    expires_at: i64,
    client_ip: Option<&str>,
    user_agent: Option<&str>,
) -> Result<()> {
    let now = now_secs();
    conn.execute(
        "INSERT INTO sessions (id, user_id, refresh_mac, created_at, expires_at, last_refreshed_at, client_ip, user_agent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?4, ?6, ?7)",
        params![id, user_id, refresh_mac, now, expires_at, client_ip, user_agent],
    )?;
    Ok(())
}

/// One session by id.
pub fn get(conn: &Connection, id: &str) -> Result<Option<Session>> {
    Ok(conn
        .prepare_cached("SELECT id, user_id, refresh_mac, expires_at, revoked_at FROM sessions WHERE id = ?1")?
        .query_row([id], |r| {
            Ok(Session {
                id: r.get(0)?,
                user_id: r.get(1)?,
                refresh_mac: r.get(2)?,
                expires_at: r.get(3)?,
                revoked_at: r.get(4)?,
            })
        })
        .optional()?)
}

/// Replace the refresh MAC if it is still `old_mac` (compare-and-swap inside the writer).
pub fn rotate(conn: &Connection, id: &str, old_mac: &[u8], new_mac: &[u8], expires_at: i64) -> Result<()> {
    let n = conn.execute(
        "UPDATE sessions SET refresh_mac = ?3, expires_at = ?4, last_refreshed_at = ?5
         WHERE id = ?1 AND refresh_mac = ?2 AND revoked_at IS NULL",
        params![id, old_mac, new_mac, expires_at, now_secs()],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound("session"));
    }
    Ok(())
}

/// Revoke one session; true if it was live.
pub fn revoke(conn: &Connection, id: &str) -> Result<bool> {
    let n = conn
        .execute("UPDATE sessions SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, now_secs()])?;
    Ok(n > 0)
}

/// Revoke every session of a user; returns how many were live.
pub fn revoke_all_for_user(conn: &Connection, user_id: i64) -> Result<usize> {
    Ok(conn.execute(
        "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
        params![user_id, now_secs()],
    )?)
}

/// The owner of a live session (not revoked, not expired, owner active), if any.
pub fn live_user(conn: &Connection, id: &str) -> Result<Option<maasbox_types::User>> {
    let uid: Option<i64> = conn
        .prepare_cached(
            "SELECT s.user_id FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = ?1 AND s.revoked_at IS NULL AND s.expires_at > ?2 AND u.status = 'active'",
        )?
        .query_row(params![id, now_secs()], |r| r.get(0))
        .optional()?;
    match uid {
        Some(uid) => Ok(Some(crate::users::get(conn, uid)?)),
        None => Ok(None),
    }
}
