//! Users: the SQL behind accounts. Callers run these inside [`crate::Store::read`] or
//! [`crate::Store::write`]; the last-admin rule is enforced here, inside the write transaction,
//! so two concurrent demotions cannot both succeed.

use maasbox_types::{now_secs, Role, User, UserStatus};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::{conflict_on_unique, Result, StoreError};

const COLUMNS: &str =
    "id, username, display_name, role, status, must_change_password, created_at, updated_at, last_login_at, limits";

fn row_to_user(r: &Row<'_>) -> rusqlite::Result<User> {
    let role: String = r.get(3)?;
    let status: String = r.get(4)?;
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        display_name: r.get(2)?,
        role: Role::parse(&role).unwrap_or(Role::User),
        status: if status == "active" { UserStatus::Active } else { UserStatus::Disabled },
        must_change_password: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        last_login_at: r.get(8)?,
        limits: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
    })
}

/// Validate a username: 1–64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn validate_username(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid("username must be 1-64 characters of letters, digits, '.', '_', '-' or '@'".into()))
    }
}

/// Fields of a new user.
pub struct NewUser<'a> {
    /// Login name.
    pub username: &'a str,
    /// Display name.
    pub display_name: &'a str,
    /// Role.
    pub role: Role,
    /// PHC password hash.
    pub password_hash: &'a str,
    /// Force a change at next login.
    pub must_change_password: bool,
}

/// Insert a user.
pub fn create(conn: &Connection, u: &NewUser<'_>) -> Result<User> {
    validate_username(u.username)?;
    let now = now_secs();
    conn.execute(
        "INSERT INTO users (username, display_name, role, status, password_hash, must_change_password, created_at, updated_at)
         VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6, ?6)",
        params![u.username, u.display_name, u.role.as_str(), u.password_hash, u.must_change_password, now],
    )
    .map_err(|e| conflict_on_unique(e, format!("a user named '{}' already exists", u.username)))?;
    get(conn, conn.last_insert_rowid())
}

/// All users, by id.
pub fn list(conn: &Connection) -> Result<Vec<User>> {
    let mut st = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users ORDER BY id"))?;
    let rows = st.query_map([], row_to_user)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// One user by id.
pub fn get(conn: &Connection, id: i64) -> Result<User> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([id], row_to_user)
        .optional()?
        .ok_or(StoreError::NotFound("user"))
}

/// One user by name (case-insensitive).
pub fn by_name(conn: &Connection, username: &str) -> Result<User> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE username = ?1"))?
        .query_row([username], row_to_user)
        .optional()?
        .ok_or(StoreError::NotFound("user"))
}

/// A user and their password hash, for login.
pub fn credentials(conn: &Connection, username: &str) -> Result<Option<(User, String)>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS}, password_hash FROM users WHERE username = ?1"))?
        .query_row([username], |r| Ok((row_to_user(r)?, r.get(10)?)))
        .optional()?)
}

/// The password hash of a user.
pub fn password_hash(conn: &Connection, id: i64) -> Result<String> {
    conn.query_row("SELECT password_hash FROM users WHERE id = ?1", [id], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::NotFound("user"))
}

/// Number of users (zero before setup).
pub fn count(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?)
}

fn active_admins_other_than(conn: &Connection, id: i64) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM users WHERE role = 'admin' AND status = 'active' AND id != ?1",
        [id],
        |r| r.get(0),
    )?)
}

/// A change to a user; `None` fields stay as they are.
#[derive(Default)]
pub struct UserPatch {
    /// New display name.
    pub display_name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// New status.
    pub status: Option<UserStatus>,
    /// New quotas (replacing the old ones).
    pub limits: Option<maasbox_types::Limits>,
}

/// Apply `patch`. Refuses to demote or disable the last active admin. Disabling a user revokes
/// their sessions in the same transaction.
pub fn update(conn: &Connection, id: i64, patch: &UserPatch) -> Result<(User, User)> {
    let before = get(conn, id)?;
    let loses_admin = before.role == Role::Admin
        && before.status == UserStatus::Active
        && (patch.role.is_some_and(|r| r != Role::Admin) || patch.status == Some(UserStatus::Disabled));
    if loses_admin && active_admins_other_than(conn, id)? == 0 {
        return Err(StoreError::LastAdmin);
    }
    let now = now_secs();
    conn.execute(
        "UPDATE users SET display_name = COALESCE(?2, display_name), role = COALESCE(?3, role),
                          status = COALESCE(?4, status), updated_at = ?5, limits = COALESCE(?6, limits)
         WHERE id = ?1",
        params![
            id,
            patch.display_name,
            patch.role.map(Role::as_str),
            patch.status.map(UserStatus::as_str),
            now,
            patch.limits.map(|l| serde_json::to_string(&l).unwrap_or_default())
        ],
    )?;
    if patch.status == Some(UserStatus::Disabled) {
        crate::sessions::revoke_all_for_user(conn, id)?;
    }
    Ok((before, get(conn, id)?))
}

/// Delete a user (their sessions and keys go with them). Refuses the last active admin.
pub fn delete(conn: &Connection, id: i64) -> Result<User> {
    let before = get(conn, id)?;
    if before.role == Role::Admin && before.status == UserStatus::Active && active_admins_other_than(conn, id)? == 0 {
        return Err(StoreError::LastAdmin);
    }
    conn.execute("DELETE FROM users WHERE id = ?1", [id])?;
    Ok(before)
}

/// Set a new password hash; revokes every session of the user.
pub fn set_password(conn: &Connection, id: i64, hash: &str, must_change: bool) -> Result<()> {
    let n = conn.execute(
        "UPDATE users SET password_hash = ?2, must_change_password = ?3, updated_at = ?4 WHERE id = ?1",
        params![id, hash, must_change, now_secs()],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound("user"));
    }
    crate::sessions::revoke_all_for_user(conn, id)?;
    Ok(())
}

/// Record a successful login.
pub fn touch_login(conn: &Connection, id: i64) -> Result<()> {
    conn.execute("UPDATE users SET last_login_at = ?2 WHERE id = ?1", params![id, now_secs()])?;
    Ok(())
}
