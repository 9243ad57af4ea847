//! The admin commands as HTTP clients of a running server.

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{AppCmd, AuditCmd, BundleCmd, ClientArgs, KbCmd, KeyCmd, LimitArgs, ModelCmd, UpstreamCmd, UserCmd};

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    json: bool,
}

impl Client {
    pub(crate) fn new(c: &ClientArgs) -> anyhow::Result<Self> {
        let token = match &c.token {
            Some(t) => t.clone(),
            None => {
                let cfg = c.cfg.load(Vec::new())?;
                let dir = maasbox_api::state::expand_home(&cfg.storage.data_dir);
                let path = dir.join("owner.token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no credentials: set MAASBOX_TOKEN (an API key or access token), or run on the server's machine \
                             as its user so {} can be read (pass --data-dir if it is elsewhere)",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(Self { http: reqwest::Client::new(), base: c.server.trim_end_matches('/').to_owned(), token, json: c.json })
    }

    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.checked(req).await
    }

    /// Send a multipart form.
    async fn send_form(&self, path: &str, form: reqwest::multipart::Form) -> anyhow::Result<Value> {
        let req = self.http.post(format!("{}{}", self.base, path)).bearer_auth(&self.token).multipart(form);
        Ok(self.checked(req).await?.json().await?)
    }

    /// Follow a server-sent event stream of JSON progress until `last` says an event is final;
    /// returns that event (or `Null` when the stream ended early).
    async fn follow(
        &self,
        path: &str,
        mut each: impl FnMut(&Value),
        last: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        use futures::StreamExt;
        let resp = self.send(Method::GET, path, None).await?;
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk?));
            while let Some(i) = buf.find('\n') {
                let line: String = buf.drain(..=i).collect();
                let Some(data) = line.trim_end().strip_prefix("data:") else { continue };
                let ev: Value = serde_json::from_str(data.trim())?;
                each(&ev);
                if last(&ev) {
                    return Ok(ev);
                }
            }
        }
        Ok(Value::Null)
    }

    async fn checked(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.with_context(|| format!("cannot reach the maasbox server at {}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v["error"]["message"].is_string() => {
                bail!(
                    "{} ({}, HTTP {})",
                    v["error"]["message"].as_str().unwrap_or_default(),
                    v["error"]["code"].as_str().unwrap_or("?"),
                    status.as_u16()
                )
            }
            _ => bail!("server answered HTTP {status}: {text}"),
        }
    }

    pub(crate) async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let resp = self.send(method, path, body).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        Ok(resp.json().await?)
    }

    /// Resolve a username or numeric id to an id.
    async fn user_id(&self, user: &str) -> anyhow::Result<i64> {
        if let Ok(id) = user.parse::<i64>() {
            return Ok(id);
        }
        let list = self.call(Method::GET, "/api/v1/users", None).await?;
        list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|u| u["username"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(user)))
            .and_then(|u| u["id"].as_i64())
            .with_context(|| format!("no user named '{user}'"))
    }

    fn print(&self, v: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    }
}

fn read_password(from_stdin: bool, prompt: &str) -> anyhow::Result<String> {
    if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\r', '\n']).to_owned();
        if pw.is_empty() {
            bail!("no password on standard input");
        }
        return Ok(pw);
    }
    let a = rpassword::prompt_password(prompt)?;
    let b = rpassword::prompt_password("Repeat: ")?;
    if a != b {
        bail!("the passwords do not match");
    }
    Ok(a)
}

