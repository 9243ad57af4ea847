//! The web UI as the server serves it (ui/dist, built by `npm run build`; scripts/test.sh
//! builds it before the Rust tests).

mod common;

use common::*;
use reqwest::{Method, StatusCode};

#[tokio::test]
async fn the_ui_is_served_with_spa_fallback_and_caching_and_the_api_keeps_priority() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ui/dist/index.html");
    assert!(dist.exists(), "build the UI first: (cd ui && npm ci && npm run build)");
    let srv = Server::start().await;
    let get = |path: &str| srv.http.get(srv.url(path)).send();
    let root = get("/").await.unwrap();
    assert_eq!(root.status(), StatusCode::OK);
    assert_eq!(root.headers()["cache-control"], "no-cache");
    assert!(root.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = root.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let etag = root.headers()["etag"].to_str().unwrap().to_owned();
    let html = root.text().await.unwrap();
    assert!(html.contains("<div id=\"app\">"), "{html}");

    // a UI route reloads into the same page
    let deep = get("/knowledge/handbook").await.unwrap();
    assert_eq!(deep.status(), StatusCode::OK);
    assert_eq!(deep.text().await.unwrap(), html);
    let cached = srv.http.get(srv.url("/chat")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    // hashed assets are immutable; a missing one is a plain 404, not the page
    let asset = html.split("src=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    assert!(asset.starts_with("/assets/"), "{asset}");
    let a = get(&asset).await.unwrap();
    assert_eq!(a.status(), StatusCode::OK);
    assert_eq!(a.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert!(a.headers()["content-type"].to_str().unwrap().contains("javascript"));
    assert_eq!(get("/assets/gone-1234.js").await.unwrap().status(), StatusCode::NOT_FOUND);

    // the API keeps priority and its error shape
    for path in ["/api/v1/nothing", "/v1/nothing", "/health/nothing"] {
        let (s, v) = srv.req(Method::GET, path, None, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(assert_error_shape(&v).1, "unknown_url");
    }
    let (s, v) = srv.req(Method::POST, "/chat", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error_shape(&v);
    let (s, v) = srv.req(Method::GET, "/health", None, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}
