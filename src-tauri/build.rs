fn main() {
    // App commands get generated `allow-<command>` permissions; the capability files must grant
    // each one (tests/capabilities.rs checks that every command is listed here and granted).
    let manifest = tauri_build::AppManifest::new().commands(&["desktop_info", "pick_model_file"]);
    tauri_build::try_build(tauri_build::Attributes::new().app_manifest(manifest)).expect("tauri build script");
}
