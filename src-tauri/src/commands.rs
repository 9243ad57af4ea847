//! The shell's commands, callable from the UI when it runs in the desktop window. Each one must
//! be listed in `build.rs` and granted in `capabilities/` (checked by `tests/capabilities.rs`).

use serde::Serialize;
use tauri::{AppHandle, State};
use tauri_plugin_dialog::DialogExt;

use crate::Server;

/// What the settings page shows about the desktop app.
#[derive(Serialize)]
pub struct DesktopInfo {
    version: &'static str,
    data_dir: String,
    logs_dir: String,
}

/// Version and where data and logs live.
#[tauri::command]
pub fn desktop_info(server: State<'_, Server>) -> DesktopInfo {
    DesktopInfo {
        version: env!("CARGO_PKG_VERSION"),
        data_dir: server.data_dir.display().to_string(),
        logs_dir: server.logs_dir.display().to_string(),
    }
}

/// The native open dialog for a GGUF file; the path (or null when cancelled). The UI then asks
/// the server to import it (`POST /api/v1/models {"path": …}`) with the user's own session.
#[tauri::command]
pub async fn pick_model_file(app: AppHandle) -> Option<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    app.dialog().file().set_title("Import a GGUF model").add_filter("GGUF models", &["gguf"]).pick_file(move |path| {
        let _ = tx.send(path);
    });
    rx.await.ok().flatten().and_then(|p| p.into_path().ok()).map(|p| p.display().to_string())
}
