//! maasbox-store: everything maasbox keeps in SQLite — users, sessions, API keys and the
//! tamper-evident audit chain — and the only crate that writes SQL.
//!
//! Entry point: [`Store::open`]. Reads run on a small pool of read connections
//! ([`Store::read`]); every write goes through the single writer thread ([`Store::write`]),
//! which group-commits many writes per transaction and appends their audit events to the chain
//! in the same transaction. A write's future resolves only after that transaction is durable,
//! so a response that reports a change is never sent before the change and its audit event are
//! on disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use maasbox_crypto::Sm2KeyPair;
use parking_lot::Mutex;
use rusqlite::OpenFlags;

pub mod apps;
pub mod audit;
pub mod conversations;
pub mod keys;
mod migrations;
pub mod models;
pub mod sessions;
pub mod settings;
pub mod upstreams;
pub mod usage;
pub mod users;
mod writer;

pub use migrations::SCHEMA_VERSION;
pub use rusqlite::Connection;
pub use writer::WriteOutcome;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A uniqueness rule was violated.
    #[error("{0}")]
    Conflict(String),
    /// The change would leave the appliance without an active admin.
    #[error("the last active admin cannot be removed, disabled or demoted")]
    LastAdmin,
    /// A value failed validation inside the store.
    #[error("{0}")]
    Invalid(String),
    /// The database was written by a newer maasbox.
    #[error(
        "database schema version {found} is newer than this maasbox supports ({supported}); \
         upgrade maasbox or restore a backup made by this version"
    )]
    SchemaTooNew {
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Filesystem error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The writer thread has stopped (shutdown in progress).
    #[error("the store is shutting down")]
    Closed,
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Store tuning.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Sign a checkpoint every this many audit events.
    pub checkpoint_every: i64,
    /// Most writes committed in one transaction.
    pub batch_max: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { checkpoint_every: 1000, batch_max: 512 }
    }
}

/// Handle to the database: cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    writer: writer::WriterHandle,
}

impl Store {
    /// Open (creating if needed) the database at `path`, run migrations, and start the writer
    /// thread. `signer` signs audit checkpoints.
    pub fn open(path: &Path, signer: Arc<Sm2KeyPair>, opts: StoreOptions) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut conn = open_conn(path, false)?;
        migrations::migrate(&mut conn)?;
        let writer = writer::WriterHandle::spawn(conn, signer, opts)?;
        Ok(Self { inner: Arc::new(Inner { path: path.to_owned(), readers: Mutex::new(Vec::new()), writer }) })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run `f` on a read connection, on tokio's blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(f)).await.map_err(|_| StoreError::Closed)?
    }

    /// Run `f` on a read connection in the calling thread.
    pub fn read_blocking<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.inner.readers.lock().pop();
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.inner.path, true)?,
        };
        let out = f(&conn);
        let mut pool = self.inner.readers.lock();
        if pool.len() < 8 {
            pool.push(conn);
        }
        out
    }

    /// Submit a write. `f` runs on the writer thread inside a savepoint of the current group
    /// transaction; the audit events it returns are appended to the chain in that transaction.
    /// If `f` fails, its changes are rolled back and nothing is audited. The returned future
    /// resolves after the group transaction has committed.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<WriteOutcome<T>> + Send + 'static,
    {
        self.inner.writer.submit(f)?.await.map_err(|_| StoreError::Closed)?
    }

    /// [`Store::write`] for callers outside an async runtime (the offline CLI).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<WriteOutcome<T>> + Send + 'static,
    {
        self.inner.writer.submit(f)?.blocking_recv().map_err(|_| StoreError::Closed)?
    }

    /// Writes waiting for the writer thread.
    pub fn queue_depth(&self) -> usize {
        self.inner.writer.queue_depth()
    }

    /// Stop accepting writes, commit what is queued, and wait for the writer thread to finish.
    pub fn shutdown(&self) {
        self.inner.writer.shutdown();
    }

    /// `SELECT 1` on a read connection and the schema version: the database health check.
    pub async fn ping(&self) -> Result<i64> {
        self.read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?)).await
    }
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL with synchronous=FULL: every commit is fsynced, so an acknowledged write survives
    // kill -9 and power loss; group commit amortises the fsync over many writes.
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Map a SQLite uniqueness failure to [`StoreError::Conflict`] with `msg`.
pub(crate) fn conflict_on_unique(e: rusqlite::Error, msg: impl Into<String>) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict(msg.into())
        }
        e => StoreError::Sqlite(e),
    }
}

#[cfg(test)]
mod tests;

/// Verify the audit chain of a database file directly, without starting a writer or running
/// migrations (the offline `maasbox audit verify`). Safe while a server is running.
pub fn verify_database(
    path: &Path,
    trusted: Option<&maasbox_crypto::Sm2PublicKey>,
) -> Result<maasbox_types::ChainReport> {
    if !path.exists() {
        return Err(StoreError::NotFound("database file"));
    }
    let conn = open_conn(path, true)?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
    }
    audit::verify(&conn, trusted)
}
