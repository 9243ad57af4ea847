//! A real server on a loopback port with a temp data directory, and a small client.

#![allow(dead_code)]

use std::net::SocketAddr;

use maasbox_api::{AppState, Config};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

pub const ADMIN_PW: &str = "Root-Passw0rd!x";

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const MINILM: &str = "all-MiniLM-L6-v2.F32.gguf";

fn models_dir() -> std::path::PathBuf {
    std::env::var_os("MAASBOX_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/cache"))
}

/// Write a LoRA adapter for SmolLM2 with `models/make_lora.py` (through the models venv).
pub fn make_lora(out: &std::path::Path, args: &[&str]) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = models_dir().join("venv/bin/python");
    let status = std::process::Command::new(&python)
        .arg(root.join("models/make_lora.py"))
        .arg(model_file(SMOL))
        .arg(out)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(status.success(), "make_lora.py failed");
}

/// A default model fetched by `models/fetch.py` (the test command runs it first).
pub fn model_file(name: &str) -> String {
    let p = models_dir().join(name);
    assert!(p.exists(), "{} is missing: run `python3 models/fetch.py` (scripts/test.sh does)", p.display());
    p.display().to_string()
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub setup_code: Option<String>,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.storage.data_dir = dir.to_owned();
    c.log.file = false;
    c.audit.checkpoint_every = 5;
    c
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = test_config(dir.path());
        tweak(&mut cfg);
        Self::start_in(dir, cfg).await
    }

    pub async fn start_in(dir: tempfile::TempDir, cfg: Config) -> Self {
        let (state, startup) = AppState::open(cfg, maasbox_engine::EngineHandle::new()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(maasbox_api::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Server {
            dir,
            addr,
            setup_code: startup.setup_code,
            http: reqwest::Client::new(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.path().join("maasbox.db")).unwrap()
    }

    pub async fn req(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, v)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.req(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::PATCH, path, Some(token), Some(body)).await
    }

    /// Complete setup; returns the admin's access token.
    pub async fn setup(&self) -> String {
        let (s, v) = self
            .req(
                Method::POST,
                "/api/v1/auth/setup",
                None,
                Some(json!({"code": self.setup_code.clone().unwrap(), "username": "admin", "password": ADMIN_PW})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn login(&self, user: &str, pw: &str) -> (StatusCode, Value) {
        self.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": user, "password": pw}))).await
    }

    /// Create a user with a password; returns (id, access token).
    pub async fn user(&self, admin: &str, name: &str, role: &str) -> (i64, String) {
        let pw = format!("{name}-Pw-12345!").replace(name, "Xy");
        let (s, v) = self.post("/api/v1/users", admin, json!({"username": name, "role": role, "password": pw})).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let id = v["id"].as_i64().unwrap();
        let (s, v) = self.login(name, &pw).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        (id, v["access_token"].as_str().unwrap().to_owned())
    }

    pub async fn events(&self, admin: &str, action: &str) -> Vec<Value> {
        let (s, v) = self.get(&format!("/api/v1/audit/logs?action={action}&limit=1000"), admin).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["data"].as_array().unwrap().clone()
    }

    /// Stop gracefully and wait for the writer to drain.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

/// Assert the OpenAI error shape and return (type, code).
pub fn assert_error_shape(v: &Value) -> (String, String) {
    let e = &v["error"];
    assert!(e["message"].is_string() && !e["message"].as_str().unwrap().is_empty(), "message: {v}");
    assert!(e["type"].is_string(), "type: {v}");
    assert!(e.get("param").is_some(), "param present (maybe null): {v}");
    assert!(e["code"].is_string(), "code: {v}");
    (e["type"].as_str().unwrap().to_owned(), e["code"].as_str().unwrap().to_owned())
}
