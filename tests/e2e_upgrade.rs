//! Binary upgrade (issue 10 §4): under `Connection: close` load nothing fails; a long echo
//! stream and an iperf3 run that straddle the upgrade finish byte-exact; the old process exits;
//! a new binary that cannot start leaves the old one serving; the same upgrade twice in a row;
//! a session that cannot move (mid-connect) finishes in the old process, which exits after it;
//! a new binary that never says ready is stopped after the ready timeout while nothing fails.
//!
//! Each test runs its own copy of the shunt binary from its own directory: an upgrade starts
//! the executable at the running one's path, and a test swaps what is there.

mod common;

use common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// A private copy of the shunt binary, in `dir`.
fn binary_in(dir: &TempDir) -> PathBuf {
    let path = dir.join("shunt");
    put(&path, &fs::read(shunt_bin()).unwrap());
    path
}

/// Replaces the file at `path` the way an upgrade does (`mv`): a new file, then a rename, so the
/// running process's executable is never written to.
fn put(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    fs::write(&tmp, bytes).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

/// Asks for an upgrade with SIGUSR2 and waits for the new process to serve; returns its pid,
/// killed when the guard drops (the old process, its parent, is gone by then).
fn upgrade(shunt: &mut Shunt, nth: usize) -> (u32, KillOnDrop) {
    shunt.signal(libc::SIGUSR2);
    let line = shunt.wait_log_count("upgrade: this process (pid ", nth, T).remove(nth - 1);
    let pid: u32 = line.split("(pid ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    (pid, KillOnDrop::new(pid))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

#[test]
fn an_upgrade_under_connection_close_load_fails_no_request() {
    let (a, b) = (Nginx::start("n1"), Nginx::start("n2"));
    let dir = TempDir::new("upgrade");
    let bin = binary_in(&dir);
    let conf =
        format!("admin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  server a {}\n  server b {}\n", a.addr, b.addr);
    let mut shunt = start_shunt_with(&bin, &conf, &[]);
    let addr = shunt.addr("web");
    let old = shunt.pid();
    let load = Wrk::start(addr, true, Duration::from_secs(6));
    let checker = Checker::start(addr);
    wait_for(T, "load flowing", || checker.ok() > 20);
    let started = Instant::now();
    let (new, _guard) = upgrade(&mut shunt, 1);
    let took = started.elapsed();
    assert_ne!(new, old);
    let status = shunt.wait_timeout(T).expect("the old process exits");
    assert!(status.success(), "{}", Proc::describe(status));
    let (r, text) = load.finish();
    let (checked, failures) = checker.finish();
    eprintln!("upgrade took {took:?}; {} wrk requests and {checked} checked ones around it", r.requests);
    assert_eq!((r.socket_errors, r.non_2xx), (0, 0), "{text}");
    assert!(failures.is_empty(), "{} of {checked} checked requests failed: {failures:?}", failures.len());
    assert!(alive(new), "the new process serves");
    assert!(http_get(addr, "/").1.starts_with('n'));
}

#[test]
fn an_echo_stream_and_an_iperf3_run_straddle_two_upgrades_byte_exact() {
    const LEN: u64 = 600 << 20;
    let echo = EchoServer::start();
    let iperf = on_free_port("iperf3 server", |port| {
        let dir = TempDir::new("iperf3");
        let log = dir.join("iperf3.log");
        let mut cmd = Command::new("iperf3");
        cmd.args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()]);
        let mut p = Proc::spawn("iperf3", cmd, &log);
        wait_for(T, "iperf3 listening", || {
            is_listening(p.pid(), port) || p.try_status().is_some() || says_addr_in_use(&p.log())
        });
        if says_addr_in_use(&p.log()) {
            Bound::InUse
        } else {
            Bound::Up((p, dir, port))
        }
    });
    let dir = TempDir::new("upgrade");
    let bin = binary_in(&dir);
    let conf = format!(
        "admin 127.0.0.1:0\nservice echo\n  bind 127.0.0.1:0\n  server e {}\n\
         service iperf\n  bind 127.0.0.1:0\n  server i 127.0.0.1:{}\n",
        echo.addr, iperf.2
    );
    let mut shunt = start_shunt_with(&bin, &conf, &[]);
    let (echo_addr, iperf_addr) = (shunt.addr("echo"), shunt.addr("iperf"));
    // The echo stream is paced (about 100 MB/s) so it lasts through both upgrades.
    let stream = thread::spawn(move || paced_echo(echo_addr, 21, LEN));
    let iperf_run = thread::spawn(move || {
        Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &iperf_addr.port().to_string(), "-t", "6", "-J"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run iperf3")
    });
    wait_for(T, "both flowing", || echo.bytes_in() > 50 << 20);
    let (_first, _g1) = upgrade(&mut shunt, 1);
    assert!(shunt.wait_timeout(T).is_some_and(|s| s.success()), "the first process exits");
    // The second upgrade is asked of the new process, which writes to the same log file.
    let log_path = shunt.log_path().to_path_buf();
    let (second, _g2) = {
        let pid = _first;
        signal_pid(pid, libc::SIGUSR2);
        let line = wait_some(T, "the second upgrade", || {
            fs::read_to_string(&log_path)
                .ok()?
                .lines()
                .filter(|l| l.contains("upgrade: this process (pid "))
                .nth(1)
                .map(str::to_string)
        });
        let pid: u32 = line.split("(pid ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
        (pid, KillOnDrop::new(pid))
    };
    wait_for(T, "the second process to take over from the first", || !alive(_first));
    stream.join().unwrap().unwrap_or_else(|e| panic!("echo stream across two upgrades: {e}"));
    let out = iperf_run.join().unwrap();
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "iperf3 across two upgrades:\n{json}\n{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap();
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap();
    eprintln!("iperf3: {sent} bytes sent, {received} received; echo stream of {LEN} bytes: exact");
    // iperf3 checks no content (the echo stream does) and its receiver stops counting at the
    // end of the test with the last bytes still in flight in the socket buffers and pipes on
    // the way (a few MB); its control connection and data stream both moved twice, and it ended
    // well. A reset or a lost stream would have failed the run.
    assert!(received > 0 && sent - received < 64 << 20, "iperf3: {sent} sent, {received} received");
    let log = fs::read_to_string(&log_path).unwrap();
    let adopted: Vec<&str> = log.lines().filter(|l| l.contains("established session(s) adopted")).collect();
    assert_eq!(adopted.len(), 2, "{log}");
    assert!(adopted.iter().all(|l| !l.contains(": 0 established")), "sessions really moved: {adopted:?}");
    assert!(alive(second));
}

/// `kill(pid, sig)` for a process the harness did not start.
fn signal_pid(pid: u32, sig: i32) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

/// Sends `len` bytes of stream `seed` at about 100 MB/s and checks the echo, byte for byte.
fn paced_echo(addr: SocketAddr, seed: u64, len: u64) -> Result<(), String> {
    let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(T)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || -> std::io::Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            pattern_fill(seed, off, &mut buf[..n]);
            w.write_all(&buf[..n])?;
            off += n as u64;
            thread::sleep(Duration::from_millis(10)); // pacing
        }
        w.shutdown(Shutdown::Write)
    });
    let mut r = s;
    let read = expect_pattern(&mut r, seed, len);
    writer.join().unwrap().map_err(|e| format!("writer: {e}"))?;
    read
}

