//! Run-time settings (LAN re-bind, CORS, default quotas, retention), chat history and model
//! uploads, against a real server and real SQLite files.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// This machine's address on its default route, if it has one that is not loopback.
fn lan_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("10.255.255.255:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

async fn preflight(srv: &Server, origin: &str) -> Option<String> {
    let r = srv
        .http
        .request(Method::OPTIONS, srv.url("/api/v1/auth/me"))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    r.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn settings_apply_at_once_are_audited_and_survive_a_restart() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, user) = srv.user(&admin, "carol", "user").await;

    let (s, v) = srv.get("/api/v1/settings", &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["settings"]["lan"], false);
    assert_eq!(v["listening"], srv.addr.to_string());
    let before = v["settings"].clone();

    // Only admins.
    for (m, body) in [(Method::GET, None), (Method::PATCH, Some(json!({"cors_origins": []})))] {
        let (s, v) = srv.req(m, "/api/v1/settings", Some(&user), body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }

    // Bad values change nothing.
    for (body, param) in [
        (json!({"cors_origins": ["*"]}), "cors_origins"),
        (json!({"cors_origins": ["https://a.example/path"]}), "cors_origins"),
        (json!({"retention": {"usage_days": 100000}}), "retention"),
        (json!({"lan": true}), "allow_plain_http"),
    ] {
        let (s, v) = srv.patch("/api/v1/settings", &admin, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_error_shape(&v);
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let (s, v) = srv.patch("/api/v1/settings", &admin, json!({"quotas": {"requests_per_minute": "many"}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(srv.get("/api/v1/settings", &admin).await.1["settings"], before);
    assert!(srv.events(&admin, "settings.update").await.iter().all(|e| e["outcome"] != "success"));

    // CORS: denied, then allowed for the listed origin on the next request.
    assert_eq!(preflight(&srv, "http://ui.example:5173").await, None);
    let (s, v) = srv
        .patch(
            "/api/v1/settings",
            &admin,
            json!({"cors_origins": ["http://UI.example:5173/"], "quotas": {"requests_per_minute": 3, "tokens_per_day": 500},
                   "retention": {"usage_days": 90, "conversations_days": 30}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["settings"]["cors_origins"], json!(["http://ui.example:5173"]));
    assert_eq!(preflight(&srv, "http://ui.example:5173").await.as_deref(), Some("http://ui.example:5173"));
    assert_eq!(preflight(&srv, "http://evil.example").await, None);

    // Default quotas apply to a user without limits of their own.
    let (_, limits) = srv.get("/api/v1/usage/limits", &user).await;
    assert_eq!(limits["user"]["requests_per_minute"], 3, "{limits}");
    assert_eq!(limits["user"]["tokens_per_day"], 500, "{limits}");

    let ev = srv.events(&admin, "settings.update").await;
    let ok: Vec<&Value> = ev.iter().filter(|e| e["outcome"] == "success").collect();
    assert_eq!(ok.len(), 1);
    let d = &ok[0]["details"];
    assert_eq!(d["changed"], json!(["cors_origins", "quotas", "retention"]));
    assert_eq!(d["before"]["quotas"]["requests_per_minute"], 0);
    assert_eq!(d["after"]["quotas"]["requests_per_minute"], 3);
    assert_eq!(ok[0]["actor"], "admin");

    // Stored in SQLite: a restart on the same data directory keeps them over the config file.
    let dir = srv.stop().await;
    let cfg = test_config(dir.path());
    let srv = Server::start_in(dir, cfg).await;
    let (_, v) = srv.login("admin", ADMIN_PW).await;
    let admin = v["access_token"].as_str().unwrap().to_owned();
    let (_, v) = srv.get("/api/v1/settings", &admin).await;
    assert_eq!(v["settings"]["quotas"]["tokens_per_day"], 500, "{v}");
    assert_eq!(v["settings"]["retention"]["conversations_days"], 30, "{v}");
    assert_eq!(preflight(&srv, "http://ui.example:5173").await.as_deref(), Some("http://ui.example:5173"));
}

#[tokio::test]
async fn lan_sharing_rebinds_without_a_restart() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let port = srv.addr.port();
    let lan = lan_ip();
    let reachable = |ip: std::net::IpAddr| async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        http.get(format!("http://{}/health", std::net::SocketAddr::new(ip, port))).send().await.is_ok()
    };
    let foreign_host = |srv: &Server| srv.http.get(srv.url("/health")).header("host", "maasbox.lan").send();
    if let Some(ip) = lan {
        assert!(!reachable(ip).await, "loopback only at first");
    }
    assert_eq!(foreign_host(&srv).await.unwrap().status().as_u16(), 421);

    let (s, v) = srv.patch("/api/v1/settings", &admin, json!({"lan": true, "allow_plain_http": true})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["listening"], format!("0.0.0.0:{port}"));
    assert!(reachable(std::net::IpAddr::from([127, 0, 0, 1])).await);
    if let Some(ip) = lan {
        assert!(reachable(ip).await, "reachable on {ip} after turning LAN sharing on");
    }
    // Shared on the LAN, any Host is answered (names on the network are not known in advance).
    assert!(foreign_host(&srv).await.unwrap().status().is_success());

    let (s, v) = srv.patch("/api/v1/settings", &admin, json!({"lan": false})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["listening"], format!("127.0.0.1:{port}"));
    if let Some(ip) = lan {
        assert!(!reachable(ip).await, "not reachable on {ip} after turning it off");
    }
    assert_eq!(foreign_host(&srv).await.unwrap().status().as_u16(), 421);
    let ev = srv.events(&admin, "settings.update").await;
    let listening: Vec<&Value> = ev.iter().map(|e| &e["details"]["listening"]).collect();
    assert!(listening.contains(&&json!(format!("0.0.0.0:{port}"))), "{ev:?}");
    // Still serving normally and stops cleanly (the retired listener's connections drained).
    let dir = srv.stop().await;
    let db = rusqlite::Connection::open(dir.path().join("maasbox.db")).unwrap();
    let last: String =
        db.query_row("SELECT action FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(last, "system.stop");
}

#[tokio::test]
async fn conversations_are_private_validated_and_audited_without_their_text() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, alice) = srv.user(&admin, "alice", "user").await;
    let (_, bob) = srv.user(&admin, "bob", "user").await;
    let secret = "my salary is 12345 and the vault code is 0000";

    let (s, c) = srv
        .post(
            "/api/v1/conversations",
            &alice,
            json!({"title": "Pay", "model": "smollm2:135m", "messages": [{"role": "user", "content": secret}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["message_count"], 1);
    let id = c["id"].as_str().unwrap().to_owned();

    let (s, c) = srv
        .post(
            &format!("/api/v1/conversations/{id}/messages"),
            &alice,
            json!({"messages": [{"role": "assistant", "content": "Noted.", "meta": {"citations": [{"index": 1}]}}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["message_count"], 2);
    let (_, d) = srv.get(&format!("/api/v1/conversations/{id}"), &alice).await;
    assert_eq!(d["messages"][0]["content"], secret);
    assert_eq!(d["messages"][1]["meta"]["citations"][0]["index"], 1);

    // Another user — an admin too — sees nothing and cannot change it.
    for other in [&bob, &admin] {
        let (s, v) = srv.get(&format!("/api/v1/conversations/{id}"), other).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        let (s, _) = srv.req(Method::DELETE, &format!("/api/v1/conversations/{id}"), Some(other), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (_, list) = srv.get("/api/v1/conversations", other).await;
        assert_eq!(list["data"], json!([]));
    }

    // Bad input changes nothing.
    for (body, param) in [
        (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].role"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": [{"role": "user", "content": "x".repeat(200_001)}]}), "messages[0].content"),
    ] {
        let (s, v) = srv.post(&format!("/api/v1/conversations/{id}/messages"), &alice, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["param"], param);
    }
    let (s, v) = srv.patch(&format!("/api/v1/conversations/{id}"), &alice, json!({"title": "  "})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, list) = srv.get("/api/v1/conversations", &alice).await;
    assert_eq!(list["data"][0]["message_count"], 2);
    assert_eq!(list["data"][0]["title"], "Pay");

    let (s, v) = srv.patch(&format!("/api/v1/conversations/{id}"), &alice, json!({"title": "Salary"})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["title"], "Salary");

    // Audited by id and counts; the text never enters the chain.
    for action in ["conversation.create", "conversation.append", "conversation.update"] {
        let ev = srv.events(&admin, action).await;
        assert!(ev.iter().any(|e| e["resource"] == format!("conversation:{id}")), "{action}: {ev:?}");
    }
    let leaked: i64 = srv
        .db()
        .query_row("SELECT COUNT(*) FROM audit_events WHERE details LIKE '%vault code%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(leaked, 0);

    let (s, _) = srv.req(Method::DELETE, &format!("/api/v1/conversations/{id}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = srv.get(&format!("/api/v1/conversations/{id}"), &alice).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let left: i64 = srv.db().query_row("SELECT COUNT(*) FROM conversation_messages", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "messages go with their conversation");
}

#[tokio::test]
async fn retention_prunes_old_conversations_and_usage_at_startup() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, alice) = srv.user(&admin, "alice", "user").await;
    for title in ["old", "new"] {
        let (s, v) = srv.post("/api/v1/conversations", &alice, json!({"title": title, "messages": []})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, v) =
        srv.patch("/api/v1/settings", &admin, json!({"retention": {"conversations_days": 7, "usage_days": 0}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let dir = srv.stop().await;
    // Age one conversation past the retention (the file is the real database, server stopped).
    let db = rusqlite::Connection::open(dir.path().join("maasbox.db")).unwrap();
    let ago = maasbox_types::now_secs() - 8 * 86_400;
    db.execute("UPDATE conversations SET updated_at = ?1 WHERE title = 'old'", [ago]).unwrap();
    drop(db);

    // The pruner runs when the server starts (then hourly).
    let cfg = test_config(dir.path());
    let srv = Server::start_in(dir, cfg).await;
    let (_, v) = srv.login("admin", ADMIN_PW).await;
    let admin = v["access_token"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ev = loop {
        let ev = srv.events(&admin, "retention.prune").await;
        if !ev.is_empty() || Instant::now() > deadline {
            break ev;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["details"]["conversations"], 1);
    let (_, v) = srv.login("alice", "Xy-Pw-12345!").await;
    let alice = v["access_token"].as_str().unwrap().to_owned();
    let (_, list) = srv.get("/api/v1/conversations", &alice).await;
    let titles: Vec<&str> = list["data"].as_array().unwrap().iter().map(|c| c["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["new"]);
}

#[tokio::test]
async fn model_upload_streams_checks_and_registers_a_gguf() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, user) = srv.user(&admin, "dave", "user").await;
    let (_, dev) = srv.user(&admin, "erin", "developer").await;
    let smol = std::fs::read(model_file(SMOL)).unwrap();
    let digest = hex::encode(Sha256::digest(&smol));
    let up = |token: &str, query: &str, body: Vec<u8>| {
        srv.http.post(srv.url(&format!("/api/v1/models/upload?{query}"))).bearer_auth(token).body(body).send()
    };
    let leftovers = || {
        std::fs::read_dir(srv.dir.path().join("models/blobs"))
            .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().starts_with('.')).count())
            .unwrap_or(0)
    };

    // Users may not import; nothing is written.
    let r = up(&user, "filename=SmolLM2.gguf", smol.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Not a GGUF: refused, named, no temporary file left.
    let r = up(&dev, "filename=notes.gguf", b"GGUF but not really".repeat(1000)).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["param"], "file", "{v}");
    assert_eq!(leftovers(), 0);

    // Larger than the 10 MiB JSON body limit: streamed to disk, hashed, checked, registered.
    let r = up(&dev, "filename=SmolLM2-135M-Instruct.Q4_1.gguf&name=smol:upload", smol.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "smol:upload");
    assert_eq!(v["sha256"], digest);
    assert_eq!(v["size"], smol.len());
    assert_eq!(v["source"], "upload:SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(v["info"]["architecture"], "llama");
    let blob = srv.dir.path().join(format!("models/blobs/sha256-{digest}"));
    assert_eq!(std::fs::metadata(&blob).unwrap().len(), smol.len() as u64);
    let ev = srv.events(&admin, "model.import").await;
    assert_eq!(ev[0]["actor"], "erin");

    // The same name again: a conflict, and the already stored blob stays.
    let r = up(&dev, "name=smol:upload", smol.clone()).await.unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert!(blob.exists());
    assert_eq!(leftovers(), 0);
}
