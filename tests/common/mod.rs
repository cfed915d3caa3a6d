//! Test harness shared by the integration tests (`mod common;` in each `tests/*.rs`).
//!
//! What it gives a test:
//! - the binaries: [`shunt_bin`], [`example_bin`];
//! - processes that cannot outlive the test: [`Proc`] (SIGKILL on drop, log captured to a file and
//!   printed when the test panics), [`start_shunt`] / [`Shunt`] (waits until every listener is up);
//! - peers: a real [`Nginx`], and plain-TCP [`EchoServer`] / [`SinkServer`] threads;
//! - readiness primitives instead of sleeps: [`wait_for`], [`wait_port`], [`wait_listening`];
//! - introspection of any process through /proc: [`fd_count`], [`rss_kib`], [`tcp_sockets`],
//!   [`sockets_in_state`];
//! - a tiny HTTP client: [`http_get`], [`http_request`].
//!
//! Standard library only (plus `libc`, a dependency of the crate), so the harness compiles with
//! the tests and nothing else. Each test binary uses only part of it, hence the `allow` below.
#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::{Deref, DerefMut};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a process gets to come up (bind its ports) before the test fails.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Read/write timeout on client sockets the harness makes, so a bug shows as a failure, not a hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------------------------------------
// Binaries and paths
// ------------------------------------------------------------------------------------------------

/// The crate's root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory, honouring `CARGO_TARGET_DIR` as cargo does.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        None => repo_root().join("target"),
    }
}

/// The shunt binary under test: `$SHUNT_BIN`, else target/release/shunt, else target/debug/shunt.
///
/// The tests do not build it themselves (`make test` does, before running them), because a test
/// that invoked cargo would fight the outer cargo for the build lock.
pub fn shunt_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHUNT_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "SHUNT_BIN={} does not exist", p.display());
        return p;
    }
    for profile in ["release", "debug"] {
        let p = target_dir().join(profile).join("shunt");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "no shunt binary under {}/{{release,debug}}: run cargo build --release first \
         (make test does), or set SHUNT_BIN",
        target_dir().display()
    );
}

