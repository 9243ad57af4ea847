//! maasbox-desktop: a thin Tauri v2 shell around the maasbox server. It starts the same server
//! as `maasbox serve` ([`maasbox_api::serve`]) in this process on loopback, opens a window on it,
//! and adds what only a desktop app can: a tray icon (Open, Share on LAN, Quit), one instance per
//! user, native file dialogs, and the OS's app directories for data and logs. Everything else —
//! accounts, models, settings, the UI itself — is the server's; the window is a browser on it.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod commands;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use maasbox_api::settings::SettingsPatch;
use maasbox_api::AppState;
use maasbox_types::{AuthMethod, NewAuditEvent};
use parking_lot::Mutex;
use tauri::menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, RunEvent, WebviewUrl, WebviewWindowBuilder, WindowEvent};
use tauri_plugin_dialog::{DialogExt, MessageDialogButtons, MessageDialogKind};

/// The in-process server and how to stop it.
pub struct Server {
    state: AppState,
    /// Where the window points (loopback).
    url: String,
    data_dir: PathBuf,
    logs_dir: PathBuf,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    task: Mutex<Option<tauri::async_runtime::JoinHandle<anyhow::Result<()>>>>,
    _log_guard: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Whether closing the window hides it to the tray (the server keeps serving) or quits.
struct HasTray(bool);

fn main() {
    let app = tauri::Builder::default()
        // First: a second launch focuses the running window instead of starting another server.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| show_window(app)))
        .plugin(tauri_plugin_dialog::init())
        .invoke_handler(tauri::generate_handler![commands::desktop_info, commands::pick_model_file])
        .setup(|app| {
            let server = start_server(app.handle())?;
            open_window(app.handle(), &server.url)?;
            let tray = build_tray(app.handle(), server.state.settings().lan);
            if let Err(e) = &tray {
                tracing::warn!(error = %e, "no tray icon; closing the window quits");
            }
            app.manage(HasTray(tray.is_ok()));
            app.manage(server);
            // SIGTERM / Ctrl-C quit like the tray's Quit (the server drains its audit writer).
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(async move {
                maasbox_api::shutdown_signal().await;
                handle.exit(0);
            });
            Ok(())
        })
        .on_window_event(|window, event| {
            if let WindowEvent::CloseRequested { api, .. } = event {
                if window.app_handle().state::<HasTray>().0 {
                    api.prevent_close();
                    let _ = window.hide();
                }
            }
        })
        .build(tauri::generate_context!())
        .unwrap_or_else(|e| {
            eprintln!("maasbox-desktop: {e}");
            std::process::exit(1);
        });
    app.run(|handle, event| match event {
        // Keep running in the tray when the window is hidden.
        RunEvent::ExitRequested { code: None, api, .. } if handle.state::<HasTray>().0 => api.prevent_exit(),
        RunEvent::Exit => stop_server(handle),
        _ => {}
    });
}

/// Configuration as `maasbox serve` reads it (`MAASBOX_*`, an optional `maasbox.toml` in the
/// app's config directory), with the data directory defaulting to the app's data directory.
fn start_server(app: &AppHandle) -> anyhow::Result<Server> {
    let paths = app.path();
    let config_file = paths.app_config_dir()?.join("maasbox.toml");
    let mut cfg =
        maasbox_api::config::load(config_file.is_file().then_some(config_file.as_path()), std::env::vars(), &[])?;
    if cfg.storage.data_dir == maasbox_api::Config::default().storage.data_dir {
        cfg.storage.data_dir = paths.app_data_dir()?;
    }
    cfg.validate()?;
    let data_dir = maasbox_api::state::expand_home(&cfg.storage.data_dir);
    maasbox_api::state::ensure_data_dir(&data_dir)?;
    let logs_dir = if std::env::var_os("MAASBOX_STORAGE_DATA_DIR").is_some() {
        data_dir.join("logs")
    } else {
        paths.app_log_dir()?
    };
    let log_guard = maasbox_api::init_logging(&cfg.log, &logs_dir)?;
    let (state, startup) = maasbox_api::AppState::open(cfg, maasbox_engine::EngineHandle::new())?;

    // The configured port, or any free one when another program holds it.
    let wanted = state.listen_addr();
    let listener = tauri::async_runtime::block_on(async {
        match tokio::net::TcpListener::bind(wanted).await {
            Ok(l) => Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(%wanted, "port taken; using a free one");
                tokio::net::TcpListener::bind(SocketAddr::new(wanted.ip(), 0)).await
            }
            Err(e) => Err(e),
        }
    })?;
    let local = listener.local_addr()?;
    let host = match local.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let base = format!("http://{}/", SocketAddr::new(host, local.port()));
    // First launch: the setup page gets the setup code in the fragment (never sent over the
    // wire); the local owner only chooses a username and password.
    let url = match &startup.setup_code {
        Some(code) => format!("{base}setup#code={code}"),
        None => base,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tauri::async_runtime::spawn(maasbox_api::serve(listener, state.clone(), async move {
        let _ = stopped.await;
    }));
    tracing::info!(addr = %local, data = %data_dir.display(), "maasbox desktop serving");
    println!("maasbox-desktop listening on http://{local} (data: {})", data_dir.display());
    Ok(Server {
        state,
        url,
        data_dir,
        logs_dir,
        stop: Mutex::new(Some(stop)),
        task: Mutex::new(Some(task)),
        _log_guard: log_guard,
    })
}

/// Stop accepting, finish requests in flight, record the stop and drain the audit writer.
fn stop_server(app: &AppHandle) {
    let Some(server) = app.try_state::<Server>() else { return };
    if let Some(stop) = server.stop.lock().take() {
        let _ = stop.send(());
    }
    let task = server.task.lock().take();
    if let Some(task) = task {
        match tauri::async_runtime::block_on(task) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("maasbox-desktop: server stopped with an error: {e:#}"),
            Err(e) => eprintln!("maasbox-desktop: server task failed: {e}"),
        }
    }
}

