//! The database tier with real PostgreSQL 15 (SCRAM-SHA-256): a primary and its streaming
//! standby behind `db-write` (`check pgsql … role primary`, `on_down close`) and `db-read`
//! (`role standby`, the primary as backup). Writes land on the primary, reads on the standby,
//! pgbench runs through the write service without a failed transaction; when the primary stops
//! and the standby is promoted, writes follow within `rise × interval` plus a probe and a
//! session held to the old primary is closed. Checks log in by SCRAM, cleartext, md5 or trust,
//! whichever the server asks for; checks that fail say why: a wrong password, an unknown user,
//! a server that is not PostgreSQL, one that stalls after the startup message.

mod common;

use common::postgres::{psql, Postgres};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);
const PASSWORD: &str = "pg s3cret";
const INTERVAL_MS: u64 = 200;
const RISE: u64 = 2;

fn password_file(dir: &TempDir, name: &str, password: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

#[test]
fn writes_follow_the_primary_through_a_promotion() {
    let primary = Postgres::primary("pg-primary", PASSWORD);
    let standby = Postgres::standby_of("pg-standby", &primary, PASSWORD);
    let dir = TempDir::new("pg-conf");
    let pw = password_file(&dir, "pg-password", PASSWORD);
    let check = |role: &str| {
        format!(
            "check pgsql user postgres password {} dbname postgres role {role} interval {INTERVAL_MS}ms timeout 2s rise {RISE}",
            pw.display()
        )
    };
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\n\
         service db-write\n  bind 127.0.0.1:0\n  balance first\n  on_down close\n  {}\n  server p {p}\n  server s {s}\n\
         service db-read\n  bind 127.0.0.1:0\n  {}\n  server s {s}\n  server p {p} backup\n",
        check("primary"),
        check("standby"),
        p = primary.addr,
        s = standby.addr
    );
    let shunt = start_shunt(&conf);
    let (write, read) = (shunt.addr("db-write"), shunt.addr("db-read"));
    assert_eq!(shunt.wait_server_state("db-write", "s", "down", T), "role is standby");
    shunt.wait_server_state("db-write", "p", "up", T);
    shunt.wait_server_state("db-read", "s", "up", T);
    shunt.wait_server_state("db-read", "p", "up", T);
    assert_eq!(psql(write, PASSWORD, "SELECT pg_is_in_recovery()").as_deref(), Ok("f"));
    assert_eq!(psql(read, PASSWORD, "SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
    psql(write, PASSWORD, "CREATE TABLE w (i int)").unwrap();
    psql(write, PASSWORD, "INSERT INTO w VALUES (0)").unwrap();
    wait_for(T, "the insert replicated to the standby", || {
        psql(read, PASSWORD, "SELECT count(*) FROM w").as_deref() == Ok("1")
    });

    // pgbench through the write service.
    let bench = |args: &[&str]| {
        Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &write.port().to_string(), "-U", "postgres"])
            .args(args)
            .arg("postgres")
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let init = bench(&["-i", "-s", "1", "-q"]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let run = bench(&["-c", "2", "-j", "1", "-t", "200", "-n"]);
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success() && report.contains("number of failed transactions: 0"), "{report}");
    assert!(report.contains("number of transactions actually processed: 400/400"), "{report}");

    // A session held open to the primary through db-write.
    let mut held = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &write.port().to_string(), "-U", "postgres", "-d", "postgres", "-X", "-tA"])
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut held_in = held.stdin.take().unwrap();
    let mut held_out = BufReader::new(held.stdout.take().unwrap());
    held_in.write_all(b"SELECT 'held';\n").unwrap();
    let mut line = String::new();
    held_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "held");

    // The failover: the primary stops, the standby is promoted.
    let mut primary = primary;
    primary.proc.signal(libc::SIGINT); // fast shutdown
    assert!(primary.proc.wait_timeout(T).is_some(), "the primary stopped");
    assert_eq!(psql(standby.addr, PASSWORD, "SELECT pg_promote()").as_deref(), Ok("t"));
    let promoted = Instant::now();
    let mut attempts = Vec::new();
    let mut i = 0;
    loop {
        i += 1;
        let r = psql(write, PASSWORD, &format!("INSERT INTO w VALUES ({i})"));
        attempts.push((promoted.elapsed(), r.is_ok()));
        let done = attempts.iter().filter(|(_, ok)| *ok).count() >= 10;
        if done || promoted.elapsed() > T {
            break;
        }
    }
    let first_ok = attempts.iter().find(|(_, ok)| *ok).map(|(t, _)| *t);
    let failed: Vec<Duration> = attempts.iter().filter(|(_, ok)| !ok).map(|(t, _)| *t).collect();
    eprintln!(
        "RESULT pgsql failover: first write through db-write {first_ok:?} after the promotion; {} of {} writes failed, \
         the last {:?} after it",
        failed.len(),
        attempts.len(),
        failed.last()
    );
    let window = Duration::from_millis((RISE + 1) * INTERVAL_MS + 2000) + Duration::from_secs(1);
    let first_ok = first_ok.expect("writes reach the promoted standby");
    assert!(first_ok <= window, "writes followed only after {first_ok:?}");
    assert!(failed.iter().all(|t| *t <= first_ok), "a write failed after writes had resumed: {attempts:?}");
    assert_eq!(psql(standby.addr, PASSWORD, "SELECT count(*) FROM w").as_deref(), Ok("11"));

    // The held session went with the old primary: its next query finds the connection gone.
    let _ = held_in.write_all(b"SELECT 'after';\n");
    drop(held_in);
    let out = held.wait_with_output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("after"), "the held session answered after the failover");
    let m = http_get(shunt.admin(), "/metrics").1;
    assert!(metric(&m, "shunt_service_sessions_closed_on_down_total{service=\"db-write\"}") >= 1.0, "{m}");
}