fn table(rows: &[Vec<String>]) {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// The quota flags as the API's `limits` object (only the flags given).
fn limits_json(l: &LimitArgs) -> Option<Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("requests_per_minute", l.rpm),
        ("tokens_per_day", l.tpd),
        ("tokens_per_month", l.tpm),
        ("concurrent", l.concurrent),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// `rpm=10 tpd=5000` for a limits object, `-` for none.
fn limits_text(v: &Value) -> String {
    let parts: Vec<String> = [
        ("requests_per_minute", "rpm"),
        ("tokens_per_day", "tpd"),
        ("tokens_per_month", "tpm"),
        ("concurrent", "concurrent"),
    ]
    .iter()
    .filter_map(|(k, short)| v.get(*k).filter(|x| !x.is_null()).map(|x| format!("{short}={x}")))
    .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) async fn user(cmd: UserCmd) -> anyhow::Result<()> {
    match cmd {
        UserCmd::Add { username, role, display_name, password_stdin, c } => {
            let cl = Client::new(&c)?;
            let password = if password_stdin { Some(read_password(true, "")?) } else { None };
            let v = cl
                .call(
                    Method::POST,
                    "/api/v1/users",
                    Some(
                        json!({"username": username, "role": role, "display_name": display_name, "password": password}),
                    ),
                )
                .await?;
            cl.print(&v, |v| {
                println!("created user {} (id {}, role {})", s(&v["username"]), s(&v["id"]), s(&v["role"]));
                if let Some(pw) = v["initial_password"].as_str() {
                    println!("initial password (shown once; must be changed at first login): {pw}");
                }
            });
        }
        UserCmd::List { c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, "/api/v1/users", None).await?;
            cl.print(&v, |v| {
                let mut rows =
                    vec![vec!["ID".into(), "USERNAME".into(), "ROLE".into(), "STATUS".into(), "DISPLAY NAME".into()]];
                for u in v["data"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&u["id"]),
                        s(&u["username"]),
                        s(&u["role"]),
                        s(&u["status"]),
                        s(&u["display_name"]),
                    ]);
                }
                table(&rows);
            });
        }
        UserCmd::Disable { user, c } => set_status(&c, &user, "disabled").await?,
        UserCmd::Enable { user, c } => set_status(&c, &user, "active").await?,
        UserCmd::Passwd { user, password_stdin, c } => {
            let cl = Client::new(&c)?;
            let id = cl.user_id(&user).await?;
            let pw = read_password(password_stdin, "New password: ")?;
            cl.call(Method::POST, &format!("/api/v1/users/{id}/password"), Some(json!({"password": pw}))).await?;
            println!("password of {user} changed; their sessions were ended");
        }
        UserCmd::Limits { user, limits, c } => {
            let cl = Client::new(&c)?;
            let id = cl.user_id(&user).await?;
            let body = json!({"limits": limits_json(&limits).unwrap_or_else(|| json!({}))});
            let v = cl.call(Method::PATCH, &format!("/api/v1/users/{id}"), Some(body)).await?;
            cl.print(&v, |v| println!("limits of {}: {}", s(&v["username"]), limits_text(&v["limits"])));
        }
        UserCmd::Rm { user, c } => {
            let cl = Client::new(&c)?;
            let id = cl.user_id(&user).await?;
            cl.call(Method::DELETE, &format!("/api/v1/users/{id}"), None).await?;
            println!("deleted user {user}");
        }
    }
    Ok(())
}

async fn set_status(c: &ClientArgs, user: &str, status: &str) -> anyhow::Result<()> {
    let cl = Client::new(c)?;
    let id = cl.user_id(user).await?;
    let v = cl.call(Method::PATCH, &format!("/api/v1/users/{id}"), Some(json!({"status": status}))).await?;
    cl.print(&v, |v| println!("{} is now {}", s(&v["username"]), s(&v["status"])));
    Ok(())
}

