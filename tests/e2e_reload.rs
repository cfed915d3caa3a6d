//! Reload in place (issue 10): under load nothing fails and nothing is refused, an invalid file
//! changes nothing, a server the reload does not touch keeps its health, a removed server's live
//! stream finishes, `--plan` / dry run / `GET /config` say what a reload would do, a weight set
//! at run time lasts until the next reload, and systemd hears about all of it.

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// A conf with service `web` on 127.0.0.1:0 (kept by every reload: same spelling) in front of
/// `servers` (`NAME ADDR [options]` each).
fn web(servers: &[String], extra: &str) -> String {
    let mut c = format!("admin 127.0.0.1:0\nlog info\n{extra}service web\n  bind 127.0.0.1:0\n");
    for s in servers {
        c.push_str(&format!("  server {s}\n"));
    }
    c
}

fn reload_metric(admin: SocketAddr, result: &str) -> f64 {
    metric(&http_get(admin, "/metrics").1, &format!("shunt_reloads_total{{result=\"{result}\"}}"))
}

/// Which name server a new connection reached (it writes its name and closes; nothing is sent
/// to it, so it never closes on unread bytes, which would be a reset).
fn served_by(addr: SocketAddr) -> String {
    String::from_utf8(read_all(&mut connect(addr))).unwrap()
}

#[test]
fn thirty_reloads_under_load_fail_no_request_and_refuse_no_connection() {
    let backends: Vec<Nginx> = ["n1", "n2", "n3"].iter().map(|n| Nginx::start(n)).collect();
    let line = |i: usize, weight: u32| format!("{} {} weight {weight}", backends[i].name, backends[i].addr);
    let mut shunt = start_shunt(&web(&[line(0, 1), line(1, 1)], ""));
    let (addr, admin, pid) = (shunt.addr("web"), shunt.admin(), shunt.pid());
    let keepalive = Wrk::start(addr, false, Duration::from_secs(15));
    let close = Wrk::start(addr, true, Duration::from_secs(15));
    let checker = Checker::start(addr);
    // 30 reloads over 15 s: servers come and go, weights change; every third one through the
    // admin endpoint, the others through SIGHUP.
    let mut last = String::new();
    for i in 0..30usize {
        let servers = match i % 3 {
            0 => vec![line(0, 1), line(1, 2), line(2, 1)],
            1 => vec![line(0, 3), line(2, 1)],
            _ => vec![line(1, 1), line(0, 1 + (i % 4) as u32)],
        };
        last = web(&servers, "");
        if i % 3 == 2 {
            shunt.write_conf(&last);
            let (status, body) = http_post(admin, "/reload", None, b"");
            assert_eq!(status, 200, "reload {i}: {body}");
        } else {
            shunt.reload(&last);
        }
        wait_for(T, &format!("reload {i} taken"), || reload_metric(admin, "ok") == (i + 1) as f64);
        thread::sleep(Duration::from_millis(500)); // pacing: 30 reloads spread over the load
    }
    let (ka, ka_text) = keepalive.finish();
    let (cl, cl_text) = close.finish();
    let (checked, failures) = checker.finish();
    eprintln!(
        "30 reloads: keep-alive {} requests, Connection: close {} requests, checker {checked} requests",
        ka.requests, cl.requests
    );
    assert_eq!((ka.socket_errors, ka.non_2xx), (0, 0), "keep-alive:\n{ka_text}");
    assert_eq!((cl.socket_errors, cl.non_2xx), (0, 0), "Connection: close (a refused connect counts):\n{cl_text}");
    assert!(failures.is_empty(), "{} of {checked} checked requests failed: {failures:?}", failures.len());
    assert!(ka.requests > 1000 && cl.requests > 300 && checked > 100, "the load ran");
    assert_eq!(shunt.pid(), pid);
    assert!(shunt.is_running());
    // /status matches the last file: n2 weight 1, n1 weight 1 + 29 % 4.
    let status = status_json(admin);
    let servers = &status["services"][0]["servers"];
    let got: Vec<(String, u64)> = servers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["weight"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, vec![("n2".to_string(), 1), ("n1".to_string(), 2)], "{last}");
    assert_eq!(status["generation"], 31);
}

#[test]
fn an_invalid_file_by_sighup_or_post_changes_nothing_and_says_why() {
    let (a, b) = (name_server("a"), name_server("b"));
    let good = web(&[format!("a {}", a.addr)], "");
    let mut shunt = start_shunt(&good);
    let (addr, admin) = (shunt.addr("web"), shunt.admin());
    let bad = good.replace("  server a", "  server b 127.0.0.1:1 weight 999\n  sever a");
    shunt.reload(&bad);
    let logged = shunt.wait_log("reload: ", T);
    assert!(logged.contains("rejected"), "{logged}");
    shunt.wait_log("shunt.conf:5: server: weight", T);
    shunt.wait_log("shunt.conf:6: unknown directive \"sever\"", T);
    let (status, body) = http_post(admin, "/reload", None, b"");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("shunt.conf:5: server: weight") && body.contains("shunt.conf:6:"), "{body}");
    assert!(body.contains("the running configuration stays"), "{body}");
    assert_eq!(reload_metric(admin, "error"), 2.0);
    assert_eq!(status_json(admin)["generation"], 1);
    for _ in 0..5 {
        assert_eq!(served_by(addr), "a", "the old configuration still serves");
    }
    assert_eq!(b.accepted(), 0);
}