fn open_window(app: &AppHandle, url: &str) -> anyhow::Result<()> {
    WebviewWindowBuilder::new(app, "main", WebviewUrl::External(url.parse()?))
        .title("maasbox")
        .inner_size(1280.0, 800.0)
        .min_inner_size(420.0, 560.0)
        .build()?;
    Ok(())
}

fn show_window(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.unminimize();
        let _ = w.show();
        let _ = w.set_focus();
    }
}

fn build_tray(app: &AppHandle, lan: bool) -> tauri::Result<()> {
    let open = MenuItem::with_id(app, "open", "Open maasbox", true, None::<&str>)?;
    let lan_item = CheckMenuItem::with_id(app, "lan", "Share on LAN", true, lan, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let menu = Menu::with_items(app, &[&open, &lan_item, &PredefinedMenuItem::separator(app)?, &quit])?;
    let mut tray = TrayIconBuilder::with_id("main").menu(&menu).tooltip("maasbox");
    if let Some(icon) = app.default_window_icon() {
        tray = tray.icon(icon.clone());
    }
    tray.on_menu_event(move |app, event| match event.id().as_ref() {
        "open" => show_window(app),
        "lan" => toggle_lan(app, lan_item.clone()),
        "quit" => app.exit(0),
        _ => {}
    })
    .build(app)?;
    Ok(())
}

/// Turn LAN sharing on (after the user accepts plain HTTP) or off, through the same settings
/// call as the settings page; the check mark then shows what is in force.
fn toggle_lan(app: &AppHandle, item: CheckMenuItem<tauri::Wry>) {
    let state = app.state::<Server>().state.clone();
    let on = !state.settings().lan;
    let port = state.listening().map(|a| a.port()).unwrap_or_default();
    let apply = {
        let app = app.clone();
        let item = item.clone();
        move |on: bool| {
            tauri::async_runtime::spawn(async move {
                let patch = SettingsPatch { lan: Some(on), allow_plain_http: on, ..Default::default() };
                let result = state.update_settings(patch, desktop_event("settings.update")).await;
                let _ = item.set_checked(state.settings().lan);
                if let Err(e) = result {
                    app.dialog().message(e.message).kind(MessageDialogKind::Error).title("maasbox").show(|_| {});
                }
            });
        }
    };
    if !on {
        apply(false);
        return;
    }
    app.dialog()
        .message(format!(
            "Share maasbox with other computers on this network (port {port})?\n\nTraffic is plain HTTP: \
             anyone on the network can read it. Only share on networks you trust."
        ))
        .title("Share on LAN")
        .kind(MessageDialogKind::Warning)
        .buttons(MessageDialogButtons::OkCancelCustom("Share".into(), "Cancel".into()))
        .show(move |accepted| {
            if accepted {
                apply(true);
            } else {
                // The check mark toggled itself on click; the setting did not change.
                let _ = item.set_checked(false);
            }
        });
}

/// Audit event for a change made from the desktop shell (the local owner).
fn desktop_event(action: &str) -> NewAuditEvent {
    NewAuditEvent {
        actor: "desktop".into(),
        auth_method: AuthMethod::Local,
        key_id: None,
        client_ip: None,
        request_id: None,
        action: action.into(),
        resource: "settings".into(),
        outcome: "success".into(),
        details: serde_json::json!({"via": "tray"}),
    }
}
