//! The real `maasbox` binary: `serve` as a child process, the admin CLI against it, the offline
//! commands against its data directory, and kill -9 in the middle of a write load.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_maasbox");
const ADMIN_PW: &str = "Root-Passw0rd!x";

fn maasbox(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("MAASBOX_") {
            c.env_remove(k);
        }
    }
    c
}

struct Served {
    child: Child,
    url: String,
    setup_code: Option<String>,
}

/// Start `maasbox serve` on a free port and wait for its "listening" line.
fn serve(dir: &Path) -> Served {
    let mut child = maasbox(&["serve", "--data-dir", dir.to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut url = None;
    let mut setup_code = None;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if let Some(rest) = line.split("listening on ").nth(1) {
            url = Some(rest.split_whitespace().next().unwrap().to_owned());
        }
        if let Some(rest) = line.split("One-time setup code: ").nth(1) {
            setup_code = Some(rest.trim().to_owned());
        }
        // On first run the setup banner follows the listening line.
        if url.is_some() && (setup_code.is_some() || !dir.join("setup.token").exists()) {
            break;
        }
        line.clear();
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Served { child, url: url.expect("server printed its address"), setup_code }
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap()
}

fn run(mut cmd: impl std::borrow::BorrowMut<Command>) -> Output {
    cmd.borrow_mut().output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn client(srv: &Served, dir: &Path, args: &[&str]) -> Command {
    let mut c = maasbox(args);
    c.env("MAASBOX_URL", &srv.url).args(["--data-dir", dir.to_str().unwrap()]);
    c
}

async fn setup(http: &reqwest::Client, srv: &Served) -> String {
    let v: Value = http
        .post(format!("{}/api/v1/auth/setup", srv.url))
        .json(&json!({"code": srv.setup_code.clone().unwrap(), "username": "chief", "password": ADMIN_PW}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().expect("setup succeeded").to_owned()
}

async fn me_status(http: &reqwest::Client, srv: &Served, token: &str) -> u16 {
    http.get(format!("{}/api/v1/auth/me", srv.url)).bearer_auth(token).send().await.unwrap().status().as_u16()
}

fn last_secret(out: &str) -> String {
    out.lines().find_map(|l| l.split("store it now): ").nth(1)).unwrap().trim().to_owned()
}

#[tokio::test]
async fn serve_and_admin_cli_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut srv = serve(&dir);
    let code = srv.setup_code.clone().expect("first run prints a setup code");
    assert_eq!(std::fs::read_to_string(dir.join("setup.token")).unwrap().trim(), code);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(dir.join("setup.token")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let http = reqwest::Client::new();
    setup(&http, &srv).await;

    // Users, through the owner token read from the data directory.
    let out = ok(&run(client(&srv, &dir, &["user", "add", "bob", "--role", "developer"])));
    assert!(out.contains("created user bob"), "{out}");
    let bob_pw = out.lines().find_map(|l| l.split("first login): ").nth(1)).unwrap().trim().to_owned();
    let out = ok(&run(client(&srv, &dir, &["user", "list"])));
    assert!(out.contains("bob") && out.contains("developer") && out.contains("chief"), "{out}");
    let v: Value = serde_json::from_str(&ok(&run(client(&srv, &dir, &["user", "list", "--json"])))).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);

    // Keys.
    let out = ok(&run(client(&srv, &dir, &["key", "create", "--name", "ci", "--user", "bob", "--models", "a,b"])));
    let secret = last_secret(&out);
    assert!(secret.starts_with("mbx_"));
    assert_eq!(me_status(&http, &srv, &secret).await, 200);
    let out = ok(&run(client(&srv, &dir, &["key", "list", "--all"])));
    assert!(out.contains("ci") && out.contains("a,b") && !out.contains(&secret), "{out}");

    // A key as MAASBOX_TOKEN: bob (developer) may list his own keys but not users.
    let out = run(client(&srv, &dir, &["user", "list"]).env("MAASBOX_TOKEN", &secret));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{out:?}");
    ok(&run(client(&srv, &dir, &["key", "list"]).env("MAASBOX_TOKEN", &secret)));

    // Disable stops the key at once; enable restores it.
    ok(&run(client(&srv, &dir, &["user", "disable", "bob"])));
    assert_eq!(me_status(&http, &srv, &secret).await, 401);
    ok(&run(client(&srv, &dir, &["user", "enable", "bob"])));
    assert_eq!(me_status(&http, &srv, &secret).await, 200);

    // Password from stdin; the old one stops working.
    let mut child = client(&srv, &dir, &["user", "passwd", "bob", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Another-Passw0rd\n").unwrap();
    assert!(child.wait().unwrap().success());
    let login = |pw: &str| {
        http.post(format!("{}/api/v1/auth/login", srv.url)).json(&json!({"username": "bob", "password": pw})).send()
    };
    assert_eq!(login(&bob_pw).await.unwrap().status().as_u16(), 401);
    assert_eq!(login("Another-Passw0rd").await.unwrap().status().as_u16(), 200);

    let key_id = secret.split('_').nth(1).unwrap().to_owned();
    ok(&run(client(&srv, &dir, &["key", "revoke", &key_id])));
    assert_eq!(me_status(&http, &srv, &secret).await, 401);
    ok(&run(client(&srv, &dir, &["user", "rm", "bob"])));
    let out = run(client(&srv, &dir, &["user", "rm", "bob"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named 'bob'"));

    // Audit: online verify, export with a signed manifest, offline verification of the file.
    let out = ok(&run(client(&srv, &dir, &["audit", "verify"])));
    assert!(out.contains("audit chain OK"), "{out}");
    let export = tmp.path().join("audit.jsonl");
    let out = ok(&run(client(&srv, &dir, &["audit", "export", "--out", export.to_str().unwrap()])));
    assert!(out.contains("signed manifest"), "{out}");
    let pubkey = std::fs::read_to_string(dir.join("keys/sm2.pub")).unwrap();
    let out = ok(&run(maasbox(&["audit", "verify", "--file", export.to_str().unwrap(), "--trust", pubkey.trim()])));
    assert!(out.contains("audit chain OK"), "{out}");
    let text = std::fs::read_to_string(&export).unwrap();
    let line3 = text.lines().nth(2).unwrap().to_owned();
    let seq3: Value = serde_json::from_str(&line3).unwrap();
    std::fs::write(&export, text.replacen(&line3, &line3.replace("\"success\"", "\"failure\""), 1)).unwrap();
    let out = run(&mut maasbox(&["audit", "verify", "--file", export.to_str().unwrap(), "--trust", pubkey.trim()]));
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("BROKEN at seq {}", seq3["seq"])), "{stdout}");

    // SIGTERM: graceful stop, the writer drained, the stop recorded, the chain intact.
    let status = sigterm(&mut srv.child);
    assert!(status.success(), "{status:?}");
    let out = ok(&run(maasbox(&["audit", "verify", "--offline", "--data-dir", dir.to_str().unwrap(), "--json"])));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["valid"], true);
    let db = rusqlite::Connection::open(dir.join("maasbox.db")).unwrap();
    let last: String =
        db.query_row("SELECT action FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(last, "system.stop");
    let logs: Vec<PathBuf> = std::fs::read_dir(dir.join("logs")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(logs.iter().any(|p| std::fs::metadata(p).unwrap().len() > 0), "rolling log file written: {logs:?}");
}

#[tokio::test]
async fn offline_reset_password_and_offline_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap().to_owned();
    let mut srv = serve(&dir);
    let http = reqwest::Client::new();
    setup(&http, &srv).await;

    // Refused while the server holds the data directory.
    let out = run(&mut maasbox(&["admin", "reset-password", "--data-dir", &d, "chief"]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another maasbox process"), "{out:?}");
    assert!(sigterm(&mut srv.child).success());

    let out = ok(&run(&mut maasbox(&["admin", "reset-password", "--data-dir", &d, "chief"])));
    let temp = out.lines().find_map(|l| l.split("next login): ").nth(1)).unwrap().trim().to_owned();
    let out = run(&mut maasbox(&["admin", "reset-password", "--data-dir", &d, "nobody"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named 'nobody'"));

    let srv = serve(&dir);
    assert!(srv.setup_code.is_none());
    let v: Value = http
        .post(format!("{}/api/v1/auth/login", srv.url))
        .json(&json!({"username": "chief", "password": temp}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["user"]["must_change_password"], true, "{v}");
    let access = v["access_token"].as_str().unwrap();
    let page: Value = http
        .get(format!("{}/api/v1/audit/logs?action=user.password.reset_offline", srv.url))
        .bearer_auth(access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // A must-change session may not read the audit log yet: it is refused, not leaked.
    assert_eq!(page["error"]["code"], "password_change_required");
    drop(srv);

    // Offline verify finds a direct edit of the database.
    let db = rusqlite::Connection::open(dir.join("maasbox.db")).unwrap();
    db.execute_batch("DROP TRIGGER audit_events_no_update; UPDATE audit_events SET actor = 'mallory' WHERE action = 'user.password.reset_offline';").unwrap();
    let seq: i64 = db.query_row("SELECT seq FROM audit_events WHERE actor = 'mallory'", [], |r| r.get(0)).unwrap();
    let out = run(&mut maasbox(&["audit", "verify", "--offline", "--data-dir", &d]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("BROKEN at seq {seq}")), "{out:?}");
}

#[test]
fn bad_configuration_and_newer_databases_stop_startup_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("maasbox.toml");
    std::fs::write(&cfg, "[server]\nport = 8686\nbnid = \"0.0.0.0\"\n").unwrap();
    let out = run(&mut maasbox(&[
        "serve",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        tmp.path().join("d").to_str().unwrap(),
    ]));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.bnid"), "{out:?}");

    let out = run(maasbox(&["serve", "--data-dir", tmp.path().join("d").to_str().unwrap()])
        .env("MAASBOX_AUTH_MIN_PASSWORD_LENGTH", "many"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.min_password_length"), "{out:?}");

    let out = run(&mut maasbox(&["serve", "--lan", "--data-dir", tmp.path().join("d").to_str().unwrap()]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_plain_http_on_lan"), "{out:?}");

    let dir = tmp.path().join("newer");
    std::fs::create_dir_all(&dir).unwrap();
    rusqlite::Connection::open(dir.join("maasbox.db")).unwrap().pragma_update(None, "user_version", 42).unwrap();
    let out = run(&mut maasbox(&["serve", "--port", "0", "--data-dir", dir.to_str().unwrap()]));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("database schema version 42 is newer than this maasbox supports"),
        "{out:?}"
    );
}

/// kill -9 in the middle of a write load: every write whose response arrived is in the
/// database and in the chain, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut srv = serve(&dir);
    let http = reqwest::Client::new();
    let admin = setup(&http, &srv).await;

    let acked = Arc::new(parking_lot_free::AckLog::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (http, url, admin, acked, stop) =
            (http.clone(), srv.url.clone(), admin.clone(), acked.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{url}/api/v1/keys"))
                    .bearer_auth(&admin)
                    .json(&json!({"name": format!("w{w}-{i}")}))
                    .send()
                    .await;
                match r {
                    Ok(resp) if resp.status().as_u16() == 201 => {
                        if let Ok(v) = resp.json::<Value>().await {
                            acked.push(v["id"].as_str().unwrap().to_owned());
                        }
                    }
                    _ => break, // the server is gone
                }
                i += 1;
            }
        }));
    }
    // Kill once a few hundred writes have been acknowledged, while the others are in flight.
    while acked.len() < 300 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    srv.child.kill().unwrap(); // SIGKILL
    srv.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.take();
    assert!(acked.len() >= 300);

    let out = ok(&run(&mut maasbox(&["audit", "verify", "--offline", "--json", "--data-dir", dir.to_str().unwrap()])));
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["valid"], true, "{report}");

    let db = rusqlite::Connection::open(dir.join("maasbox.db")).unwrap();
    let mut missing = Vec::new();
    for id in &acked {
        let row: i64 = db.query_row("SELECT COUNT(*) FROM api_keys WHERE id = ?1", [id], |r| r.get(0)).unwrap();
        let ev: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM audit_events WHERE action = 'key.create' AND resource = ?1",
                [format!("key:{id}")],
                |r| r.get(0),
            )
            .unwrap();
        if row != 1 || ev != 1 {
            missing.push(id.clone());
        }
    }
    assert!(missing.is_empty(), "{} of {} acknowledged writes lost: {missing:?}", missing.len(), acked.len());
    eprintln!(
        "kill -9 after {} acknowledged writes: all present, chain valid ({} events)",
        acked.len(),
        report["events"]
    );
}

/// A tiny shared log without extra dependencies.
mod parking_lot_free {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct AckLog(Mutex<Vec<String>>);

    impl AckLog {
        pub fn push(&self, s: String) {
            self.0.lock().unwrap().push(s);
        }
        pub fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
        pub fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }
}

fn smollm2() -> PathBuf {
    model_file("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn model_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("MAASBOX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/cache"));
    let p = dir.join(name);
    assert!(p.exists(), "{} is missing: run `python3 models/fetch.py`", p.display());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_commands_quotas_apps_visibility_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut srv = serve(&dir);
    let http = reqwest::Client::new();
    setup(&http, &srv).await;
    let c = |args: &[&str]| ok(&run(client(&srv, &dir, args)));
    // `model pull` from a plain HTTP server (one connection, whole file).
    let file = std::fs::read(smollm2()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let file_url = format!("http://{}/SmolLM2.gguf", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut req = Vec::new();
        while !req.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            sock.read_exact(&mut b).await.unwrap();
            req.push(b[0]);
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", file.len());
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(&file).await.unwrap();
    });
    let out = c(&["model", "pull", &file_url, "--name", "smol"]);
    assert!(out.contains("pulled smol:latest (llama, 98 MB) sha256 "), "{out}");
    let out = run(client(&srv, &dir, &["model", "pull", &file_url, "--name", "smol2"]));
    assert!(!out.status.success(), "the file server is gone");
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed"), "{out:?}");

    // A signed bundle to a second appliance.
    let bundle = tmp.path().join("site.tar");
    let out = c(&["bundle", "create", "--model", "smol", "--out", bundle.to_str().unwrap()]);
    let key = std::fs::read_to_string(dir.join("keys/sm2.pub")).unwrap();
    assert!(out.contains("with smol:latest") && out.contains(&format!("signed by {}", key.trim())), "{out}");
    let dir2 = tmp.path().join("data2");
    let mut srv2 = serve(&dir2);
    setup(&http, &srv2).await;
    let out = ok(&run(client(&srv2, &dir2, &["bundle", "import", bundle.to_str().unwrap(), "--trust", key.trim()])));
    assert!(out.contains("signed by the trusted key") && out.contains("smol:latest sha256"), "{out}");
    assert!(ok(&run(client(&srv2, &dir2, &["model", "list"]))).contains("smol:latest"));

    // The second appliance as an upstream of the first, its key from stdin.
    let out = ok(&run(client(&srv2, &dir2, &["key", "create", "--name", "site1"])));
    let site2_key = last_secret(&out);
    let mut child = client(&srv, &dir, &["upstream", "add", "site2", "--url", &format!("{}/v1", srv2.url)])
        .args(["--models", "remote-smol,other", "--priority", "-1", "--api-key-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{site2_key}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let out = ok(&out);
    assert!(out.contains("added upstream site2 (2 models, priority -1, key sealed)"), "{out}");
    let out = c(&["upstream", "list"]);
    assert!(out.contains("site2") && out.contains("up") && out.contains("remote-smol,other"), "{out}");
    assert!(c(&["upstream", "disable", "site2"]).contains("disabled"));
    assert!(c(&["upstream", "list"]).contains("disabled"));
    c(&["upstream", "rm", "site2"]);
    assert!(!c(&["upstream", "list"]).contains("site2"));
    assert!(sigterm(&mut srv2.child).success());
    let out = c(&["user", "add", "dora", "--role", "user"]);
    assert!(out.contains("created user dora"), "{out}");
    let out = c(&["user", "limits", "dora", "--tpd", "5000", "--concurrent", "2"]);
    assert!(out.contains("tpd=5000") && out.contains("concurrent=2"), "{out}");

    let out =
        c(&["app", "create", "haiku", "--model", "smol", "--system-prompt", "Answer in a haiku.", "--max-tokens", "8"]);
    assert!(out.contains("created app:haiku on smol:latest"), "{out}");
    assert!(c(&["app", "list"]).contains("app:haiku"));
    let out = c(&["key", "create", "--name", "bot", "--user", "dora", "--rpm", "1", "--app", "haiku"]);
    let secret = last_secret(&out);
    let out = c(&["key", "list", "--all"]);
    assert!(out.contains("app:haiku rpm=1"), "{out}");

    let chat = |model: &str| {
        http.post(format!("{}/v1/chat/completions", srv.url))
            .bearer_auth(&secret)
            .json(&json!({"model": model, "messages": [{"role": "user", "content": "Rain"}], "temperature": 0}))
            .send()
    };
    assert_eq!(chat("app:haiku").await.unwrap().status().as_u16(), 200);
    let second = chat("app:haiku").await.unwrap();
    assert_eq!(second.status().as_u16(), 429, "one request per minute on this key");
    assert_eq!(chat("smol").await.unwrap().status().as_u16(), 404, "the key reaches its app only");
    let key_id = secret.split('_').nth(1).unwrap();
    let out = c(&["key", "update", key_id, "--rpm", "0"]);
    assert!(out.contains("rpm=0"), "{out}");
    assert_eq!(chat("app:haiku").await.unwrap().status().as_u16(), 200, "0 lifts the limit");

    let out = c(&["usage", "--by", "app"]);
    assert!(out.lines().any(|l| l.starts_with("haiku") && l.split_whitespace().nth(1) == Some("3")), "{out}");
    let v: Value = serde_json::from_str(&c(&["usage", "--by", "user", "--user", "dora", "--json"])).unwrap();
    assert_eq!(v["data"][0]["group"], "dora");
    assert_eq!(v["data"][0]["errors"], 1, "{v}");

    let out = c(&["model", "visibility", "smol", "--roles", "developer"]);
    assert!(out.contains("roles [\"developer\"]"), "{out}");
    assert_eq!(chat("app:haiku").await.unwrap().status().as_u16(), 404, "dora no longer sees the app's model");
    assert!(c(&["model", "visibility", "smol"]).contains("visible to everyone"));
    c(&["app", "rm", "haiku"]);
    assert_eq!(me_status(&http, &srv, &secret).await, 401, "the app's key went with it");
    assert!(sigterm(&mut srv.child).success());
}

fn sample(name: &str) -> String {
    format!("{}/../../assets/samples/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// kill -9 while a large document is being embedded: after a restart the index opens, the
/// interrupted document is marked failed with no chunks left, earlier documents are still
/// found, and new documents can be added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowledge_survives_kill_9_during_ingestion() {
    use futures::StreamExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut srv = serve(&dir);
    let http = reqwest::Client::new();
    let admin = setup(&http, &srv).await;
    let c = |srv: &Served, args: &[&str]| ok(&run(client(srv, &dir, args)));
    let minilm = model_file("all-MiniLM-L6-v2.F32.gguf");
    c(&srv, &["model", "import", minilm.to_str().unwrap(), "--name", "all-minilm-l6-v2"]);
    let out = c(&srv, &["kb", "create", "docs", "--public", "--description", "samples"]);
    assert!(out.contains("created knowledge base docs"), "{out}");
    let out = c(&srv, &["kb", "add", "docs", &sample("guide.md"), &sample("contract.ofd")]);
    assert!(out.contains("guide.md: ready") && out.contains("contract.ofd: ready"), "{out}");

    let long: String = (0..4000).map(|i| format!("Paragraph {i} is about subject {} in detail.\n\n", i % 89)).collect();
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::bytes(long.into_bytes()).file_name("big.txt"));
    let job: Value = http
        .post(format!("{}/api/v1/knowledge/docs/documents", srv.url))
        .bearer_auth(&admin)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = http
        .get(format!("{}/api/v1/knowledge/jobs/{}/events", srv.url, job["id"].as_str().unwrap()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if seen.contains("\"embedded\":64") || seen.contains("\"embedded\":96") {
            break;
        }
    }
    srv.child.kill().unwrap(); // SIGKILL while embedding
    srv.child.wait().unwrap();

    let mut srv = serve(&dir);
    let docs = c(&srv, &["kb", "docs", "docs", "--json"]);
    let docs: Value = serde_json::from_str(&docs).unwrap();
    let big = docs["data"].as_array().unwrap().iter().find(|d| d["name"] == "big.txt").unwrap().clone();
    assert_eq!(big["status"], "failed", "{big}");
    assert!(big["error"].as_str().unwrap().contains("interrupted"), "{big}");
    let out = c(&srv, &["kb", "search", "docs", "-q", "subject 7 in detail", "--mode", "keyword"]);
    assert!(!out.contains("big.txt"), "no chunk of the interrupted document: {out}");
    let out = c(&srv, &["kb", "search", "docs", "-q", "what holds the data directory lock"]);
    assert!(out.contains("docs/guide.md"), "{out}");
    let out = c(&srv, &["kb", "add", "docs", &sample("notice.html")]);
    assert!(out.contains("notice.html: ready"), "{out}");
    let out = c(&srv, &["kb", "list"]);
    assert!(out.contains("docs") && out.contains("owner") && out.contains("samples"), "{out}");
    sigterm(&mut srv.child);
    let out = ok(&run(&mut maasbox(&["audit", "verify", "--offline", "--json", "--data-dir", dir.to_str().unwrap()])));
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["valid"], true);
}
