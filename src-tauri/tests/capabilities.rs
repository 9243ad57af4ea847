//! Every command the shell registers is declared in `build.rs` (which generates its
//! `allow-<command>` permission) and granted by a capability file, and the capabilities grant
//! nothing that is not a command of ours. A command added without a grant would be unreachable
//! from the UI; a grant without a command is dead surface.

use std::collections::BTreeSet;
use std::path::Path;

fn read(p: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Names of functions marked `#[tauri::command]` in the shell's sources.
fn commands() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut lines = text.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "#[tauri::command]" {
                let decl = lines.next().unwrap();
                let name = decl.split("fn ").nth(1).and_then(|r| r.split(['(', '<']).next()).unwrap();
                out.insert(name.trim().to_owned());
            }
        }
    }
    out
}

/// The names inside the first `[...]` after `marker` in `text`, unqualified.
fn list_after(text: &str, marker: &str) -> BTreeSet<String> {
    let rest = &text[text.find(marker).unwrap_or_else(|| panic!("{marker} not found")) + marker.len()..];
    let body = &rest[rest.find('[').unwrap() + 1..rest.find(']').unwrap()];
    body.split(',')
        .map(|s| s.trim().trim_matches('"').rsplit("::").next().unwrap().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn every_command_is_declared_registered_and_granted() {
    let commands = commands();
    assert!(!commands.is_empty(), "no #[tauri::command] found");
    assert_eq!(list_after(&read("build.rs"), ".commands(&"), commands, "build.rs AppManifest commands");
    assert_eq!(list_after(&read("src/main.rs"), "generate_handler!"), commands, "invoke_handler");

    let mut granted = BTreeSet::new();
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("capabilities")).unwrap() {
        let path = entry.unwrap().path();
        let cap: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for p in cap["permissions"].as_array().unwrap() {
            let id = p.as_str().or_else(|| p["identifier"].as_str()).unwrap().to_owned();
            granted.insert(id);
        }
        // Remote pages may reach IPC only from this machine's loopback server.
        for url in cap["remote"]["urls"].as_array().into_iter().flatten() {
            let url = url.as_str().unwrap();
            assert!(url.starts_with("http://127.0.0.1:") || url.starts_with("http://localhost:"), "{url}");
        }
    }
    let wanted: BTreeSet<String> = commands.iter().map(|c| format!("allow-{}", c.replace('_', "-"))).collect();
    assert_eq!(granted, wanted, "capabilities grant exactly the shell's commands");
}
