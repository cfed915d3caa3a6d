//! `make run` end to end: scripts/run-demo.sh starts two demo backends and shunt with
//! conf/shunt.conf; traffic is balanced over both, the status endpoint answers, and Ctrl-C (a
//! SIGINT to the script's process group, as a terminal sends it) drains shunt, lets a live
//! session finish and stops everything the script started. So does a TERM sent to the script
//! alone (a supervisor, `timeout make run`).
//!
//! `make run` uses fixed ports (8080, 9090, 9001, 9002); the test runs the same script with
//! every port 0 (`SHUNT_DEMO_*` variables), so it runs whatever else holds those ports, and reads
//! where everything listens from the script's output: the backends' "listening on" lines and
//! shunt's start-up lines.

mod common;

use common::*;
use std::fs::File;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The listening sockets on `addrs`, by inode (from this namespace's socket table, whoever
/// holds them). An inode names one socket for good: after the demo stopped, the same port may
/// be some other test's listener, but never with the demo's inode.
fn listeners(addrs: &[SocketAddr]) -> Vec<u64> {
    net_sockets("/proc/net")
        .into_iter()
        .filter(|s| s.state == TcpState::Listen && addrs.contains(&s.local))
        .map(|s| s.inode)
        .collect()
}

/// Which of `inodes` are still sockets of this namespace.
fn still_open(inodes: &[u64]) -> Vec<u64> {
    let now: Vec<u64> = net_sockets("/proc/net").into_iter().map(|s| s.inode).collect();
    inodes.iter().copied().filter(|i| now.contains(i)).collect()
}

/// The script and what it started; on drop (a failed assertion included) everything is stopped.
struct Demo {
    script: Child,
    log: PathBuf,
    started: Vec<u32>,
    names: Vec<String>,
    /// shunt's service and admin addresses, and the backends'.
    web: SocketAddr,
    admin: SocketAddr,
    backends: Vec<SocketAddr>,
    /// The inodes of every listening socket on those addresses once the demo was up.
    listening: Vec<u64>,
}

impl Demo {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The script exits 0 within 20 s, every process it started is gone, every socket it
    /// listened on is closed, and shunt said it shut down cleanly.
    fn expect_clean_exit(&mut self) {
        let t0 = Instant::now();
        let status = loop {
            if let Some(st) = self.script.try_wait().unwrap() {
                break st;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "run-demo.sh did not exit:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "run-demo.sh exited {status}:\n{}", self.log_text());
        for &pid in &self.started {
            wait_for(Duration::from_secs(5), "every process the demo started gone", || comm(pid).is_none());
        }
        let left = still_open(&self.listening);
        assert!(left.is_empty(), "listening sockets (inodes {left:?}) still open after the demo stopped");
        let out = self.log_text();
        assert!(out.contains("shut down cleanly") && !out.contains("panicked"), "{out}");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.script.try_wait(), Ok(Some(_))) {
            return;
        }
        // why unsafe: kill(2) on pids this test started.
        unsafe { libc::kill(self.script.id() as i32, libc::SIGTERM) };
        let _ = self.script.wait();
        for &pid in &self.started {
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// The backends' addresses, from the script's "run-demo: NAME listening on ADDR" lines.
fn backend_addrs(log: &str) -> Vec<SocketAddr> {
    log.lines()
        .filter_map(|l| l.strip_prefix("run-demo: ")?.split_once(" listening on "))
        .map(|(_, a)| a.trim().parse().unwrap_or_else(|e| panic!("backend address {a:?}: {e}")))
        .collect()
}

/// Starts scripts/run-demo.sh on free ports in its own process group (like a job in a
/// terminal) and waits until shunt has said where it listens and its /healthz answers 200 (both
/// servers up); returns it and how long that took.
fn start_demo(log: &Path) -> (Demo, Duration) {
    let out = File::create(log).unwrap();
    // The script builds first: it finds the build `make test` made (see plain_cargo_env).
    let script = plain_cargo_env(&mut Command::new("bash"))
        .arg(repo_root().join("scripts/run-demo.sh"))
        .env_remove("RUST_LOG")
        .env("SHUNT_DEMO_PORT", "0")
        .env("SHUNT_DEMO_ADMIN_PORT", "0")
        .env("SHUNT_DEMO_BACKEND_PORTS", "0 0")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .expect("start scripts/run-demo.sh");
    let unknown = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut demo = Demo {
        script,
        log: log.to_path_buf(),
        started: Vec::new(),
        names: Vec::new(),
        web: unknown,
        admin: unknown,
        backends: Vec::new(),
        listening: Vec::new(),
    };
    // It builds first (a no-op after `make test`'s build), then starts everything: up to 300 s
    // for a build from scratch.
    let t0 = Instant::now();
    let up = |demo: &mut Demo| {
        if let Ok(Some(st)) = demo.script.try_wait() {
            panic!("run-demo.sh exited ({st}) before the demo came up:\n{}", demo.log_text());
        }
        let l = Listening::parse(&demo.log_text());
        match (l.of("web").first(), l.admin) {
            (Some(&web), Some(admin)) => {
                (demo.web, demo.admin) = (web, admin);
                http_get(admin, "/healthz").0 == 200
            }
            _ => false,
        }
    };
    wait_for(Duration::from_secs(300), "the demo to come up (shunt's start-up lines, /healthz 200)", || up(&mut demo));
    demo.backends = backend_addrs(&demo.log_text());
    assert_eq!(demo.backends.len(), 2, "the backends said where they listen:\n{}", demo.log_text());
    let addrs: Vec<SocketAddr> = [demo.web, demo.admin].into_iter().chain(demo.backends.iter().copied()).collect();
    demo.listening = listeners(&addrs);
    assert!(demo.listening.len() >= 4, "a listener on each of {addrs:?}: {:?}", demo.listening);
    demo.started = child_pids(demo.script.id());
    demo.names = demo.started.iter().filter_map(|&p| comm(p)).collect();
    let backends = demo.names.iter().filter(|n| n.as_str() == "demo_backend").count();
    assert!(backends == 2 && demo.names.iter().any(|n| n == "shunt"), "children: {:?}", demo.names);
    (demo, t0.elapsed())
}

#[test]
fn make_run_serves_both_backends_and_ctrl_c_or_term_drains_and_stops_everything() {
    let dir = TempDir::new("demo");
    let (mut demo, came_up) = start_demo(&dir.join("demo.log"));
    let (web, admin) = (demo.web, demo.admin);
    // Round robin over both backends.
    let bodies: Vec<String> = (0..4).map(|_| http_get(web, "/").1).collect();
    for name in ["web-01", "web-02"] {
        assert_eq!(bodies.iter().filter(|b| b.contains(&format!("hello from {name}"))).count(), 2, "{bodies:?}");
    }
    let (code, status) = http_get(admin, "/status");
    assert_eq!(code, 200);
    assert_eq!(status.matches("\"state\":\"up\"").count(), 2, "both servers up: {status}");
    let (code, page) = http_get(admin, "/");
    assert!(code == 200 && page.contains("<html"), "status page: {code}");

    // A session live when Ctrl-C comes: the drain lets it finish.
    let mut live = connect(web);
    wait_for(Duration::from_secs(10), "the live session accepted by shunt", || {
        http_get(admin, "/status").1.contains("\"active_connections\":1,")
    });
    // why unsafe: kill(2) on the process group this test created.
    unsafe { libc::kill(-(demo.script.id() as i32), libc::SIGINT) };
    let t_sigint = Instant::now();
    wait_for(Duration::from_secs(10), "shunt draining", || demo.log_text().contains("stop signal"));
    let web_listener = listeners(&[web]);
    wait_for(Duration::from_secs(5), "the listener closed while draining", || still_open(&web_listener).is_empty());
    live.write_all(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n").unwrap();
    let mut answer = String::new();
    live.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("hello from web-0"), "the live session was cut: {answer:?}");
    drop(live); // the client's FIN: the session is over, so is the drain

    let t_exit = Instant::now();
    let drained_in = t_exit.duration_since(t_sigint);
    demo.expect_clean_exit();
    let exit_took = t_exit.elapsed();

    // A TERM sent to the script alone (a supervisor, `timeout make run`) stops everything too.
    let (mut demo, _) = start_demo(&dir.join("demo-term.log"));
    // why unsafe: kill(2) on the script this test started.
    unsafe { libc::kill(demo.script.id() as i32, libc::SIGTERM) };
    demo.expect_clean_exit();
    eprintln!(
        "RESULT make run: up in {came_up:.2?} ({names:?}), 4 requests balanced 2/2, status page and /status up; \
         Ctrl-C: live session finished in the drain ({drained_in:.2?}), script exited 0 in {exit_took:.2?}, \
         every process it started gone, its listeners closed; the same after a TERM to the script alone",
        names = demo.names
    );
}
