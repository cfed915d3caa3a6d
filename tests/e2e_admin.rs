//! The admin endpoint of the release binary, seen by real clients: headless Chromium renders
//! the status page, and the bearer token never reaches the logs.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

fn chromium(args: &[&str], profile: &TempDir) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .expect("chromium is installed by scripts/install-deps.sh")
}

#[test]
fn status_page_renders_every_server_in_headless_chromium() {
    let a = Nginx::start("alpha");
    let b = Nginx::start("bravo");
    let conf = format!(
        "admin 127.0.0.1:0\nservice web\n bind 127.0.0.1:0\n server alpha {}\n server bravo {}\n check http GET /health expect 200 interval 200ms\n",
        a.addr, b.addr
    );
    let shunt = start_shunt(&conf);
    let (admin, listen) = (shunt.admin(), shunt.addr("web"));
    for _ in 0..4 {
        assert_eq!(http_get(listen, "/").0, 200);
    }
    let (code, _) = http_post(admin, "/servers/web/bravo/drain", None, b"");
    assert_eq!(code, 200);
    let profile = TempDir::new("chromium");
    let url = format!("http://{admin}/");
    let out = chromium(&["--virtual-time-budget=5000", "--dump-dom", &url], &profile);
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-service=\"web\""),
        "service table rendered:\n{dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("data-server=\"alpha\"") && dom.contains("data-server=\"bravo\""),
        "both servers listed:\n{dom}"
    );
    assert!(dom.contains("class=\"state up\""), "alpha shown up:\n{dom}");
    assert!(dom.contains("class=\"state drain\""), "bravo shown draining:\n{dom}");
    assert!(dom.contains(&listen.to_string()), "listener shown");

    let shot = profile.join("status.png");
    let out = chromium(
        &["--window-size=1200,700", "--virtual-time-budget=5000", &format!("--screenshot={}", shot.display()), &url],
        &profile,
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot ({} bytes)", png.len());
    if let Ok(dest) = std::env::var("SHUNT_SCREENSHOT") {
        std::fs::copy(&shot, dest).unwrap();
    }
    drop(shunt);
}

#[test]
fn admin_token_never_appears_in_logs() {
    let backend = EchoServer::start();
    let dir = TempDir::new("token");
    let token = "tok-7f3a9c1e5b2d";
    let token_file = write_file(&dir, "token", format!("{token}\n").as_bytes());
    let conf = format!(
        "admin 127.0.0.1:0\nadmin_token {}\nlog trace\nservice s\n bind 127.0.0.1:0\n server e {}\n",
        token_file.display(),
        backend.addr
    );
    let mut shunt = start_shunt(&conf);
    let admin = shunt.admin();
    assert_eq!(http_post(admin, "/servers/s/e/drain", Some("wrong-guess"), b"").0, 401);
    assert_eq!(http_post(admin, "/servers/s/e/drain", Some(token), b"").0, 200);
    assert_eq!(http_post(admin, "/servers/s/e/enable", Some(token), b"").0, 200);
    shunt.wait_log("set to enabled", Duration::from_secs(10));
    let log = shunt.log();
    assert!(log.contains("admin: server s/e set to drain"), "state changes are logged:\n{log}");
    assert!(!log.contains(token), "token leaked into the log:\n{log}");
}
