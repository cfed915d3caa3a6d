//! Load beside a test: wrk runs (and its report parsed), and a checker client that sends one
//! HTTP request at a time with a deadline of its own, because wrk never reports a request that
//! hangs for good (TESTING.md): "zero failed requests" needs both.

use super::http::http_get_timeout;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WrkResult {
    pub requests: u64,
    pub socket_errors: u64,
    pub non_2xx: u64,
}

/// Parses wrk's report. Its "Socket errors: connect A, read B, write C, timeout D" and
/// "Non-2xx or 3xx responses: N" lines appear only when non-zero.
pub fn parse_wrk(out: &str) -> WrkResult {
    let mut r = WrkResult::default();
    let mut saw_requests = false;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            for part in rest.split(',') {
                let n = part.split_whitespace().last().and_then(|n| n.parse::<u64>().ok());
                r.socket_errors += n.unwrap_or_else(|| panic!("cannot parse wrk line {line:?}"));
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.non_2xx = rest.trim().parse().unwrap_or_else(|_| panic!("cannot parse wrk line {line:?}"));
        } else if line.contains(" requests in ") {
            r.requests = line.split_whitespace().next().unwrap().parse().unwrap();
            saw_requests = true;
        }
    }
    assert!(saw_requests, "no 'N requests in' line in wrk's output:\n{out}");
    r
}

/// A wrk run in the background: 20 connections on one thread for `duration`, keep-alive or
/// (`close`) one connection per request.
pub struct Wrk {
    child: Child,
}

impl Wrk {
    pub fn start(addr: SocketAddr, close: bool, duration: Duration) -> Wrk {
        Wrk::start_url(&format!("http://{addr}/"), close, duration)
    }

    /// [`Wrk::start`] on any URL, e.g. `https://...` (wrk does not verify certificates).
    pub fn start_url(url: &str, close: bool, duration: Duration) -> Wrk {
        let mut cmd = Command::new("wrk");
        cmd.args(["-t1", "-c20", &format!("-d{}s", duration.as_secs().max(1)), "--timeout", "5s"]);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        let child = cmd.arg(url).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run wrk");
        Wrk { child }
    }

    /// Waits for the run to end: its result and report.
    pub fn finish(self) -> (WrkResult, String) {
        let out = self.child.wait_with_output().expect("wait for wrk");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "wrk failed: {text}");
        (parse_wrk(&text), text)
    }
}

/// Sends `GET /` over a new connection, one at a time, each with a 5 s deadline, until stopped;
/// counts the answers and the failures (with the first few reasons).
pub struct Checker {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: Option<JoinHandle<Vec<String>>>,
}

impl Checker {
    pub fn start(addr: SocketAddr) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, ok) = (stop.clone(), ok.clone());
            thread::spawn(move || {
                let mut failures = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match http_get_timeout(addr, "/", Duration::from_secs(5)) {
                        Ok((200, _)) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok((status, body)) => failures.push(format!("status {status}: {body}")),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        };
        Checker { stop, ok, thread: Some(thread) }
    }

    /// Requests answered `200` so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops; returns (answered, failures).
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.thread.take().unwrap().join().unwrap();
        (self.ok(), failures)
    }
}
