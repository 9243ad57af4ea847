//! The baseline for `bench/http.sh`: a bare axum handler returning a small JSON body, with no
//! middleware, auth or database — the ceiling maasbox's authenticated read is compared against.

use axum::routing::get;

// Same allocator as the maasbox binary, so the comparison measures the stack, not malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use axum::{Json, Router};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(18687);
    let app = Router::new().route(
        "/api/v1/auth/me",
        get(|| async { Json(serde_json::json!({"username": "bench", "role": "admin", "auth_method": "api_key"})) }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
