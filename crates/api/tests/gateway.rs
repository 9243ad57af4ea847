//! The gateway with the real SmolLM2: quotas under concurrency, settlement on disconnect,
//! counters across a restart, model visibility, apps and app-scoped keys, usage reports.

// Each test blocks on this lock until the previous one is done: holding it across awaits is
// the point (one llama context computing at a time on small machines).
#![allow(clippy::await_holding_lock)]

mod common;

use std::sync::Mutex;

use common::{assert_error_shape, model_file, Server, SMOL};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

async fn server() -> (Server, String) {
    let srv = Server::start_with(|c| {
        c.engine.threads = 2;
        c.engine.context_size = 2048;
    })
    .await;
    let admin = srv.setup().await;
    import_smol(&srv, &admin).await;
    (srv, admin)
}

async fn import_smol(srv: &Server, admin: &str) {
    let (s, v) = srv.post("/api/v1/models", admin, json!({"path": model_file(SMOL), "name": "smollm2:135m"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

fn q(model: &str, content: &str, max_tokens: Option<u32>) -> Value {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0});
    if let Some(m) = max_tokens {
        v["max_tokens"] = json!(m);
    }
    v
}

async fn key(srv: &Server, tok: &str, body: Value) -> String {
    let (s, v) = srv.post("/api/v1/keys", tok, body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["secret"].as_str().unwrap().to_owned()
}

fn usage_rows(srv: &Server, sql_where: &str) -> Vec<(i64, i64, i64)> {
    let db = srv.db();
    let mut st = db
        .prepare(&format!("SELECT status, prompt_tokens, completion_tokens FROM usage WHERE {sql_where} ORDER BY id"))
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_requests_against_ten_per_minute_let_exactly_ten_through() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server().await;
    let (alice_id, alice) = srv.user(&admin, "alice", "user").await;
    // Limits on a key need an admin; alice's own account has none.
    let k = key(&srv, &admin, json!({"name": "ten", "user_id": alice_id, "limits": {"requests_per_minute": 10}})).await;
    // Load the model first so the burst measures admission, not loading.
    let (s, v) = srv.post("/v1/chat/completions", &admin, q("smollm2:135m", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let body = q("smollm2:135m", "Say hi.", Some(2));
    let sends = (0..50).map(|_| {
        let r = srv.http.post(srv.url("/v1/chat/completions")).bearer_auth(&k).json(&body).send();
        async move {
            let r = r.await.unwrap();
            let retry = r.headers().get("retry-after").and_then(|h| h.to_str().ok()).map(str::to_owned);
            (r.status(), retry, r.json::<Value>().await.unwrap())
        }
    });
    let results = futures::future::join_all(sends).await;
    let ok = results.iter().filter(|(s, ..)| *s == StatusCode::OK).count();
    let limited: Vec<_> = results.iter().filter(|(s, ..)| *s == StatusCode::TOO_MANY_REQUESTS).collect();
    assert_eq!(ok, 10, "exactly the limit gets through");
    assert_eq!(limited.len(), 40);
    for (_, retry, v) in &limited {
        let (kind, code) = assert_error_shape(v);
        assert_eq!((kind.as_str(), code.as_str()), ("requests", "rate_limit_exceeded"));
        let secs: u64 = retry.as_deref().expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&secs), "{secs}");
    }
    // Every request is metered (40 refusals as 429 rows) and every refusal audited.
    let rows = usage_rows(&srv, "key_id IS NOT NULL");
    assert_eq!(rows.iter().filter(|r| r.0 == 200).count(), 10);
    assert_eq!(rows.iter().filter(|r| r.0 == 429).count(), 40);
    let denied = srv.events(&admin, "inference.chat").await.into_iter().filter(|e| e["outcome"] == "denied").count();
    assert_eq!(denied, 40);
    // The report agrees, and alice sees only her own use.
    let (s, v) = srv.get("/api/v1/usage?group_by=key", &alice).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["scope"], "alice");
    let rows = v["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!((rows[0]["requests"].as_i64(), rows[0]["errors"].as_i64()), (Some(50), Some(40)));
    let (_, all) = srv.get("/api/v1/usage?group_by=user", &admin).await;
    let users: Vec<&str> = all["data"].as_array().unwrap().iter().map(|r| r["group"].as_str().unwrap()).collect();
    assert_eq!(users, ["admin", "alice"]);
    let (s, v) = srv.get("/api/v1/usage?group_by=user&user_id=1", &alice).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = srv.get("/api/v1/usage?group_by=colour", &admin).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = srv.get("/api/v1/usage?from=yesterday", &admin).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // A user may not lift their own key's limits.
    let kid = k.split('_').nth(1).unwrap();
    let (s, v) = srv.patch(&format!("/api/v1/keys/{kid}"), &alice, json!({"limits": {}})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = srv.patch(&format!("/api/v1/keys/{kid}"), &alice, json!({"name": "renamed"})).await;
    assert_eq!((s, v["name"].as_str()), (StatusCode::OK, Some("renamed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_limit_holds_and_a_disconnect_frees_the_slot_and_is_charged() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server().await;
    let (bob_id, bob) = srv.user(&admin, "bob", "user").await;
    let (s, v) = srv.patch(&format!("/api/v1/users/{bob_id}"), &admin, json!({"limits": {"concurrent": 2}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["limits"], json!({"concurrent": 2}));
    let (s, _) = srv.patch(&format!("/api/v1/users/{bob_id}"), &bob, json!({"limits": {}})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "users cannot change their own limits");

    // Two long streams, each proven in flight by its first token.
    let mut streams = Vec::new();
    for i in 0..2 {
        let mut body = q("smollm2:135m", &format!("Write a long story about dragon number {i}."), Some(400));
        body["stream"] = json!(true);
        let resp = srv.http.post(srv.url("/v1/chat/completions")).bearer_auth(&bob).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut s = resp.bytes_stream();
        let mut seen = String::new();
        while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 3 {
            seen.push_str(&String::from_utf8_lossy(&s.next().await.unwrap().unwrap()));
        }
        streams.push(s);
    }
    let burst = futures::future::join_all(
        (0..10).map(|_| srv.post("/v1/chat/completions", &bob, q("smollm2:135m", "Hi", Some(1)))),
    )
    .await;
    assert!(burst.iter().all(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS), "{burst:?}");
    assert!(burst[0].1["error"]["message"].as_str().unwrap().contains("limit is 2"), "{:?}", burst[0].1);

    // Hang up one stream: its slot comes back and it is charged for what it generated.
    drop(streams.pop());
    let mut admitted = None;
    for _ in 0..200 {
        let (s, v) = srv.post("/v1/chat/completions", &bob, q("smollm2:135m", "Hi", Some(1))).await;
        if s == StatusCode::OK {
            admitted = Some(v);
            break;
        }
        // The server notices the hang-up at its next token; poll until it has.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(admitted.is_some(), "the slot of the disconnected stream was never freed");
    let gone = usage_rows(&srv, "status = 499");
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(gone[0].1 > 0 && gone[0].2 > 0, "charged prompt and generated tokens: {gone:?}");
    let audited = srv.events(&admin, "inference.chat").await;
    assert!(audited.iter().any(|e| e["outcome"] == "failure" && e["details"]["completion_tokens"].as_i64() > Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_quota_caps_generation_and_survives_a_restart() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server().await;
    let (carol_id, carol) = srv.user(&admin, "carol", "user").await;
    let (s, v) =
        srv.patch(&format!("/api/v1/users/{carol_id}"), &admin, json!({"limits": {"tokens_per_day": 40}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Asking for 200 tokens with 40 left: the reservation, and so the generation, is capped.
    let (s, v) =
        srv.post("/v1/chat/completions", &carol, q("smollm2:135m", "Count from one to fifty.", Some(200))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 40, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let spent = v["usage"]["total_tokens"].as_u64().unwrap();
    let (_, lim) = srv.get("/api/v1/usage/limits", &carol).await;
    assert_eq!(lim["tokens_today"].as_u64(), Some(spent), "{lim}");
    assert_eq!(lim["user"]["tokens_per_day"], 40);

    let refused = |v: &Value| {
        let (kind, code) = assert_error_shape(v);
        assert_eq!((kind.as_str(), code.as_str()), ("insufficient_quota", "insufficient_quota"), "{v}");
    };
    let resp = srv
        .http
        .post(srv.url("/v1/chat/completions"))
        .bearer_auth(&carol)
        .json(&q("smollm2:135m", "Hi", Some(1)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "renews at the next UTC midnight: {retry}");
    refused(&resp.json().await.unwrap());

    // A restart refills nothing.
    let pw = "Xy-Pw-12345!";
    let dir = srv.stop().await;
    let mut cfg = common::test_config(dir.path());
    cfg.engine.threads = 2;
    cfg.engine.context_size = 2048;
    let srv = Server::start_in(dir, cfg).await;
    let (s, v) = srv.login("carol", pw).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let carol = v["access_token"].as_str().unwrap().to_owned();
    let (s, v) = srv.post("/v1/chat/completions", &carol, q("smollm2:135m", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    refused(&v);
    let (_, lim) = srv.get("/api/v1/usage/limits", &carol).await;
    assert_eq!(lim["tokens_today"].as_u64(), Some(spent), "{lim}");
    // Raising the limit takes effect at once.
    let (s, _) = srv
        .patch(&format!("/api/v1/users/{carol_id}"), &admin_login(&srv).await, json!({"limits": {"tokens_per_day": 0}}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = srv.post("/v1/chat/completions", &carol, q("smollm2:135m", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn admin_login(srv: &Server) -> String {
    let (s, v) = srv.login("admin", common::ADMIN_PW).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hidden_models_answer_404_and_are_left_out_of_lists() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server().await;
    let (_, dave) = srv.user(&admin, "dave", "user").await;
    let (_, erin) = srv.user(&admin, "erin", "developer").await;
    let ids = |v: &Value| -> Vec<String> {
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
    };
    let (_, v) = srv.get("/v1/models", &dave).await;
    assert_eq!(ids(&v), ["smollm2:135m"]);

    let (s, v) = srv.patch("/api/v1/models/smollm2:135m", &dave, json!({"visibility": {"roles": ["developer"]}})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) =
        srv.patch("/api/v1/models/smollm2:135m", &admin, json!({"visibility": {"roles": ["developer"]}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (_, v) = srv.get("/v1/models", &dave).await;
    assert!(ids(&v).is_empty(), "{v}");
    let (_, v) = srv.get("/api/v1/models", &dave).await;
    assert!(v["data"].as_array().unwrap().is_empty(), "{v}");
    let (s, hidden) = srv.post("/v1/chat/completions", &dave, q("smollm2:135m", "Hi", Some(1))).await;
    let (s2, missing) = srv.post("/v1/chat/completions", &dave, q("nosuch:135m", "Hi", Some(1))).await;
    assert_eq!((s, s2), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(assert_error_shape(&hidden), assert_error_shape(&missing), "a hidden model looks missing");
    assert_eq!(
        hidden["error"]["message"].as_str().unwrap().replace("smollm2", "X"),
        missing["error"]["message"].as_str().unwrap().replace("nosuch", "X")
    );
    let (s, _) = srv.get("/api/v1/models/smollm2:135m", &dave).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = srv.post("/v1/chat/completions", &erin, q("smollm2:135m", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::OK, "developers may: {v}");

    // By name instead of role.
    let (s, v) = srv.patch("/api/v1/models/smollm2:135m", &admin, json!({"visibility": {"users": ["DAVE"]}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, v) = srv.get("/v1/models", &dave).await;
    assert_eq!(ids(&v), ["smollm2:135m"]);
    let (s, _) = srv.post("/v1/chat/completions", &erin, q("smollm2:135m", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = srv.patch("/api/v1/models/smollm2:135m", &admin, json!({"visibility": {"users": ["nobody"]}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = srv.patch("/api/v1/models/smollm2:135m", &admin, json!({"visibility": {"roles": ["king"]}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let changes = srv.events(&admin, "model.update").await;
    assert_eq!(changes.iter().filter(|e| e["outcome"] == "success").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apps_add_their_prompt_and_defaults_and_scoped_keys_reach_only_them() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server().await;
    let system = "You are a terse assistant. Answer in one short sentence.";
    let app = json!({"name": "helper", "model": "smollm2:135m", "system_prompt": system,
                     "params": {"temperature": 0, "max_tokens": 12}, "description": "short answers"});
    let (s, v) = srv.post("/api/v1/apps", &admin, app.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, _) = srv.post("/api/v1/apps", &admin, app.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT);
    for (bad, field) in [
        (json!({"name": "x", "model": "nosuch"}), "model"),
        (json!({"name": "x", "model": "smollm2:135m", "params": {"temperature": 5}}), "params.temperature"),
        (json!({"name": "x", "model": "smollm2:135m", "knowledge_bases": ["handbook"]}), "knowledge_bases"),
        (json!({"name": "bad name", "model": "smollm2:135m"}), "name"),
        (json!({"name": "x", "model": "smollm2:135m", "params": {"colour": 1}}), ""),
    ] {
        let (s, v) = srv.post("/api/v1/apps", &admin, bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {v}");
        if !field.is_empty() {
            assert_eq!(v["error"]["param"], field, "{v}");
        }
    }
    let (_, user) = srv.user(&admin, "frank", "user").await;
    let (s, _) = srv.post("/api/v1/apps", &user, json!({"name": "mine", "model": "smollm2:135m"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Through the app == the model with the app's system message and defaults.
    let question = "What is the capital of France?";
    let (s, via_app) = srv.post("/v1/chat/completions", &user, q("app:helper", question, None)).await;
    assert_eq!(s, StatusCode::OK, "{via_app}");
    let direct = json!({"model": "smollm2:135m", "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]});
    let (_, direct) = srv.post("/v1/chat/completions", &user, direct).await;
    assert_eq!(via_app["choices"][0]["message"], direct["choices"][0]["message"]);
    assert_eq!(via_app["usage"]["prompt_tokens"], direct["usage"]["prompt_tokens"]);
    assert!(via_app["usage"]["completion_tokens"].as_u64().unwrap() <= 12);
    // The request's own values win over the app's.
    let (_, v) = srv.post("/v1/chat/completions", &user, q("app:helper", question, Some(2))).await;
    assert_eq!(v["usage"]["completion_tokens"], 2);

    // A key scoped to the app reaches the app and nothing else.
    let k = key(&srv, &user, json!({"name": "bot", "app": "helper"})).await;
    let (_, v) = srv.get("/v1/models", &k).await;
    let ids: Vec<&str> = v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["app:helper"]);
    let (s, v) = srv.post("/v1/chat/completions", &k, q("smollm2:135m", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = srv.post("/v1/chat/completions", &k, q("app:helper", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = srv.post("/api/v1/keys", &user, json!({"name": "x", "app": "nosuch"})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Metered and audited as itself.
    let (_, v) = srv.get("/api/v1/usage?group_by=app", &admin).await;
    let helper = v["data"].as_array().unwrap().iter().find(|r| r["group"] == "helper").cloned().unwrap();
    assert_eq!(helper["requests"], 3, "{v}");
    let evs = srv.events(&admin, "inference.chat").await;
    assert_eq!(evs.iter().filter(|e| e["resource"] == "app:helper").count(), 3);

    // Changing and deleting: the app's keys go with it.
    let (s, v) = srv.patch("/api/v1/apps/helper", &admin, json!({"system_prompt": "Be brief."})).await;
    assert_eq!((s, v["system_prompt"].as_str()), (StatusCode::OK, Some("Be brief.")));
    let (s, _) = srv.req(Method::DELETE, "/api/v1/apps/helper", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = srv.post("/v1/chat/completions", &k, q("app:helper", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = srv.post("/v1/chat/completions", &user, q("app:helper", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for action in ["app.create", "app.update", "app.delete"] {
        assert!(srv.events(&admin, action).await.iter().any(|e| e["outcome"] == "success"), "{action}");
    }
}

/// An OpenAI-compatible stub whose completions always fail with a 500; counts the attempts.
async fn failing_stub() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new()
        .route("/v1/models", axum::routing::get(|| async { axum::Json(json!({"object": "list", "data": []})) }))
        .route(
            "/v1/chat/completions",
            axum::routing::post(move || {
                h.fetch_add(1, Ordering::SeqCst);
                async {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"message": "boom"}})))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), hits)
}

async fn wait_health(srv: &Server, admin: &str, name: &str, healthy: bool) {
    // Health checks run every second in this test; poll the API until the state flips.
    for _ in 0..100 {
        let (_, v) = srv.get(&format!("/api/v1/upstreams/{name}"), admin).await;
        if v["healthy"] == healthy {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("upstream {name} never became healthy={healthy}");
}

/// Collect an SSE response: (text, data lines as JSON, [DONE] count).
async fn sse(resp: reqwest::Response) -> (String, Vec<Value>, usize) {
    assert_eq!(resp.status(), StatusCode::OK);
    let raw = resp.text().await.unwrap();
    let (mut text, mut chunks, mut done) = (String::new(), Vec::new(), 0);
    for line in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            done += 1;
            continue;
        }
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        chunks.push(v);
    }
    (text, chunks, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstreams_fall_back_stream_through_and_are_metered_and_health_checked() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (b, b_admin) = server().await;
    let b_key = key(&b, &b_admin, json!({"name": "for-a"})).await;
    let (stub, stub_hits) = failing_stub().await;
    let a = Server::start_with(|c| c.upstreams.health_interval_secs = 1).await;
    let a_admin = a.setup().await;
    let b_url = format!("http://{}/v1", b.addr);

    for (body, status) in [
        (json!({"name": "flaky", "base_url": stub, "models": ["smollm2:135m"], "priority": 1}), StatusCode::CREATED),
        (
            json!({"name": "b", "base_url": b_url, "api_key": b_key, "models": ["smollm2:135m"], "priority": 2}),
            StatusCode::CREATED,
        ),
        (json!({"name": "b", "base_url": b_url, "models": ["x"]}), StatusCode::CONFLICT),
        (json!({"name": "bad", "base_url": "ftp://example.com", "models": ["x"]}), StatusCode::BAD_REQUEST),
        (json!({"name": "bad", "base_url": "http://u:p@example.com/v1", "models": ["x"]}), StatusCode::BAD_REQUEST),
    ] {
        let (s, v) = a.post("/api/v1/upstreams", &a_admin, body).await;
        assert_eq!(s, status, "{v}");
    }
    let (_, list) = a.get("/api/v1/upstreams", &a_admin).await;
    let text = list.to_string();
    assert!(!text.contains(&b_key) && !text.contains("\"api_key\""), "the key is never returned: {text}");
    assert_eq!(list["data"][1]["has_api_key"], true);
    let sealed: Vec<u8> =
        a.db().query_row("SELECT api_key_sealed FROM upstreams WHERE name = 'b'", [], |r| r.get(0)).unwrap();
    assert!(!sealed.windows(b_key.len()).any(|w| w == b_key.as_bytes()), "sealed at rest");

    let (_, user) = a.user(&a_admin, "hana", "user").await;
    let (s, _) = a.get("/api/v1/upstreams", &user).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, models) = a.get("/v1/models", &user).await;
    assert_eq!(models["data"][0]["id"], "smollm2:135m");
    assert_eq!(models["data"][0]["owned_by"], "upstream");

    // Non-streaming: the failing stub is tried first, then B answers; same text as B direct.
    let body = q("smollm2:135m", "Name a colour.", Some(12));
    let (s, via_a) = a.post("/v1/chat/completions", &user, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{via_a}");
    let (_, direct) = b.post("/v1/chat/completions", &b_admin, body.clone()).await;
    assert_eq!(via_a["choices"][0]["message"], direct["choices"][0]["message"]);
    assert_eq!(stub_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let ev = a.events(&a_admin, "inference.chat").await;
    let last = ev.iter().find(|e| e["outcome"] == "success").unwrap();
    assert_eq!(last["details"]["route"], "upstream:b");
    assert_eq!(last["details"]["fallbacks"][0]["upstream"], "flaky");
    assert_eq!(last["details"]["completion_tokens"], via_a["usage"]["completion_tokens"]);

    // Streaming passes through chunk by chunk, one [DONE], usage only when asked.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let resp = a.http.post(a.url("/v1/chat/completions")).bearer_auth(&user).json(&sbody).send().await.unwrap();
    let (streamed, chunks, done) = sse(resp).await;
    assert_eq!(streamed, via_a["choices"][0]["message"]["content"].as_str().unwrap());
    assert_eq!(done, 1);
    assert!(chunks.len() > 3, "{chunks:?}");
    assert!(chunks.iter().all(|c| c.get("usage").is_none_or(Value::is_null)), "usage was not asked for");
    sbody["stream_options"] = json!({"include_usage": true});
    let resp = a.http.post(a.url("/v1/chat/completions")).bearer_auth(&user).json(&sbody).send().await.unwrap();
    let (_, chunks, _) = sse(resp).await;
    let usage = chunks.iter().find(|c| c["usage"].is_object()).expect("usage chunk")["usage"].clone();
    assert_eq!(usage["completion_tokens"], via_a["usage"]["completion_tokens"]);
    let metered: i64 = a
        .db()
        .query_row("SELECT SUM(completion_tokens) FROM usage WHERE username = 'hana' AND status = 200", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(metered, 3 * via_a["usage"]["completion_tokens"].as_i64().unwrap());

    // The caller's bad request is not retried elsewhere and keeps the upstream's message.
    let mut bad = body.clone();
    bad["temperature"] = json!(7);
    let (s, v) = a.post("/v1/chat/completions", &user, bad).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("temperature"), "{v}");

    // Quotas apply as for local models.
    let limited = key(&a, &a_admin, json!({"name": "two", "limits": {"requests_per_minute": 2}})).await;
    for expect in [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
        let (s, v) = a.post("/v1/chat/completions", &limited, q("smollm2:135m", "Hi", Some(1))).await;
        assert_eq!(s, expect, "{v}");
    }

    // B goes away: the health check marks it down, requests fail over to nothing, then it
    // comes back up.
    let (s, _) = a.patch("/api/v1/upstreams/b", &a_admin, json!({"base_url": "http://127.0.0.1:9/v1"})).await;
    assert_eq!(s, StatusCode::OK);
    wait_health(&a, &a_admin, "b", false).await;
    let (s, v) = a.post("/v1/chat/completions", &user, q("smollm2:135m", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(assert_error_shape(&v).1, "upstream_error");
    let (s, _) = a.patch("/api/v1/upstreams/b", &a_admin, json!({"base_url": b_url})).await;
    assert_eq!(s, StatusCode::OK);
    wait_health(&a, &a_admin, "b", true).await;
    let (s, v) = a.post("/v1/chat/completions", &user, q("smollm2:135m", "Hi", Some(1))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!a.events(&a_admin, "upstream.down").await.is_empty());
    assert!(!a.events(&a_admin, "upstream.up").await.is_empty());
    let (s, _) = a.req(Method::DELETE, "/api/v1/upstreams/flaky", Some(&a_admin), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lora_adapters_apply_per_request_and_never_share_a_batch() {
    let _g = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (srv, admin) = server().await;
    let tmp = tempfile::tempdir().unwrap();
    let (changing, noop, other) = (tmp.path().join("a.gguf"), tmp.path().join("z.gguf"), tmp.path().join("o.gguf"));
    common::make_lora(&changing, &["--seed", "7"]);
    common::make_lora(&noop, &["--zero"]);
    common::make_lora(&other, &["--seed", "11"]);
    let import = |path: &std::path::Path, name: &str, base: Option<&str>| {
        let mut body = json!({"path": path, "name": name});
        if let Some(b) = base {
            body["base"] = json!(b);
        }
        srv.post("/api/v1/models", &admin, body)
    };
    let (s, v) = import(&changing, "pirate", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "an adapter needs a base: {v}");
    let (s, v) = import(&changing, "pirate", Some("nosuch")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = srv
        .post("/api/v1/models", &admin, json!({"path": model_file(SMOL), "name": "x", "base": "smollm2:135m"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a model has no base: {v}");
    let (s, v) = import(&changing, "pirate", Some("smollm2:135m")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!((v["info"]["kind"].as_str(), v["base"].as_str()), (Some("lora"), Some("smollm2:135m")));
    let (s, _) = import(&noop, "noop", Some("smollm2:135m")).await;
    assert_eq!(s, StatusCode::CREATED);

    let say = |model: &str| q(model, "Write one sentence about the sea.", Some(24));
    let text = |v: &Value| v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
    let (s, plain) = srv.post("/v1/chat/completions", &admin, say("smollm2:135m")).await;
    assert_eq!(s, StatusCode::OK, "{plain}");
    let (s, zero) = srv.post("/v1/chat/completions", &admin, say("smollm2:135m+noop")).await;
    assert_eq!(s, StatusCode::OK, "{zero}");
    assert_eq!(text(&zero), text(&plain), "a LoRA with B = 0 changes nothing");
    let (_, lora) = srv.post("/v1/chat/completions", &admin, say("smollm2:135m+pirate")).await;
    assert_ne!(text(&lora), text(&plain), "the adapter changes the output");
    let (_, alias) = srv.post("/v1/chat/completions", &admin, say("pirate")).await;
    assert_eq!(text(&alias), text(&lora), "the adapter's own name is an alias for base+adapter");

    // Concurrent requests with and without the adapter each get what they get alone.
    let models = ["smollm2:135m", "smollm2:135m+pirate", "smollm2:135m", "pirate", "smollm2:135m+noop"];
    let all = futures::future::join_all(models.iter().map(|m| srv.post("/v1/chat/completions", &admin, say(m)))).await;
    for ((s, v), m) in all.iter().zip(models) {
        assert_eq!(*s, StatusCode::OK, "{v}");
        let want = if m.contains("pirate") { text(&lora) } else { text(&plain) };
        assert_eq!(text(v), want, "{m} under concurrency");
    }

    // An adapter added while the base is loaded: the idle base reloads with it.
    let (s, _) = import(&other, "other", Some("smollm2:135m")).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = srv.post("/v1/chat/completions", &admin, say("smollm2:135m+other")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_ne!(text(&v), text(&plain));
    let (s, _) = srv.post("/v1/chat/completions", &admin, say("smollm2:135m+nosuch")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = srv.post("/v1/chat/completions", &admin, say("pirate+noop")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = srv.req(Method::DELETE, "/api/v1/models/smollm2:135m?force=true", Some(&admin), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "adapters hang on it: {v}");
    let metered: i64 = srv
        .db()
        .query_row("SELECT COUNT(*) FROM usage WHERE model = 'smollm2:135m+pirate:latest'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(metered, 4);
}