pub(crate) async fn key(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::Create { name, user, models, expires_in_days, app, limits, c } => {
            let cl = Client::new(&c)?;
            let user_id = match &user {
                Some(u) => Some(cl.user_id(u).await?),
                None => None,
            };
            let v = cl
                .call(
                    Method::POST,
                    "/api/v1/keys",
                    Some(json!({"name": name, "user_id": user_id, "allowed_models": models,
                                "expires_in_days": expires_in_days, "app": app, "limits": limits_json(&limits)})),
                )
                .await?;
            cl.print(&v, |v| {
                println!("created key {} for {}", s(&v["id"]), s(&v["username"]));
                println!("secret (shown once, store it now): {}", s(&v["secret"]));
            });
        }
        KeyCmd::Update { id, name, limits, c } => {
            let cl = Client::new(&c)?;
            let id = id.trim_start_matches("mbx_").split('_').next().unwrap_or_default().to_owned();
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(l) = limits_json(&limits) {
                body["limits"] = l;
            }
            let v = cl.call(Method::PATCH, &format!("/api/v1/keys/{id}"), Some(body)).await?;
            cl.print(&v, |v| println!("key {} ({}): limits {}", s(&v["id"]), s(&v["name"]), limits_text(&v["limits"])));
        }
        KeyCmd::List { all, c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, if all { "/api/v1/keys?all=true" } else { "/api/v1/keys" }, None).await?;
            cl.print(&v, |v| {
                let mut rows = vec![vec![
                    "ID".into(),
                    "NAME".into(),
                    "OWNER".into(),
                    "MODELS".into(),
                    "EXPIRES".into(),
                    "LAST USED".into(),
                    "LIMITS".into(),
                ]];
                for k in v["data"].as_array().into_iter().flatten() {
                    let models = k["allowed_models"]
                        .as_array()
                        .map(|m| m.iter().map(s).collect::<Vec<_>>().join(","))
                        .unwrap_or_else(|| "all".into());
                    rows.push(vec![
                        s(&k["id"]),
                        s(&k["name"]),
                        s(&k["username"]),
                        models,
                        s(&k["expires_at"]),
                        s(&k["last_used_at"]),
                        match k["app"].as_str() {
                            Some(a) => format!("app:{a} {}", limits_text(&k["limits"])),
                            None => limits_text(&k["limits"]),
                        },
                    ]);
                }
                table(&rows);
            });
        }
        KeyCmd::Revoke { id, c } => {
            let cl = Client::new(&c)?;
            let id = id.trim_start_matches("mbx_").split('_').next().unwrap_or_default().to_owned();
            cl.call(Method::DELETE, &format!("/api/v1/keys/{id}"), None).await?;
            println!("revoked key {id}");
        }
    }
    Ok(())
}

pub(crate) async fn audit(cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Verify { c, .. } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, "/api/v1/audit/verify", None).await?;
            let valid = v["valid"].as_bool().unwrap_or(false);
            cl.print(&v, crate::offline::print_report);
            if !valid {
                bail!("audit chain is broken");
            }
        }
        AuditCmd::Export { out, from_seq, to_seq, c } => {
            let cl = Client::new(&c)?;
            let mut q = Vec::new();
            if let Some(f) = from_seq {
                q.push(format!("from_seq={f}"));
            }
            if let Some(t) = to_seq {
                q.push(format!("to_seq={t}"));
            }
            let path = format!("/api/v1/audit/export{}{}", if q.is_empty() { "" } else { "?" }, q.join("&"));
            let body = cl.send(Method::GET, &path, None).await?.bytes().await?;
            let text = body.strip_suffix(b"\n").unwrap_or(&body);
            let split = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let (events, last) = text.split_at(split);
            let manifest: Value =
                serde_json::from_slice(last).context("the export did not end with a manifest line")?;
            let manifest = manifest.get("manifest").context("the export did not end with a manifest line")?;
            std::fs::write(&out, events).with_context(|| format!("writing {}", out.display()))?;
            let mpath = crate::offline::manifest_path(&out);
            std::fs::write(&mpath, serde_json::to_vec_pretty(manifest)?)?;
            println!(
                "exported events {}..{} ({} events) to {} with signed manifest {}",
                s(&manifest["first_seq"]),
                s(&manifest["last_seq"]),
                s(&manifest["count"]),
                out.display(),
                mpath.display()
            );
        }
    }
    Ok(())
}

fn human_size(n: i64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else {
        format!("{:.0} MB", n / 1e6)
    }
}

