//! The database tier with real Redis servers: a master and its replica behind a write service
//! (`check redis role master`) and a read service (`role replica`, the master as `backup`),
//! both with `requirepass`. Writes land on the master, reads on the replica; when the roles are
//! swapped under a writer loop, writes follow within `rise × interval` plus a probe and none
//! gets `READONLY` after that; `on_down close` cuts a session held to the demoted master.
//! An ACL user logs in with its name and password; failing checks say why: no password, a
//! wrong one, a replica whose master is gone.

mod common;

use common::redis::{cli, Redis};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);
const PASSWORD: &str = "pw-s3cret";
const INTERVAL_MS: u64 = 100;
const RISE: u64 = 2;

/// One `SET` on a new connection through `addr`, as an application's pool would open it:
/// `Ok` or the error (a `-READONLY` reply, or a refused or reset connection).
fn set(addr: SocketAddr, key: &str, value: &str) -> Result<(), String> {
    let mut c = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let cmd = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{PASSWORD}\r\n*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n{value}\r\n",
        PASSWORD.len(),
        key.len(),
        value.len()
    );
    c.write_all(cmd.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.iter().filter(|&&b| b == b'\n').count() < 2 {
        match c.read(&mut buf) {
            Ok(0) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&got))),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    match got.as_slice() {
        b"+OK\r\n+OK\r\n" => Ok(()),
        other => Err(String::from_utf8_lossy(other).trim().to_string()),
    }
}

fn password_file(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("redis-password");
    std::fs::write(&path, format!("{PASSWORD}\n")).unwrap();
    path
}

fn conf(pw: &std::path::Path, a: SocketAddr, b: SocketAddr) -> String {
    let check = |role: &str| {
        format!("check redis role {role} password {} interval {INTERVAL_MS}ms timeout 500ms rise {RISE}", pw.display())
    };
    format!(
        "log info\nadmin 127.0.0.1:0\n\
         service cache\n  bind 127.0.0.1:0\n  balance first\n  on_down close\n  {}\n  server a {a}\n  server b {b}\n\
         service cache-ro\n  bind 127.0.0.1:0\n  {}\n  server b {b}\n  server a {a} backup\n",
        check("master"),
        check("replica")
    )
}

