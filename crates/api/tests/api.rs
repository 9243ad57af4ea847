//! API tests through the real router, on a real loopback port, with a real SQLite file.

mod common;

use common::{assert_error_shape, Server, ADMIN_PW};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn first_run_setup_creates_one_admin_with_the_code() {
    let srv = Server::start().await;
    let token_file = srv.dir.path().join("setup.token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(srv.dir.path().join("owner.token")).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (_, h) = srv.req(Method::GET, "/health", None, None).await;
    assert_eq!(h["setup_required"], true);

    // Wrong code: refused and audited.
    let (s, v) = srv
        .req(
            Method::POST,
            "/api/v1/auth/setup",
            None,
            Some(json!({"code": "WRONG-CODE0", "username": "admin", "password": ADMIN_PW})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(assert_error_shape(&v).1, "invalid_setup_code");

    // Weak password: the policy's message comes back.
    let code = srv.setup_code.clone().unwrap();
    let (s, v) = srv
        .req(
            Method::POST,
            "/api/v1/auth/setup",
            None,
            Some(json!({"code": code, "username": "admin", "password": "password"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "weak_password");
    assert_eq!(v["error"]["param"], "password");
    assert!(v["error"]["message"].as_str().unwrap().contains("at least 10"));

    // Lower-case code with spaces is accepted (codes are read aloud and typed by hand).
    let typed = code.to_lowercase().replace('-', " ");
    let (s, v) = srv
        .req(
            Method::POST,
            "/api/v1/auth/setup",
            None,
            Some(json!({"code": typed, "username": "admin", "password": ADMIN_PW})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["user"]["role"], "admin");
    let admin = v["access_token"].as_str().unwrap().to_owned();
    assert!(!token_file.exists(), "setup.token is removed after setup");

    let (s, v) = srv
        .req(
            Method::POST,
            "/api/v1/auth/setup",
            None,
            Some(json!({"code": code, "username": "eve", "password": ADMIN_PW})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["error"]["code"], "already_set_up");

    let ev = srv.events(&admin, "auth.setup").await;
    let outcomes: Vec<&str> = ev.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["success", "failure"], "newest first");
    let (_, h) = srv.req(Method::GET, "/health", None, None).await;
    assert_eq!(h["setup_required"], false);
}

#[tokio::test]
async fn login_failures_are_audited_and_throttled() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    for _ in 0..5 {
        let (s, v) = srv.login("admin", "wrong-Passw0rd").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error"]["code"], "invalid_credentials");
    }
    // The sixth attempt is refused even with the right password.
    let resp = srv
        .http
        .post(srv.url("/api/v1/auth/login"))
        .json(&json!({"username": "ADMIN", "password": ADMIN_PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 900, "{retry}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    // Unknown users are failures too, with the same message.
    let (s, v) = srv.login("nobody", "whatever-Passw0rd").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["message"], "wrong username or password");

    let ev = srv.events(&admin, "auth.login").await;
    let failures = ev.iter().filter(|e| e["outcome"] == "failure").count();
    let denied = ev.iter().filter(|e| e["outcome"] == "denied").count();
    assert_eq!((failures, denied), (6, 1));
    assert!(ev.iter().all(|e| e["client_ip"] == "127.0.0.1"));
}

#[tokio::test]
async fn refresh_rotates_and_reuse_ends_the_session() {
    let srv = Server::start().await;
    srv.setup().await;
    let (_, v) = srv.login("admin", ADMIN_PW).await;
    let r1 = v["refresh_token"].as_str().unwrap().to_owned();
    let (s, v2) = srv.req(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": r1}))).await;
    assert_eq!(s, StatusCode::OK, "{v2}");
    let r2 = v2["refresh_token"].as_str().unwrap().to_owned();
    let access2 = v2["access_token"].as_str().unwrap().to_owned();
    assert_ne!(r1, r2);
    assert_eq!(srv.get("/api/v1/auth/me", &access2).await.0, StatusCode::OK);

    // The rotated-out token comes back: the whole session ends.
    let (s, v) = srv.req(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": r1}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "invalid_token");
    assert_eq!(srv.get("/api/v1/auth/me", &access2).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        srv.req(Method::POST, "/api/v1/auth/refresh", None, Some(json!({"refresh_token": r2}))).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Only a MAC of the refresh secret is stored.
    let secret = r2.rsplit('_').next().unwrap();
    let stored: Vec<Vec<u8>> = {
        let db = srv.db();
        let mut st = db.prepare("SELECT refresh_mac FROM sessions").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(|r| r.unwrap()).collect()
    };
    assert!(stored.iter().all(|m| m.len() == 32 && m != secret.as_bytes()));
}

#[tokio::test]
async fn logout_revokes_the_access_token_at_once() {
    let srv = Server::start().await;
    srv.setup().await;
    let (_, v) = srv.login("admin", ADMIN_PW).await;
    let access = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(srv.get("/api/v1/auth/me", &access).await.0, StatusCode::OK);
    let (s, _) = srv.req(Method::POST, "/api/v1/auth/logout", Some(&access), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = srv.get("/api/v1/auth/me", &access).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"]["code"], "invalid_token");
}

#[tokio::test]
async fn roles_are_enforced_and_denials_audited() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (dev_id, dev) = srv.user(&admin, "dana", "developer").await;
    let (_, auditor) = srv.user(&admin, "audrey", "auditor").await;

    let (s, v) = srv.get("/api/v1/users", &dev).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(assert_error_shape(&v), ("permission_error".into(), "forbidden".into()));
    // A user may read and rename themself, but not change their own role.
    assert_eq!(srv.get(&format!("/api/v1/users/{dev_id}"), &dev).await.0, StatusCode::OK);
    let (s, v) = srv
        .req(Method::PATCH, &format!("/api/v1/users/{dev_id}"), Some(&dev), Some(json!({"display_name": "Dana D."})))
        .await;
    assert_eq!((s, v["display_name"].as_str()), (StatusCode::OK, Some("Dana D.")));
    assert_eq!(
        srv.req(Method::PATCH, &format!("/api/v1/users/{dev_id}"), Some(&dev), Some(json!({"role": "admin"}))).await.0,
        StatusCode::FORBIDDEN
    );

    // Auditors read and verify, never change.
    assert_eq!(srv.get("/api/v1/users", &auditor).await.0, StatusCode::OK);
    assert_eq!(srv.get("/api/v1/audit/logs", &auditor).await.0, StatusCode::OK);
    assert_eq!(srv.get("/api/v1/audit/verify", &auditor).await.0, StatusCode::OK);
    assert_eq!(srv.post("/api/v1/users", &auditor, json!({"username": "x1"})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(srv.post("/api/v1/keys", &auditor, json!({"name": "k"})).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        srv.req(Method::DELETE, &format!("/api/v1/users/{dev_id}"), Some(&auditor), None).await.0,
        StatusCode::FORBIDDEN
    );
    // Developers cannot read the audit log.
    assert_eq!(srv.get("/api/v1/audit/logs", &dev).await.0, StatusCode::FORBIDDEN);

    let (_, v) = srv.get("/api/v1/audit/logs?outcome=denied&limit=100", &admin).await;
    let actions: Vec<(String, String)> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap().to_owned(), e["action"].as_str().unwrap().to_owned()))
        .collect();
    for want in [
        ("dana", "user.list"),
        ("dana", "user.update"),
        ("audrey", "user.create"),
        ("audrey", "key.create"),
        ("audrey", "user.delete"),
        ("dana", "audit.read"),
    ] {
        assert!(actions.contains(&(want.0.into(), want.1.into())), "missing denied {want:?} in {actions:?}");
    }
}

#[tokio::test]
async fn the_last_admin_cannot_be_removed_or_demoted() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, me) = srv.get("/api/v1/auth/me", &admin).await;
    let id = me["user"]["id"].as_i64().unwrap();
    for (m, body) in [
        (Method::PATCH, Some(json!({"role": "user"}))),
        (Method::PATCH, Some(json!({"status": "disabled"}))),
        (Method::DELETE, None),
    ] {
        let (s, v) = srv.req(m, &format!("/api/v1/users/{id}"), Some(&admin), body).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "last_admin");
    }
    // With a second admin, the first may step down.
    let (_, admin2) = srv.user(&admin, "root2", "admin").await;
    let (s, v) =
        srv.req(Method::PATCH, &format!("/api/v1/users/{id}"), Some(&admin2), Some(json!({"role": "developer"}))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // The demotion applies to the existing session immediately.
    assert_eq!(srv.get("/api/v1/users", &admin).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn disabling_a_user_stops_sessions_and_keys_immediately() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (uid, user) = srv.user(&admin, "ulla", "user").await;
    let (s, k) = srv.post("/api/v1/keys", &user, json!({"name": "laptop"})).await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let key = k["secret"].as_str().unwrap().to_owned();
    // Warm the auth cache with both credentials.
    assert_eq!(srv.get("/api/v1/auth/me", &key).await.0, StatusCode::OK);
    assert_eq!(srv.get("/api/v1/auth/me", &user).await.0, StatusCode::OK);

    let (s, _) = srv
        .req(Method::PATCH, &format!("/api/v1/users/{uid}"), Some(&admin), Some(json!({"status": "disabled"})))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(srv.get("/api/v1/auth/me", &key).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(srv.get("/api/v1/auth/me", &user).await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = srv.login("ulla", "Xy-Pw-12345!").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("disabled"));

    // Re-enabling brings the key back (sessions stay ended).
    srv.req(Method::PATCH, &format!("/api/v1/users/{uid}"), Some(&admin), Some(json!({"status": "active"}))).await;
    assert_eq!(srv.get("/api/v1/auth/me", &key).await.0, StatusCode::OK);
    assert_eq!(srv.get("/api/v1/auth/me", &user).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn api_keys_are_shown_once_stored_as_macs_and_scoped_to_their_owner() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, alice) = srv.user(&admin, "alice", "user").await;
    let (_, bob) = srv.user(&admin, "bob", "user").await;

    let (s, k) = srv
        .post("/api/v1/keys", &alice, json!({"name": "ci", "allowed_models": ["smollm2:135m"], "expires_in_days": 30}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let secret = k["secret"].as_str().unwrap().to_owned();
    let id = k["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with(&format!("mbx_{id}_")));
    assert_eq!(k["allowed_models"], json!(["smollm2:135m"]));

    let (s, me) = srv.get("/api/v1/auth/me", &secret).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (me["username"].as_str(), me["auth_method"].as_str(), me["key_id"].as_str()),
        (Some("alice"), Some("api_key"), Some(id.as_str()))
    );

    // Listing never shows the secret; bob sees none of alice's keys.
    let (_, list) = srv.get("/api/v1/keys", &alice).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(secret.rsplit('_').next().unwrap()));
    let (_, list) = srv.get("/api/v1/keys", &bob).await;
    assert!(list["data"].as_array().unwrap().is_empty());
    assert_eq!(srv.get("/api/v1/keys?all=true", &bob).await.0, StatusCode::FORBIDDEN);
    let (_, all) = srv.get("/api/v1/keys?all=true", &admin).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1);

    // Bob cannot revoke it and cannot learn it exists.
    let (s, v) = srv.req(Method::DELETE, &format!("/api/v1/keys/{id}"), Some(&bob), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));

    // The database holds a 32-byte MAC, not the secret.
    let mac: Vec<u8> =
        srv.db().query_row("SELECT secret_mac FROM api_keys WHERE id = ?1", [&id], |r| r.get(0)).unwrap();
    assert_eq!(mac.len(), 32);

    // A wrong secret for a real key id fails and is audited with the key id.
    let forged = format!("mbx_{id}_{}", "0".repeat(64));
    let (s, v) = srv.get("/api/v1/auth/me", &forged).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_api_key")));
    let fails = srv.events(&admin, "auth.failure").await;
    assert!(fails.iter().any(|e| e["key_id"] == id.as_str() && e["outcome"] == "failure"));

    // Owner revokes; the key stops working at once.
    assert_eq!(
        srv.req(Method::DELETE, &format!("/api/v1/keys/{id}"), Some(&alice), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(srv.get("/api/v1/auth/me", &secret).await.0, StatusCode::UNAUTHORIZED);
    let created = srv.events(&admin, "key.").await;
    let actions: Vec<&str> =
        created.iter().filter(|e| e["outcome"] == "success").map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["key.revoke", "key.create"]);
    assert!(created.iter().any(|e| e["action"] == "key.list" && e["actor"] == "bob" && e["outcome"] == "denied"));
}

#[tokio::test]
async fn expired_keys_are_refused() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, k) = srv.post("/api/v1/keys", &admin, json!({"name": "short", "expires_in_days": 1})).await;
    let id = k["id"].as_str().unwrap();
    // Move the expiry into the past directly in the database file.
    srv.db().execute("UPDATE api_keys SET expires_at = 1000 WHERE id = ?1", [id]).unwrap();
    let (s, v) = srv.get("/api/v1/auth/me", k["secret"].as_str().unwrap()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
    let (s, v) = srv.post("/api/v1/keys", &admin, json!({"name": "past", "expires_at": 1000})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("expires_at")));
}

#[tokio::test]
async fn owner_token_acts_as_admin_over_loopback() {
    let srv = Server::start().await;
    let owner = std::fs::read_to_string(srv.dir.path().join("owner.token")).unwrap();
    let (s, me) = srv.get("/api/v1/auth/me", owner.trim()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((me["username"].as_str(), me["role"].as_str()), (Some("owner"), Some("admin")));
    // Before setup there is no admin to own a key.
    let (s, v) = srv.post("/api/v1/keys", owner.trim(), json!({"name": "x"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("conflict")));
    let admin = srv.setup().await;
    let (s, v) = srv.post("/api/v1/users", owner.trim(), json!({"username": "olga"})).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(v["initial_password"].as_str().unwrap().len() >= 20);
    let ev = srv.events(&admin, "user.create").await;
    assert_eq!((ev[0]["actor"].as_str(), ev[0]["auth_method"].as_str()), (Some("owner"), Some("owner_token")));
    let bad = format!("mbo_{}", "a".repeat(64));
    assert_eq!(srv.get("/api/v1/auth/me", &bad).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn generated_passwords_must_be_changed_first() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let (_, v) = srv.post("/api/v1/users", &admin, json!({"username": "temp", "role": "developer"})).await;
    let id = v["id"].as_i64().unwrap();
    let pw = v["initial_password"].as_str().unwrap().to_owned();
    let (s, v) = srv.login("temp", &pw).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["user"]["must_change_password"], true);
    let tok = v["access_token"].as_str().unwrap().to_owned();
    let (s, v) = srv.post("/api/v1/keys", &tok, json!({"name": "k"})).await;
    assert_eq!((s, v["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("password_change_required")));
    // Changing needs the current password.
    let (s, v) = srv.post(&format!("/api/v1/users/{id}/password"), &tok, json!({"password": "New-Passw0rd-1"})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("current_password")));
    let (s, _) = srv
        .post(
            &format!("/api/v1/users/{id}/password"),
            &tok,
            json!({"password": "New-Passw0rd-1", "current_password": "nope"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = srv
        .post(
            &format!("/api/v1/users/{id}/password"),
            &tok,
            json!({"password": "New-Passw0rd-1", "current_password": pw}),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // The change ended the old session; the new password works and no change is required.
    assert_eq!(srv.get("/api/v1/auth/me", &tok).await.0, StatusCode::UNAUTHORIZED);
    let (s, v) = srv.login("temp", "New-Passw0rd-1").await;
    assert_eq!((s, &v["user"]["must_change_password"]), (StatusCode::OK, &json!(false)));
    assert_eq!(
        srv.post("/api/v1/keys", v["access_token"].as_str().unwrap(), json!({"name": "k"})).await.0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn gm_mode_hashes_passwords_with_pbkdf2_sm3() {
    let srv = Server::start_with(|c| c.crypto.gm_mode = true).await;
    let admin = srv.setup().await;
    srv.user(&admin, "guo", "user").await;
    let hash: String =
        srv.db().query_row("SELECT password_hash FROM users WHERE username = 'guo'", [], |r| r.get(0)).unwrap();
    assert!(hash.starts_with("$pbkdf2-sm3$i="), "{hash}");
}

#[tokio::test]
async fn every_error_has_the_openai_shape_and_status() {
    let srv = Server::start_with(|c| c.server.body_limit_bytes = 2048).await;
    let admin = srv.setup().await;
    srv.user(&admin, "dup", "user").await;
    let raw = |m: Method, path: &str, body: &'static str, ct: &'static str| {
        let r = srv.http.request(m, srv.url(path)).bearer_auth(&admin).header("content-type", ct).body(body);
        async move {
            let resp = r.send().await.unwrap();
            (resp.status(), resp.json::<Value>().await.unwrap())
        }
    };
    let cases: Vec<(StatusCode, Value, u16, &str)> = vec![
        {
            let (s, v) = srv.get("/api/v1/nothing", &admin).await;
            (s, v, 404, "unknown_url")
        },
        {
            let (s, v) = srv.req(Method::PUT, "/api/v1/users", Some(&admin), None).await;
            (s, v, 405, "method_not_allowed")
        },
        {
            let (s, v) = raw(Method::POST, "/api/v1/users", "{\"username\": ", "application/json").await;
            (s, v, 400, "invalid_json")
        },
        {
            let (s, v) = srv.post("/api/v1/users", &admin, json!({"role": "user"})).await;
            (s, v, 400, "invalid_value")
        },
        {
            let (s, v) = srv.post("/api/v1/users", &admin, json!({"username": 42})).await;
            (s, v, 400, "invalid_value")
        },
        {
            let (s, v) = srv.post("/api/v1/users", &admin, json!({"username": "x", "role": "boss"})).await;
            (s, v, 400, "invalid_value")
        },
        {
            let (s, v) = raw(Method::POST, "/api/v1/users", "{}", "text/plain").await;
            (s, v, 415, "unsupported_media_type")
        },
        {
            let big: &'static str = Box::leak(format!("{{\"username\":\"{}\"}}", "x".repeat(4096)).into_boxed_str());
            let (s, v) = raw(Method::POST, "/api/v1/users", big, "application/json").await;
            (s, v, 413, "payload_too_large")
        },
        {
            let (s, v) = srv.req(Method::GET, "/api/v1/users", None, None).await;
            (s, v, 401, "unauthenticated")
        },
        {
            let (s, v) = srv.get("/api/v1/users", "garbage-token").await;
            (s, v, 401, "invalid_token")
        },
        {
            let (s, v) =
                srv.post("/api/v1/users", &admin, json!({"username": "DUP", "password": "Xy-Pw-12345!"})).await;
            (s, v, 409, "conflict")
        },
        {
            let (s, v) = srv.get("/api/v1/users/9999", &admin).await;
            (s, v, 404, "not_found")
        },
        {
            let (s, v) = srv.post("/api/v1/users", &admin, json!({"username": "bad name!"})).await;
            (s, v, 400, "invalid_value")
        },
    ];
    for (s, v, want, code) in cases {
        assert_eq!(s.as_u16(), want, "{v}");
        assert_eq!(assert_error_shape(&v).1, code, "{v}");
    }
    // Missing and unknown fields name the parameter.
    let (_, v) = srv.post("/api/v1/users", &admin, json!({"role": "user"})).await;
    assert_eq!(v["error"]["param"], "username");
    let (_, v) = srv.post("/api/v1/users", &admin, json!({"username": "a", "rol": "user"})).await;
    assert_eq!(v["error"]["param"], "rol");
}

#[tokio::test]
async fn request_ids_flow_into_responses_and_the_audit_chain() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    let resp = srv
        .http
        .post(srv.url("/api/v1/users"))
        .bearer_auth(&admin)
        .header("x-request-id", "trace-me-123")
        .json(&json!({"username": "rid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-123");
    let ev = srv.events(&admin, "user.create").await;
    assert_eq!(ev[0]["request_id"], "trace-me-123");
    // Without one, the server makes one up and returns it.
    let resp = srv.http.get(srv.url("/health")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let next = srv.http.get(srv.url("/health")).send().await.unwrap();
    assert_ne!(next.headers()["x-request-id"].to_str().unwrap(), id, "ids are unique");
}

#[tokio::test]
async fn cors_is_denied_by_default_and_allowed_per_origin() {
    let srv = Server::start().await;
    let pre = |srv: &Server, origin: &str| {
        srv.http
            .request(Method::OPTIONS, srv.url("/api/v1/auth/me"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let r = pre(&srv, "http://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let srv = Server::start_with(|c| c.server.cors_origins = vec!["http://ui.example:5173".into()]).await;
    let r = pre(&srv, "http://ui.example:5173").await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "http://ui.example:5173");
    let r = pre(&srv, "http://evil.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn loopback_servers_refuse_foreign_host_headers() {
    let srv = Server::start_with(|c| c.server.allowed_hosts = vec!["maasbox.local".into()]).await;
    for (host, ok) in [
        ("localhost:1", true),
        ("127.0.0.1", true),
        ("[::1]:8686", true),
        ("maasbox.local:80", true),
        ("attacker.example", false),
    ] {
        let r = srv.http.get(srv.url("/health")).header("host", host).send().await.unwrap();
        assert_eq!(r.status().is_success(), ok, "{host}");
        if !ok {
            assert_eq!(r.status().as_u16(), 421);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "misdirected_request");
        }
    }
}

#[tokio::test]
async fn audit_logs_filter_page_and_verify() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    for i in 0..7 {
        srv.post("/api/v1/users", &admin, json!({"username": format!("u{i}")})).await;
    }
    let (_, v) = srv.get("/api/v1/audit/logs?action=user.create&limit=3", &admin).await;
    assert_eq!(v["total"], 7);
    let page1: Vec<i64> = v["data"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(page1.len(), 3);
    assert!(page1.windows(2).all(|w| w[0] > w[1]), "newest first");
    let cursor = v["next_cursor"].as_i64().unwrap();
    let (_, v) = srv.get(&format!("/api/v1/audit/logs?action=user.create&limit=3&before_seq={cursor}"), &admin).await;
    let page2: Vec<i64> = v["data"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(page2.iter().all(|s| *s < cursor) && page2.len() == 3);

    let (_, v) = srv.get("/api/v1/audit/logs?actor=admin&resource=user:&outcome=success", &admin).await;
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == "admin" && e["resource"].as_str().unwrap().starts_with("user:")));
    let now = maasbox_types::now_secs();
    let (_, v) = srv.get(&format!("/api/v1/audit/logs?from={}", now + 3600), &admin).await;
    assert_eq!(v["total"], 0);
    let (s, v) = srv.get("/api/v1/audit/logs?limit=5000", &admin).await;
    assert_eq!((s, v["error"]["param"].as_str()), (StatusCode::BAD_REQUEST, Some("limit")));

    let seq = page1[0];
    let (s, ev) = srv.get(&format!("/api/v1/audit/logs/{seq}"), &admin).await;
    assert_eq!((s, ev["seq"].as_i64()), (StatusCode::OK, Some(seq)));
    assert_eq!(ev["hash"].as_str().unwrap().len(), 64);
    assert_eq!(srv.get("/api/v1/audit/logs/999999", &admin).await.0, StatusCode::NOT_FOUND);

    let (_, stats) = srv.get("/api/v1/audit/stats", &admin).await;
    assert!(stats["total"].as_i64().unwrap() >= 9);
    assert!(stats["checkpoints"].as_i64().unwrap() >= 1, "checkpoint every 5 in tests");
    let (_, v) = srv.get("/api/v1/audit/verify", &admin).await;
    assert_eq!(v["valid"], true, "{v}");
    assert!(v["checkpoints_verified"].as_i64().unwrap() >= 1);

    // Tamper with the file behind the server's back: the online verification sees it.
    let db = srv.db();
    db.execute_batch("DROP TRIGGER audit_events_no_update; UPDATE audit_events SET outcome = 'failure' WHERE seq = 4;")
        .unwrap();
    let (_, v) = srv.get("/api/v1/audit/verify", &admin).await;
    assert_eq!((v["valid"].as_bool(), v["first_bad_seq"].as_i64()), (Some(false), Some(4)));
}

#[tokio::test]
async fn export_is_signed_and_verifies_offline() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    for i in 0..4 {
        srv.post("/api/v1/users", &admin, json!({"username": format!("e{i}")})).await;
    }
    let body =
        srv.http.get(srv.url("/api/v1/audit/export")).bearer_auth(&admin).send().await.unwrap().text().await.unwrap();
    let mut lines: Vec<&str> = body.lines().collect();
    let manifest: Value = serde_json::from_str(lines.pop().unwrap()).unwrap();
    let manifest: maasbox_store::audit::ExportManifest = serde_json::from_value(manifest["manifest"].clone()).unwrap();
    let jsonl = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    let pk = maasbox_crypto::Sm2PublicKey::from_hex(&manifest.public_key).unwrap();
    let r = maasbox_store::audit::verify_export(jsonl.as_bytes(), &manifest, Some(&pk));
    assert!(r.valid, "{r:?}");
    assert_eq!(r.last_seq, manifest.last_seq);
    assert_eq!(srv.events(&admin, "audit.export").await.len(), 1, "exporting is audited");
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let srv = Server::start().await;
    let (s, v) = srv.req(Method::GET, "/health/db", None, None).await;
    assert_eq!((s, v["schema_version"].as_i64()), (StatusCode::OK, Some(maasbox_store::SCHEMA_VERSION)));
    let (s, v) = srv.req(Method::GET, "/health/engine", None, None).await;
    assert_eq!((s, v["backend"].as_str()), (StatusCode::OK, Some("cpu")));
    srv.req(Method::GET, "/api/v1/users", None, None).await;
    let text = srv.http.get(srv.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains("maasbox_http_requests_total{route=\"/api/v1/users\",method=\"GET\",status=\"401\"}"),
        "{text}"
    );
    assert!(text.contains("maasbox_http_request_duration_seconds_bucket"));
    assert!(text.contains("maasbox_audit_queue_depth"));

    let (_, doc) = srv.req(Method::GET, "/openapi.json", None, None).await;
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/setup",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/auth/me",
        "/api/v1/users",
        "/api/v1/users/{id}",
        "/api/v1/users/{id}/password",
        "/api/v1/keys",
        "/api/v1/keys/{id}",
        "/api/v1/audit/logs",
        "/api/v1/audit/logs/{seq}",
        "/api/v1/audit/stats",
        "/api/v1/audit/verify",
        "/api/v1/audit/export",
        "/health",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from /openapi.json");
    }
    let html = srv.http.get(srv.url("/docs")).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("/openapi.json") && !html.contains("https://"), "docs page works offline");
}

#[tokio::test]
async fn graceful_stop_drains_and_records_it_in_the_chain() {
    let srv = Server::start().await;
    let admin = srv.setup().await;
    srv.post("/api/v1/users", &admin, json!({"username": "last"})).await;
    let dir = srv.stop().await;
    let db = rusqlite::Connection::open(dir.path().join("maasbox.db")).unwrap();
    let last: String =
        db.query_row("SELECT action FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(last, "system.stop");
    let r = maasbox_store::verify_database(&dir.path().join("maasbox.db"), None).unwrap();
    assert!(r.valid, "{r:?}");
    // The data dir lock is released: a new server can open it.
    let cfg = common::test_config(dir.path());
    let again = Server::start_in(dir, cfg).await;
    assert!(again.setup_code.is_none(), "already set up");
}