pub(crate) async fn model(cmd: ModelCmd) -> anyhow::Result<()> {
    match cmd {
        ModelCmd::Import { path, name, base, c } => {
            let cl = Client::new(&c)?;
            let abs = std::fs::canonicalize(&path).with_context(|| format!("{} does not exist", path.display()))?;
            let v =
                cl.call(Method::POST, "/api/v1/models", Some(json!({"path": abs, "name": name, "base": base}))).await?;
            cl.print(&v, |v| {
                println!(
                    "imported {} ({}, {}, {}) sha256 {}",
                    s(&v["id"]),
                    s(&v["info"]["architecture"]),
                    s(&v["info"]["quantization"]),
                    human_size(v["size"].as_i64().unwrap_or(0)),
                    s(&v["sha256"])
                )
            });
        }
        ModelCmd::List { c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, "/api/v1/models", None).await?;
            cl.print(&v, |v| {
                let mut rows = vec![vec![
                    "NAME".into(),
                    "ARCH".into(),
                    "QUANT".into(),
                    "SIZE".into(),
                    "CONTEXT".into(),
                    "LOADED".into(),
                ]];
                for m in v["data"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&m["id"]),
                        s(&m["info"]["architecture"]),
                        s(&m["info"]["quantization"]),
                        human_size(m["size"].as_i64().unwrap_or(0)),
                        s(&m["info"]["context_length"]),
                        if m["loaded"] == true { "yes".into() } else { "-".into() },
                    ]);
                }
                table(&rows);
            });
        }
        ModelCmd::Show { name, c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, &format!("/api/v1/models/{name}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ModelCmd::Rm { name, force, c } => {
            let cl = Client::new(&c)?;
            let q = if force { "?force=true" } else { "" };
            cl.call(Method::DELETE, &format!("/api/v1/models/{name}{q}"), None).await?;
            println!("removed {name}");
        }
        ModelCmd::Load { name, keep_alive, pin, unpin, c } => {
            let cl = Client::new(&c)?;
            let mut body = json!({});
            if let Some(k) = keep_alive {
                // A bare number is seconds, as in the API.
                body["keep_alive"] = k.parse::<f64>().map_or_else(|_| json!(k), |n| json!(n));
            }
            if pin || unpin {
                body["pin"] = json!(pin);
            }
            let v = cl.call(Method::POST, &format!("/api/v1/models/{name}/load"), Some(body)).await?;
            cl.print(&v, |v| {
                let pinned = if v["pinned"] == true { ", pinned" } else { "" };
                println!("loaded {} (context {}, {} slots{pinned})", s(&v["name"]), s(&v["n_ctx"]), s(&v["parallel"]))
            });
        }
        ModelCmd::Unload { name, c } => {
            let cl = Client::new(&c)?;
            cl.call(Method::POST, &format!("/api/v1/models/{name}/unload"), Some(json!({}))).await?;
            println!("unloaded {name}");
        }
        ModelCmd::Pull { url, name, sha256, base, c } => pull(&c, &url, name, sha256, base).await?,
        ModelCmd::Visibility { name, roles, users, c } => {
            let cl = Client::new(&c)?;
            let body = json!({"visibility": {"roles": roles, "users": users}});
            let v = cl.call(Method::PATCH, &format!("/api/v1/models/{name}"), Some(body)).await?;
            cl.print(&v, |v| {
                let vis = &v["visibility"];
                if vis.as_object().is_none_or(|o| o.is_empty()) {
                    println!("{} is visible to everyone", s(&v["id"]));
                } else {
                    println!(
                        "{} is visible to admins and roles {} users {}",
                        s(&v["id"]),
                        s(&vis["roles"]),
                        s(&vis["users"])
                    );
                }
            });
        }
        ModelCmd::Ps { c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, "/api/v1/models/running", None).await?;
            cl.print(&v, |v| {
                let mut rows =
                    vec![["NAME", "ARCH", "CONTEXT", "SLOTS", "KIND", "ACTIVE", "UNTIL"].map(String::from).to_vec()];
                for m in v["data"].as_array().into_iter().flatten() {
                    let kind = if m["embedding"] == true { "embedding" } else { "chat" };
                    let until = if m["pinned"] == true {
                        "pinned".to_owned()
                    } else if let Some(secs) = m["expires_in_secs"].as_u64() {
                        format!("{secs}s idle left")
                    } else if m["active_requests"].as_u64().unwrap_or(0) > 0 {
                        "busy".to_owned()
                    } else {
                        "forever".to_owned()
                    };
                    rows.push(vec![
                        s(&m["name"]),
                        s(&m["architecture"]),
                        s(&m["n_ctx"]),
                        s(&m["parallel"]),
                        kind.into(),
                        s(&m["active_requests"]),
                        until,
                    ]);
                }
                table(&rows);
            });
        }
    }
    Ok(())
}

