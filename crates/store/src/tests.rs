use std::sync::Arc;

use maasbox_crypto::Sm2KeyPair;
use maasbox_types::{AuthMethod, NewAuditEvent, Role};
use rusqlite::Connection;

use super::*;

fn event(i: usize) -> NewAuditEvent {
    NewAuditEvent {
        actor: format!("user{i}"),
        auth_method: AuthMethod::Session,
        key_id: None,
        client_ip: Some("127.0.0.1".into()),
        request_id: Some(format!("req-{i}")),
        action: "test.event".into(),
        resource: format!("thing:{i}"),
        outcome: "success".into(),
        details: serde_json::json!({"i": i, "note": "审计"}),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    key: Arc<Sm2KeyPair>,
}

fn fixture(n_events: usize, checkpoint_every: i64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maasbox.db");
    let key = Arc::new(Sm2KeyPair::generate());
    let store = Store::open(&path, key.clone(), StoreOptions { checkpoint_every, batch_max: 64 }).unwrap();
    for i in 0..n_events {
        store.write_blocking(move |_| Ok(WriteOutcome::audited((), event(i)))).unwrap();
    }
    store.shutdown();
    Fixture { _dir: dir, path, key }
}

/// Open the file the way an attacker with sqlite3 would: drop the append-only triggers first.
fn tamper(path: &std::path::Path, sql: &str) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(
        "DROP TRIGGER IF EXISTS audit_events_no_update; DROP TRIGGER IF EXISTS audit_events_no_delete;
         DROP TRIGGER IF EXISTS audit_checkpoints_no_update; DROP TRIGGER IF EXISTS audit_checkpoints_no_delete;",
    )
    .unwrap();
    c.execute_batch(sql).unwrap();
}

fn verify(f: &Fixture) -> maasbox_types::ChainReport {
    let c = Connection::open(&f.path).unwrap();
    audit::verify(&c, Some(&f.key.public_key())).unwrap()
}

#[test]
fn intact_chain_verifies_with_checkpoints() {
    let f = fixture(25, 10);
    let r = verify(&f);
    assert!(r.valid, "{r:?}");
    assert_eq!((r.events, r.last_seq, r.checkpoints_verified), (25, 25, 2));
}

