//! Running the shunt binary: [`start_shunt`] and friends write the conf into a fresh directory,
//! spawn shunt (directly or behind a wrapper such as `prlimit` or `ip netns exec`) and wait for
//! its start-up lines, which are the readiness signal and say where it listens — so a conf binds
//! `127.0.0.1:0` and the test asks [`Shunt::addr`] for the port, with no race for a free one.

use super::bins::shunt_bin;
use super::http::status_json;
use super::logs::{conf_listeners, sessions, Listening, Session};
use super::proc::{Proc, TempDir};
use super::procfs::{fd_count, rss_kib, sockets_in_state};
use super::wait::{wait_for, START_TIMEOUT};
use std::fs;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

/// A running shunt. Derefs to its [`Proc`] (pid, signal, log, wait_timeout...).
/// Fields drop in order: the process first, then its directory (kept if the test panicked).
pub struct Shunt {
    pub proc: Proc,
    pub conf_path: PathBuf,
    pub dir: TempDir,
    /// Where it listens, once [`Shunt::wait_ready`] has seen the start-up lines.
    pub listening: Listening,
}

impl Deref for Shunt {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl DerefMut for Shunt {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Shunt {
    /// The (first) address service `name` listens on, port 0 resolved.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs(name)[0]
    }

    /// Every address service `name` listens on, in `bind` order.
    pub fn addrs(&self, name: &str) -> Vec<SocketAddr> {
        let a = self.listening.of(name);
        assert!(!a.is_empty(), "shunt printed no listening line for service {name:?}: {:?}", self.listening);
        a
    }

    /// The admin endpoint's address.
    pub fn admin(&self) -> SocketAddr {
        self.listening.admin.unwrap_or_else(|| panic!("shunt printed no admin line: {:?}", self.listening))
    }

    /// Open file descriptors of the process.
    pub fn fd_count(&self) -> usize {
        fd_count(self.pid())
    }

    /// Resident memory of the process, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// The process's TCP sockets in `state` ("CLOSE_WAIT", "ESTABLISHED", "LISTEN", ...).
    pub fn sockets_in_state(&self, state: &str) -> usize {
        sockets_in_state(self.pid(), state)
    }

    /// Lines of the log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log().lines().filter(|l| l.contains(needle)).map(str::to_string).collect()
    }

    /// Every session line logged so far.
    pub fn sessions(&self) -> Vec<Session> {
        sessions(&self.log())
    }

    /// Waits until the log has at least `n` session lines; returns them all.
    pub fn wait_sessions(&mut self, n: usize, timeout: Duration) -> Vec<Session> {
        let mut found = Vec::new();
        self.wait_until(&format!("{n} session line(s)"), timeout, |s| {
            found = s.sessions();
            found.len() >= n
        });
        found
    }

    /// Waits until every session shunt accepted has ended and been logged (see
    /// [`all_logged`]), and returns the session lines. Needs the admin endpoint.
    pub fn wait_all_logged(&mut self, timeout: Duration) -> Vec<Session> {
        let admin = self.admin();
        let mut found = Vec::new();
        self.wait_until("every accepted session logged", timeout, |s| {
            found = s.sessions();
            all_logged(found.len(), &super::http::http_get(admin, "/metrics").1)
        });
        found
    }

    /// Waits until the log has a line containing `needle` and returns the first such line.
    /// Panics (with the log) after `timeout`, or at once if shunt exits meanwhile.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_log_count(needle, 1, timeout).remove(0)
    }

    /// Waits until at least `n` lines of the log contain `needle`; returns those lines.
    pub fn wait_log_count(&mut self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        let mut lines = Vec::new();
        self.wait_until(&format!("{n} log line(s) with {needle:?}"), timeout, |s| {
            lines = s.log_lines(needle);
            lines.len() >= n
        });
        lines
    }

    /// Polls `done` every 10 ms; panics after `timeout`, or at once if shunt exits meanwhile.
    fn wait_until(&mut self, what: &str, timeout: Duration, mut done: impl FnMut(&Shunt) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return;
            }
            if let Some(st) = self.try_status() {
                panic!("shunt exited ({}) while waiting for {what}; log:\n{}", Proc::describe(st), self.log());
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// A server's state (`up`, `down`, `drain`, `disabled`) and its last check's detail, from
    /// /status.
    pub fn server_state(&self, service: &str, server: &str) -> (String, String) {
        let status = status_json(self.admin());
        let services = status["services"].as_array().cloned().unwrap_or_default();
        let svc = services.iter().find(|s| s["name"] == service).unwrap_or_else(|| panic!("no {service}: {status}"));
        let servers = svc["servers"].as_array().cloned().unwrap_or_default();
        let v = servers.iter().find(|v| v["name"] == server).unwrap_or_else(|| panic!("no {server}: {status}"));
        (v["state"].as_str().unwrap_or("").to_string(), v["last_check"]["detail"].as_str().unwrap_or("").to_string())
    }

    /// Waits until that server is `want` with a check behind it; returns the check's detail.
    pub fn wait_server_state(&self, service: &str, server: &str, want: &str, timeout: Duration) -> String {
        let mut last = (String::new(), String::new());
        wait_for(timeout, &format!("{service}/{server} to be {want}"), || {
            last = self.server_state(service, server);
            last.0 == want && !last.1.is_empty()
        });
        last.1
    }

    /// Replaces the conf file (for SIGHUP / POST /reload tests); does not signal.
    pub fn write_conf(&self, conf: &str) {
        fs::write(&self.conf_path, conf).expect("write conf");
    }

    /// Writes `conf` and sends SIGHUP.
    pub fn reload(&mut self, conf: &str) {
        self.write_conf(conf);
        self.proc.signal(libc::SIGHUP);
    }

    /// Waits until shunt has printed a start-up line for every `bind` of `conf` and for its
    /// `admin` line, and records the addresses ([`Shunt::addr`], [`Shunt::admin`]). Panics with
    /// shunt's log if it exits first. Reads the log only: no connection is made to find out.
    pub fn wait_ready(&mut self, conf: &str) {
        let (binds, admin) = conf_listeners(conf);
        let mut up = Listening::default();
        let what = format!("start-up lines for {binds} bind(s){}", if admin { " and the admin endpoint" } else { "" });
        self.wait_until(&what, START_TIMEOUT, |s| {
            up = Listening::parse(&s.log());
            up.services.len() >= binds && (!admin || up.admin.is_some())
        });
        self.listening = up;
    }
}