pub(crate) async fn app(cmd: AppCmd) -> anyhow::Result<()> {
    match cmd {
        AppCmd::Create { name, model, system_prompt, system_prompt_file, description, temperature, max_tokens, c } => {
            let cl = Client::new(&c)?;
            let prompt = match (system_prompt, system_prompt_file) {
                (Some(p), _) => p,
                (None, Some(f)) => std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?,
                (None, None) => String::new(),
            };
            let mut params = json!({});
            if let Some(t) = temperature {
                params["temperature"] = json!(t);
            }
            if let Some(m) = max_tokens {
                params["max_tokens"] = json!(m);
            }
            let body = json!({"name": name, "model": model, "system_prompt": prompt, "description": description, "params": params});
            let v = cl.call(Method::POST, "/api/v1/apps", Some(body)).await?;
            cl.print(&v, |v| println!("created app:{} on {}", s(&v["name"]), s(&v["model"])));
        }
        AppCmd::List { c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, "/api/v1/apps", None).await?;
            cl.print(&v, |v| {
                let mut rows = vec![["NAME", "MODEL", "DESCRIPTION", "BY"].map(String::from).to_vec()];
                for a in v["data"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        format!("app:{}", s(&a["name"])),
                        s(&a["model"]),
                        s(&a["description"]),
                        s(&a["created_by"]),
                    ]);
                }
                table(&rows);
            });
        }
        AppCmd::Show { name, c } => {
            let cl = Client::new(&c)?;
            let name = name.trim_start_matches("app:");
            let v = cl.call(Method::GET, &format!("/api/v1/apps/{name}"), None).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AppCmd::Rm { name, c } => {
            let cl = Client::new(&c)?;
            let name = name.trim_start_matches("app:");
            cl.call(Method::DELETE, &format!("/api/v1/apps/{name}"), None).await?;
            println!("deleted app:{name}");
        }
    }
    Ok(())
}

