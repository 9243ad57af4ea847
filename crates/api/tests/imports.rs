//! Importing the real SmolLM2 from a local HTTP server (resume after a dropped connection,
//! digest mismatch, server errors, cancellation, bad requests) and through signed offline
//! bundles (tampered, unsigned, untrusted, truncated). Nothing but a verified,
//! complete GGUF is ever registered.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode as HttpStatus};
use axum::response::Response;
use common::{assert_error_shape, model_file, Server, SMOL};
use futures::StreamExt;
use parking_lot::Mutex;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How the test file server misbehaves.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Cut the first response after half the file.
    drop_first_halfway: bool,
    /// Pause after every chunk.
    slow: bool,
    /// Answer every request with this status.
    status: Option<u16>,
}

struct FileServer {
    url: String,
    /// The `Range` header of every request (None = none sent).
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

async fn file_server(data: Arc<Vec<u8>>, faults: Faults) -> FileServer {
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    let app = axum::Router::new().route(
        "/models/smollm2.gguf",
        axum::routing::get(move |headers: HeaderMap| {
            let (data, seen) = (data.clone(), seen.clone());
            async move {
                let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
                let first = {
                    let mut s = seen.lock();
                    s.push(range.clone());
                    s.len() == 1
                };
                if let Some(code) = faults.status {
                    return Response::builder().status(code).body(Body::from("no")).unwrap();
                }
                let len = data.len();
                let start = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                let cut = (faults.drop_first_halfway && first).then_some(len / 2);
                let chunks = (start..len).step_by(64 * 1024).map(move |i| (i, (i + 64 * 1024).min(len)));
                let body = futures::stream::iter(chunks).then(move |(a, b)| {
                    let data = data.clone();
                    async move {
                        if faults.slow {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        if cut.is_some_and(|c| a >= c) {
                            return Err(std::io::Error::other("cut"));
                        }
                        Ok::<_, std::io::Error>(Bytes::copy_from_slice(&data[a..b]))
                    }
                });
                let mut r = Response::builder()
                    .header(header::CONTENT_LENGTH, len - start)
                    .header(header::ACCEPT_RANGES, "bytes");
                if start > 0 {
                    r = r
                        .status(HttpStatus::PARTIAL_CONTENT)
                        .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1));
                }
                r.body(Body::from_stream(body)).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    FileServer { url: format!("http://{addr}/models/smollm2.gguf"), ranges }
}

fn smol() -> (Arc<Vec<u8>>, String) {
    let data = std::fs::read(model_file(SMOL)).unwrap();
    let sha = hex::encode(Sha256::digest(&data));
    (Arc::new(data), sha)
}

/// Follow an import's SSE stream to its end; returns every progress event.
async fn follow(srv: &Server, tok: &str, id: &str) -> Vec<Value> {
    let resp =
        srv.http.get(srv.url(&format!("/api/v1/models/imports/{id}/events"))).bearer_auth(tok).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = tokio::time::timeout(Duration::from_secs(300), resp.text()).await.expect("the import ends").unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn leftovers(srv: &Server) -> Vec<String> {
    let dir = srv.dir.path().join("models/blobs");
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with('.')).collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_connection_resumes_with_range_and_the_model_registers() {
    let (data, sha) = smol();
    let files = file_server(data.clone(), Faults { drop_first_halfway: true, ..Faults::default() }).await;
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (s, v) = srv.post("/api/v1/models", &admin, json!({"url": files.url, "name": "smol-net", "sha256": sha})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!((v["phase"].as_str(), v["model"].as_str()), (Some("downloading"), Some("smol-net:latest")));
    let (s, dup) = srv.post("/api/v1/models", &admin, json!({"url": files.url, "name": "other"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "one download per URL at a time: {dup}");

    let events = follow(&srv, &admin, v["id"].as_str().unwrap()).await;
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "done", "{last}");
    assert_eq!(last["attempts"], 2);
    assert_eq!(last["total"].as_u64(), Some(data.len() as u64));
    let resumed = last["resumed_from"].as_u64().unwrap();
    // The server cuts at the first 64 KiB chunk starting past half the file.
    assert!(resumed > 0 && resumed < data.len() as u64 / 2 + 64 * 1024, "{resumed}");
    assert_eq!(last["record"]["sha256"], sha);
    let phases: Vec<&str> = events.iter().map(|e| e["phase"].as_str().unwrap()).collect();
    assert!(phases.contains(&"verifying"), "{phases:?}");
    assert!(events
        .windows(2)
        .all(|w| w[0]["bytes"].as_u64() <= w[1]["bytes"].as_u64() || w[1]["attempts"] != w[0]["attempts"]));
    assert_eq!(*files.ranges.lock(), vec![None, Some(format!("bytes={resumed}-"))]);

    let (s, m) = srv.get("/api/v1/models/smol-net", &admin).await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!((m["size"].as_u64(), m["info"]["architecture"].as_str()), (Some(data.len() as u64), Some("llama")));
    assert_eq!(m["source"], format!("url:{}", files.url));
    let blob = std::fs::read(srv.dir.path().join(format!("models/blobs/sha256-{sha}"))).unwrap();
    assert!(blob == *data, "the blob is the file, byte for byte");
    assert!(leftovers(&srv).is_empty(), "{:?}", leftovers(&srv));
    assert_eq!(srv.events(&admin, "model.pull").await.len(), 1);
    assert!(srv.events(&admin, "model.import").await.iter().any(|e| e["resource"] == "model:smol-net:latest"));
    let (_, list) = srv.get("/api/v1/models/imports", &admin).await;
    assert_eq!(list["data"][0]["phase"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_digest_or_a_server_error_registers_nothing() {
    let (data, sha) = smol();
    let files = file_server(data, Faults::default()).await;
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let wrong = sha.chars().rev().collect::<String>();
    let (s, v) =
        srv.post("/api/v1/models", &admin, json!({"url": files.url, "name": "smol-bad", "sha256": wrong})).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let last = follow(&srv, &admin, v["id"].as_str().unwrap()).await.pop().unwrap();
    assert_eq!(last["phase"], "failed");
    assert!(last["error"].as_str().unwrap().contains("SHA-256 mismatch"), "{last}");
    let (s, _) = srv.get("/api/v1/models/smol-bad", &admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(leftovers(&srv).is_empty(), "a mismatching download is discarded: {:?}", leftovers(&srv));
    assert!(srv.events(&admin, "model.pull").await.iter().any(|e| e["outcome"] == "failure"));

    let gone = file_server(Arc::new(Vec::new()), Faults { status: Some(404), ..Faults::default() }).await;
    let (_, v) = srv.post("/api/v1/models", &admin, json!({"url": gone.url, "name": "smol-404"})).await;
    let last = follow(&srv, &admin, v["id"].as_str().unwrap()).await.pop().unwrap();
    assert_eq!(last["phase"], "failed");
    assert!(last["error"].as_str().unwrap().contains("404"), "{last}");
    let (_, models) = srv.get("/api/v1/models", &admin).await;
    assert!(models["data"].as_array().unwrap().is_empty(), "{models}");

    for (bad, param) in [
        (json!({"url": "ftp://example.com/x.gguf", "name": "x"}), "url"),
        (json!({"url": "not a url", "name": "x"}), "url"),
        (json!({"url": files.url, "name": "x", "sha256": "abc"}), "sha256"),
        (json!({"url": files.url, "path": "/tmp/x.gguf", "name": "x"}), "path"),
        (json!({"name": "x"}), "path"),
    ] {
        let (s, v) = srv.post("/api/v1/models", &admin, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_error_shape(&v);
        assert_eq!(v["error"]["param"], param, "{v}");
    }
    let (_, user) = srv.user(&admin, "gina", "user").await;
    let (s, _) = srv.post("/api/v1/models", &user, json!({"url": files.url, "name": "x"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_download_stops_it_and_leaves_nothing() {
    let (data, _) = smol();
    let files = file_server(data, Faults { slow: true, ..Faults::default() }).await;
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, v) = srv.post("/api/v1/models", &admin, json!({"url": files.url, "name": "smol-slow"})).await;
    let id = v["id"].as_str().unwrap().to_owned();
    // Wait (on the event stream, not a timer) until bytes are arriving.
    let resp =
        srv.http.get(srv.url(&format!("/api/v1/models/imports/{id}/events"))).bearer_auth(&admin).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    loop {
        seen.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
        let moving = seen
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["bytes"].as_u64() > Some(0) && e["rate_bytes_per_sec"].as_f64() > Some(0.0));
        if moving {
            break;
        }
    }
    let (s, v) = srv.req(Method::DELETE, &format!("/api/v1/models/imports/{id}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let last = follow(&srv, &admin, &id).await.pop().unwrap();
    assert_eq!(last["phase"], "cancelled", "{last}");
    assert!(last["bytes"].as_u64().unwrap() < last["total"].as_u64().unwrap());
    let (s, _) = srv.req(Method::DELETE, &format!("/api/v1/models/imports/{id}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = srv.get("/api/v1/models/smol-slow", &admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(leftovers(&srv).is_empty(), "{:?}", leftovers(&srv));
    assert!(srv.events(&admin, "model.pull").await.iter().any(|e| e["details"]["error"] == "cancelled"));
}

/// Export `models` from `srv` as a bundle file.
async fn export(srv: &Server, tok: &str, models: Value, out: &std::path::Path) -> StatusCode {
    let resp = srv
        .http
        .post(srv.url("/api/v1/bundles"))
        .bearer_auth(tok)
        .json(&json!({"models": models}))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    if status == StatusCode::OK {
        assert_eq!(resp.headers()["content-type"], "application/x-tar");
        std::fs::write(out, resp.bytes().await.unwrap()).unwrap();
    }
    status
}

/// A tar's entries as (name, bytes).
type Entries = Vec<(String, Vec<u8>)>;

fn entries(path: &std::path::Path) -> Entries {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

fn write_tar(path: &std::path::Path, items: &Entries) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for (name, data) in items {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.finish().unwrap();
}

async fn import_bundle(srv: &Server, tok: &str, body: Value) -> (StatusCode, Value) {
    srv.post("/api/v1/bundles/import", tok, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_signed_bundle_carries_models_to_another_appliance() {
    let (_, sha) = smol();
    let a = Server::start().await;
    let a_admin = a.setup().await;
    for name in ["smol", "smol:copy"] {
        let (s, v) = a.post("/api/v1/models", &a_admin, json!({"path": model_file(SMOL), "name": name})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("site.tar");
    assert_eq!(export(&a, &a_admin, json!(["smol", "smol:copy"]), &file).await, StatusCode::OK);
    let items = entries(&file);
    let names: Vec<&str> = items.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["manifest.json", "manifest.sig", &format!("blobs/sha256-{sha}")], "one blob for two tags");
    let manifest: Value = serde_json::from_slice(&items[0].1).unwrap();
    let a_key = std::fs::read_to_string(a.dir.path().join("keys/sm2.pub")).unwrap().trim().to_owned();
    assert_eq!(manifest["signer"], a_key);
    assert_eq!(manifest["blobs"][0]["sm3"].as_str().unwrap().len(), 64);
    assert_eq!(manifest["models"].as_array().unwrap().len(), 2);
    assert_eq!(export(&a, &a_admin, json!(["nosuch"]), &tmp.path().join("x.tar")).await, StatusCode::NOT_FOUND);
    assert_eq!(a.events(&a_admin, "bundle.create").await.len(), 1);

    let b = Server::start().await;
    let b_admin = b.setup().await;
    let b_key = std::fs::read_to_string(b.dir.path().join("keys/sm2.pub")).unwrap().trim().to_owned();
    let (s, v) = import_bundle(&b, &b_admin, json!({"path": file, "trust": b_key})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "signed by A, not by B: {v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not by the trusted key"), "{v}");
    let (s, v) = import_bundle(&b, &b_admin, json!({"path": file, "trust": a_key})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["signed"].as_bool(), v["trusted"].as_bool()), (Some(true), Some(true)));
    let ids: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["smol:latest", "smol:copy"]);
    let (s, m) = b.get("/api/v1/models/smol:copy", &b_admin).await;
    assert_eq!((s, m["sha256"].as_str()), (StatusCode::OK, Some(sha.as_str())));
    assert!(b.dir.path().join(format!("models/blobs/sha256-{sha}")).exists());
    let ev = b.events(&b_admin, "bundle.import").await;
    assert!(ev.iter().any(|e| e["outcome"] == "success" && e["details"]["signer"] == a_key), "{ev:?}");
    // Importing again: the names exist, nothing changes, nothing is left behind.
    let (s, v) = import_bundle(&b, &b_admin, json!({"path": file, "trust": a_key})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
    let (_, list) = b.get("/api/v1/models", &b_admin).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_unsigned_and_truncated_bundles_are_refused() {
    let a = Server::start().await;
    let a_admin = a.setup().await;
    let (s, _) = a.post("/api/v1/models", &a_admin, json!({"path": model_file(SMOL), "name": "smol"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.tar");
    assert_eq!(export(&a, &a_admin, json!(["smol"]), &good).await, StatusCode::OK);
    let items = entries(&good);

    let b = Server::start().await;
    let b_admin = b.setup().await;
    let refused = |name: &str, mutate: &dyn Fn(&mut Entries)| {
        let mut changed = items.clone();
        mutate(&mut changed);
        let path = tmp.path().join(name);
        write_tar(&path, &changed);
        path
    };
    let flipped = refused("flipped.tar", &|it| {
        let blob = &mut it[2].1;
        let mid = blob.len() / 2;
        blob[mid] ^= 0x01;
    });
    let relabelled = refused("relabelled.tar", &|it| {
        let m = String::from_utf8(it[0].1.clone()).unwrap().replace("\"admin\"", "\"mallory\"");
        it[0].1 = m.into_bytes();
    });
    let unsigned = refused("unsigned.tar", &|it| {
        it.remove(1);
    });
    let extra = refused("extra.tar", &|it| it.push(("notes/evil.sh".into(), b"x".to_vec())));
    let truncated = tmp.path().join("truncated.tar");
    let bytes = std::fs::read(&good).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let not_tar = tmp.path().join("noise.tar");
    std::fs::write(&not_tar, b"this is not a tar file at all").unwrap();

    for (path, reason, expect) in [
        (&flipped, "digest_mismatch", "does not match its digests"),
        (&relabelled, "bad_signature", "signature does not verify"),
        (&unsigned, "unsigned", "unsigned"),
        (&extra, "malformed", "unexpected entry"),
        (&truncated, "malformed", "not a valid maasbox bundle"),
        (&not_tar, "malformed", "not a valid maasbox bundle"),
    ] {
        let (s, v) = import_bundle(&b, &b_admin, json!({"path": path})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{}: {v}", path.display());
        assert_error_shape(&v);
        assert!(v["error"]["message"].as_str().unwrap().contains(expect), "{}: {v}", path.display());
        let ev = b.events(&b_admin, "bundle.import").await;
        assert!(ev.iter().any(|e| e["outcome"] == "failure" && e["details"]["path"] == json!(path)), "{reason}");
        assert!(ev.iter().any(|e| e["outcome"] == "failure" && e["details"]["error"].is_string()));
    }
    let (_, list) = b.get("/api/v1/models", &b_admin).await;
    assert!(list["data"].as_array().unwrap().is_empty(), "nothing registered: {list}");
    assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
    assert!(!b.dir.path().join("notes").exists());

    // Unsigned is accepted only when asked for, and only without a trusted key.
    let a_key = std::fs::read_to_string(a.dir.path().join("keys/sm2.pub")).unwrap().trim().to_owned();
    let (s, _) = import_bundle(&b, &b_admin, json!({"path": unsigned, "allow_unsigned": true, "trust": a_key})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = import_bundle(&b, &b_admin, json!({"path": unsigned, "allow_unsigned": true})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["signed"].as_bool(), v["trusted"].as_bool()), (Some(false), Some(false)));
    let (s, v) = import_bundle(&b, &b_admin, json!({"path": "/nonexistent/site.tar"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = import_bundle(&b, &b_admin, json!({"path": good, "trust": "zz"})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("trust")));
}
