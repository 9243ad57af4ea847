//! The web UI: `ui/dist` (built by `npm run build`) embedded at compile time with rust-embed
//! (a debug build reads it from disk, so a rebuilt UI shows without recompiling). Hashed
//! assets are cached for a year; `index.html` is revalidated (ETag); any other path under `/`
//! that is not an API route gets `index.html`, so the UI's own routes survive a reload.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use maasbox_types::ErrorCode;

use crate::error::ApiError;

#[derive(rust_embed::Embed)]
#[folder = "../../ui/dist"]
#[allow_missing = true]
struct Assets;

/// Paths that belong to the API: never answered with the UI.
const API_PREFIXES: &[&str] = &["/api/", "/v1/", "/health", "/metrics", "/openapi.json", "/docs"];

/// Content-Security-Policy of the UI: same-origin only, no inline scripts.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

fn is_api(path: &str) -> bool {
    path == "/api" || path == "/v1" || API_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// The router's fallback: UI files and the SPA entry for GET/HEAD outside the API, the
/// OpenAI-shaped 404 for everything else.
pub(crate) async fn fallback(method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    if is_api(path) || !(method == Method::GET || method == Method::HEAD) {
        return ApiError::new(ErrorCode::UnknownRoute, "no such endpoint; see /openapi.json for the API")
            .into_response();
    }
    let name = path.trim_start_matches('/');
    let (file, name) = match Assets::get(name) {
        Some(f) if !name.is_empty() => (f, name),
        // A missing hashed asset is a real 404 (an old page asking for a file of an older build).
        _ if name.starts_with("assets/") => return StatusCode::NOT_FOUND.into_response(),
        _ => match Assets::get("index.html") {
            Some(f) => (f, "index.html"),
            None => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    "The web UI was not built into this binary: run `npm ci && npm run build` in ui/ and rebuild \
                     (scripts/run.sh does both). The API is available under /api/v1 and /v1.\n",
                )
                    .into_response()
            }
        },
    };
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..16]));
    let cache = if name.starts_with("assets/") { "public, max-age=31536000, immutable" } else { "no-cache" };
    let mut h = HeaderMap::new();
    let mime = file.metadata.mimetype();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if name == "index.html" {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    if method == Method::HEAD {
        return (StatusCode::OK, h).into_response();
    }
    (StatusCode::OK, h, file.data.into_owned()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_never_fall_back_to_the_ui() {
        for p in ["/api/v1/nope", "/v1/nope", "/health/x", "/metrics", "/openapi.json", "/docs", "/api", "/v1"] {
            assert!(is_api(p), "{p}");
        }
        for p in ["/", "/chat", "/knowledge/docs", "/assets/index.js", "/v1x"] {
            assert!(!is_api(p), "{p}");
        }
    }
}
