//! `make site` end to end: scripts/site-demo.sh starts the seed's whole picture (two web
//! servers, a PostgreSQL primary and streaming standby, a Redis master and replica) with shunt in
//! front, on free ports it prints. Through shunt: the web service answers from both web servers,
//! `db-write` reaches the primary and `db-read` the standby, `cache` the master and `cache-ro`
//! the replica. Ctrl-C (SIGINT to the script's process group) stops every process it started.

mod common;

use common::postgres::psql;
use common::redis::cli;
use common::*;
use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// The script and what it started; everything is stopped on drop, even after a failed assertion.
struct Site {
    script: Child,
    log: std::path::PathBuf,
    pids: Vec<u32>,
}

impl Site {
    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The port printed after `prefix` (e.g. "db-write   PGPASSWORD=… psql -h 127.0.0.1 -p ").
    fn port_after(&self, line_start: &str, marker: &str) -> SocketAddr {
        let text = self.text();
        let line = text.lines().find(|l| l.trim_start().starts_with(line_start)).unwrap_or_else(|| panic!("{text}"));
        let port: u16 = line
            .split(marker)
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .unwrap();
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if matches!(self.script.try_wait(), Ok(Some(_))) {
            return;
        }
        // why unsafe: kill(2) on pids this test started.
        unsafe { libc::kill(-(self.script.id() as i32), libc::SIGINT) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) && matches!(self.script.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for &pid in &self.pids {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

#[test]
fn make_site_runs_the_whole_picture_and_ctrl_c_stops_it() {
    let dir = TempDir::new("site");
    let log = dir.join("site.log");
    let script = demo_script("site-demo.sh", &log).spawn().unwrap();
    let mut site = Site { script, log, pids: Vec::new() };
    wait_for(T, "the site up (shunt's admin endpoint listening)", || {
        assert!(matches!(site.script.try_wait(), Ok(None)), "site-demo.sh exited:\n{}", site.text());
        site.text().contains("admin endpoint listening on")
    });
    let text = site.text();
    site.pids = text
        .lines()
        .find_map(|l| l.strip_prefix("site-demo: pids: "))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(site.pids.len(), 6, "two web servers, two Redis, two PostgreSQL");
    let password = text.lines().find_map(|l| l.split("(password for PostgreSQL and Redis: ").nth(1)).unwrap();
    let password = password.trim_end_matches("):").to_string();
    let web = site.port_after("web ", "127.0.0.1:");
    let (dbw, dbr) = (site.port_after("db-write", " -p "), site.port_after("db-read", " -p "));
    let (cache, cachero) = (site.port_after("cache ", " -p "), site.port_after("cache-ro", " -p "));

    wait_for(T, "both web servers answering through shunt", || {
        let (a, b) = (http_get(web, "/").1, http_get(web, "/").1);
        a != b && a.starts_with("hello from web-0") && b.starts_with("hello from web-0")
    });
    wait_for(T, "db-write on the primary", || psql(dbw, &password, "SELECT pg_is_in_recovery()").as_deref() == Ok("f"));
    wait_for(T, "db-read on the standby", || psql(dbr, &password, "SELECT pg_is_in_recovery()").as_deref() == Ok("t"));
    wait_for(T, "cache on the master", || cli(cache, Some(&password), &["SET", "greeting", "hello"]) == "OK");
    wait_for(T, "cache-ro on the replica", || {
        cli(cachero, Some(&password), &["INFO", "replication"]).contains("role:slave")
            && cli(cachero, Some(&password), &["GET", "greeting"]) == "hello"
    });

    // Ctrl-C: the whole process group gets SIGINT, as from a terminal.
    unsafe { libc::kill(-(site.script.id() as i32), libc::SIGINT) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = site.script.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "site-demo.sh did not exit:\n{}", site.text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success() || status.code() == Some(130), "site-demo.sh exited {status}:\n{}", site.text());
    for &pid in &site.pids {
        wait_for(Duration::from_secs(10), "every server the site started gone", || comm(pid).is_none());
    }
    assert!(site.text().contains("shut down cleanly"), "{}", site.text());
}
