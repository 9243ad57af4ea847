//! The audit chain: an append-only table in which every row carries `prev_hash` and
//! `hash = SM3(prev_hash || canonical(row))`, plus checkpoints signed with the appliance's SM2 key.
//!
//! The canonical form is a versioned, length-prefixed encoding of every column but the hashes,
//! including the sequence number, so an edited, deleted, inserted or reordered row breaks the
//! chain at that row. A full rewrite of the chain (recomputing every hash) is caught by the
//! signed checkpoints, which the rewriter cannot forge without the private key.

use maasbox_crypto::{sm3_parts, Sm2KeyPair, Sm2PublicKey};
use maasbox_types::{AuditEvent, ChainReport, NewAuditEvent};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

const GENESIS: [u8; 32] = [0u8; 32];

/// The canonical bytes of an event, the input to its hash after `prev_hash`.
#[allow(clippy::too_many_arguments)]
pub fn canonical(ev: &AuditEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"maasbox-audit-v1");
    out.extend_from_slice(&ev.seq.to_be_bytes());
    out.extend_from_slice(&ev.ts_ms.to_be_bytes());
    let details = serde_json::to_string(&ev.details).unwrap_or_default();
    for field in [
        Some(ev.actor.as_str()),
        Some(ev.auth_method.as_str()),
        ev.key_id.as_deref(),
        ev.client_ip.as_deref(),
        ev.request_id.as_deref(),
        Some(ev.action.as_str()),
        Some(ev.resource.as_str()),
        Some(ev.outcome.as_str()),
        Some(details.as_str()),
    ] {
        match field {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
    out
}

/// The hash of `ev` given the previous hash.
pub fn chain_hash(prev: &[u8], ev: &AuditEvent) -> [u8; 32] {
    sm3_parts(&[prev, &canonical(ev)])
}

/// The message an SM2 checkpoint signature covers.
pub fn checkpoint_message(seq: i64, hash_hex: &str) -> Vec<u8> {
    format!("maasbox-audit-checkpoint\n{seq}\n{hash_hex}").into_bytes()
}

/// The last sequence number and hash of the chain, as seen inside the writer's transaction.
pub(crate) struct ChainHead {
    seq: i64,
    hash: [u8; 32],
}

impl ChainHead {
    pub(crate) fn load(conn: &Connection) -> Result<Self> {
        let row: Option<(i64, Vec<u8>)> = conn
            .query_row("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        Ok(match row {
            Some((seq, h)) => Self { seq, hash: h.as_slice().try_into().unwrap_or(GENESIS) },
            None => Self { seq: 0, hash: GENESIS },
        })
    }

    pub(crate) fn append(
        &mut self,
        conn: &Connection,
        new: &NewAuditEvent,
        signer: &Sm2KeyPair,
        public_key: &str,
        checkpoint_every: i64,
    ) -> Result<()> {
        let ev = AuditEvent {
            seq: self.seq + 1,
            ts_ms: maasbox_types::now_millis(),
            actor: new.actor.clone(),
            auth_method: new.auth_method.as_str().to_owned(),
            key_id: new.key_id.clone(),
            client_ip: new.client_ip.clone(),
            request_id: new.request_id.clone(),
            action: new.action.clone(),
            resource: new.resource.clone(),
            outcome: new.outcome.clone(),
            details: new.details.clone(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let hash = chain_hash(&self.hash, &ev);
        conn.prepare_cached(
            "INSERT INTO audit_events (seq, ts_ms, actor, auth_method, key_id, client_ip, request_id,
                                       action, resource, outcome, details, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?
        .execute(params![
            ev.seq,
            ev.ts_ms,
            ev.actor,
            ev.auth_method,
            ev.key_id,
            ev.client_ip,
            ev.request_id,
            ev.action,
            ev.resource,
            ev.outcome,
            serde_json::to_string(&ev.details).unwrap_or_default(),
            &self.hash[..],
            &hash[..],
        ])?;
        self.seq = ev.seq;
        self.hash = hash;
        if checkpoint_every > 0 && ev.seq % checkpoint_every == 0 {
            let sig = signer.sign(&checkpoint_message(ev.seq, &hex::encode(hash)));
            conn.prepare_cached(
                "INSERT INTO audit_checkpoints (seq, hash, ts_ms, public_key, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![ev.seq, &hash[..], ev.ts_ms, public_key, sig])?;
        }
        Ok(())
    }
}

fn row_to_event(r: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    let details: String = r.get("details")?;
    let prev: Vec<u8> = r.get("prev_hash")?;
    let hash: Vec<u8> = r.get("hash")?;
    Ok(AuditEvent {
        seq: r.get("seq")?,
        ts_ms: r.get("ts_ms")?,
        actor: r.get("actor")?,
        auth_method: r.get("auth_method")?,
        key_id: r.get("key_id")?,
        client_ip: r.get("client_ip")?,
        request_id: r.get("request_id")?,
        action: r.get("action")?,
        resource: r.get("resource")?,
        outcome: r.get("outcome")?,
        // A row edited into invalid JSON still verifies as "broken", never as a crash.
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: hex::encode(prev),
        hash: hex::encode(hash),
    })
}

const COLUMNS: &str =
    "seq, ts_ms, actor, auth_method, key_id, client_ip, request_id, action, resource, outcome, details, prev_hash, hash";

/// Filters for [`list`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact action, or a prefix ending in `.` / `*` (e.g. `user.` or `user.*`).
    pub action: Option<String>,
    /// Resource prefix (e.g. `user:` or `user:3`).
    pub resource: Option<String>,
    /// Exact outcome.
    pub outcome: Option<String>,
    /// From this time (Unix ms, inclusive).
    pub from_ms: Option<i64>,
    /// Until this time (Unix ms, exclusive).
    pub to_ms: Option<i64>,
    /// Only events with seq below this (paging backwards, newest first).
    pub before_seq: Option<i64>,
    /// Only events with seq above this (paging forwards, oldest first).
    pub after_seq: Option<i64>,
    /// Page size (1..=1000).
    pub limit: Option<i64>,
}

/// One page of events and the total matching the filter.
#[derive(Clone, Debug, Serialize)]
pub struct AuditPage {
    /// Events, newest first (oldest first when `after_seq` is given).
    pub events: Vec<AuditEvent>,
    /// Events matching the filter, ignoring paging.
    pub total: i64,
}

fn where_clause(f: &AuditFilter) -> (String, Vec<Value>) {
    let mut conds = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if let Some(a) = &f.actor {
        conds.push("actor = ?");
        args.push(a.clone().into());
    }
    if let Some(a) = &f.action {
        if let Some(prefix) = a.strip_suffix('*').or_else(|| a.ends_with('.').then_some(a.as_str())) {
            conds.push("substr(action, 1, length(?)) = ?");
            args.push(prefix.to_owned().into());
            args.push(prefix.to_owned().into());
        } else {
            conds.push("action = ?");
            args.push(a.clone().into());
        }
    }
    if let Some(r) = &f.resource {
        conds.push("substr(resource, 1, length(?)) = ?");
        args.push(r.clone().into());
        args.push(r.clone().into());
    }
    if let Some(o) = &f.outcome {
        conds.push("outcome = ?");
        args.push(o.clone().into());
    }
    if let Some(t) = f.from_ms {
        conds.push("ts_ms >= ?");
        args.push(t.into());
    }
    if let Some(t) = f.to_ms {
        conds.push("ts_ms < ?");
        args.push(t.into());
    }
    let sql = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    (sql, args)
}

/// A filtered page of events.
pub fn list(conn: &Connection, f: &AuditFilter) -> Result<AuditPage> {
    let (where_sql, args) = where_clause(f);
    let total: i64 =
        conn.query_row(&format!("SELECT COUNT(*) FROM audit_events{where_sql}"), params_from_iter(args.iter()), |r| {
            r.get(0)
        })?;
    let limit = f.limit.unwrap_or(50).clamp(1, 1000);
    let mut args = args;
    let (page_cond, order) = match (f.after_seq, f.before_seq) {
        (Some(a), _) => {
            args.push(a.into());
            ("seq > ?", "ASC")
        }
        (None, Some(b)) => {
            args.push(b.into());
            ("seq < ?", "DESC")
        }
        (None, None) => ("1", "DESC"),
    };
    let joiner = if where_sql.is_empty() { " WHERE " } else { " AND " };
    let sql =
        format!("SELECT {COLUMNS} FROM audit_events{where_sql}{joiner}{page_cond} ORDER BY seq {order} LIMIT {limit}");
    let mut stmt = conn.prepare(&sql)?;
    let events = stmt.query_map(params_from_iter(args.iter()), row_to_event)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(AuditPage { events, total })
}

/// One event by sequence number.
pub fn get(conn: &Connection, seq: i64) -> Result<AuditEvent> {
    conn.query_row(&format!("SELECT {COLUMNS} FROM audit_events WHERE seq = ?1"), [seq], row_to_event)
        .optional()?
        .ok_or(StoreError::NotFound("audit event"))
}

/// Counts for the audit dashboard.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuditStats {
    /// All events.
    pub total: i64,
    /// Events in the last 24 hours.
    pub last_24h: i64,
    /// Events by outcome.
    pub by_outcome: Vec<(String, i64)>,
    /// The 20 most frequent actions.
    pub by_action: Vec<(String, i64)>,
    /// The 20 most active actors.
    pub by_actor: Vec<(String, i64)>,
    /// Failed or denied authentication attempts in the last 24 hours.
    pub auth_failures_24h: i64,
    /// Signed checkpoints.
    pub checkpoints: i64,
    /// Newest sequence number.
    pub last_seq: i64,
}

/// Statistics over the whole chain.
pub fn stats(conn: &Connection) -> Result<AuditStats> {
    let since = maasbox_types::now_millis() - 86_400_000;
    let group = |col: &str| -> Result<Vec<(String, i64)>> {
        let mut st = conn
            .prepare(&format!("SELECT {col}, COUNT(*) c FROM audit_events GROUP BY {col} ORDER BY c DESC LIMIT 20"))?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    };
    Ok(AuditStats {
        total: conn.query_row("SELECT COUNT(*) FROM audit_events", [], |r| r.get(0))?,
        last_24h: conn.query_row("SELECT COUNT(*) FROM audit_events WHERE ts_ms >= ?1", [since], |r| r.get(0))?,
        by_outcome: group("outcome")?,
        by_action: group("action")?,
        by_actor: group("actor")?,
        auth_failures_24h: conn.query_row(
            "SELECT COUNT(*) FROM audit_events WHERE ts_ms >= ?1 AND outcome != 'success' AND action LIKE 'auth.%'",
            [since],
            |r| r.get(0),
        )?,
        checkpoints: conn.query_row("SELECT COUNT(*) FROM audit_checkpoints", [], |r| r.get(0))?,
        last_seq: conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_events", [], |r| r.get(0))?,
    })
}

/// A signed checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number it covers.
    pub seq: i64,
    /// The chain hash at that sequence number (hex).
    pub hash: String,
    /// When it was made (Unix ms).
    pub ts_ms: i64,
    /// The signer's SM2 public key (hex).
    pub public_key: String,
    /// SM2 signature over [`checkpoint_message`] (hex, r||s).
    pub signature: String,
}

fn checkpoints(conn: &Connection) -> Result<Vec<Checkpoint>> {
    let mut st = conn.prepare("SELECT seq, hash, ts_ms, public_key, signature FROM audit_checkpoints ORDER BY seq")?;
    let rows = st
        .query_map([], |r| {
            Ok(Checkpoint {
                seq: r.get(0)?,
                hash: hex::encode(r.get::<_, Vec<u8>>(1)?),
                ts_ms: r.get(2)?,
                public_key: r.get(3)?,
                signature: hex::encode(r.get::<_, Vec<u8>>(4)?),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Incremental chain verification, shared by the database walk and the export verifier.
pub struct ChainVerifier {
    expected_seq: i64,
    prev: Vec<u8>,
    events: i64,
    broken: Option<(i64, String)>,
}

impl ChainVerifier {
    /// Start at `first_seq` whose predecessor hash is `prev_hash`.
    pub fn new(first_seq: i64, prev_hash: &[u8]) -> Self {
        Self { expected_seq: first_seq, prev: prev_hash.to_vec(), events: 0, broken: None }
    }

    /// Feed the next event in sequence order. Returns false once the chain is broken.
    pub fn push(&mut self, ev: &AuditEvent) -> bool {
        if self.broken.is_some() {
            return false;
        }
        self.events += 1;
        let fail = if ev.seq != self.expected_seq {
            // A gap means the expected row was deleted; a repeat or step back means reordering.
            Some((self.expected_seq, format!("expected sequence number {}, found {}", self.expected_seq, ev.seq)))
        } else if ev.prev_hash != hex::encode(&self.prev) {
            Some((ev.seq, "prev_hash does not match the previous event's hash".to_owned()))
        } else if hex::encode(chain_hash(&self.prev, ev)) != ev.hash {
            Some((ev.seq, "hash does not match the event's contents".to_owned()))
        } else {
            None
        };
        if let Some(f) = fail {
            self.broken = Some(f);
            return false;
        }
        self.prev = hex::decode(&ev.hash).unwrap_or_default();
        self.expected_seq += 1;
        true
    }

    /// The last hash accepted (hex).
    pub fn last_hash(&self) -> String {
        hex::encode(&self.prev)
    }

    /// The sequence number of the last accepted event.
    pub fn last_seq(&self) -> i64 {
        self.expected_seq - 1
    }

    /// The first break, if any.
    pub fn broken(&self) -> Option<&(i64, String)> {
        self.broken.as_ref()
    }
}

/// Walk the whole chain and every checkpoint. `trusted_key`, when given, is the public key
/// checkpoints must be signed with (the appliance's own key for online verification).
pub fn verify(conn: &Connection, trusted_key: Option<&Sm2PublicKey>) -> Result<ChainReport> {
    let cps = checkpoints(conn)?;
    let mut cp_iter = cps.iter().peekable();
    let mut checkpoints_verified = 0;
    let mut v = ChainVerifier::new(1, &GENESIS);
    let mut cp_failure: Option<(i64, String)> = None;
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit_events ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let ev = row_to_event(row)?;
        if !v.push(&ev) {
            break;
        }
        while let Some(cp) = cp_iter.next_if(|cp| cp.seq <= ev.seq) {
            if let Err(reason) = check_checkpoint(cp, trusted_key, (cp.seq == ev.seq).then_some(&ev.hash)) {
                cp_failure = Some((cp.seq, reason));
                break;
            }
            checkpoints_verified += 1;
        }
        if cp_failure.is_some() {
            break;
        }
    }
    let mut first_bad = v.broken().cloned().or(cp_failure);
    if first_bad.is_none() {
        // Rows removed from the end of the chain: a checkpoint vouches for more than exists.
        if let Some(cp) = cp_iter.next() {
            first_bad = Some((v.last_seq() + 1, format!("checkpoint at {} is beyond the end of the chain", cp.seq)));
        }
    }
    Ok(ChainReport {
        valid: first_bad.is_none(),
        events: v.events,
        last_seq: v.last_seq(),
        last_hash: v.last_hash(),
        checkpoints_verified,
        first_bad_seq: first_bad.as_ref().map(|f| f.0),
        reason: first_bad.map(|f| f.1),
    })
}

fn check_checkpoint(cp: &Checkpoint, trusted: Option<&Sm2PublicKey>, row_hash: Option<&String>) -> Result<(), String> {
    let Some(row_hash) = row_hash else {
        return Err(format!("checkpoint at {} refers to a missing event", cp.seq));
    };
    if &cp.hash != row_hash {
        return Err(format!("event {} does not match its signed checkpoint", cp.seq));
    }
    let pk = Sm2PublicKey::from_hex(&cp.public_key).map_err(|e| e.to_string())?;
    if let Some(t) = trusted {
        if &pk != t {
            return Err(format!("checkpoint at {} is signed by an unknown key", cp.seq));
        }
    }
    let sig = hex::decode(&cp.signature).map_err(|_| "malformed checkpoint signature".to_owned())?;
    pk.verify(&checkpoint_message(cp.seq, &cp.hash), &sig)
        .map_err(|_| format!("checkpoint signature at {} does not verify", cp.seq))
}

/// Events with `from <= seq <= to`, oldest first, for export.
pub fn range(conn: &Connection, from: i64, to: i64) -> Result<Vec<AuditEvent>> {
    let mut st =
        conn.prepare(&format!("SELECT {COLUMNS} FROM audit_events WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq"))?;
    let rows = st.query_map([from, to], row_to_event)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// The manifest that accompanies an export: what it covers and an SM2 signature over it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExportManifest {
    /// Format marker.
    pub format: String,
    /// First sequence number in the file.
    pub first_seq: i64,
    /// Last sequence number in the file.
    pub last_seq: i64,
    /// Number of events.
    pub count: i64,
    /// The hash preceding the first event (hex).
    pub prev_hash: String,
    /// The hash of the last event (hex).
    pub last_hash: String,
    /// SM3 of the JSON Lines file (hex).
    pub file_sm3: String,
    /// When the export was made (Unix ms).
    pub created_ms: i64,
    /// The appliance's SM2 public key (hex).
    pub public_key: String,
    /// SM2 signature over [`ExportManifest::signing_bytes`] (hex).
    pub signature: String,
}

impl ExportManifest {
    /// The bytes the signature covers: every field but the signature, in a fixed order.
    pub fn signing_bytes(&self) -> Vec<u8> {
        format!(
            "maasbox-audit-export\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.format,
            self.first_seq,
            self.last_seq,
            self.count,
            self.prev_hash,
            self.last_hash,
            self.file_sm3,
            self.created_ms,
            self.public_key
        )
        .into_bytes()
    }
}

/// Render the events `from..=to` as JSON Lines and a signed manifest.
pub fn export(conn: &Connection, signer: &Sm2KeyPair, from: i64, to: i64) -> Result<(Vec<u8>, ExportManifest)> {
    let events = range(conn, from, to)?;
    let mut jsonl = Vec::new();
    for ev in &events {
        serde_json::to_writer(&mut jsonl, ev).map_err(|e| StoreError::Invalid(e.to_string()))?;
        jsonl.push(b'\n');
    }
    let (first_seq, last_seq, prev_hash, last_hash) = match (events.first(), events.last()) {
        (Some(f), Some(l)) => (f.seq, l.seq, f.prev_hash.clone(), l.hash.clone()),
        _ => (0, 0, hex::encode(GENESIS), hex::encode(GENESIS)),
    };
    let mut m = ExportManifest {
        format: "maasbox-audit-jsonl-v1".into(),
        first_seq,
        last_seq,
        count: events.len() as i64,
        prev_hash,
        last_hash,
        file_sm3: hex::encode(maasbox_crypto::sm3_digest(&jsonl)),
        created_ms: maasbox_types::now_millis(),
        public_key: signer.public_key().to_hex(),
        signature: String::new(),
    };
    m.signature = hex::encode(signer.sign(&m.signing_bytes()));
    Ok((jsonl, m))
}

/// Verify an exported file against its manifest: file digest, manifest signature (against
/// `trusted` when given), and the hash chain inside the file.
pub fn verify_export(jsonl: &[u8], m: &ExportManifest, trusted: Option<&Sm2PublicKey>) -> ChainReport {
    let fail = |seq: Option<i64>, reason: String| ChainReport {
        valid: false,
        events: 0,
        last_seq: 0,
        last_hash: String::new(),
        checkpoints_verified: 0,
        first_bad_seq: seq,
        reason: Some(reason),
    };
    let pk = match Sm2PublicKey::from_hex(&m.public_key) {
        Ok(pk) => pk,
        Err(_) => return fail(None, "manifest public key is malformed".into()),
    };
    if trusted.is_some_and(|t| t != &pk) {
        return fail(None, "manifest is signed by a key other than the trusted one".into());
    }
    let sig_ok = hex::decode(&m.signature).ok().is_some_and(|s| pk.verify(&m.signing_bytes(), &s).is_ok());
    if !sig_ok {
        return fail(None, "manifest signature does not verify".into());
    }
    if hex::encode(maasbox_crypto::sm3_digest(jsonl)) != m.file_sm3 {
        // Find the first event that no longer verifies, for a useful message.
        let seq = first_bad_in_file(jsonl, m);
        return fail(seq, "file digest does not match the signed manifest".into());
    }
    let prev = hex::decode(&m.prev_hash).unwrap_or_default();
    let mut v = ChainVerifier::new(m.first_seq, &prev);
    for line in jsonl.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<AuditEvent>(line) {
            Ok(ev) => {
                if !v.push(&ev) {
                    break;
                }
            }
            Err(_) => return fail(Some(v.last_seq() + 1), "line is not a valid audit event".into()),
        }
    }
    let mut report = ChainReport {
        valid: v.broken().is_none(),
        events: v.last_seq() - m.first_seq + 1,
        last_seq: v.last_seq(),
        last_hash: v.last_hash(),
        checkpoints_verified: 0,
        first_bad_seq: v.broken().map(|b| b.0),
        reason: v.broken().map(|b| b.1.clone()),
    };
    if report.valid && (report.last_seq != m.last_seq || report.last_hash != m.last_hash) {
        report.valid = false;
        report.first_bad_seq = Some(report.last_seq + 1);
        report.reason = Some("file ends before the last event the manifest names".into());
    }
    report
}

fn first_bad_in_file(jsonl: &[u8], m: &ExportManifest) -> Option<i64> {
    let prev = hex::decode(&m.prev_hash).unwrap_or_default();
    let mut v = ChainVerifier::new(m.first_seq, &prev);
    for line in jsonl.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(ev) = serde_json::from_slice::<AuditEvent>(line) else {
            return Some(v.last_seq() + 1);
        };
        if !v.push(&ev) {
            return v.broken().map(|b| b.0);
        }
    }
    (v.last_seq() != m.last_seq).then_some(v.last_seq() + 1)
}