/// A cargo example built with the crate, e.g. `example_bin("demo_backend")`.
pub fn example_bin(name: &str) -> PathBuf {
    for profile in ["release", "debug"] {
        let p = target_dir().join(profile).join("examples").join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("example {name} not built: run cargo build --release --examples first (make test does)");
}

/// A port that was free a moment ago. Another process can take it before the caller binds it;
/// on a test machine that is rare enough, and it is the only way to put a port into a conf file.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// `127.0.0.1:PORT` on a port that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

// ------------------------------------------------------------------------------------------------
// Temporary directories
// ------------------------------------------------------------------------------------------------

/// A fresh directory under `$TMPDIR/shunt-tests/`, removed on drop — unless the test is panicking,
/// in which case it is kept (and its path printed) so its confs and logs can be looked at.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        // The test's name (libtest names the thread after it) makes a kept directory findable;
        // pid + sequence number make it unique across parallel tests and processes.
        let test = thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>();
        let path = std::env::temp_dir().join("shunt-tests").join(format!(
            "{test}-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path); // a leftover from a crashed run with a recycled pid
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() || std::env::var_os("SHUNT_KEEP_TMP").is_some() {
            eprintln!("[harness] kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Waiting
// ------------------------------------------------------------------------------------------------

/// Polls `f` every 10 ms until it returns true; panics with `what` after `timeout`.
/// This is how tests wait for anything: no bare sleeps, so tests are as fast as the machine allows
/// and fail with a message that says what did not happen.
pub fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `addr` accepts a TCP connection (the connection is closed at once).
/// Note that this makes a connection: against a proxy it reaches a server. For shunt, prefer
/// [`wait_listening`], which only looks at the socket table.
pub fn wait_port(addr: impl ToSocketAddrs) {
    let addr = resolve(addr);
    wait_for(START_TIMEOUT, &format!("{addr} to accept connections"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
}

/// Waits until process `pid` has a TCP socket in LISTEN state on `port` (any local address).
/// Reads /proc only, so unlike [`wait_port`] it opens no connection that a proxy would forward.
pub fn wait_listening(pid: u32, port: u16) {
    wait_for(START_TIMEOUT, &format!("pid {pid} to listen on port {port}"), || is_listening(pid, port));
}

fn is_listening(pid: u32, port: u16) -> bool {
    tcp_sockets(pid).iter().any(|s| s.state == TcpState::Listen && s.local.port() == port)
}

fn resolve(addr: impl ToSocketAddrs) -> SocketAddr {
    addr.to_socket_addrs().expect("resolve address").next().expect("address resolves to nothing")
}

// ------------------------------------------------------------------------------------------------
// Processes
// ------------------------------------------------------------------------------------------------

/// A child process that cannot outlive the test: dropped, it is SIGKILLed and reaped.
/// Its stdout and stderr go to a log file; if the test panics, the log's tail is printed.
pub struct Proc {
    name: String,
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> Proc {
        let log = OpenOptions::new()
            .create(true)
            .append(true) // both streams share the file: O_APPEND keeps their lines whole
            .open(log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("dup log fd");
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc { name: name.to_string(), child, log_path: log_path.to_path_buf(), status: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`). A process already reaped gets nothing: its pid may
    /// belong to someone else by now.
    pub fn signal(&mut self, sig: i32) {
        if self.try_status().is_some() {
            return;
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}): {}", self.pid(), io::Error::last_os_error());
    }

    /// The exit status if the process has exited (reaping it), else None. Never blocks.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; panics (with the log) if it does not.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_timeout(timeout) {
            Some(s) => s,
            None => panic!(
                "{} (pid {}) still running {timeout:?} after SIGTERM; log:\n{}",
                self.name,
                self.pid(),
                self.log()
            ),
        }
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Describes how the process ended: "exit code 1", "signal 9".
    pub fn describe(status: ExitStatus) -> String {
        match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => format!("{status:?}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            // SIGKILL, not SIGTERM: a drop must not hang on a process that ignores TERM.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "[harness] ---- last {} lines of {} (pid {}, {}) ----\n{}\n[harness] ---- end ----",
                tail.len(),
                self.name,
                self.child.id(),
                self.log_path.display(),
                tail.join("\n")
            );
        }
    }
}

// ------------------------------------------------------------------------------------------------
// shunt
// ------------------------------------------------------------------------------------------------

/// A running shunt. Derefs to its [`Proc`] (pid, signal, log, wait_timeout...).
/// Fields drop in order: the process first, then its directory (kept if the test panicked).
pub struct Shunt {
    pub proc: Proc,
    pub conf_path: PathBuf,
    pub dir: TempDir,
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

    /// Waits until the log has a line containing `needle` and returns the first such line.
    /// Panics (with the log) after `timeout`, or at once if shunt exits meanwhile.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_log_count(needle, 1, timeout).remove(0)
    }

    /// Waits until at least `n` lines of the log contain `needle`; returns those lines.
    pub fn wait_log_count(&mut self, needle: &str, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.log_lines(needle);
            if lines.len() >= n {
                return lines;
            }
            if let Some(st) = self.try_status() {
                panic!("shunt exited ({}) while waiting for {n} log line(s) with {needle:?}", Proc::describe(st));
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {n} log line(s) with {needle:?} (have {})",
                    lines.len()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
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

    /// Waits until every `bind` and `admin` port of `conf` is listening (see [`wait_listening`]).
    pub fn wait_ready(&mut self, conf: &str) {
        let ports = conf_listen_ports(conf);
        let deadline = Instant::now() + START_TIMEOUT;
        for port in ports {
            loop {
                if let Some(st) = self.try_status() {
                    panic!(
                        "shunt exited ({}) before listening on port {port}; log:\n{}",
                        Proc::describe(st),
                        self.log()
                    );
                }
                if is_listening(self.pid(), port) {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!("shunt not listening on port {port} after {START_TIMEOUT:?}; log:\n{}", self.log());
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// The ports of the `bind` and `admin` lines of a conf (naively parsed: a `#` ends the line).
/// Address options after the address (`accept_proxy`) are ignored.
pub fn conf_listen_ports(conf: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        if let (Some("bind" | "admin"), Some(addr)) = (words.next(), words.next()) {
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("cannot find a port in conf line {line:?}"));
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
    }
    ports
}

/// A shunt process started with `conf` but not waited for: for tests of start-up failures.
/// `env` is added to the environment; `RUST_LOG` is removed unless `env` sets it.
pub fn spawn_shunt_with(bin: &Path, conf: &str, env: &[(&str, &str)]) -> Shunt {
    spawn_shunt_cmd(&[], bin, conf, env)
}

/// [`spawn_shunt_with`] behind a wrapper command that execs shunt in place, e.g.
/// `["prlimit", "--nofile=128:128", "--"]` or `["ip", "netns", "exec", NS]`: the pid is then
/// shunt's own, so [`Shunt::wait_ready`], [`fd_count`] and friends see shunt. (A wrapper that
/// forks instead, like strace, gets the wrapper's pid: see [`child_pids`].)
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
    Shunt { proc, conf_path, dir }
}

/// Starts shunt (see [`shunt_bin`]) with `conf` and waits until all its listeners are up.
/// Panics with shunt's log if it exits first.
pub fn start_shunt(conf: &str) -> Shunt {
    start_shunt_env(conf, &[])
}

/// [`start_shunt`] with extra environment variables, e.g. `&[("RUST_LOG", "debug")]`.
pub fn start_shunt_env(conf: &str, env: &[(&str, &str)]) -> Shunt {
    start_shunt_with(&shunt_bin(), conf, env)
}

/// [`start_shunt`] behind an exec-in-place wrapper (see [`spawn_shunt_cmd`]), waiting until
/// every listener is up.
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

// ------------------------------------------------------------------------------------------------
// /proc introspection (any process)
// ------------------------------------------------------------------------------------------------

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}")).count()
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown(u8),
}

impl TcpState {
    /// From the hex code in /proc/net/tcp (include/net/tcp_states.h).
    fn from_code(c: u8) -> TcpState {
        use TcpState::*;
        match c {
            0x01 => Established,
            0x02 => SynSent,
            0x03 => SynRecv,
            0x04 => FinWait1,
            0x05 => FinWait2,
            0x06 => TimeWait,
            0x07 => Close,
            0x08 => CloseWait,
            0x09 => LastAck,
            0x0A => Listen,
            0x0B => Closing,
            0x0C => NewSynRecv,
            other => Unknown(other),
        }
    }

    /// From the names `ss` and netstat print: "CLOSE_WAIT", "close-wait", "ESTAB"...
    pub fn parse(name: &str) -> TcpState {
        use TcpState::*;
        match name.to_ascii_uppercase().replace('-', "_").as_str() {
            "ESTABLISHED" | "ESTAB" => Established,
            "SYN_SENT" => SynSent,
            "SYN_RECV" => SynRecv,
            "FIN_WAIT1" | "FIN_WAIT_1" => FinWait1,
            "FIN_WAIT2" | "FIN_WAIT_2" => FinWait2,
            "TIME_WAIT" => TimeWait,
            "CLOSE" | "CLOSED" => Close,
            "CLOSE_WAIT" => CloseWait,
            "LAST_ACK" => LastAck,
            "LISTEN" => Listen,
            "CLOSING" => Closing,
            "NEW_SYN_RECV" => NewSynRecv,
            other => panic!("unknown TCP state name {other:?}"),
        }
    }
}

/// One TCP socket of a process, from /proc/PID/net/tcp{,6}.
#[derive(Clone, Debug)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub inode: u64,
}

/// The TCP sockets (IPv4 and IPv6) that process `pid` holds open.
///
/// A socket belongs to the process when one of its /proc/PID/fd links reads `socket:[INODE]`.
/// The tables come from /proc/PID/net, i.e. the process's own network namespace, so this also
/// works for a process started inside `ip netns exec`. Sockets the process has closed but the
/// kernel still keeps (TIME_WAIT, orphaned FIN_WAIT) have no fd and are not listed.
pub fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new(); // the process has gone: it holds nothing
    };
    let mut inodes = std::collections::HashSet::new();
    for fd in fds.flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(n) = n.parse::<u64>() {
                    inodes.insert(n);
                }
            }
        }
    }
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue; // no IPv6 in this kernel/namespace
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let Ok(inode) = f[9].parse::<u64>() else {
                continue;
            };
            if !inodes.contains(&inode) {
                continue;
            }
            let (Some(local), Some(remote), Ok(code)) =
                (parse_proc_addr(f[1]), parse_proc_addr(f[2]), u8::from_str_radix(f[3], 16))
            else {
                continue;
            };
            out.push(TcpSocket { local, remote, state: TcpState::from_code(code), inode });
        }
    }
    out
}