/// Whether `logged` session lines are all there are: no session is open, and every connection
/// the services accepted (`shunt_service_accepted_total`, summed) has its line. Session lines are
/// written by shunt's log thread a moment after the session ends, so a test that reads them
/// right after its traffic must wait for this first.
pub fn all_logged(logged: usize, metrics: &str) -> bool {
    let sum = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    sum("shunt_active_connections ") == 0.0 && sum("shunt_service_accepted_total{") == logged as f64
}

/// A shunt process started with `conf` but not waited for: for tests of start-up failures.
/// `env` is added to the environment; `RUST_LOG` is removed unless `env` sets it.
pub fn spawn_shunt_with(bin: &Path, conf: &str, env: &[(&str, &str)]) -> Shunt {
    spawn_shunt_cmd(&[], bin, conf, env)
}

/// [`spawn_shunt_with`] behind a wrapper command that execs shunt in place, e.g.
/// `["prlimit", "--nofile=128:128", "--"]` or `["ip", "netns", "exec", NS]`: the pid is then
/// shunt's own, so [`super::fd_count`] and friends see shunt. (A wrapper that forks instead,
/// like strace, gets the wrapper's pid: see [`super::child_pids`]. Its log is shunt's all the
/// same, so [`Shunt::wait_ready`] works either way.)
pub fn spawn_shunt_cmd(wrapper: &[&str], bin: &Path, conf: &str, env: &[(&str, &str)]) -> Shunt {
    let dir = TempDir::new("shunt");
    let conf_path = dir.join("shunt.conf");
    fs::write(&conf_path, conf).expect("write conf");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.arg("-c").arg(&conf_path).current_dir(dir.path());
    // The conf's `log` level decides unless a test asks otherwise; a developer's RUST_LOG must
    // not change what the tests see.
    cmd.env_remove("RUST_LOG").env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc::spawn("shunt", cmd, &dir.join("shunt.log"));
    Shunt { proc, conf_path, dir, listening: Listening::default() }
}

/// Starts shunt (see [`super::shunt_bin`]) with `conf` and waits until all its listeners are up.
pub fn start_shunt(conf: &str) -> Shunt {
    start_shunt_env(conf, &[])
}

/// [`start_shunt`] with extra environment variables, e.g. `&[("RUST_LOG", "debug")]`.
pub fn start_shunt_env(conf: &str, env: &[(&str, &str)]) -> Shunt {
    start_shunt_with(&shunt_bin(), conf, env)
}

/// [`start_shunt`] behind an exec-in-place wrapper (see [`spawn_shunt_cmd`]).
pub fn start_shunt_wrapped(wrapper: &[&str], conf: &str) -> Shunt {
    let mut s = spawn_shunt_cmd(wrapper, &shunt_bin(), conf, &[]);
    s.wait_ready(conf);
    s
}

/// [`start_shunt`] with another binary (the harness's self-test uses a stand-in).
pub fn start_shunt_with(bin: &Path, conf: &str, env: &[(&str, &str)]) -> Shunt {
    let mut s = spawn_shunt_with(bin, conf, env);
    s.wait_ready(conf);
    s
}

/// Runs `shunt --check -c FILE` on `conf`: (exit code, stdout, stderr). The file is called
/// `shunt.conf`, so messages read `.../shunt.conf:LINE: ...`.
pub fn shunt_check(conf: &str) -> (i32, String, String) {
    let dir = TempDir::new("check");
    let path = dir.join("shunt.conf");
    fs::write(&path, conf).expect("write conf");
    let out = Command::new(shunt_bin())
        .arg("--check")
        .arg("-c")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run shunt --check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