#[test]
fn a_down_server_stays_down_across_a_reload_that_does_not_touch_it() {
    let good = health_server("good", Arc::new(AtomicBool::new(true)));
    let healthy = Arc::new(AtomicBool::new(false));
    let sick = health_server("sick", healthy.clone());
    let check = "  check http GET /health expect 200 interval 100ms rise 2 fall 1\n";
    let conf = |w: u32| web(&[format!("good {} weight {w}", good.addr), format!("sick {}", sick.addr)], "") + check;
    let mut shunt = start_shunt(&conf(1));
    let (addr, admin) = (shunt.addr("web"), shunt.admin());
    shunt.wait_log("server web/sick is DOWN", T);
    shunt.reload(&conf(5));
    wait_for(T, "the reload", || reload_metric(admin, "ok") == 1.0);
    let served: Vec<String> = (0..40).map(|_| fetch(addr)).collect();
    assert!(served.iter().all(|r| r.contains("good")), "a request reached the down server: {served:?}");
    let status = status_json(admin);
    assert_eq!(status["services"][0]["servers"][1]["state"], "down", "{status}");
    assert_eq!(status["services"][0]["servers"][0]["weight"], 5);
    assert_eq!(shunt.log_lines("server web/sick is UP").len(), 0, "no fresh start for an untouched server");
    // It still comes back by its probes.
    healthy.store(true, Ordering::SeqCst);
    shunt.wait_log("server web/sick is UP", T);
}

#[test]
fn a_removed_servers_live_stream_finishes_byte_exact_and_new_connections_avoid_it() {
    const LEN: u64 = 200 << 20;
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let mut shunt = start_shunt(&web(&[format!("a {}", a.addr), format!("b {}", b.addr)], ""));
    let addr = shunt.addr("web");
    // Round robin: the first connection goes to a.
    let stream = connect(addr);
    wait_for(T, "the stream's server connection", || a.accepted() == 1);
    let transfer = thread::spawn(move || echo_transfer(stream, 5, LEN));
    wait_for(T, "bytes moving", || a.bytes_in() > 0);
    shunt.reload(&web(&[format!("b {}", b.addr)], ""));
    shunt.wait_log("reload: ", T);
    for i in 0..10u64 {
        echo_transfer(connect(addr), 100 + i, 1000).unwrap();
    }
    assert_eq!((a.accepted(), b.accepted()), (1, 10), "new connections go to b only");
    transfer.join().unwrap().unwrap_or_else(|e| panic!("the stream on the removed server: {e}"));
    let line = shunt.wait_log(" web/a ", T);
    assert!(line.contains(" -- ") && line.contains(&format!("up={LEN} down={LEN}")), "{line}");
}

#[test]
fn a_reload_binds_new_listeners_closes_removed_ones_and_keeps_the_others() {
    let a = EchoServer::start();
    // Listeners are matched by their spelling: the three binds use three loopback addresses.
    let two =
        |second: &str| format!("admin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  server a {}\n{second}", a.addr);
    let mut shunt = start_shunt(&two("service old\n  bind 127.0.0.2:0\n  server a 127.0.0.1:1\n"));
    let (web_addr, old_addr, admin) = (shunt.addr("web"), shunt.addr("old"), shunt.admin());
    // Held across the reload: a connection accepted by a listener that stays.
    let mut held = connect(web_addr);
    shunt.reload(&two("service fresh\n  bind 127.0.0.3:0\n  server a 127.0.0.1:1\n"));
    wait_for(T, "the reload", || reload_metric(admin, "ok") == 1.0);
    let status = status_json(admin);
    let fresh_addr: SocketAddr = status["services"][1]["listeners"][0].as_str().unwrap().parse().unwrap();
    assert_eq!(status["services"][0]["listeners"][0], web_addr.to_string(), "kept, same port");
    assert!(TcpStream::connect(old_addr).is_err(), "the removed listener is closed");
    assert!(TcpStream::connect(fresh_addr).is_ok(), "the new one listens");
    held.write_all(b"still here").unwrap();
    held.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_all(&mut held), b"still here", "a session of a kept listener goes on");
}

