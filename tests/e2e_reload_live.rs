//! Reload in place (issue 10 §2), what a reload does to what is already running: a removed
//! listener closes while its live sessions go on, a new bind that fails rejects the whole file,
//! live sessions keep the timeouts they started with, servers a reload adds are probed at once,
//! and the reload metrics say what happened. (`e2e_reload.rs` has reloads under load, invalid
//! files, `--plan` and the admin calls.)

mod common;

use common::*;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const T: Duration = Duration::from_secs(20);

/// A conf with service `web` in front of `servers` (`NAME ADDR [options]` each); `binds` are its
/// listen addresses, `extra` goes before it (globals) and `tail` after it (its own directives,
/// or more services).
fn conf(binds: &[&str], servers: &[String], extra: &str, tail: &str) -> String {
    let mut c = format!("admin 127.0.0.1:0\nlog info\n{extra}service web\n");
    for b in binds {
        c.push_str(&format!("  bind {b}\n"));
    }
    for s in servers {
        c.push_str(&format!("  server {s}\n"));
    }
    c + tail
}

fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").1
}

fn reloads(admin: SocketAddr, result: &str) -> f64 {
    metric(&metrics(admin), &format!("shunt_reloads_total{{result=\"{result}\"}}"))
}

/// Which name server a new connection reached.
fn served_by(addr: SocketAddr) -> String {
    String::from_utf8(read_all(&mut connect(addr))).unwrap()
}

/// Sends `bytes` and reads them back from an echo server.
fn ping(s: &mut TcpStream, bytes: &[u8]) {
    s.write_all(bytes).unwrap();
    let mut back = vec![0u8; bytes.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, bytes);
}

// ------------------------------------------------------------------------------------------------
// Listeners
// ------------------------------------------------------------------------------------------------

#[test]
fn a_removed_listener_refuses_new_connections_while_its_live_sessions_finish_byte_exact() {
    const LEN: u64 = 32 << 20;
    let echo = EchoServer::start();
    // web keeps 127.0.0.1 and loses 127.0.0.2; service `gone` (127.0.0.3) goes whole.
    let gone = format!("service gone\n  bind 127.0.0.3:0\n  server e {}\n", echo.addr);
    let before = conf(&["127.0.0.1:0", "127.0.0.2:0"], &[format!("e {}", echo.addr)], "", &gone);
    let mut shunt = start_shunt(&before);
    let admin = shunt.admin();
    let (kept, dropped, gone_addr) = (shunt.addrs("web")[0], shunt.addrs("web")[1], shunt.addr("gone"));
    // Live sessions on both listeners that go away, bytes already through them.
    let mut on_dropped = connect(dropped);
    let mut on_gone = connect(gone_addr);
    ping(&mut on_dropped, b"hello");
    ping(&mut on_gone, b"hello");
    shunt.reload(&conf(&["127.0.0.1:0"], &[format!("e {}", echo.addr)], "", ""));
    wait_for(T, "the reload", || reloads(admin, "ok") == 1.0);
    // The workers take the reload a moment after the supervisor counts it.
    for (what, addr) in [("the removed bind of web", dropped), ("the removed service's bind", gone_addr)] {
        wait_for(
            T,
            &format!("{what} ({addr}) to refuse connections"),
            || matches!(TcpStream::connect(addr), Err(e) if e.kind() == io::ErrorKind::ConnectionRefused),
        );
    }
    ping(&mut connect(kept), b"the kept listener serves");
    // Both sessions go on to their end, every byte both ways.
    let a = std::thread::spawn(move || echo_transfer(on_dropped, 1, LEN));
    let b = std::thread::spawn(move || echo_transfer(on_gone, 2, LEN));
    a.join().unwrap().unwrap_or_else(|e| panic!("the session on web's removed bind: {e}"));
    b.join().unwrap().unwrap_or_else(|e| panic!("the session on the removed service: {e}"));
    // (Matched by their byte counts: the refusal checks above may have got through to shunt
    // before the reload reached its worker, and left sessions of their own.)
    let ended = wait_some(T, "both sessions logged", || {
        let both: Vec<Session> = shunt.sessions().into_iter().filter(|s| s.up == 5 + LEN).collect();
        (both.len() == 2).then_some(both)
    });
    wait_for(T, "no live session", || metric(&metrics(admin), "shunt_active_connections") == 0.0);
    for s in ended {
        assert!(s.code == "--" && s.down == 5 + LEN, "{}", s.raw);
    }
}