/// Number of `pid`'s TCP sockets in `state` (a name such as "CLOSE_WAIT").
pub fn sockets_in_state(pid: u32, state: &str) -> usize {
    let want = TcpState::parse(state);
    tcp_sockets(pid).iter().filter(|s| s.state == want).count()
}

/// Parses `0100007F:1F90` (IPv4) or the 32-hex-digit IPv6 form. The kernel prints each 32-bit
/// word of the address in host byte order (little-endian here), the port in big-endian hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> =
        (0..ip.len() / 8).map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16)).collect::<Result<_, _>>().ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(SocketAddr::from((b, port)))
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(SocketAddr::from((b, port)))
        }
        _ => None,
    }
}

// ------------------------------------------------------------------------------------------------
// nginx
// ------------------------------------------------------------------------------------------------

pub const NGINX: &str = "/usr/sbin/nginx";

/// A real nginx serving HTTP on 127.0.0.1:`port`, single process (`master_process off`), with
/// everything (conf, pid, error log, temp dirs) in its own directory. Killed on drop.
///
/// - `GET /` → `200 NAME\n`
/// - `GET /health` → `200 ok\n`
/// - `GET /big` → the generated file, [`Nginx::big_len`] bytes of [`big_content`]
pub struct Nginx {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub name: String,
    pub big_path: PathBuf,
    pub dir: TempDir,
}