#[test]
fn a_new_binary_that_cannot_start_leaves_the_old_one_serving() {
    let echo = EchoServer::start();
    let dir = TempDir::new("upgrade");
    let bin = binary_in(&dir);
    let real = fs::read(&bin).unwrap();
    let conf = format!("admin 127.0.0.1:0\nservice echo\n  bind 127.0.0.1:0\n  server e {}\n", echo.addr);
    // systemd's view, through a socket of the test's: which process is the service's main one.
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(T)).unwrap();
    let notes = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut shunt = start_shunt_with(&bin, &conf, &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    let (addr, admin, pid) = (shunt.addr("echo"), shunt.admin(), shunt.pid());
    assert_eq!(notes(), format!("READY=1\nMAINPID={pid}"));
    let mut live = connect(addr);
    live.write_all(b"before").unwrap();
    let mut got = [0u8; 6];
    live.read_exact(&mut got).unwrap();
    // A binary that exits 1 at once.
    put(&bin, b"#!/bin/sh\nexit 1\n");
    shunt.signal(libc::SIGUSR2);
    let line = shunt.wait_log("upgrade failed, this process keeps serving", T);
    assert!(line.contains("exit status: 1"), "{line}");
    let (status, body) = http_post(admin, "/upgrade", None, b"");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("keeps serving") && body.contains("exit status: 1"), "{body}");
    // One that is not even executable is refused at once. (One that hangs is stopped after
    // the 30 s ready timeout: its own test below.)
    put(&bin, b"not a program");
    let (status, body) = http_post(admin, "/upgrade", None, b"");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("cannot start"), "{body}");
    // The old process never stopped: same pid, same listeners, the live session goes on.
    assert_eq!(shunt.pid(), pid);
    assert!(shunt.is_running());
    live.write_all(b"after!").unwrap();
    live.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after!");
    echo_transfer(connect(addr), 3, 100_000).unwrap();
    // And with the real binary back, the upgrade works.
    put(&bin, &real);
    let (status, body) = http_post(admin, "/upgrade", None, b"");
    assert_eq!(status, 200, "{body}");
    let new: u32 = body.split("pid ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let _guard = KillOnDrop::new(new);
    assert!(body.contains("1 established session(s)"), "the live session moved: {body}");
    // The new process said it was ready, and the old one named it the main process.
    let mut heard = vec![notes(), notes()];
    heard.sort();
    assert_eq!(heard, vec![format!("MAINPID={new}"), format!("READY=1\nMAINPID={new}")]);
    live.write_all(b"moved!").unwrap();
    live.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"moved!");
}

