//! The knowledge index through the real router: the real MiniLM embedding model and SmolLM2,
//! the sample documents in assets/samples, sled and SQLite files in a temp data directory.

mod common;

use common::*;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/../../assets/samples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

async fn upload(srv: &Server, tok: &str, kb: &str, files: Vec<(String, Vec<u8>)>) -> (StatusCode, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, bytes) in files {
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name));
    }
    let resp = srv
        .http
        .post(srv.url(&format!("/api/v1/knowledge/{kb}/documents")))
        .bearer_auth(tok)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let s = resp.status();
    (s, resp.json().await.unwrap())
}

/// Every progress event of a job until it ends.
async fn follow(srv: &Server, tok: &str, job: &str) -> Vec<Value> {
    let resp =
        srv.http.get(srv.url(&format!("/api/v1/knowledge/jobs/{job}/events"))).bearer_auth(tok).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let (mut buf, mut out) = (String::new(), Vec::new());
    while let Some(chunk) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            if let Some(d) = ev.lines().find_map(|l| l.strip_prefix("data:")) {
                out.push(serde_json::from_str::<Value>(d.trim()).unwrap());
            }
        }
    }
    out
}

/// SSE data lines of a streaming chat response.
async fn stream_chat(srv: &Server, tok: &str, body: Value) -> Vec<String> {
    let resp = srv.http.post(srv.url("/v1/chat/completions")).bearer_auth(tok).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    text.lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_owned)).collect()
}