#[test]
fn a_reload_whose_new_bind_fails_is_rejected_whole_and_the_old_configuration_serves() {
    let (a, b, c) = (name_server("a"), name_server("b"), name_server("c"));
    // Held by the test: shunt's bind of this address must fail (address in use).
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let running = conf(&["127.0.0.1:0"], &[format!("a {}", a.addr), format!("b {}", b.addr)], "", "");
    let mut shunt = start_shunt(&running);
    let (addr, admin) = (shunt.addr("web"), shunt.admin());
    let listening = shunt.sockets_in_state("LISTEN");
    let status_before = status_json(admin);
    // Everything changes: a global, a weight, a server removed and one added, a new service
    // whose first bind works and whose second one cannot.
    let next = conf(
        &["127.0.0.1:0"],
        &[format!("a {} weight 7", a.addr), format!("c {}", c.addr)],
        "max_conns 7\n",
        &format!("service more\n  bind 127.0.0.5:0\n  bind {taken_addr}\n  server c {}\n", c.addr),
    );
    shunt.write_conf(&next);
    let (status, body) = http_post(admin, "/reload", None, b"");
    assert_eq!(status, 500, "{body}");
    assert!(body.contains(&taken_addr.to_string()) && body.contains("in use"), "{body}");
    assert!(body.contains("the running configuration stays"), "{body}");
    let logged = shunt.wait_log("rejected, the running configuration stays", T);
    assert!(logged.contains("reload: "), "{logged}");
    shunt.wait_log(&format!("{taken_addr}"), T);
    // SIGHUP takes the same path.
    shunt.signal(libc::SIGHUP);
    shunt.wait_log_count("rejected, the running configuration stays", 2, T);
    let m = metrics(admin);
    assert_eq!(metric(&m, "shunt_reloads_total{result=\"error\"}"), 2.0);
    assert_eq!(metric(&m, "shunt_reloads_total{result=\"ok\"}"), 0.0);
    // Nothing of the new file applies: same generation, hash, services, servers, weights, cap;
    // the bind that worked was let go again.
    let status = status_json(admin);
    for key in ["generation", "config_hash", "max_connections", "services"] {
        assert_eq!(status[key], status_before[key], "{key} changed:\n{status}");
    }
    assert_eq!(shunt.sockets_in_state("LISTEN"), listening, "the listeners are the old ones");
    let served: Vec<String> = (0..6).map(|_| served_by(addr)).collect();
    assert_eq!(served, ["a", "b", "a", "b", "a", "b"], "the old servers, the old weights");
    assert_eq!(c.accepted(), 0, "the new server got nothing");
    drop(taken);
}

// ------------------------------------------------------------------------------------------------
// Live sessions keep their settings
// ------------------------------------------------------------------------------------------------

/// The session line of the client connection `s` (matched by its local port).
fn session_of(shunt: &Shunt, s: &TcpStream) -> Session {
    let port = s.local_addr().unwrap().port();
    wait_some(T, &format!("the session line of client port {port}"), || {
        shunt.sessions().into_iter().find(|l| l.port == port)
    })
}

#[test]
fn a_session_keeps_the_idle_timeout_it_started_with_and_new_ones_get_the_new_one() {
    let echo = EchoServer::start();
    let with_idle =
        |idle: &str| conf(&["127.0.0.1:0"], &[format!("e {}", echo.addr)], "", &format!("  timeout idle {idle}\n"));
    let mut shunt = start_shunt(&with_idle("30s"));
    let (addr, admin) = (shunt.addr("web"), shunt.admin());
    let mut old = connect(addr);
    ping(&mut old, b"before");
    shunt.reload(&with_idle("1s"));
    wait_for(T, "the reload", || reloads(admin, "ok") == 1.0);
    // Bytes move on the old session after the reload too: its timer is armed again, still with
    // its own 30 s.
    ping(&mut old, b"after");
    let mut new = connect(addr);
    ping(&mut new, b"new");
    let idle_since = Instant::now();
    // The new session is closed after about 1 s without a byte.
    new.set_read_timeout(Some(T)).unwrap();
    let end = new.read(&mut [0u8; 16]);
    let idled = idle_since.elapsed();
    assert!(
        matches!(&end, Ok(0))
            || matches!(&end, Err(e) if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::TimedOut),
        "the new session should have been closed: {end:?}"
    );
    assert!(idled > Duration::from_millis(800) && idled < Duration::from_secs(10), "closed after {idled:?}");
    let line = session_of(&shunt, &new);
    assert_eq!(line.code, "TD", "{}", line.raw);
    // The old one has idled over three times the new value by now and still lives.
    let waited = Duration::from_millis(3500).saturating_sub(idle_since.elapsed()).max(Duration::from_millis(100));
    old.set_read_timeout(Some(waited)).unwrap();
    match old.read(&mut [0u8; 16]) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("the old session ended after {:?} idle: {other:?}", idle_since.elapsed()),
    }
    old.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    ping(&mut old, b"still here");
    assert_eq!(metric(&metrics(admin), "shunt_active_connections"), 1.0);
}