pub(crate) async fn usage(
    c: &ClientArgs,
    by: &str,
    from: Option<String>,
    to: Option<String>,
    user: Option<String>,
) -> anyhow::Result<()> {
    let cl = Client::new(c)?;
    let mut q = vec![format!("group_by={by}")];
    if let Some(f) = from {
        q.push(format!("from={f}"));
    }
    if let Some(t) = to {
        q.push(format!("to={t}"));
    }
    if let Some(u) = user {
        q.push(format!("user_id={}", cl.user_id(&u).await?));
    }
    let v = cl.call(Method::GET, &format!("/api/v1/usage?{}", q.join("&")), None).await?;
    cl.print(&v, |v| {
        println!("usage of {} from {} to {} by {}", s(&v["scope"]), s(&v["from"]), s(&v["to"]), s(&v["group_by"]));
        let mut rows =
            vec![["GROUP", "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "TOTAL", "AVG MS"].map(String::from).to_vec()];
        for r in v["data"].as_array().into_iter().flatten() {
            let group = r["group"].as_str().filter(|g| !g.is_empty()).unwrap_or("(none)").to_owned();
            rows.push(vec![
                group,
                s(&r["requests"]),
                s(&r["errors"]),
                s(&r["prompt_tokens"]),
                s(&r["completion_tokens"]),
                s(&r["total_tokens"]),
                format!("{:.0}", r["avg_latency_ms"].as_f64().unwrap_or(0.0)),
            ]);
        }
        table(&rows);
    });
    Ok(())
}

/// Start a download and follow its progress events until the final one.
async fn pull(
    c: &ClientArgs,
    url: &str,
    name: Option<String>,
    sha256: Option<String>,
    base: Option<String>,
) -> anyhow::Result<()> {
    let cl = Client::new(c)?;
    let body = json!({"url": url, "name": name, "sha256": sha256, "base": base});
    let job = cl.call(Method::POST, "/api/v1/models", Some(body)).await?;
    let id = s(&job["id"]);
    let bar = indicatif::ProgressBar::new(0);
    if cl.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")?
            .progress_chars("=> "),
    );
    bar.set_message(s(&job["model"]));
    let last = cl
        .follow(
            &format!("/api/v1/models/imports/{id}/events"),
            |ev| {
                if let Some(t) = ev["total"].as_u64() {
                    bar.set_length(t);
                }
                bar.set_position(ev["bytes"].as_u64().unwrap_or(0));
                if ev["phase"] == "verifying" {
                    bar.set_message(format!("{} (verifying)", s(&ev["model"])));
                }
            },
            |ev| matches!(ev["phase"].as_str(), Some("done" | "failed" | "cancelled")),
        )
        .await?;
    bar.finish_and_clear();
    match last["phase"].as_str() {
        Some("done") => {
            let rec = &last["record"];
            cl.print(&last, |_| {
                println!(
                    "pulled {} ({}, {}) sha256 {}{}",
                    s(&rec["id"]),
                    s(&rec["info"]["architecture"]),
                    human_size(rec["size"].as_i64().unwrap_or(0)),
                    s(&rec["sha256"]),
                    if last["attempts"].as_u64() > Some(1) {
                        format!(" after {} connections", last["attempts"])
                    } else {
                        String::new()
                    }
                )
            });
            Ok(())
        }
        Some(phase) => bail!("import {id} {phase}: {}", s(&last["error"])),
        None => bail!("the server closed the progress stream of import {id} early; GET /api/v1/models/imports/{id} tells how it ended"),
    }
}

pub(crate) async fn bundle(cmd: BundleCmd) -> anyhow::Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    match cmd {
        BundleCmd::Create { models, out, c } => {
            let cl = Client::new(&c)?;
            let resp = cl.send(Method::POST, "/api/v1/bundles", Some(json!({"models": models}))).await?;
            let partial = out.with_extension("partial");
            let mut file = tokio::fs::File::create(&partial)
                .await
                .with_context(|| format!("cannot create {}", partial.display()))?;
            let mut body = resp.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&partial).await;
                        bail!("the bundle stream broke: {e}");
                    }
                };
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            drop(file);
            // Check what arrived before calling it a bundle.
            let p2 = partial.clone();
            let checked =
                tokio::task::spawn_blocking(move || maasbox_api::bundle::read(&p2, None, false, None)).await?;
            let v = match checked {
                Ok(v) => v,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    bail!("the bundle written is not valid: {e}");
                }
            };
            std::fs::rename(&partial, &out)?;
            let size = std::fs::metadata(&out)?.len();
            let names: Vec<String> = v.manifest.models.iter().map(|m| format!("{}:{}", m.name, m.tag)).collect();
            println!("wrote {} ({}) with {}", out.display(), human_size(size as i64), names.join(", "));
            println!("signed by {}", v.manifest.signer);
            println!("import elsewhere with: maasbox bundle import FILE --trust {}", v.manifest.signer);
        }
        BundleCmd::Import { file, trust, allow_unsigned, c } => {
            let cl = Client::new(&c)?;
            let abs = std::fs::canonicalize(&file).with_context(|| format!("{} does not exist", file.display()))?;
            let body = json!({"path": abs, "trust": trust, "allow_unsigned": allow_unsigned});
            let v = cl.call(Method::POST, "/api/v1/bundles/import", Some(body)).await?;
            cl.print(&v, |v| {
                let how = match (v["signed"].as_bool(), v["trusted"].as_bool()) {
                    (Some(true), Some(true)) => "signed by the trusted key",
                    (Some(true), _) => "signed (signer not checked against a trusted key)",
                    _ => "UNSIGNED",
                };
                println!("imported from a bundle {how} {}:", s(&v["signer"]));
                for m in v["models"].as_array().into_iter().flatten() {
                    println!("  {} sha256 {}", s(&m["id"]), s(&m["sha256"]));
                }
            });
        }
    }
    Ok(())
}