async fn prepared() -> (Server, String) {
    let srv = Server::start_with(|c| c.engine.threads = 2).await;
    let admin = srv.setup().await;
    let (s, v) =
        srv.post("/api/v1/models", &admin, json!({"path": model_file(MINILM), "name": "all-minilm-l6-v2"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = srv.post("/api/v1/models", &admin, json!({"path": model_file(SMOL), "name": "smollm2:135m"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (srv, admin)
}

async fn search(srv: &Server, tok: &str, kb: &str, query: &str, mode: &str) -> Vec<Value> {
    let (s, v) = srv
        .post(&format!("/api/v1/knowledge/{kb}/search"), tok, json!({"query": query, "mode": mode, "top_k": 3}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["data"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_every_format_search_and_answer_with_citations() {
    let (srv, admin) = prepared().await;
    let (s, kb) = srv
        .post(
            "/api/v1/knowledge",
            &admin,
            json!({"name": "docs", "description": "samples", "chunk_tokens": 64, "chunk_overlap": 8}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{kb}");
    assert_eq!(kb["embedding_model"], "all-minilm-l6-v2:latest");
    assert_eq!(kb["dim"], 384);
    assert_eq!(kb["visibility"], json!({"users": ["admin"]}), "private to its owner by default");

    let names = ["guide.md", "notice.html", "zh.txt", "handbook.pdf", "report.docx", "contract.ofd"];
    let mut files: Vec<(String, Vec<u8>)> = names.iter().map(|n| (n.to_string(), sample(n))).collect();
    let mut broken = sample("handbook.pdf");
    broken.truncate(300);
    files.push(("broken.pdf".into(), broken));
    let (s, job) = upload(&srv, &admin, "docs", files).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{job}");
    let events = follow(&srv, &admin, job["id"].as_str().unwrap()).await;
    let last = events.last().unwrap();
    assert_eq!(last["phase"], "done", "{last}");
    assert!(events.len() >= 3, "progress arrives as it happens: {events:?}");
    assert!(events.windows(2).all(|w| w[0]["embedded"].as_u64() <= w[1]["embedded"].as_u64()));
    assert_eq!(last["parsed"], 6);
    assert_eq!(last["embedded"], last["chunked"]);
    for f in last["files"].as_array().unwrap() {
        if f["name"] == "broken.pdf" {
            assert_eq!(f["status"], "failed", "{f}");
            assert!(f["error"].as_str().unwrap().contains("PDF"), "{f}");
        } else {
            assert_eq!(f["status"], "ready", "{f}");
        }
    }
    let (_, docs) = srv.get("/api/v1/knowledge/docs/documents", &admin).await;
    let docs = docs["data"].as_array().unwrap().clone();
    assert_eq!(docs.len(), 7);
    let broken = docs.iter().find(|d| d["name"] == "broken.pdf").unwrap();
    assert_eq!(broken["status"], "failed");

    // the same content again is a no-op
    let (s, job2) = upload(&srv, &admin, "docs", vec![("copy-of-guide.md".into(), sample("guide.md"))]).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(job2["files"][0]["status"], "duplicate");
    let guide = docs.iter().find(|d| d["name"] == "guide.md").unwrap();
    assert_eq!(job2["files"][0]["document"], guide["id"]);

    // each format is findable, with its anchor
    let top = |hits: &[Value]| {
        (hits[0]["document"].as_str().unwrap().to_owned(), hits[0]["anchor"].as_str().unwrap().to_owned())
    };
    let hits = search(&srv, &admin, "docs", "another process holds the data directory lock", "hybrid").await;
    assert_eq!(top(&hits), ("guide.md".into(), "maasbox guide › Troubleshooting".into()));
    assert!(hits[0]["vector_rank"].is_number() && hits[0]["keyword_rank"].is_number(), "{}", hits[0]);
    let hits = search(&srv, &admin, "docs", "badges worn inside the data centre", "vector").await;
    // both short pages fit one chunk, which cites the span
    assert_eq!(top(&hits), ("handbook.pdf".into(), "p. 1–2".into()));
    let hits = search(&srv, &admin, "docs", "违约金", "keyword").await;
    assert_eq!(top(&hits), ("contract.ofd".into(), "p. 1–2".into()));
    let hits = search(&srv, &admin, "docs", "倒数排名融合", "keyword").await;
    assert_eq!(hits[0]["document"], "zh.txt");
    let hits = search(&srv, &admin, "docs", "国产加速卡 供货", "hybrid").await;
    assert_eq!(top(&hits), ("report.docx".into(), "Quarterly Report › Risks › 风险".into()));

    // bad requests change nothing and say why
    for (body, param) in [
        (json!({"query": ""}), "query"),
        (json!({"query": "x", "top_k": 0}), "top_k"),
        (json!({"query": "x", "mode": "fuzzy"}), "mode"),
        (json!({"query": "x", "bases": ["docs"]}), "bases"),
    ] {
        let (s, v) = srv.post("/api/v1/knowledge/docs/search", &admin, body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_error_shape(&v);
        assert!(
            v["error"]["param"].as_str().unwrap_or_default().contains(param)
                || v["error"]["message"].as_str().unwrap().contains(param),
            "{v}"
        );
    }

    // grants: a developer sees nothing of a private base, not even that it exists
    let (_, dev) = srv.user(&admin, "dev", "developer").await;
    let (s, v) = srv.get("/api/v1/knowledge/docs", &dev).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, missing) = srv.get("/api/v1/knowledge/nothing-here", &dev).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(
        v["error"]["message"].as_str().unwrap().replace("docs", "X"),
        missing["error"]["message"].as_str().unwrap().replace("nothing-here", "X")
    );
    let (_, list) = srv.get("/api/v1/knowledge", &dev).await;
    assert_eq!(list["data"], json!([]));
    let (s, _) = srv.post("/api/v1/knowledge/search", &dev, json!({"bases": ["docs"], "query": "lock"})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let chat = json!({"model": "smollm2:135m", "max_tokens": 8, "messages": [{"role": "user", "content": "What holds the lock?"}], "knowledge": {"bases": ["docs"]}});
    let (s, v) = srv.post("/v1/chat/completions", &dev, chat.clone()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["param"], "knowledge.bases");
    let (s, v) = srv.patch("/api/v1/knowledge/docs", &admin, json!({"visibility": {"users": ["dev"]}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(search(&srv, &dev, "docs", "data directory lock", "keyword").await[0]["document"], "guide.md");
    let (s, _) = upload(&srv, &dev, "docs", vec![("x.txt".into(), b"text".to_vec())]).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "readers cannot add documents");
    let (s, _) = srv.req(Method::DELETE, "/api/v1/knowledge/docs", Some(&dev), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // retrieval-augmented chat: citations beside the answer, audited with the chunk ids
    let (s, v) = srv.post("/v1/chat/completions", &dev, chat.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cites = v["citations"].as_array().unwrap();
    assert!(!cites.is_empty() && cites.len() <= 4, "{v}");
    assert_eq!(cites[0]["index"], 1);
    assert!(cites.iter().any(|c| c["document"] == "guide.md"), "{cites:?}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 60, "the passages are in the prompt: {}", v["usage"]);
    let ev = srv.events(&admin, "inference.chat").await;
    let k = &ev[0]["details"]["knowledge"];
    assert_eq!(k["bases"], json!(["docs"]));
    assert_eq!(k["chunks"].as_array().unwrap().len(), cites.len());
    assert_eq!(k["chunks"][0], cites[0]["chunk_id"]);

    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    let lines = stream_chat(&srv, &dev, streamed).await;
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let cite_ev: Value = serde_json::from_str(&lines[lines.len() - 2]).unwrap();
    assert_eq!(cite_ev["object"], "chat.completion.chunk");
    assert!(!cite_ev["citations"].as_array().unwrap().is_empty(), "{cite_ev}");

    // malformed knowledge field
    let mut bad = chat.clone();
    bad["knowledge"] = json!({"bases": "docs"});
    let (s, v) = srv.post("/v1/chat/completions", &dev, bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["param"], "knowledge");

    // apps: their bases must exist; a caller gets passages only from bases they may read
    let (s, v) = srv
        .post("/api/v1/apps", &admin, json!({"name": "helper", "model": "smollm2:135m", "knowledge_bases": ["nope"]}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = srv
        .post("/api/v1/apps", &admin, json!({"name": "helper", "model": "smollm2:135m", "knowledge_bases": ["docs"]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let via_app = json!({"model": "app:helper", "max_tokens": 8, "messages": [{"role": "user", "content": "What holds the data directory lock?"}]});
    let (s, v) = srv.post("/v1/chat/completions", &dev, via_app.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!v["citations"].as_array().unwrap().is_empty());
    let (_, user) = srv.user(&admin, "plain", "user").await;
    let (s, v) = srv.post("/v1/chat/completions", &user, via_app).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["citations"], json!([]), "no grant on the base: no passages through the app either");

    // deleting a document removes it from every search
    let hb = docs.iter().find(|d| d["name"] == "handbook.pdf").unwrap()["id"].as_u64().unwrap();
    let (s, _) = srv.req(Method::DELETE, &format!("/api/v1/knowledge/docs/documents/{hb}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for mode in ["hybrid", "vector", "keyword"] {
        assert!(search(&srv, &admin, "docs", "badges worn inside the data centre", mode)
            .await
            .iter()
            .all(|h| h["document"] != "handbook.pdf"));
    }
    for action in
        ["knowledge.create", "knowledge.upload", "knowledge.ingest", "knowledge.update", "knowledge.document.delete"]
    {
        assert!(!srv.events(&admin, action).await.is_empty(), "{action} audited");
    }
    let (s, v) = srv.get("/api/v1/audit/verify", &admin).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_an_ingestion_leaves_nothing_and_deleting_a_base_removes_all() {
    let (srv, admin) = prepared().await;
    let (s, _) = srv.post("/api/v1/knowledge", &admin, json!({"name": "big"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = srv.post("/api/v1/knowledge", &admin, json!({"name": "big"})).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = srv.post("/api/v1/knowledge", &admin, json!({"name": "x", "embedding_model": "smollm2:135m"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not an embedding model"), "{v}");
    let long: String =
        (0..3000).map(|i| format!("Paragraph {i} talks about topic {} at length.\n\n", i % 97)).collect();
    let (s, job) = upload(&srv, &admin, "big", vec![("long.txt".into(), long.into_bytes())]).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let id = job["id"].as_str().unwrap().to_owned();
    // wait until embedding has started, then cancel
    let resp =
        srv.http.get(srv.url(&format!("/api/v1/knowledge/jobs/{id}/events"))).bearer_auth(&admin).send().await.unwrap();
    let mut body = resp.bytes_stream();
    while let Some(c) = body.next().await {
        if String::from_utf8_lossy(&c.unwrap()).contains("\"status\":\"embedding\"") {
            break;
        }
    }
    let (s, v) = srv.req(Method::DELETE, &format!("/api/v1/knowledge/jobs/{id}"), Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["phase"], "cancelled", "{v}");
    assert_eq!(v["files"][0]["status"], "cancelled");
    let (_, docs) = srv.get("/api/v1/knowledge/big/documents", &admin).await;
    assert_eq!(docs["data"][0]["status"], "failed");
    let (_, b) = srv.get("/api/v1/knowledge/big", &admin).await;
    assert_eq!(b["chunks"], 0);
    assert!(search(&srv, &admin, "big", "topic", "keyword").await.is_empty());

    let (s, job) =
        upload(&srv, &admin, "big", vec![("small.md".into(), b"# Title\n\nsmall document about zebras".to_vec())])
            .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(follow(&srv, &admin, job["id"].as_str().unwrap()).await.last().unwrap()["phase"], "done");
    assert_eq!(search(&srv, &admin, "big", "zebras", "hybrid").await.len(), 1);
    let (s, _) = srv.req(Method::DELETE, "/api/v1/knowledge/big", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = srv.get("/api/v1/knowledge/big", &admin).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = srv.post("/api/v1/knowledge", &admin, json!({"name": "big"})).await;
    assert_eq!(s, StatusCode::CREATED, "the name is free again: {v}");
    let (_, v) = srv.get("/api/v1/knowledge/big", &admin).await;
    assert_eq!((v["documents"].as_u64(), v["chunks"].as_u64()), (Some(0), Some(0)), "nothing of the old base remains");
}
