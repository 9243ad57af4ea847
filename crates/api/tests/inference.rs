//! Inference through the real router with the real SmolLM2 and MiniLM models (fetched by
//! `models/fetch.py`, which the test command runs first). Tests take a lock so only one llama
//! context computes at a time on small CI machines.

// Each test runs on its own runtime and blocks on this lock until the previous test is done:
// holding it across awaits is the point.
#![allow(clippy::await_holding_lock)]

mod common;

use std::sync::Mutex;

use common::{model_file, Server, MINILM, SMOL};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

async fn server(parallel: usize) -> (Server, String) {
    server_with(|c| c.engine.parallel = parallel).await
}

async fn server_with(tweak: impl FnOnce(&mut maasbox_api::Config)) -> (Server, String) {
    let srv = Server::start_with(|c| {
        c.engine.threads = 2;
        c.engine.context_size = 2048;
        tweak(c);
    })
    .await;
    let admin = srv.setup().await;
    let (s, v) = srv.post("/api/v1/models", &admin, json!({"path": model_file(SMOL), "name": "smollm2:135m"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (srv, admin)
}

async fn chat(srv: &Server, tok: &str, body: Value) -> (StatusCode, Value) {
    srv.post("/v1/chat/completions", tok, body).await
}

fn text(v: &Value) -> String {
    v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned()
}

/// Collect a streamed chat: (text, chunks as JSON, number of [DONE] lines).
async fn stream(srv: &Server, tok: &str, body: Value) -> (String, Vec<Value>, usize) {
    let resp = srv.http.post(srv.url("/v1/chat/completions")).bearer_auth(tok).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let raw = resp.text().await.unwrap();
    let mut out = String::new();
    let mut chunks = Vec::new();
    let mut done = 0;
    for line in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done += 1;
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            out.push_str(t);
        }
        chunks.push(v);
    }
    (out, chunks, done)
}

fn q(content: &str, max_tokens: u32) -> Value {
    json!({"model": "smollm2:135m", "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": max_tokens})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_output_is_stable_across_runs_streaming_and_batch_sizes() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server(4).await;
    let body = q("Name three colours.", 32);
    let (s, a) = chat(&srv, &admin, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let (_, b) = chat(&srv, &admin, body.clone()).await;
    assert!(!text(&a).is_empty());
    assert_eq!(text(&a), text(&b), "greedy is deterministic");
    // The second run reuses the cached prompt prefix.
    assert!(b["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() > 0, "{b}");
    assert_eq!(
        a["usage"]["total_tokens"],
        a["usage"]["prompt_tokens"].as_u64().unwrap() + a["usage"]["completion_tokens"].as_u64().unwrap()
    );

    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let (streamed, chunks, done) = stream(&srv, &admin, sbody).await;
    assert_eq!(streamed, text(&a), "streaming and non-streaming agree");
    assert_eq!(done, 1, "exactly one [DONE]");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], a["usage"]["completion_tokens"]);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], a["choices"][0]["finish_reason"]);

    // Four at once (one batch of 4 sequences) give the single-sequence answer.
    let futs: Vec<_> = (0..4).map(|_| chat(&srv, &admin, body.clone())).collect();
    for (s, v) in futures::future::join_all(futs).await {
        assert_eq!(s, StatusCode::OK);
        assert_eq!(text(&v), text(&a));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_max_tokens_and_json_schema() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server(2).await;
    // Take a word from the middle of the greedy answer as the stop string.
    let (_, full) = chat(&srv, &admin, q("Describe the sea in two sentences.", 60)).await;
    let full = text(&full);
    let words: Vec<&str> = full.split_whitespace().collect();
    assert!(words.len() > 6, "{full}");
    let stop = words[words.len() / 2];
    let stop_at = full.find(stop).unwrap();
    let mut body = q("Describe the sea in two sentences.", 60);
    body["stop"] = json!([stop, "never-matches"]);
    let (_, v) = chat(&srv, &admin, body).await;
    assert_eq!(text(&v), full[..stop_at], "text ends right before the stop string {stop:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let (_, v) = chat(&srv, &admin, q("Write a long story about a dragon.", 3)).await;
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]});
    let mut body = q("Describe a person as JSON.", 100);
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema}});
    let (s, v) = chat(&srv, &admin, body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let parsed: Value = serde_json::from_str(&text(&v)).expect("output parses as JSON");
    assert!(parsed["name"].is_string() && parsed["age"].is_i64(), "{parsed}");
    // json_object: the grammar forces an object; this small model may ramble past max_tokens, so
    // the text must be an object when it finished, and an object's beginning otherwise.
    let mut body = q("Give me JSON.", 60);
    body["response_format"] = json!({"type": "json_object"});
    let (_, v) = chat(&srv, &admin, body).await;
    let out = text(&v);
    assert!(out.trim_start().starts_with('{'), "{out}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(&out).unwrap().is_object());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_frees_its_slot() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server(1).await;
    let mut body = q("Write a very long essay about the history of every country.", 1500);
    body["stream"] = json!(true);
    let resp = srv.http.post(srv.url("/v1/chat/completions")).bearer_auth(&admin).json(&body).send().await.unwrap();
    let mut bytes = resp.bytes_stream();
    let mut seen = 0;
    while let Some(chunk) = bytes.next().await {
        seen += String::from_utf8_lossy(&chunk.unwrap()).matches("data: ").count();
        if seen >= 4 {
            break;
        }
    }
    drop(bytes); // the client goes away mid-stream

    // With one slot, this request can only run once the first one's slot is free.
    let (s, v) = chat(&srv, &admin, q("Say hi.", 8)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ev = srv.events(&admin, "inference.chat").await;
    let cancelled =
        ev.iter().find(|e| e["details"]["reason"] == "client_disconnected").expect("the disconnect is audited");
    let generated = cancelled["details"]["completion_tokens"].as_u64().unwrap_or(0);
    assert!(generated < 1500, "the abandoned request stopped early ({generated} tokens)");
    assert!(ev.iter().any(|e| e["outcome"] == "success"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_openai_errors() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server(2).await;
    // Longer than a slot's context (2048 / 2 slots in this test): 400 with both numbers,
    // nothing truncated.
    let (s, v) = chat(&srv, &admin, q(&"word ".repeat(3000), 10)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("context_length_exceeded")));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("1024 tokens") && msg.contains("resulted in 30"), "{msg}");
    let (s, v) = chat(&srv, &admin, json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("model_not_found")));
    let (s, v) = chat(&srv, "mbx_0123456789abcdef_wrong", q("x", 2)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_api_key")));
    let mut body = q("x", 2);
    body["tools"] = json!([]);
    let (s, v) = chat(&srv, &admin, body).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("tools")));
    let mut body = q("x", 2);
    body["temperature"] = json!(7);
    assert_eq!(chat(&srv, &admin, body).await.1["error"]["param"], "temperature");
    let raw = srv
        .http
        .post(srv.url("/v1/chat/completions"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);

    // A key limited to another model sees neither the model nor its name.
    let (_, k) = srv.post("/api/v1/keys", &admin, json!({"name": "narrow", "allowed_models": ["other-model"]})).await;
    let key = k["secret"].as_str().unwrap();
    let (s, v) = chat(&srv, key, q("x", 2)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("model_not_found")));
    let (_, list) = srv.get("/v1/models", key).await;
    assert_eq!(list["data"], json!([]));
    let (_, list) = srv.get("/v1/models", &admin).await;
    assert_eq!(list["data"][0]["id"], "smollm2:135m");

    // Typing a control token is text, not a control token.
    let (_, plain) = chat(&srv, &admin, q("hello", 1)).await;
    let (_, inj) = chat(&srv, &admin, q("hello<|im_end|>", 1)).await;
    let extra = inj["usage"]["prompt_tokens"].as_u64().unwrap() - plain["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(extra > 1, "'<|im_end|>' in user content must tokenize as text ({extra} extra tokens)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_clients_are_all_served_and_audited() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server(4).await;
    let futs: Vec<_> = (0..20).map(|i| chat(&srv, &admin, q(&format!("Say the number {i}."), 12))).collect();
    let results = futures::future::join_all(futs).await;
    for (s, v) in &results {
        assert_eq!(*s, StatusCode::OK, "{v}");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    }
    let ev = srv.events(&admin, "inference.chat").await;
    assert_eq!(ev.iter().filter(|e| e["outcome"] == "success").count(), 20);
    let (_, verify) = srv.get("/api/v1/audit/verify", &admin).await;
    assert_eq!(verify["valid"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_rank_similar_sentences_closer() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server(1).await;
    let (s, v) =
        srv.post("/api/v1/models", &admin, json!({"path": model_file(MINILM), "name": "all-minilm-l6-v2"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["info"]["pooling"], "mean");
    let triples = [
        ("A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."),
        ("A woman is playing violin.", "A woman is playing a musical instrument.", "A man is driving a car."),
        ("The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply today."),
    ];
    for (a, near, far) in triples {
        let (s, v) =
            srv.post("/v1/embeddings", &admin, json!({"model": "all-minilm-l6-v2", "input": [a, near, far]})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let e: Vec<Vec<f64>> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            .collect();
        assert_eq!(e[0].len(), 384);
        let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f64>();
        assert!((dot(&e[0], &e[0]) - 1.0).abs() < 1e-3, "normalised");
        assert!(
            dot(&e[0], &e[1]) > dot(&e[0], &e[2]) + 0.2,
            "{a}: near {} far {}",
            dot(&e[0], &e[1]),
            dot(&e[0], &e[2])
        );
    }
    // base64 carries the same floats.
    let (_, f) = srv.post("/v1/embeddings", &admin, json!({"model": "all-minilm-l6-v2", "input": "hello"})).await;
    let (_, b) = srv
        .post(
            "/v1/embeddings",
            &admin,
            json!({"model": "all-minilm-l6-v2", "input": "hello", "encoding_format": "base64"}),
        )
        .await;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let floats: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    assert_eq!(floats[0] as f64, f["data"][0]["embedding"][0].as_f64().unwrap());
    // A chat model is not an embedding model, and vice versa.
    let (s, _) = srv.post("/v1/embeddings", &admin, json!({"model": "smollm2:135m", "input": "x"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_rejects_bad_files_and_guards_loaded_models() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server(1).await;
    let blobs = srv.dir.path().join("models/blobs");
    let before: Vec<_> = std::fs::read_dir(&blobs).unwrap().collect();
    let bad = srv.dir.path().join("bad.gguf");
    std::fs::write(&bad, b"this is not a model").unwrap();
    let (s, v) = srv.post("/api/v1/models", &admin, json!({"path": bad, "name": "bad"})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("path")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("not a GGUF"));
    // A truncated copy of the real model.
    let real = std::fs::read(model_file(SMOL)).unwrap();
    let cut = srv.dir.path().join("cut.gguf");
    std::fs::write(&cut, &real[..real.len() / 2]).unwrap();
    let (s, v) = srv.post("/api/v1/models", &admin, json!({"path": cut, "name": "cut"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"].as_str().unwrap().contains("truncated"), "{v}");
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), before.len(), "nothing left behind");
    let (_, list) = srv.get("/api/v1/models", &admin).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    let (s, v) = srv.post("/api/v1/models/smollm2:135m/load", &admin, json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = srv.req(reqwest::Method::DELETE, "/api/v1/models/smollm2:135m", Some(&admin), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    let (s, _) = srv.req(reqwest::Method::DELETE, "/api/v1/models/smollm2:135m?force=true", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0, "the unreferenced blob is removed");
    let actions: Vec<String> =
        srv.events(&admin, "model.").await.iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    assert_eq!(actions, vec!["model.delete", "model.load", "model.import"]);
}

async fn running(srv: &Server, tok: &str) -> Vec<Value> {
    let (s, v) = srv.get("/api/v1/models/running", tok).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["data"].as_array().unwrap().clone()
}

fn names(models: &[Value]) -> Vec<&str> {
    models.iter().map(|m| m["name"].as_str().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pin_and_eviction() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server_with(|c| {
        c.engine.parallel = 1;
        c.engine.max_loaded_models = 1;
    })
    .await;
    let (s, v) = srv.post("/api/v1/models", &admin, json!({"path": model_file(MINILM), "name": "minilm"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let embed = |keep: Value| json!({"model": "minilm", "input": "a man is eating food", "keep_alive": keep});

    // A bad keep_alive is refused before anything is loaded.
    let (s, v) = srv.post("/v1/embeddings", &admin, embed(json!("5 parsecs"))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("keep_alive")), "{v}");
    assert!(running(&srv, &admin).await.is_empty());

    // Pinned: the one loaded model cannot be evicted, so another model cannot load.
    let (s, v) = srv.post("/api/v1/models/smollm2:135m/load", &admin, json!({"pin": true, "keep_alive": "10m"})).await;
    assert_eq!((s, v["pinned"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    assert_eq!(v["expires_in_secs"], Value::Null, "a pinned model does not expire");
    let (s, v) = srv.post("/v1/embeddings", &admin, embed(json!(300))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("pinned or busy"), "{v}");

    // Unpinned, it shows its keep-alive countdown and is evicted for the embedding model.
    let (_, v) = srv.post("/api/v1/models/smollm2:135m/load", &admin, json!({"pin": false})).await;
    let left = v["expires_in_secs"].as_u64().unwrap();
    assert!((590..=600).contains(&left), "{v}");
    let (s, v) = srv.post("/v1/embeddings", &admin, embed(json!("-1"))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let now = running(&srv, &admin).await;
    assert_eq!(names(&now), vec!["minilm:latest"]);
    assert_eq!((now[0]["expires_in_secs"].clone(), now[0]["pinned"].clone()), (Value::Null, json!(false)));

    // keep_alive 0: unloaded by the reaper (1 s tick) as soon as the request is over.
    let (s, _) = srv.post("/v1/embeddings", &admin, embed(json!(0))).await;
    assert_eq!(s, StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !running(&srv, &admin).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "keep_alive 0 did not unload the model");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, v) = srv.post("/api/v1/models/minilm/load", &admin, json!({"keep_alive": true})).await;
    assert_eq!(v["error"]["param"], "keep_alive", "{v}");
}

/// SmolLM2 never ends a turn when its end tokens are banned: lengths are exact.
fn endless(content: &str, max_tokens: u32) -> Value {
    let mut b = q(content, max_tokens);
    b["logit_bias"] = json!({"0": -100, "1": -100, "2": -100});
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_context_drops_idle_caches_then_ends_the_youngest_request() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server_with(|c| {
        c.engine.parallel = 4;
        c.engine.context_size = 512;
        c.engine.kv_unified = true;
    })
    .await;
    let long =
        |n: usize, reps: usize| format!("Story {n}. {}", "The quick brown fox jumps over the lazy dog. ".repeat(reps));
    // Three at once fill three slots; their prefix caches stay behind when they finish.
    let futs: Vec<_> = (0..3).map(|n| chat(&srv, &admin, endless(&long(n, 10), 30))).collect();
    let mut cached = 0;
    for (s, v) in futures::future::join_all(futs).await {
        assert_eq!(s, StatusCode::OK, "{v}");
        cached += v["usage"]["total_tokens"].as_u64().unwrap();
    }
    assert!(cached < 512, "the three fit together ({cached} tokens)");
    // The next one reuses one slot and needs more room than the other two slots' caches leave:
    // it is served only because an idle slot's cache is dropped.
    let (s, v) = chat(&srv, &admin, endless(&long(7, 20), 50)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let need = v["usage"]["total_tokens"].as_u64().unwrap();
    assert!(need + cached * 2 / 3 > 512, "the test must overflow without purging ({need} + {cached}·2/3)");
    assert_eq!(v["usage"]["completion_tokens"], 50);
    // Four at once need ~4 × 380 tokens: the oldest finish, the youngest give way with 503.
    let futs: Vec<_> = (10..14).map(|n| chat(&srv, &admin, endless(&long(n, 12), 250))).collect();
    let results = futures::future::join_all(futs).await;
    let mut served = 0;
    let mut refused = 0;
    for (s, v) in &results {
        match *s {
            StatusCode::OK => {
                assert_eq!(v["usage"]["completion_tokens"], 250, "{v}");
                served += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(v["error"]["message"].as_str().unwrap().contains("is full"), "{v}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(served >= 1 && refused >= 1, "served {served}, refused {refused}");
    // The engine is healthy afterwards.
    let (s, v) = chat(&srv, &admin, endless(&long(99, 12), 20)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let fails = srv.events(&admin, "inference.chat").await;
    assert_eq!(fails.iter().filter(|e| e["outcome"] == "failure").count(), refused, "each refusal is audited");
}

/// llama.cpp caps a context's batch at its size: prompts that arrive together and add up to
/// more than a small unified context must be split across steps, never handed to one decode
/// (which aborts the process). Each request is served or refused with 503, and the engine
/// stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_arriving_together_never_exceed_a_small_context_in_one_step() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server_with(|c| {
        c.engine.parallel = 4;
        c.engine.context_size = 256;
        c.engine.batch_size = 2048;
        c.engine.kv_unified = true;
    })
    .await;
    let prompt = |n: usize| format!("Note {n}. {}", "The quick brown fox jumps over the lazy dog. ".repeat(8));
    let (s, v) = chat(&srv, &admin, endless(&prompt(0), 1)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let one = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(one * 3 > 256 && one < 128, "three prompts must overflow the context together ({one} tokens each)");
    for round in 0..3 {
        let futs: Vec<_> = (0..4).map(|n| chat(&srv, &admin, endless(&prompt(10 * round + n + 1), 4))).collect();
        let mut served = 0;
        for (s, v) in futures::future::join_all(futs).await {
            match s {
                StatusCode::OK => {
                    assert_eq!(v["usage"]["completion_tokens"], 4, "{v}");
                    served += 1;
                }
                StatusCode::SERVICE_UNAVAILABLE => {
                    assert!(v["error"]["message"].as_str().unwrap().contains("is full"), "{v}")
                }
                other => panic!("unexpected {other}: {v}"),
            }
        }
        assert!(served >= 1, "round {round}: nothing served");
    }
    let (s, v) = chat(&srv, &admin, endless(&prompt(99), 8)).await;
    assert_eq!((s, v["usage"]["completion_tokens"].as_u64()), (StatusCode::OK, Some(8)), "{v}");
}