pub(crate) async fn upstream(cmd: UpstreamCmd) -> anyhow::Result<()> {
    match cmd {
        UpstreamCmd::Add { name, url, models, priority, api_key_stdin, c } => {
            let cl = Client::new(&c)?;
            let key = if api_key_stdin { Some(read_password(true, "")?) } else { None };
            let body = json!({"name": name, "base_url": url, "models": models, "priority": priority, "api_key": key});
            let v = cl.call(Method::POST, "/api/v1/upstreams", Some(body)).await?;
            cl.print(&v, |v| {
                println!(
                    "added upstream {} ({} models, priority {}, key {})",
                    s(&v["name"]),
                    v["models"].as_array().map_or(0, Vec::len),
                    s(&v["priority"]),
                    if v["has_api_key"] == true { "sealed" } else { "none" }
                )
            });
        }
        UpstreamCmd::List { c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, "/api/v1/upstreams", None).await?;
            cl.print(&v, |v| {
                let mut rows = vec![["NAME", "URL", "PRIORITY", "STATE", "MODELS"].map(String::from).to_vec()];
                for u in v["data"].as_array().into_iter().flatten() {
                    let state = match (u["enabled"].as_bool(), u["healthy"].as_bool()) {
                        (Some(false), _) => "disabled".to_owned(),
                        (_, Some(true)) => "up".to_owned(),
                        _ => format!("down ({})", s(&u["last_error"])),
                    };
                    let models = u["models"]
                        .as_array()
                        .map(|m| m.iter().map(s).collect::<Vec<_>>().join(","))
                        .unwrap_or_default();
                    rows.push(vec![s(&u["name"]), s(&u["base_url"]), s(&u["priority"]), state, models]);
                }
                table(&rows);
            });
        }
        UpstreamCmd::Disable { name, c } => set_upstream_enabled(&c, &name, false).await?,
        UpstreamCmd::Enable { name, c } => set_upstream_enabled(&c, &name, true).await?,
        UpstreamCmd::Rm { name, c } => {
            let cl = Client::new(&c)?;
            cl.call(Method::DELETE, &format!("/api/v1/upstreams/{name}"), None).await?;
            println!("removed upstream {name}");
        }
    }
    Ok(())
}

async fn set_upstream_enabled(c: &ClientArgs, name: &str, enabled: bool) -> anyhow::Result<()> {
    let cl = Client::new(c)?;
    let v = cl.call(Method::PATCH, &format!("/api/v1/upstreams/{name}"), Some(json!({"enabled": enabled}))).await?;
    cl.print(&v, |v| println!("upstream {} is {}", s(&v["name"]), if enabled { "enabled" } else { "disabled" }));
    Ok(())
}