#[test]
fn edited_row_is_reported_at_its_seq() {
    let f = fixture(20, 1000);
    tamper(&f.path, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 7");
    let r = verify(&f);
    assert!(!r.valid);
    assert_eq!(r.first_bad_seq, Some(7), "{r:?}");
}

#[test]
fn deleted_row_is_reported_at_its_seq() {
    let f = fixture(20, 1000);
    tamper(&f.path, "DELETE FROM audit_events WHERE seq = 12");
    let r = verify(&f);
    assert_eq!(r.first_bad_seq, Some(12), "{r:?}");
}

#[test]
fn inserted_row_is_reported() {
    // Naive insertion: renumber the tail and put a forged row at 9 with a made-up hash.
    let f = fixture(20, 1000);
    tamper(
        &f.path,
        "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 9;
         UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000;
         INSERT INTO audit_events (seq, ts_ms, actor, auth_method, action, resource, outcome, details, prev_hash, hash)
           SELECT 9, ts_ms, 'mallory', 'session', 'user.create', 'user:99', 'success', '{}', hash, randomblob(32)
           FROM audit_events WHERE seq = 8;",
    );
    assert_eq!(verify(&f).first_bad_seq, Some(9));
}

#[test]
fn inserted_row_with_correct_hash_is_reported_at_the_next_seq() {
    // A forger who knows the algorithm computes a valid hash for the inserted row; the row after
    // it still points at the old predecessor.
    let f = fixture(20, 1000);
    let c = Connection::open(&f.path).unwrap();
    let prev = audit::get(&c, 8).unwrap();
    let mut forged = audit::get(&c, 9).unwrap();
    forged.actor = "mallory".into();
    forged.prev_hash = prev.hash.clone();
    let h = audit::chain_hash(&hex::decode(&prev.hash).unwrap(), &forged);
    drop(c);
    tamper(
        &f.path,
        &format!(
            "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 9;
             UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000;
             INSERT INTO audit_events (seq, ts_ms, actor, auth_method, client_ip, request_id, action, resource, outcome, details, prev_hash, hash)
               SELECT 9, ts_ms, 'mallory', auth_method, client_ip, request_id, action, resource, outcome, details, prev_hash, X'{}'
               FROM audit_events WHERE seq = 10;",
            hex::encode(h)
        ),
    );
    let r = verify(&f);
    assert_eq!(r.first_bad_seq, Some(10), "{r:?}");
}

#[test]
fn reordered_rows_are_reported() {
    let f = fixture(20, 1000);
    tamper(
        &f.path,
        "UPDATE audit_events SET seq = -1 WHERE seq = 5;
         UPDATE audit_events SET seq = 5 WHERE seq = 6;
         UPDATE audit_events SET seq = 6 WHERE seq = -1;",
    );
    assert_eq!(verify(&f).first_bad_seq, Some(5));
}

#[test]
fn rewritten_chain_is_caught_by_signed_checkpoint() {
    // The attacker edits row 3 and recomputes every hash after it: the links are consistent
    // again, but checkpoint 10 was signed over the old hash.
    let f = fixture(15, 10);
    let c = Connection::open(&f.path).unwrap();
    let mut events: Vec<_> = audit::range(&c, 1, 15).unwrap();
    drop(c);
    events[2].actor = "mallory".into();
    let mut prev = vec![0u8; 32];
    let mut sql = String::from("DELETE FROM audit_events;");
    for ev in &mut events {
        ev.prev_hash = hex::encode(&prev);
        let h = audit::chain_hash(&prev, ev);
        ev.hash = hex::encode(h);
        prev = h.to_vec();
        sql.push_str(&format!(
            "INSERT INTO audit_events (seq, ts_ms, actor, auth_method, client_ip, request_id, action, resource, outcome, details, prev_hash, hash)
             VALUES ({}, {}, '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', X'{}', X'{}');",
            ev.seq, ev.ts_ms, ev.actor, ev.auth_method, ev.client_ip.as_deref().unwrap(), ev.request_id.as_deref().unwrap(),
            ev.action, ev.resource, ev.outcome, serde_json::to_string(&ev.details).unwrap(), ev.prev_hash, ev.hash
        ));
    }
    tamper(&f.path, &sql);
    let r = verify(&f);
    assert!(!r.valid);
    assert_eq!(r.first_bad_seq, Some(10), "{r:?}");
    // Forging the checkpoint needs the private key; a checkpoint signed by another key is refused.
    let other = Sm2KeyPair::generate();
    let sig = other.sign(&audit::checkpoint_message(10, &events[9].hash));
    tamper(
        &f.path,
        &format!(
            "UPDATE audit_checkpoints SET hash = X'{}', public_key = '{}', signature = X'{}' WHERE seq = 10",
            events[9].hash,
            other.public_key().to_hex(),
            hex::encode(sig)
        ),
    );
    let r = verify(&f);
    assert_eq!(r.first_bad_seq, Some(10), "{r:?}");
    assert!(r.reason.unwrap().contains("unknown key"));
}

#[test]
fn truncated_tail_is_caught_by_checkpoint() {
    let f = fixture(20, 10);
    tamper(&f.path, "DELETE FROM audit_events WHERE seq > 15");
    let r = verify(&f);
    // Row 20 was checkpointed; rows 16..20 are gone.
    assert_eq!(r.first_bad_seq, Some(16), "{r:?}");
}

#[test]
fn failed_write_rolls_back_and_is_not_audited() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db"), Arc::new(Sm2KeyPair::generate()), StoreOptions::default()).unwrap();
    let err = store
        .write_blocking(|c| {
            users::create(
                c,
                &users::NewUser {
                    username: "alice",
                    display_name: "",
                    role: Role::Admin,
                    password_hash: "x",
                    must_change_password: false,
                },
            )?;
            Err::<WriteOutcome<()>, _>(StoreError::Invalid("changed my mind".into()))
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
    let (users, events) = store.read_blocking(|c| Ok((users::count(c)?, audit::stats(c)?.total))).unwrap();
    assert_eq!((users, events), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_form_one_gap_free_chain() {
    let dir = tempfile::tempdir().unwrap();
    let key = Arc::new(Sm2KeyPair::generate());
    let store =
        Store::open(&dir.path().join("db"), key.clone(), StoreOptions { checkpoint_every: 100, batch_max: 512 })
            .unwrap();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.write(move |_| Ok(WriteOutcome::audited(i, event(i)))).await }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap().unwrap());
    }
    got.sort();
    assert_eq!(got, (0..400).collect::<Vec<_>>());
    let r = store.read(move |c| audit::verify(c, Some(&key.public_key()))).await.unwrap();
    assert!(r.valid, "{r:?}");
    assert_eq!((r.events, r.checkpoints_verified), (400, 4));
}

#[test]
fn append_only_triggers_refuse_edits() {
    let f = fixture(3, 1000);
    let c = Connection::open(&f.path).unwrap();
    let e = c.execute("UPDATE audit_events SET actor = 'x' WHERE seq = 1", []).unwrap_err();
    assert!(e.to_string().contains("append-only"));
    assert!(c.execute("DELETE FROM audit_events", []).is_err());
}

#[test]
fn newer_schema_is_refused() {
    let f = fixture(0, 1000);
    Connection::open(&f.path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let err = Store::open(&f.path, f.key.clone(), StoreOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("newer than this maasbox supports"));
}

#[test]
fn export_verifies_offline_and_detects_tampering() {
    let f = fixture(12, 5);
    let c = Connection::open(&f.path).unwrap();
    let (jsonl, m) = audit::export(&c, &f.key, 1, 12).unwrap();
    let pk = f.key.public_key();
    let r = audit::verify_export(&jsonl, &m, Some(&pk));
    assert!(r.valid, "{r:?}");
    assert_eq!(r.last_seq, 12);

    let text = String::from_utf8(jsonl.clone()).unwrap().replace("\"user4\"", "\"mallory\"");
    let r = audit::verify_export(text.as_bytes(), &m, Some(&pk));
    assert!(!r.valid);
    assert_eq!(r.first_bad_seq, Some(5));

    let mut m2 = m.clone();
    m2.last_seq = 11;
    assert!(!audit::verify_export(&jsonl, &m2, Some(&pk)).valid, "manifest edit breaks its signature");
    assert!(!audit::verify_export(&jsonl, &m, Some(&Sm2KeyPair::generate().public_key())).valid);
}

#[test]
fn usage_rollup_matches_rows_and_rebuilds_quota_counters() {
    use crate::usage::{self, GroupBy, UsageRow};
    let f = fixture(0, 100);
    let store = Store::open(&f.path, f.key.clone(), StoreOptions::default()).unwrap();
    // 2026-11-30 23:59:30 UTC and 30 s later, in December.
    let nov = 1_796_083_170_000;
    let dec = nov + 30_000;
    assert_eq!((usage::day_of(nov).as_str(), usage::day_of(dec).as_str()), ("2026-11-30", "2026-12-01"));
    assert_eq!(usage::secs_to_next_day(nov), 30);
    assert_eq!(usage::secs_to_next_month(nov), 30);
    assert_eq!(usage::month_of(dec), "2026-12-01");
    let row = |ts_ms, user: Option<i64>, key: Option<&str>, model: &str, p, c, status| UsageRow {
        ts_ms,
        user_id: user,
        username: user.map_or("owner".into(), |u| format!("u{u}")),
        key_id: key.map(str::to_owned),
        model: model.into(),
        app: None,
        endpoint: "chat",
        prompt_tokens: p,
        completion_tokens: c,
        latency_ms: 100,
        status,
    };
    let rows = vec![
        row(nov, Some(1), Some("k1"), "a:latest", 10, 5, 200),
        row(dec, Some(1), Some("k1"), "a:latest", 20, 7, 200),
        row(dec + 1, Some(1), None, "b:latest", 3, 0, 429),
        row(dec + 2, Some(2), None, "a:latest", 1, 1, 499),
        row(dec + 3, None, None, "a:latest", 4, 4, 200),
    ];
    store
        .write_blocking(move |c| {
            for r in &rows {
                usage::record(c, r)?;
            }
            Ok(WriteOutcome::unaudited(()))
        })
        .unwrap();
    let report = |by, from: &str, to: &str, user| {
        let (from, to) = (from.to_owned(), to.to_owned());
        store.read_blocking(move |c| usage::report(c, by, &from, &to, user)).unwrap()
    };
    let by_day = report(GroupBy::Day, "2026-11-01", "2026-12-31", None);
    assert_eq!(
        by_day.iter().map(|g| (g.group.as_str(), g.requests, g.total_tokens)).collect::<Vec<_>>(),
        [("2026-11-30", 1, 15), ("2026-12-01", 4, 40)]
    );
    let by_model = report(GroupBy::Model, "2026-12-01", "2026-12-01", Some(1));
    assert_eq!(
        by_model.iter().map(|g| (g.group.as_str(), g.requests, g.errors)).collect::<Vec<_>>(),
        [("a:latest", 1, 0), ("b:latest", 1, 1)]
    );
    assert!(store.read_blocking(|c| usage::report(c, GroupBy::User, "yesterday", "2026-12-01", None)).is_err());

    // Counters as of a moment in December: November's tokens are in neither the day nor the month.
    let counters = store.read_blocking(move |c| usage::counters(c, dec + 10_000)).unwrap();
    let user1 = counters.users.iter().find(|(u, _)| *u == 1).unwrap();
    assert_eq!((user1.1.day, user1.1.month), (30, 30));
    let k1 = counters.keys.iter().find(|(k, _)| k == "k1").unwrap();
    assert_eq!(k1.1.day, 27);
    assert!(counters.users.iter().any(|(u, s)| *u == 0 && s.day == 8), "the owner token is user 0");
    // The 429 is not a started request; the others of the last minute are.
    assert_eq!(counters.recent.len(), 4);
    store.shutdown();
}