/// Echoes every connection `listener` accepts, each on a thread of its own, until the client's
/// FIN (then a FIN back).
fn echo_on(listener: std::net::TcpListener) {
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = conn.read(&mut buf) {
                    if conn.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = conn.shutdown(Shutdown::Write);
            });
        }
    });
}

#[test]
fn a_session_still_connecting_finishes_in_the_old_process_which_exits_after_it() {
    const LEN: u64 = 8 << 20;
    // The server does not answer the SYN yet: the session is mid-connect, which cannot move.
    let hole = BlackHole::new();
    let dir = TempDir::new("upgrade");
    let bin = binary_in(&dir);
    let conf = format!(
        "admin 127.0.0.1:0\ndrain_timeout 120s\nservice web\n  bind 127.0.0.1:0\n  timeout connect 60s\n  server e {}\n",
        hole.addr
    );
    let mut shunt = start_shunt_with(&bin, &conf, &[]);
    let (addr, admin) = (shunt.addr("web"), shunt.admin());
    let mut client = connect(addr);
    client.set_read_timeout(Some(T)).unwrap();
    client.write_all(b"hello").unwrap();
    wait_for(T, "the session connecting", || metric(&http_get(admin, "/metrics").1, "shunt_active_connections") == 1.0);
    let (_new, _guard) = upgrade(&mut shunt, 1);
    let line = shunt.wait_log("upgrade: pid ", T);
    assert!(line.contains("took over 1 listener(s) and 0 established session(s)"), "{line}");
    // The old process waits for its session.
    assert!(shunt.is_running(), "the old process left its connecting session");
    echo_on(hole.open());
    let mut back = [0u8; 5];
    client.read_exact(&mut back).expect("the echo, through the old process");
    assert_eq!(&back, b"hello");
    assert!(shunt.is_running(), "the old process left a streaming session");
    echo_transfer(client, 7, LEN).unwrap_or_else(|e| panic!("the session that stayed: {e}"));
    // It ended: the old process goes too.
    let status = shunt.wait_timeout(T).expect("the old process exits once its session ended");
    assert!(status.success(), "{}", Proc::describe(status));
    let ended = shunt.sessions();
    assert!(
        ended.iter().any(|s| s.code == "--" && s.up == 5 + LEN && s.down == 5 + LEN),
        "the session's line, every byte: {ended:?}"
    );
}

#[test]
fn a_new_binary_that_never_says_ready_is_stopped_after_the_ready_timeout_and_nothing_fails() {
    let nginx = Nginx::start("n1");
    let dir = TempDir::new("upgrade");
    let bin = binary_in(&dir);
    let conf = format!("admin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  server a {}\n", nginx.addr);
    let mut shunt = start_shunt_with(&bin, &conf, &[]);
    let (addr, admin, pid) = (shunt.addr("web"), shunt.admin(), shunt.pid());
    let checker = Checker::start(addr);
    wait_for(T, "requests flowing", || checker.ok() > 20);
    // It starts, holds the hand-over socket and never answers.
    put(&bin, b"#!/bin/sh\nexec sleep 300\n");
    shunt.signal(libc::SIGUSR2);
    let started = Instant::now();
    let answered = checker.ok();
    // The ready timeout is 30 s.
    let line = shunt.wait_log("upgrade failed, this process keeps serving", Duration::from_secs(90));
    let waited = started.elapsed();
    assert!(line.contains("not ready within 30s"), "{line}");
    let (checked, failures) = checker.finish();
    eprintln!("the upgrade gave up after {waited:?}; {} requests served meanwhile", checked - answered);
    assert!(failures.is_empty(), "{} of {checked} checked requests failed: {failures:?}", failures.len());
    assert!(checked - answered > 100, "requests were served during the wait: {}", checked - answered);
    // The hung process was stopped; this one serves, and can change again.
    let hung: u32 = line.split("the new process ").nth(1).unwrap().split([' ', ')']).next().unwrap().parse().unwrap();
    wait_for(T, "the hung process gone", || !alive(hung));
    assert_eq!(shunt.pid(), pid);
    assert!(shunt.is_running());
    assert_eq!(http_post(admin, "/reload", None, b"").0, 200, "reloads are possible again");
    assert_eq!(http_get(addr, "/").0, 200);
}
