//! Importing the real SmolLM2 from a local HTTP server: resume after a dropped connection,
//! digest mismatch, server errors, cancellation, and bad requests. Nothing but a verified,
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
    assert!(resumed > 0 && resumed <= data.len() as u64 / 2, "{resumed}");
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