// ------------------------------------------------------------------------------------------------
// Health of servers a reload adds
// ------------------------------------------------------------------------------------------------

#[test]
fn servers_a_reload_adds_are_probed_at_once_not_after_the_check_interval() {
    let healthy = Arc::new(AtomicBool::new(true));
    let (a, b) = (health_server("a", healthy.clone()), health_server("b", healthy));
    let dead = Refuser::new();
    let check = "  check http GET /health expect 200 interval 60s rise 1 fall 1\n";
    let mut shunt = start_shunt(&conf(&["127.0.0.1:0"], &[format!("a {}", a.addr)], "", check));
    let admin = shunt.admin();
    let servers = || status_json(admin)["services"][0]["servers"].clone();
    wait_for(T, "a's first probe", || servers()[0]["checks"] == 1);
    let added = [format!("a {}", a.addr), format!("b {}", b.addr), format!("c {}", dead.addr)];
    shunt.reload(&conf(&["127.0.0.1:0"], &added, "", check));
    let reloaded = Instant::now();
    // Far sooner than the 60 s interval: a few seconds on a loaded machine.
    let soon = Duration::from_secs(10);
    wait_for(soon, "b probed (and up)", || {
        let s = servers();
        s[1]["checks"].as_u64() >= Some(1) && s[1]["last_check"]["ok"] == true && s[1]["state"] == "up"
    });
    wait_for(soon, "c probed and down", || servers()[2]["state"] == "down");
    shunt.wait_log("server web/c is DOWN", soon);
    eprintln!("new servers judged {:?} after the reload", reloaded.elapsed());
    assert_eq!(servers()[0]["checks"], 1, "a kept server keeps its cadence: {}", servers());
}

// ------------------------------------------------------------------------------------------------
// Metrics
// ------------------------------------------------------------------------------------------------

/// The hash label of `shunt_config_info`.
fn config_hash(metrics: &str) -> String {
    let line = metrics.lines().find(|l| l.starts_with("shunt_config_info{hash=\"")).expect("shunt_config_info");
    line["shunt_config_info{hash=\"".len()..].split('"').next().unwrap().to_string()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn reload_metrics_count_each_result_and_move_the_time_generation_and_hash() {
    let a = name_server("a");
    let with_weight = |w: u32| conf(&["127.0.0.1:0"], &[format!("a {} weight {w}", a.addr)], "", "");
    let mut shunt = start_shunt(&with_weight(1));
    let admin = shunt.admin();
    // (ok, error, last success, generation, hash)
    let read = || {
        let m = metrics(admin);
        let get = |k: &str| metric(&m, k);
        (
            get("shunt_reloads_total{result=\"ok\"}"),
            get("shunt_reloads_total{result=\"error\"}"),
            get("shunt_reload_last_success_timestamp_seconds") as u64,
            get("shunt_config_generation"),
            config_hash(&m),
        )
    };
    let (ok, err, last, generation, h1) = read();
    assert_eq!((ok, err, last, generation), (0.0, 0.0, 0, 1.0));
    // A good reload (SIGHUP).
    let before = unix_now();
    shunt.reload(&with_weight(2));
    wait_for(T, "the reload", || read().0 == 1.0);
    let (_, err, last1, generation, h2) = read();
    assert_eq!((err, generation), (0.0, 2.0));
    assert!(last1 >= before && last1 <= unix_now(), "last success {last1}, reload asked at {before}");
    assert_ne!(h2, h1, "the weight changed, so does the hash");
    let status = status_json(admin);
    assert_eq!((status["generation"].as_u64(), status["config_hash"].as_str()), (Some(2), Some(h2.as_str())));
    // A bad one (POST): counted as an error, nothing else moves.
    shunt.write_conf(&with_weight(3).replace("  server a", "  sever a"));
    assert_eq!(http_post(admin, "/reload", None, b"").0, 400);
    assert_eq!(read(), (1.0, 1.0, last1, 2.0, h2.clone()));
    // Another good one, a clock second later: the time moves forward.
    wait_for(T, "the clock to pass the last reload's second", || unix_now() > last1);
    shunt.write_conf(&with_weight(3));
    assert_eq!(http_post(admin, "/reload", None, b"").0, 200);
    let (ok, err, last2, generation, h3) = read();
    assert_eq!((ok, err, generation), (2.0, 1.0, 3.0));
    assert!(last2 > last1, "last success {last2}, before {last1}");
    assert!(h3 != h1 && h3 != h2, "{h3} vs {h1}, {h2}");
    // The hash is the settings' own: the first file again gives the first hash (a new generation).
    shunt.reload(&with_weight(1));
    wait_for(T, "the fourth reload", || read().0 == 3.0);
    let (_, _, _, generation, h4) = read();
    assert_eq!((generation, h4), (4.0, h1));
}
