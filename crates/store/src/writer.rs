//! The single writer thread and its group commit.
//!
//! Jobs arrive over a channel. The thread takes every job waiting (up to `batch_max`), opens one
//! `BEGIN IMMEDIATE` transaction, runs each job inside its own savepoint, appends the audit
//! events of the jobs that succeeded to the chain, commits once (one fsync), and only then
//! answers every job. A failed job rolls back to its savepoint and leaves the others intact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use maasbox_crypto::Sm2KeyPair;
use maasbox_types::NewAuditEvent;
use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::audit::ChainHead;
use crate::{Result, StoreError, StoreOptions};

/// What a write job returns: its value and the audit events that describe it.
pub struct WriteOutcome<T> {
    /// Handed back to the caller after commit.
    pub value: T,
    /// Appended to the audit chain in the same transaction.
    pub events: Vec<NewAuditEvent>,
}

impl<T> WriteOutcome<T> {
    /// A change described by one audit event.
    pub fn audited(value: T, event: NewAuditEvent) -> Self {
        Self { value, events: vec![event] }
    }

    /// A write that is not itself a state change worth auditing (e.g. `last_used_at`).
    pub fn unaudited(value: T) -> Self {
        Self { value, events: Vec::new() }
    }
}

trait Job: Send {
    /// Run inside the savepoint; `Some(events)` on success.
    fn run(&mut self, conn: &Connection) -> Option<Vec<NewAuditEvent>>;
    /// Deliver the outcome once the transaction has committed (or failed to).
    fn finish(self: Box<Self>, commit: std::result::Result<(), String>);
}

struct TypedJob<T, F> {
    f: Option<F>,
    result: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<WriteOutcome<T>> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> Option<Vec<NewAuditEvent>> {
        let f = self.f.take()?;
        match f(conn) {
            Ok(out) => {
                self.result = Some(Ok(out.value));
                Some(out.events)
            }
            Err(e) => {
                self.result = Some(Err(e));
                None
            }
        }
    }

    fn finish(self: Box<Self>, commit: std::result::Result<(), String>) {
        let this = *self;
        let out = match (commit, this.result) {
            (Ok(()), Some(r)) => r,
            (Err(e), Some(Ok(_))) => Err(StoreError::Invalid(format!("commit failed: {e}"))),
            (_, Some(Err(e))) => Err(e),
            (_, None) => Err(StoreError::Closed),
        };
        // The caller may have gone away (client disconnected); the write still happened.
        let _ = this.reply.send(out);
    }
}

pub(crate) struct WriterHandle {
    tx: Mutex<Option<Sender<Box<dyn Job>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    depth: Arc<AtomicUsize>,
}

impl WriterHandle {
    pub(crate) fn spawn(conn: Connection, signer: Arc<Sm2KeyPair>, opts: StoreOptions) -> Result<Self> {
        let (tx, rx) = crossbeam_channel::unbounded::<Box<dyn Job>>();
        let depth = Arc::new(AtomicUsize::new(0));
        let d = depth.clone();
        let thread = std::thread::Builder::new()
            .name("maasbox-store-writer".into())
            .spawn(move || writer_loop(conn, rx, signer, opts, d))?;
        Ok(Self { tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), depth })
    }

    pub(crate) fn submit<T, F>(&self, f: F) -> Result<oneshot::Receiver<Result<T>>>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<WriteOutcome<T>> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(TypedJob { f: Some(f), result: None, reply });
        let guard = self.tx.lock();
        let sender = guard.as_ref().ok_or(StoreError::Closed)?;
        self.depth.fetch_add(1, Ordering::Relaxed);
        sender.send(job).map_err(|_| StoreError::Closed)?;
        Ok(rx)
    }

    pub(crate) fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub(crate) fn shutdown(&self) {
        // Dropping the sender lets the thread drain what is queued and exit.
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: Receiver<Box<dyn Job>>,
    signer: Arc<Sm2KeyPair>,
    opts: StoreOptions,
    depth: Arc<AtomicUsize>,
) {
    let public_key = signer.public_key().to_hex();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < opts.batch_max {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        depth.fetch_sub(batch.len(), Ordering::Relaxed);
        let commit = run_batch(&mut conn, &mut batch, &signer, &public_key, &opts);
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = batch.len(), "audit/store group commit failed");
        }
        let commit = commit.map_err(|e| e.to_string());
        for job in batch {
            job.finish(commit.clone());
        }
    }
    tracing::debug!("store writer drained and stopped");
}

fn run_batch(
    conn: &mut Connection,
    batch: &mut [Box<dyn Job>],
    signer: &Sm2KeyPair,
    public_key: &str,
    opts: &StoreOptions,
) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut head = ChainHead::load(&tx)?;
    for job in batch.iter_mut() {
        tx.execute_batch("SAVEPOINT job")?;
        match job.run(&tx) {
            Some(events) => {
                // A failed append aborts the whole group (the transaction is dropped and rolled
                // back): no change may commit without its audit event.
                for ev in &events {
                    head.append(&tx, ev, signer, public_key, opts.checkpoint_every)?;
                }
                tx.execute_batch("RELEASE job")?;
            }
            None => tx.execute_batch("ROLLBACK TO job; RELEASE job")?,
        }
    }
    tx.commit()?;
    Ok(())
}