/// Options of [`Nginx::start_opts`].
#[derive(Clone, Copy, Debug)]
pub struct NginxOpts<'a> {
    /// 0: a free port.
    pub port: u16,
    pub name: &'a str,
    /// Size of /big.
    pub big_len: usize,
    /// The status `GET /health` answers (200 by default; 503 makes an unhealthy server).
    pub health_status: u16,
    /// Run inside this network namespace (`ip netns exec NS nginx ...`); it listens on the
    /// namespace's own 127.0.0.1.
    pub netns: Option<&'a str>,
}

impl Default for NginxOpts<'_> {
    fn default() -> Self {
        NginxOpts { port: 0, name: "nginx", big_len: 1 << 20, health_status: 200, netns: None }
    }
}

impl Nginx {
    /// On a free port, with a 1 MiB /big.
    pub fn start(name: &str) -> Nginx {
        Nginx::start_on(free_port(), name, 1 << 20)
    }

    pub fn start_on(port: u16, name: &str, big_len: usize) -> Nginx {
        Nginx::start_opts(NginxOpts { port, name, big_len, ..NginxOpts::default() })
    }

    /// With every option of [`NginxOpts`]: another `/health` status, inside a network namespace.
    pub fn start_opts(opts: NginxOpts<'_>) -> Nginx {
        let NginxOpts { port, name, big_len, health_status, netns } = opts;
        let port = if port == 0 { free_port() } else { port };
        assert!(Path::new(NGINX).is_file(), "nginx not found at {NGINX}: run scripts/install-deps.sh (as root)");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "nginx name {name:?} must be [A-Za-z0-9._-] (it is pasted into nginx.conf)"
        );
        let dir = TempDir::new("nginx");
        let d = dir.path().display().to_string();
        let big_path = dir.join("big.bin");
        fs::write(&big_path, big_content(big_len)).expect("write big file");
        let conf = format!(
            r#"# generated by tests/common/mod.rs
worker_processes 1;
error_log {d}/error.log info;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    # Temp paths inside our directory: the compiled-in ones are under /var/lib/nginx.
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "{name}\n"; }}
        location = /health {{ return {health_status} "ok\n"; }}
        location = /big {{ alias {big}; }}
    }}
}}
"#,
            big = big_path.display()
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).expect("write nginx.conf");

        let mut cmd = match netns {
            Some(ns) => {
                // `ip netns exec` execs nginx in place: the pid stays nginx's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, NGINX]);
                c
            }
            None => Command::new(NGINX),
        };
        cmd.arg("-g")
            .arg("daemon off; master_process off;")
            .arg("-p")
            .arg(dir.path())
            // -e: the start-up error log, before nginx.conf is read (default /var/log/nginx).
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        let mut proc = Proc::spawn(&format!("nginx {name}"), cmd, &dir.join("stderr.log"));

        wait_for(START_TIMEOUT, &format!("nginx {name} on port {port}"), || {
            if let Some(st) = proc.try_status() {
                let err = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                panic!("nginx {name} exited ({}) before listening on {port}:\n{}{err}", Proc::describe(st), proc.log());
            }
            is_listening(proc.pid(), port)
        });
        Nginx { proc, addr: SocketAddr::from(([127, 0, 0, 1], port)), name: name.to_string(), big_path, dir }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn big_len(&self) -> usize {
        fs::metadata(&self.big_path).expect("stat big file").len() as usize
    }

    /// nginx's error log.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// Deterministic, non-repeating-looking content for large transfers: a corrupted, reordered or
