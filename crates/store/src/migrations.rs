//! Embedded, versioned migrations. `PRAGMA user_version` holds the number of migrations applied;
//! a database with a higher number came from a newer maasbox and is refused rather than guessed at.

use rusqlite::Connection;

use crate::{Result, StoreError};

/// Each entry upgrades the schema by one version; never edit a released entry, append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: identity, keys, sessions, audit chain.
    r#"
    CREATE TABLE users (
        id                   INTEGER PRIMARY KEY,
        username             TEXT NOT NULL UNIQUE COLLATE NOCASE,
        display_name         TEXT NOT NULL DEFAULT '',
        role                 TEXT NOT NULL CHECK (role IN ('admin','developer','user','auditor')),
        status               TEXT NOT NULL CHECK (status IN ('active','disabled')),
        password_hash        TEXT NOT NULL,
        must_change_password INTEGER NOT NULL DEFAULT 0,
        created_at           INTEGER NOT NULL,
        updated_at           INTEGER NOT NULL,
        last_login_at        INTEGER
    );

    CREATE TABLE sessions (
        id                TEXT PRIMARY KEY,
        user_id           INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        refresh_mac       BLOB NOT NULL,
        created_at        INTEGER NOT NULL,
        expires_at        INTEGER NOT NULL,
        last_refreshed_at INTEGER NOT NULL,
        revoked_at        INTEGER,
        client_ip         TEXT,
        user_agent        TEXT
    );
    CREATE INDEX sessions_user ON sessions(user_id);

    CREATE TABLE api_keys (
        id             TEXT PRIMARY KEY,
        user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name           TEXT NOT NULL,
        secret_mac     BLOB NOT NULL,
        allowed_models TEXT,
        expires_at     INTEGER,
        created_at     INTEGER NOT NULL,
        last_used_at   INTEGER,
        revoked_at     INTEGER
    );
    CREATE INDEX api_keys_user ON api_keys(user_id);

    CREATE TABLE audit_events (
        seq         INTEGER PRIMARY KEY,
        ts_ms       INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        auth_method TEXT NOT NULL,
        key_id      TEXT,
        client_ip   TEXT,
        request_id  TEXT,
        action      TEXT NOT NULL,
        resource    TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        details     TEXT NOT NULL,
        prev_hash   BLOB NOT NULL,
        hash        BLOB NOT NULL
    );
    CREATE INDEX audit_ts ON audit_events(ts_ms);
    CREATE INDEX audit_actor ON audit_events(actor);
    CREATE INDEX audit_action ON audit_events(action);
    CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
    CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
        BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;

    CREATE TABLE audit_checkpoints (
        seq        INTEGER PRIMARY KEY,
        hash       BLOB NOT NULL,
        ts_ms      INTEGER NOT NULL,
        public_key TEXT NOT NULL,
        signature  BLOB NOT NULL
    );
    CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
    CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
        BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
    "#,
    // 2: the model registry.
    r#"
    CREATE TABLE models (
        name       TEXT NOT NULL,
        tag        TEXT NOT NULL,
        blob       TEXT NOT NULL,
        size       INTEGER NOT NULL,
        info       TEXT NOT NULL,
        source     TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (name, tag)
    );
    CREATE INDEX models_blob ON models(blob);
    "#,
    // 3: the gateway — quotas, usage metering, model visibility, apps.
    r#"
    ALTER TABLE users ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE api_keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE api_keys ADD COLUMN app TEXT;
    ALTER TABLE models ADD COLUMN visibility TEXT NOT NULL DEFAULT '{"scope":"all"}';

    CREATE TABLE usage (
        id                INTEGER PRIMARY KEY,
        ts_ms             INTEGER NOT NULL,
        day               TEXT NOT NULL,
        user_id           INTEGER,
        username          TEXT NOT NULL,
        key_id            TEXT,
        model             TEXT NOT NULL,
        app               TEXT,
        endpoint          TEXT NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency_ms        INTEGER NOT NULL,
        status            INTEGER NOT NULL
    );
    CREATE INDEX usage_ts ON usage(ts_ms);
    CREATE INDEX usage_user_ts ON usage(user_id, ts_ms);

    CREATE TABLE usage_daily (
        day               TEXT NOT NULL,
        user_id           INTEGER NOT NULL,
        username          TEXT NOT NULL,
        key_id            TEXT NOT NULL,
        model             TEXT NOT NULL,
        app               TEXT NOT NULL,
        requests          INTEGER NOT NULL,
        errors            INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency_ms_sum    INTEGER NOT NULL,
        PRIMARY KEY (day, user_id, key_id, model, app)
    );

    CREATE TABLE apps (
        name            TEXT PRIMARY KEY,
        description     TEXT NOT NULL,
        model           TEXT NOT NULL,
        system_prompt   TEXT NOT NULL,
        params          TEXT NOT NULL,
        knowledge_bases TEXT NOT NULL,
        created_by      TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );
    "#,
    // 4: upstream providers (their API keys sealed with SM4-GCM under the master key).
    r#"
    CREATE TABLE upstreams (
        name           TEXT PRIMARY KEY,
        base_url       TEXT NOT NULL,
        api_key_sealed BLOB,
        models         TEXT NOT NULL,
        priority       INTEGER NOT NULL,
        enabled        INTEGER NOT NULL,
        created_by     TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        updated_at     INTEGER NOT NULL
    );
    "#,
    // 5: LoRA adapters are registry entries attached to a base model.
    r#"
    ALTER TABLE models ADD COLUMN base TEXT;
    CREATE INDEX models_base ON models(base);
    "#,
    // 6: settings changed at run time (the web UI, the desktop tray) and per-user chat history.
    r#"
    CREATE TABLE settings (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        updated_by TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );

    CREATE TABLE conversations (
        id         TEXT PRIMARY KEY,
        user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        title      TEXT NOT NULL,
        model      TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE INDEX conversations_user ON conversations(user_id, updated_at);
    CREATE INDEX conversations_updated ON conversations(updated_at);

    CREATE TABLE conversation_messages (
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        seq             INTEGER NOT NULL,
        role            TEXT NOT NULL,
        content         TEXT NOT NULL,
        meta            TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        PRIMARY KEY (conversation_id, seq)
    );
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Bring `conn` up to [`SCHEMA_VERSION`], one transaction per migration.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    Ok(())
}