#[test]
fn writes_follow_the_master_through_a_role_swap_and_reads_stay_on_the_replica() {
    let a = Redis::start("redis-a", Some(PASSWORD), None);
    let b = Redis::start("redis-b", Some(PASSWORD), Some(a.addr));
    let dir = TempDir::new("redis-conf");
    let shunt = start_shunt(&conf(&password_file(&dir), a.addr, b.addr));
    let (write, read) = (shunt.addr("cache"), shunt.addr("cache-ro"));
    let pw = Some(PASSWORD);

    // The replica fails the master check by its role; as a backup, the master passes the
    // replica check.
    assert_eq!(shunt.wait_server_state("cache", "b", "down", T), "role is replica");
    shunt.wait_server_state("cache", "a", "up", T);
    shunt.wait_server_state("cache-ro", "b", "up", T);
    shunt.wait_server_state("cache-ro", "a", "up", T);
    let port = |addr: SocketAddr| cli(addr, pw, &["CONFIG", "GET", "port"]).lines().nth(1).unwrap_or("").to_string();
    assert_eq!(port(write), a.addr.port().to_string(), "writes go to the master");
    assert_eq!(port(read), b.addr.port().to_string(), "reads go to the replica");
    set(write, "greeting", "hello").unwrap();
    wait_for(T, "the write replicated and read back", || cli(read, pw, &["GET", "greeting"]) == "hello");
    let bench = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &write.port().to_string(), "-a", PASSWORD, "-t", "set,get", "-n", "2000", "-q"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success() && report.contains("SET:") && report.contains("GET:"), "{report}");

    // A session held open to the master, and a writer opening a connection per write.
    let mut held = TcpStream::connect(write).unwrap();
    held.write_all(format!("AUTH {PASSWORD}\r\n").as_bytes()).unwrap();
    let mut ok = [0u8; 5];
    held.read_exact(&mut ok).unwrap();
    let stop = AtomicBool::new(false);
    let results = thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut results = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                results.push((Instant::now(), i, set(write, "counter", &i.to_string())));
                thread::sleep(Duration::from_millis(2));
            }
            results
        });
        wait_for(T, "writes flowing", || cli(a.addr, pw, &["GET", "counter"]).parse::<u64>().is_ok_and(|n| n > 20));
        // The failover an operator (or a sentinel) does: the replica takes over.
        cli(b.addr, pw, &["REPLICAOF", "NO", "ONE"]);
        cli(a.addr, pw, &["REPLICAOF", "127.0.0.1", &b.addr.port().to_string()]);
        let swapped = Instant::now();
        wait_for(T, "writes to reach the new master", || port(write) == b.addr.port().to_string());
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        (swapped, writer.join().unwrap())
    });
    let (swapped, results) = results;
    let failed: Vec<(Duration, &String)> = results
        .iter()
        .filter_map(|(t, _, r)| r.as_ref().err().map(|e| (t.saturating_duration_since(swapped), e)))
        .collect();
    // Writes started after the swap cannot succeed on the old master (a replica now): the
    // first that succeeds went to the new one.
    let first_ok_after = results.iter().find(|(t, _, r)| *t > swapped && r.is_ok()).map(|(t, _, _)| *t - swapped);
    let last_failure = failed.iter().map(|(d, _)| *d).max().unwrap_or_default();
    eprintln!(
        "RESULT redis failover: {} writes, {} failed (last {last_failure:?} after the swap, first success after it at \
         {first_ok_after:?}): {:?}",
        results.len(),
        failed.len(),
        failed.iter().map(|(_, e)| e.as_str()).collect::<std::collections::BTreeSet<_>>()
    );
    // rise × interval for the new master, one probe (interval + its own time) to see the old
    // one demoted; a second of margin for a loaded machine.
    let window = Duration::from_millis((RISE + 1) * INTERVAL_MS + 500) + Duration::from_secs(1);
    assert!(last_failure <= window, "a write failed {last_failure:?} after the swap: {failed:?}");
    assert!(failed.iter().all(|(d, _)| *d <= window), "{failed:?}");
    let last_ok = results.iter().rev().find(|(_, _, r)| r.is_ok()).map(|(_, i, _)| *i).unwrap();
    assert_eq!(cli(b.addr, pw, &["GET", "counter"]), last_ok.to_string(), "the last write is on the new master");

    // on_down close: the session held to the demoted master was cut.
    held.set_read_timeout(Some(T)).unwrap();
    let mut buf = [0u8; 16];
    match held.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the session held to the old master was not reset: {other:?}"),
    }
    let m = http_get(shunt.admin(), "/metrics").1;
    assert!(metric(&m, "shunt_service_sessions_closed_on_down_total{service=\"cache\"}") >= 1.0);
    assert!(shunt.log().contains("server cache/a is DOWN (role is replica)"), "{}", shunt.log());
    assert!(shunt.sessions().iter().any(|s| s.code == "DD"), "the cut session is logged DD");
}

#[test]
fn failing_checks_say_why() {
    let a = Redis::start("redis-auth", Some(PASSWORD), None);
    let b = Redis::start("redis-replica", Some(PASSWORD), Some(a.addr));
    let dir = TempDir::new("redis-conf");
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not-it\n").unwrap();
    // An ACL user that may only read INFO: its file holds the user and the password.
    assert_eq!(a.cli(&["ACL", "SETUSER", "checker", "on", ">chk-pw", "+info"]), "OK");
    let acl_user = dir.join("acl-user");
    std::fs::write(&acl_user, "checker chk-pw\n").unwrap();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\n\
         service none\n  bind 127.0.0.1:0\n  check redis role master interval 100ms\n  server a {a}\n\
         service wrong\n  bind 127.0.0.1:0\n  check redis role master password {w} interval 100ms\n  server a {a}\n\
         service ro\n  bind 127.0.0.1:0\n  check redis role replica password {ok} interval 100ms\n  server b {b}\n\
         service acl\n  bind 127.0.0.1:0\n  check redis role master password {u} interval 100ms\n  server a {a}\n",
        a = a.addr,
        b = b.addr,
        w = wrong.display(),
        u = acl_user.display(),
        ok = password_file(&dir).display()
    );
    let shunt = start_shunt(&conf);
    assert!(shunt.wait_server_state("none", "a", "down", T).starts_with("the server needs a password"));
    assert!(shunt.wait_server_state("wrong", "a", "down", T).starts_with("AUTH refused: wrong password"));
    shunt.wait_server_state("ro", "b", "up", T);
    shunt.wait_server_state("acl", "a", "up", T);
    // The master goes away: the replica's link is down, and its data stale.
    drop(a);
    assert_eq!(shunt.wait_server_state("ro", "b", "down", T), "replica with its master link down");
}