#[test]
fn plan_and_dry_run_say_what_a_reload_would_do_and_change_nothing() {
    let (a, b) = (name_server("a"), name_server("b"));
    let running = web(&[format!("a {}", a.addr), format!("b {}", b.addr)], "");
    let shunt = start_shunt(&running);
    let admin = shunt.admin();
    // The file on disk changes; `--plan` reads another one naming the same admin address.
    let next = web(&[format!("a {} weight 3", a.addr), format!("c {}", b.addr)], "")
        .replace("admin 127.0.0.1:0", &format!("admin {admin}"));
    let dir = TempDir::new("plan");
    let path = write_file(&dir, "next.conf", next.as_bytes());
    let out = Command::new(shunt_bin()).args(["--plan", "-c"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for want in ["~ server web/a: weight 1 -> 3", "+ server web/c: address", "- server web/b: its live sessions go on"]
    {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(text.lines().count(), 3, "{text}");
    // Invalid: every error, exit 1.
    let bad = write_file(&dir, "bad.conf", next.replace("weight 3", "weight x").as_bytes());
    let out = Command::new(shunt_bin()).args(["--plan", "-c"]).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.conf:"), "{out:?}");
    // The dry run plans the running process's own file.
    shunt.write_conf(&running.replace(&format!("b {}", b.addr), &format!("b {} backup", b.addr)));
    let (status, body) = http_post(admin, "/reload?dry_run=1", None, b"");
    assert_eq!(status, 200, "{body}");
    let plan: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(plan["changes"][0]["name"], "web/b");
    assert_eq!(plan["changes"][0]["fields"][0], "backup false -> true");
    assert_eq!(plan["changes"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(status_json(admin)["generation"], 1, "nothing changed");
    assert_eq!(reload_metric(admin, "ok"), 0.0);
}

#[test]
fn get_config_is_the_running_configuration_and_reloads_to_no_change() {
    let a = name_server("a");
    let shunt = start_shunt(&web(&[format!("a {} maxconn 9", a.addr)], "workers 2\n"));
    let admin = shunt.admin();
    let (status, text) = http_get(admin, "/config");
    assert_eq!(status, 200);
    for want in ["workers 2\n", "  server a ", " weight 1 maxconn 9\n", "  timeout fin 30s\n", "  splice on\n"] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    shunt.write_conf(&text);
    let (status, body) = http_post(admin, "/reload?dry_run=1", None, b"");
    assert_eq!((status, body.as_str()), (200, "{\"changes\":[],\"restart_needed\":[]}"));
}

#[test]
fn a_weight_set_at_run_time_lasts_until_the_next_reload() {
    let (a, b) = (name_server("a"), name_server("b"));
    let conf = web(&[format!("a {}", a.addr), format!("b {}", b.addr)], "");
    let mut shunt = start_shunt(&conf);
    let (addr, admin) = (shunt.addr("web"), shunt.admin());
    let (status, body) = http_post(admin, "/servers/web/a/weight/0", None, b"");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"weight\":0") && body.contains("\"previous\":1"), "{body}");
    let before = a.accepted();
    for _ in 0..10 {
        assert_eq!(served_by(addr), "b");
    }
    assert_eq!(a.accepted(), before, "weight 0: no new connection");
    assert_eq!(status_json(admin)["services"][0]["servers"][0]["weight"], 0);
    assert_eq!(http_post(admin, "/servers/web/a/weight/257", None, b"").0, 400);
    assert_eq!(http_post(admin, "/servers/web/zz/weight/1", None, b"").0, 404);
    shunt.reload(&conf);
    wait_for(T, "the reload", || reload_metric(admin, "ok") == 1.0);
    assert_eq!(status_json(admin)["services"][0]["servers"][0]["weight"], 1, "the file's weight again");
    wait_for(T, "a serves again", || served_by(addr) == "a");
}

#[test]
fn healthz_for_named_services_only() {
    let a = name_server("a");
    let conf = format!(
        "admin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  server a {}\n\
         service db-read\n  bind 127.0.0.1:0\n  server r 127.0.0.1:1\n  check tcp interval 100ms\n",
        a.addr
    );
    let mut shunt = start_shunt(&conf);
    let admin = shunt.admin();
    shunt.wait_log("server db-read/r is DOWN", T);
    assert_eq!(http_get(admin, "/healthz").0, 503, "every service: db-read has no server");
    assert_eq!(http_get(admin, "/healthz?service=web"), (200, "ok\n".to_string()));
    let (status, body) = http_get(admin, "/healthz?service=web,db-read");
    assert_eq!(status, 503);
    assert!(body.contains("db-read") && !body.contains("web"), "{body}");
    assert_eq!(http_get(admin, "/healthz?service=nope").0, 404);
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = TempDir::new("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(T)).unwrap();
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let a = name_server("a");
    let conf = web(&[format!("a {}", a.addr)], "");
    let mut shunt = spawn_shunt_with(&shunt_bin(), &conf, &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let ready = next();
    assert_eq!(ready, format!("READY=1\nMAINPID={}", shunt.pid()));
    shunt.wait_ready(&conf);
    shunt.reload(&conf);
    let reloading = next();
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    assert!(reloading["RELOADING=1\nMONOTONIC_USEC=".len()..].parse::<u64>().unwrap() > 0);
    assert_eq!(next(), "READY=1", "after the reload");
    shunt.signal(libc::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    assert!(shunt.wait_timeout(T).is_some_and(|s| s.success()));
}