pub(crate) async fn kb(cmd: KbCmd) -> anyhow::Result<()> {
    match cmd {
        KbCmd::Create { name, description, embedding_model, chunk_tokens, chunk_overlap, public, users, roles, c } => {
            let cl = Client::new(&c)?;
            let visibility = if public {
                Some(json!({}))
            } else if users.is_empty() && roles.is_empty() {
                None
            } else {
                Some(json!({"users": users, "roles": roles}))
            };
            let body = json!({"name": name, "description": description, "embedding_model": embedding_model,
                "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap, "visibility": visibility});
            let v = cl.call(Method::POST, "/api/v1/knowledge", Some(body)).await?;
            cl.print(&v, |v| {
                println!(
                    "created knowledge base {} (embeddings: {}, {} dims; chunks of {} tokens, overlap {})",
                    s(&v["name"]),
                    s(&v["embedding_model"]),
                    s(&v["dim"]),
                    s(&v["chunk_tokens"]),
                    s(&v["chunk_overlap"])
                )
            });
        }
        KbCmd::List { c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, "/api/v1/knowledge", None).await?;
            cl.print(&v, |v| {
                let mut rows = vec![["NAME", "OWNER", "DOCUMENTS", "CHUNKS", "EMBEDDINGS", "DESCRIPTION"]
                    .map(String::from)
                    .to_vec()];
                for b in v["data"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&b["name"]),
                        s(&b["owner"]),
                        s(&b["documents"]),
                        s(&b["chunks"]),
                        s(&b["embedding_model"]),
                        s(&b["description"]),
                    ]);
                }
                table(&rows);
            });
        }
        KbCmd::Rm { name, c } => {
            let cl = Client::new(&c)?;
            cl.call(Method::DELETE, &format!("/api/v1/knowledge/{name}"), None).await?;
            println!("removed knowledge base {name} with its documents");
        }
        KbCmd::Add { name, files, c } => {
            let cl = Client::new(&c)?;
            let mut form = reqwest::multipart::Form::new();
            for f in &files {
                let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
                let fname = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
                form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(fname));
            }
            let job = cl.send_form(&format!("/api/v1/knowledge/{name}/documents"), form).await?;
            let id = s(&job["id"]);
            let bar = indicatif::ProgressBar::new(0);
            if cl.json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} chunks embedded")?
                    .progress_chars("=> "),
            );
            bar.set_message(format!("{} file(s)", files.len()));
            let last = cl
                .follow(
                    &format!("/api/v1/knowledge/jobs/{id}/events"),
                    |ev| {
                        bar.set_length(ev["chunked"].as_u64().unwrap_or(0));
                        bar.set_position(ev["embedded"].as_u64().unwrap_or(0));
                        bar.set_message(format!("{} of {} parsed", s(&ev["parsed"]), files.len()));
                    },
                    |ev| matches!(ev["phase"].as_str(), Some("done" | "cancelled")),
                )
                .await?;
            bar.finish_and_clear();
            if last.is_null() {
                bail!(
                    "the progress stream of job {id} ended early; GET /api/v1/knowledge/jobs/{id} tells how it ended"
                );
            }
            cl.print(&last, |v| {
                for f in v["files"].as_array().into_iter().flatten() {
                    match f["error"].as_str() {
                        Some(e) => println!("{}: {} ({e})", s(&f["name"]), s(&f["status"])),
                        None => println!("{}: {} ({} chunks)", s(&f["name"]), s(&f["status"]), s(&f["chunks"])),
                    }
                }
            });
            let failed = last["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| matches!(f["status"].as_str(), Some("failed" | "cancelled")))
                .count();
            if failed > 0 {
                bail!("{failed} of {} file(s) were not added", files.len());
            }
        }
        KbCmd::Docs { name, c } => {
            let cl = Client::new(&c)?;
            let v = cl.call(Method::GET, &format!("/api/v1/knowledge/{name}/documents"), None).await?;
            cl.print(&v, |v| {
                let mut rows =
                    vec![["ID", "NAME", "FORMAT", "STATUS", "CHUNKS", "SIZE", "NOTE"].map(String::from).to_vec()];
                for d in v["data"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        s(&d["id"]),
                        s(&d["name"]),
                        s(&d["format"]),
                        s(&d["status"]),
                        s(&d["chunks"]),
                        human_size(d["bytes"].as_i64().unwrap_or(0)),
                        s(&d["error"]),
                    ]);
                }
                table(&rows);
            });
        }
        KbCmd::Search { bases, query, top_k, mode, c } => {
            let cl = Client::new(&c)?;
            let body = json!({"bases": bases, "query": query, "top_k": top_k, "mode": mode});
            let v = cl.call(Method::POST, "/api/v1/knowledge/search", Some(body)).await?;
            cl.print(&v, |v| {
                for (i, h) in v["data"].as_array().into_iter().flatten().enumerate() {
                    let text: String = s(&h["text"]).chars().take(240).collect();
                    println!(
                        "[{}] {:.4}  {}/{}  ({})\n    {}",
                        i + 1,
                        h["score"].as_f64().unwrap_or(0.0),
                        s(&h["base"]),
                        s(&h["document"]),
                        s(&h["anchor"]),
                        text.replace('\n', "\n    ")
                    );
                }
                println!("({:.1} ms)", v["took_ms"].as_f64().unwrap_or(0.0));
            });
        }
    }
    Ok(())
}