#[test]
fn every_login_method_passes_and_every_failure_says_why_without_stalling_other_probes() {
    let primary = Postgres::primary("pg-details", PASSWORD);
    let dir = TempDir::new("pg-conf");
    let (good, wrong) = (password_file(&dir, "good", PASSWORD), password_file(&dir, "wrong", "not-it"));
    let nginx = Nginx::start("nginx-not-pg");
    // Accepts, reads the startup message, and never answers.
    let stall = TcpServer::start(|s, _| {
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = [0u8; 1024];
        let _ = std::io::Read::read(&mut &s, &mut buf);
        std::thread::sleep(Duration::from_secs(30));
    });
    let svc = |name: &str, user: &str, pw: &std::path::Path, addr: SocketAddr| {
        format!(
            "service {name}\n  bind 127.0.0.1:0\n  check pgsql user {user} password {} dbname postgres interval 200ms timeout 500ms\n  server x {addr}\n",
            pw.display()
        )
    };
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\n{}{}{}{}{}{}{}service trust\n  bind 127.0.0.1:0\n\
         \x20 check pgsql user trust_user dbname postgres role primary interval 200ms\n  server x {}\n",
        svc("good", "postgres", &good, primary.addr),
        svc("cleartext", "clear_user", &good, primary.addr),
        svc("md5", "md5_user", &good, primary.addr),
        svc("wrongpw", "postgres", &wrong, primary.addr),
        svc("nouser", "nobody_here", &good, primary.addr),
        svc("notpg", "postgres", &good, nginx.addr),
        svc("stalled", "postgres", &good, stall.addr),
        primary.addr
    );
    let shunt = start_shunt(&conf);
    // Every login method a server may ask for: SCRAM (good), cleartext, md5 and trust.
    for service in ["good", "cleartext", "md5", "trust"] {
        shunt.wait_server_state(service, "x", "up", T);
    }
    let wrongpw = shunt.wait_server_state("wrongpw", "x", "down", T);
    assert!(wrongpw.contains("password authentication failed for user \"postgres\" (28P01)"), "{wrongpw}");
    let nouser = shunt.wait_server_state("nouser", "x", "down", T);
    assert!(nouser.contains("nobody_here") && nouser.contains("(28"), "{nouser}");
    assert_eq!(shunt.wait_server_state("notpg", "x", "down", T), "the reply is not the PostgreSQL protocol");
    assert_eq!(shunt.wait_server_state("stalled", "x", "down", T), "timeout after 500ms");
    // The stalled server never held the others back: the good one is probed at its pace.
    let checks = || status_json(shunt.admin())["services"][0]["servers"][0]["checks"].as_u64().unwrap_or(0);
    let before = checks();
    wait_for(T, "the good server probed again and again", || checks() >= before + 5);
    assert_eq!(shunt.server_state("good", "x").0, "up");
}