/// truncated byte shows up in a comparison (unlike a file of zeros). Byte i is a simple LCG of i.
pub fn big_content(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x2545_F491;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Plain TCP servers (threads)
// ------------------------------------------------------------------------------------------------

/// Counters shared by a [`TcpServer`]'s threads.
#[derive(Default)]
pub struct ServerStats {
    pub accepted: AtomicUsize,
    pub active: AtomicUsize,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// A thread-per-connection TCP server on 127.0.0.1:0 running `handler` for each connection.
/// On drop it stops accepting and shuts down every live connection, so its threads end.
pub struct TcpServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Note: the server keeps a clone of every accepted stream (for [`TcpServer::close_all`]),
    /// so a handler that merely drops its stream sends neither FIN nor RST: it must
    /// `shutdown` it. Use [`TcpServer::start_unheld`] for handlers whose close must count.
    pub fn start<F>(handler: F) -> TcpServer
    where
        F: Fn(TcpStream, &ServerStats) + Send + Sync + 'static,
    {
        TcpServer::start_opt(true, handler)
    }

    /// Like [`TcpServer::start`], but keeps no clone of the accepted streams: when the handler
    /// drops its stream the socket really closes (with RST if it set `SO_LINGER` 0). Drop and
    /// `close_all` cannot end such connections, so the handler must end by itself (timeouts).
    pub fn start_unheld<F>(handler: F) -> TcpServer
    where
        F: Fn(TcpStream, &ServerStats) + Send + Sync + 'static,
    {
        TcpServer::start_opt(false, handler)
    }

    fn start_opt<F>(hold: bool, handler: F) -> TcpServer
    where
        F: Fn(TcpStream, &ServerStats) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let handler = Arc::new(handler);
        let acceptor = {
            let (stats, stop, conns) = (stats.clone(), stop.clone(), conns.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break; // woken by Drop's own connect
                    }
                    let Ok(conn) = conn else { continue };
                    stats.accepted.fetch_add(1, Ordering::SeqCst);
                    if hold {
                        if let Ok(c) = conn.try_clone() {
                            conns.lock().unwrap().push(c);
                        }
                    }
                    let (stats, handler) = (stats.clone(), handler.clone());
                    thread::spawn(move || {
                        stats.active.fetch_add(1, Ordering::SeqCst);
                        handler(conn, &stats);
                        stats.active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        TcpServer { addr, stats, stop, conns, acceptor: Some(acceptor) }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose handler is still running.
    pub fn active(&self) -> usize {
        self.stats.active.load(Ordering::SeqCst)
    }

    pub fn bytes_in(&self) -> u64 {
        self.stats.bytes_in.load(Ordering::SeqCst)
    }

    pub fn bytes_out(&self) -> u64 {
        self.stats.bytes_out.load(Ordering::SeqCst)
    }

    /// Shuts down both directions of every connection accepted so far (the server "dies" for its
    /// live connections, while still accepting new ones).
    pub fn close_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A blocking accept() only returns on a connection: make one to wake the acceptor.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        self.close_all();
    }
}

/// Echo backend: writes back everything it reads. Honours half-close: when the client's FIN
/// arrives (read returns 0) it shuts down its own write side once everything has been echoed,
/// and the connection closes only then.
pub struct EchoServer(pub TcpServer);

impl EchoServer {
    pub fn start() -> EchoServer {
        EchoServer(TcpServer::start(|mut s, stats| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = s.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        stats.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        stats.bytes_out.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        }))
    }
}

impl Deref for EchoServer {
    type Target = TcpServer;
    fn deref(&self) -> &TcpServer {
        &self.0
    }
}

/// Sink backend: reads and discards everything, counting bytes ([`TcpServer::bytes_in`]); on the
/// client's FIN it closes its side too.
pub struct SinkServer(pub TcpServer);

impl SinkServer {
    pub fn start() -> SinkServer {
        SinkServer(TcpServer::start(|mut s, stats| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = s.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        stats.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        }))
    }

    /// Waits until at least `n` bytes have arrived in total.
    pub fn wait_bytes(&self, n: u64, timeout: Duration) {
        wait_for(timeout, &format!("sink to receive {n} bytes"), || self.bytes_in() >= n);
    }
}

impl Deref for SinkServer {
    type Target = TcpServer;
    fn deref(&self) -> &TcpServer {
        &self.0
    }
}

// ------------------------------------------------------------------------------------------------
// Clients
// ------------------------------------------------------------------------------------------------

/// Connects with a timeout and sets [`IO_TIMEOUT`] on reads and writes, so a test that waits for
/// bytes that never come fails instead of hanging.
pub fn connect(addr: impl ToSocketAddrs) -> TcpStream {
    let addr = resolve(addr);
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// `GET path` over a fresh connection: (status, body). Panics on any I/O or parse error.
pub fn http_get(addr: impl ToSocketAddrs, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `POST path` with `body` (and an optional bearer token): (status, body).
pub fn http_post(addr: impl ToSocketAddrs, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
    http_request(addr, "POST", path, &headers, body).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// A minimal HTTP/1.0-style request with `Connection: close`: the answer is read to EOF, so no
/// Content-Length or chunked decoding is needed (a server must not send chunked to HTTP/1.0).
pub fn http_request(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, String)> {
    let addr = resolve(addr);
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut req =
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    parse_http_response(&resp)
}

fn parse_http_response(resp: &[u8]) -> io::Result<(u16, String)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers in response"))?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("bad status line in {head:?}")))?;
    let body = String::from_utf8_lossy(&resp[split + 4..]).into_owned();
    Ok((status, body))
}

/// Writes `data` to a file in `dir` and returns its path (for admin_token files and the like).
pub fn write_file(dir: &TempDir, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let mut f = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(data).expect("write file");
    p
}

// ------------------------------------------------------------------------------------------------
// More /proc introspection: CPU time, descriptor kinds, children
// ------------------------------------------------------------------------------------------------

/// User + system CPU time `pid` has used so far (all its threads), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// Open descriptors of `pid` by kind: (sockets, pipes, everything else).
pub fn fd_kinds(pid: u32) -> (usize, usize, usize) {
    let (mut sockets, mut pipes, mut other) = (0, 0, 0);
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0, 0);
    };
    for fd in dir.flatten() {
        match fs::read_link(fd.path()) {
            Ok(t) if t.to_string_lossy().starts_with("socket:") => sockets += 1,
            Ok(t) if t.to_string_lossy().starts_with("pipe:") => pipes += 1,
            _ => other += 1,
        }
    }
    (sockets, pipes, other)
}

/// The direct children of `pid` (every thread's), from /proc/PID/task/*/children.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(c) = fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// The command name of `pid` (/proc/PID/comm), None once it is gone.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// SIGKILLs a process that is not our own child (e.g. shunt under strace) on drop, if it is
/// still there and still has the command name it had: a pid is not reused while that holds.
pub struct KillOnDrop {
    pub pid: u32,
    comm: Option<String>,
}

impl KillOnDrop {
    pub fn new(pid: u32) -> KillOnDrop {
        KillOnDrop { pid, comm: comm(pid) }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.comm.is_some() && comm(self.pid) == self.comm {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Logs
// ------------------------------------------------------------------------------------------------

/// The time of day of an env_logger line (`[2025-01-02T03:04:05.678Z WARN  shunt] ...`) in
/// milliseconds since midnight UTC; None for a line without such a timestamp.
pub fn log_time_ms(line: &str) -> Option<u64> {
    let ts = line.strip_prefix('[')?.split_whitespace().next()?;
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut it = time.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    let (sec, frac) = s.split_once('.').unwrap_or((s, "0"));
    let frac_ms = format!("{frac:0<3}")[..3].parse::<u64>().ok()?;
    Some(((h.parse::<u64>().ok()? * 60 + m.parse::<u64>().ok()?) * 60 + sec.parse::<u64>().ok()?) * 1000 + frac_ms)
}

/// Milliseconds from log line `a` to log line `b` (both with timestamps), across midnight too.
pub fn log_ms_between(a: &str, b: &str) -> i64 {
    let (ta, tb) = (
        log_time_ms(a).unwrap_or_else(|| panic!("no timestamp in {a:?}")) as i64,
        log_time_ms(b).unwrap_or_else(|| panic!("no timestamp in {b:?}")) as i64,
    );
    let d = tb - ta;
    if d < -43_200_000 {
        d + 86_400_000
    } else {
        d
    }
}

// ------------------------------------------------------------------------------------------------
// Streams of generated bytes
// ------------------------------------------------------------------------------------------------

pub use pattern::pattern_fill;

/// Writes `len` bytes of stream `seed` to `w`.
pub fn write_pattern(w: &mut impl Write, seed: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        pattern_fill(seed, off, &mut buf[..n]);
        w.write_all(&buf[..n])?;
        off += n as u64;
    }
    Ok(())
}

/// Reads `r` to EOF and checks it is exactly `len` bytes of stream `seed`. The error says at
/// which offset the first difference is, or how long the stream was.
pub fn expect_pattern(r: &mut impl Read, seed: u64, len: u64) -> Result<(), String> {
    let mut got = vec![0u8; 256 * 1024];
    let mut want = vec![0u8; 256 * 1024];
    let mut off = 0u64;
    loop {
        let n = match r.read(&mut got) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read error after {off} of {len} bytes: {e}")),
        };
        if off + n as u64 > len {
            return Err(format!("more than the {len} bytes sent (at least {})", off + n as u64));
        }
        pattern_fill(seed, off, &mut want[..n]);
        if got[..n] != want[..n] {
            let i = (0..n).find(|&i| got[i] != want[i]).unwrap();
            return Err(format!("byte {} differs from stream {seed}'s", off + i as u64));
        }
        off += n as u64;
    }
    if off != len {
        return Err(format!("stream ended after {off} of {len} bytes"));
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------
// Network namespaces
// ------------------------------------------------------------------------------------------------

/// A network namespace of the test's own, with `lo` up, deleted on drop (even on panic).
/// Declare it before the processes that run in it, so they are killed before it goes.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `shunt-e2e-PID-N`. Panics if namespaces cannot be made (the caller decides
    /// whether that may be skipped; see `SHUNT_SKIP_NETNS`).
    pub fn new() -> io::Result<Netns> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!("shunt-e2e-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        run_ok("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A Command running `argv` inside the namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Runs `argv` inside the namespace; an error carries its stderr.
    pub fn exec_ok(&self, argv: &[&str]) -> io::Result<String> {
        let out = self.command(argv).stdin(Stdio::null()).output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!(
                "{argv:?} in netns {}: {}: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

fn run_ok(prog: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(prog).args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{prog} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

// ------------------------------------------------------------------------------------------------
// Namespace test bed (client, balancer and servers in their own namespaces, joined by veth)
// ------------------------------------------------------------------------------------------------

pub mod pattern;
pub mod topo;
