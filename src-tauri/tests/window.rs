//! The real desktop binary under Xvfb with a temporary data directory: it serves `/health` from
//! its in-process server, opens a 1280×800 window named "maasbox" whose screenshot shows the
//! setup page (not blank: the page's button colour is on screen), and SIGTERM shuts it down
//! cleanly (the audit chain ends with `system.stop`). The screenshot is saved to
//! `target/desktop-test/setup.png`. Needs Xvfb, xwininfo and ImageMagick (scripts/setup-system.sh).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start Xvfb on the first free display from a per-process offset; returns (display, process).
fn xvfb() -> (String, Kill) {
    let base = 100 + std::process::id() % 400;
    for n in base..base + 50 {
        if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
            continue;
        }
        let display = format!(":{n}");
        let mut child = Kill(
            Command::new("Xvfb")
                .args([display.as_str(), "-screen", "0", "1280x800x24", "-nolisten", "tcp"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb is not installed (scripts/setup-system.sh installs xvfb)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.0.try_wait().unwrap().is_some() {
                break; // display taken: try the next one
            }
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                return (display, child);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(child); // killed and reaped
    }
    panic!("no free X display");
}

/// The id of the top-level window titled "maasbox" with its size, if mapped.
fn find_window(display: &str) -> Option<(String, u32, u32)> {
    let out = Command::new("xwininfo").args(["-root", "-tree"]).env("DISPLAY", display).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("\"maasbox\":"))?;
    let id = line.split_whitespace().next()?.to_owned();
    let size = line.split_whitespace().find(|w| w.contains('x') && w.contains('+'))?;
    let (w, rest) = size.split_once('x')?;
    let h = rest.split('+').next()?;
    Some((id, w.parse().ok()?, h.parse().ok()?))
}

/// Raw RGB pixels of a window.
fn pixels(display: &str, id: &str, png: &Path) -> Vec<u8> {
    let ok = Command::new("import").args(["-window", id]).arg(png).env("DISPLAY", display).status().unwrap();
    assert!(ok.success(), "import failed");
    let out = Command::new("convert").arg(png).arg("rgb:-").output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Pixels within 6 of the UI's accent colour #2457d6 (the setup form's button).
fn accent_pixels(rgb: &[u8]) -> usize {
    rgb.chunks_exact(3)
        .filter(|p| {
            (p[0] as i32 - 0x24).abs() <= 6 && (p[1] as i32 - 0x57).abs() <= 6 && (p[2] as i32 - 0xd6).abs() <= 6
        })
        .count()
}

#[test]
fn desktop_serves_health_and_shows_the_setup_page_under_xvfb() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui/dist/index.html");
    assert!(ui.exists(), "build the UI first (cd ui && npm run build)");
    let (display, _xvfb) = xvfb();
    let data = tempfile::tempdir().unwrap();
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("desktop-test");
    std::fs::create_dir_all(&out_dir).unwrap();

    let launched = Instant::now();
    let mut app = Command::new(env!("CARGO_BIN_EXE_maasbox-desktop"))
        .env("DISPLAY", &display)
        .env("MAASBOX_STORAGE_DATA_DIR", data.path())
        .env("MAASBOX_SERVER_PORT", "0")
        .env("MAASBOX_LOG_FILE", "false")
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = app.stdout.take().unwrap();
    let pid = app.id();
    let mut app = Kill(app);

    // "maasbox-desktop listening on http://127.0.0.1:PORT (data: …)"
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().expect("no output").unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect(&line).to_owned();
    let health: serde_json::Value = reqwest::blocking::get(format!("{url}/health")).unwrap().json().unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["setup_required"], true, "{health}");

    // The window appears and the setup page renders in it.
    let png = out_dir.join("setup.png");
    let deadline = Instant::now() + Duration::from_secs(90);
    let (id, w, h, accent) = loop {
        assert!(app.0.try_wait().unwrap().is_none(), "the app exited early");
        if let Some((id, w, h)) = find_window(&display) {
            let rgb = pixels(&display, &id, &png);
            let n = accent_pixels(&rgb);
            if n > 2000 || Instant::now() > deadline {
                break (id, w, h, n);
            }
        }
        assert!(Instant::now() < deadline, "no maasbox window within 90 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let usable = launched.elapsed();
    assert_eq!((w, h), (1280, 800), "window {id}");
    assert!(accent > 2000, "the window shows no setup form (accent pixels: {accent}); see {}", png.display());
    let rgb = pixels(&display, &id, &png);
    let distinct: std::collections::HashSet<&[u8]> = rgb.chunks_exact(3).collect();
    assert!(distinct.len() > 50, "the screenshot is nearly blank ({} colours)", distinct.len());
    println!("window usable {:.2} s after launch; screenshot {}", usable.as_secs_f64(), png.display());

    // SIGTERM: the server stops cleanly and the audit chain records it.
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = app.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(lines);
    assert!(status.success(), "{status}");
    let db = rusqlite::Connection::open(data.path().join("maasbox.db")).unwrap();
    let actions: Vec<String> = db
        .prepare("SELECT action FROM audit_events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(actions, ["system.start", "system.stop"]);
}
