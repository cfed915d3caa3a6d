//! `bind ADDR accept_proxy`: clients that start with a PROXY header, as they do behind another
//! load balancer. HAProxy (`send-proxy`, `send-proxy-v2`) sits in front of shunt; the address its
//! header carries must replace the peer's for the access rules, the per-source limits, the log
//! and the header shunt sends on (read by HAProxy `accept-proxy`). Headers that are malformed,
//! cut short, too long or late close that connection, counted by reason, and never another.

mod common;

use common::certs::{Ca, KeyKind};
use common::haproxy::{HaproxyReader, HaproxySender};
use common::tls::curl_https;
use common::*;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// `curl http://ADDR/` from source address `from`: the body, or curl's complaint.
fn get_from(from: IpAddr, addr: SocketAddr) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--interface", &from.to_string()])
        .arg(format!("http://{addr}/"))
        .output()
        .expect("run curl");
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).to_string()),
    }
}

fn proxy_metrics(shunt: &Shunt) -> (f64, [f64; 4]) {
    let m = http_get(shunt.admin(), "/metrics").1;
    let failed = ["timeout", "truncated", "malformed", "too_long"]
        .map(|reason| metric(&m, &format!("shunt_proxy_header_failures_total{{service=\"web\",reason=\"{reason}\"}}")));
    (metric(&m, "shunt_proxy_headers_total{service=\"web\"}"), failed)
}

fn v4(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// HAProxy in front (v1 and v2) and behind (reading shunt's own header): the client's address
/// goes all the way through, and `deny` applies to it, not to HAProxy's address.
fn through_haproxy(send: &str) {
    let reader = HaproxyReader::start();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0 accept_proxy\n  deny 127.0.0.9/32\n\
         \x20 proxy_protocol v2\n  server h {}\n",
        reader.addr
    );
    let mut shunt = start_shunt(&conf);
    let front = HaproxySender::start(shunt.addr("web"), send);
    for n in [5u8, 7] {
        let body = get_from(v4(n), front.addr).unwrap_or_else(|e| panic!("{send} from 127.0.0.{n}: {e}"));
        assert_eq!(body.split(' ').next(), Some(v4(n).to_string().as_str()), "{send}: {body}");
    }
    // HAProxy connects from 127.0.0.1; the rule names the client behind it.
    assert!(get_from(v4(9), front.addr).is_err(), "{send}: a denied client got an answer");
    let m = http_get(shunt.admin(), "/metrics").1;
    assert_eq!(metric(&m, "shunt_service_refused_total{service=\"web\",reason=\"acl\"}"), 1.0);
    let sessions = shunt.wait_all_logged(T);
    let clients: Vec<IpAddr> = sessions.iter().map(|s| s.client.ip()).collect();
    assert_eq!(clients, vec![v4(5), v4(7), v4(9)], "{sessions:#?}");
    assert_eq!(sessions[2].code, "PH", "refused once its header named it: {sessions:#?}");
    assert_eq!(proxy_metrics(&shunt), (3.0, [0.0; 4]));
}

#[test]
fn haproxy_send_proxy_v1_client_address_reaches_acls_logs_and_the_next_header() {
    through_haproxy("send-proxy");
}

#[test]
fn haproxy_send_proxy_v2_client_address_reaches_acls_logs_and_the_next_header() {
    through_haproxy("send-proxy-v2");
}

#[test]
fn per_source_limits_count_the_carried_address() {
    let echo = EchoServer::start();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0 accept_proxy\n  max_conns_per_ip 1\n  server e {}\n",
        echo.addr
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");
    // Two clients behind one proxy address: each gets its one connection...
    let mut a = connect(addr);
    a.write_all(b"PROXY TCP4 192.0.2.1 10.0.0.1 1000 80\r\nhello").unwrap();
    let mut b = connect(addr);
    b.write_all(b"PROXY TCP4 192.0.2.2 10.0.0.1 1000 80\r\nhello").unwrap();
    for s in [&mut a, &mut b] {
        let mut got = [0u8; 5];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello", "the bytes after the header reach the server, the header does not");
    }
    // ...and a second one for the first client is refused.
    let mut c = connect(addr);
    c.write_all(b"PROXY TCP4 192.0.2.1 10.0.0.1 1001 80\r\nhello").unwrap();
    assert!(closed_within(&mut c, T).is_some(), "refused");
    let status = status_json(shunt.admin());
    assert_eq!(status["services"][0]["refused"]["per_ip"], 1, "{status}");
    drop((a, b));
    let sessions = shunt.wait_all_logged(T);
    let mut clients: Vec<String> = sessions.iter().map(|s| format!("{} {}", s.client.ip(), s.code)).collect();
    clients.sort();
    assert_eq!(clients, ["192.0.2.1 --", "192.0.2.1 PH", "192.0.2.2 --"], "{sessions:#?}");
    wait_for(T, "every per-source connection given back", || {
        let m = http_get(shunt.admin(), "/metrics").1;
        metric(&m, "shunt_per_ip_live_connections{scope=\"web\"}") == 0.0
    });
}

#[test]
fn bad_headers_close_their_connection_only_counted_by_reason() {
    let echo = EchoServer::start();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0 accept_proxy\n  timeout handshake 1s\n  server e {}\n",
        echo.addr
    );
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");
    let fds0 = shunt.fd_count();
    // A good session streams through all of it.
    let mut live = connect(addr);
    live.write_all(b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n").unwrap();
    let live_stream = std::thread::spawn(move || echo_transfer(live, 11, 64 << 20));

    let mut too_long = b"PROXY UNKNOWN ".to_vec();
    too_long.resize(300, b'x');
    let mut v2_too_long = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    v2_too_long.extend_from_slice(&4000u16.to_be_bytes());
    let bad: [(&str, &[u8], usize); 5] = [
        ("no header", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 2),
        ("a bad address", b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", 2),
        ("a v1 line without its CRLF", &too_long, 3),
        ("a v2 length past the bound", &v2_too_long, 3),
        ("TLS instead", &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], 2),
    ];
    for (what, bytes, _) in bad {
        let mut s = connect(addr);
        s.write_all(bytes).unwrap();
        assert!(closed_within(&mut s, T).is_some(), "{what}: the connection was not closed");
    }
    // Cut short: half a header, then the client's FIN.
    let mut cut = connect(addr);
    cut.write_all(b"PROXY TCP4 192.0.2.1 10.0").unwrap();
    cut.shutdown(Shutdown::Write).unwrap();
    assert!(closed_within(&mut cut, T).is_some(), "a truncated header was not closed");
    // Late: a slowloris that sends a byte and waits.
    let start = Instant::now();
    let mut late = connect(addr);
    late.write_all(b"PRO").unwrap();
    assert!(closed_within(&mut late, T).is_some(), "a late header was not closed");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900), "closed after {waited:?}, before timeout handshake");

    live_stream.join().unwrap().expect("the good session, byte-exact, through all of it");
    let sessions = shunt.wait_all_logged(T);
    let codes = count_codes(&sessions);
    let want: Vec<(String, usize)> = vec![("--".into(), 1), ("CH".into(), 1), ("HH".into(), 5), ("TH".into(), 1)];
    assert_eq!(codes.into_iter().collect::<Vec<_>>(), want, "{sessions:#?}");
    let good = sessions.iter().find(|s| s.code == "--").unwrap();
    assert_eq!(good.client, "[2001:db8::7]:4000".parse().unwrap(), "the carried address is logged");
    let malformed = bad.iter().filter(|b| b.2 == 2).count() as f64;
    assert_eq!(proxy_metrics(&shunt), (1.0, [1.0, 1.0, malformed, 2.0]));
    assert_eq!(echo.accepted(), 1, "no server connection for a client without a good header");
    wait_for(T, "no session left", || status_json(shunt.admin())["active_connections"] == 0);
    // The fault suite's invariants: nothing half-closed left, descriptors back (pooled pipes aside).
    assert_eq!(shunt.sockets_in_state("CLOSE_WAIT"), 0);
    wait_for(T, "descriptors back", || shunt.fd_count() <= fds0 + 4);
}

#[test]
fn tls_after_the_header_and_a_v2_header_with_tlvs() {
    let mut ca = Ca::new("pp-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let nginx = Nginx::start("nginx-accept-proxy");
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0 accept_proxy\n  tls cert {} key {}\n  server n {}\n",
        cert.cert.display(),
        cert.key.display(),
        nginx.addr
    );
    let mut shunt = start_shunt(&conf);
    // HAProxy's v2 header carries TLVs (unique id, ALPN...) when asked; in TCP mode it adds none,
    // so one is sent by hand below. TLS starts right after the header.
    let front = HaproxySender::start(shunt.addr("web"), "send-proxy-v2");
    let body =
        curl_https(front.addr, "localhost", "/", &ca.cert, &["--interface", "127.0.0.3"]).expect("https through it");
    assert!(!body.is_empty());

    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    let tlvs = [0x01, 0, 2, b'h', b'2', 0x05, 0, 4, 1, 2, 3, 4]; // ALPN "h2", a unique id
    header.extend_from_slice(&(12 + tlvs.len() as u16).to_be_bytes());
    header.extend_from_slice(&[192, 0, 2, 44, 10, 0, 0, 1, 0x13, 0x88, 0x01, 0xbb]);
    header.extend_from_slice(&tlvs);
    let config = common::tls::client_config(&ca.cert, &[], None);
    let mut tcp = connect(shunt.addr("web"));
    tcp.write_all(&header).unwrap();
    let mut tls = common::tls::tls_over(tcp, "localhost", &config).expect("handshake after a v2 header with TLVs");
    tls.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    drop(tls);

    let sessions = shunt.wait_all_logged(T);
    let clients: Vec<String> = sessions.iter().map(|s| s.client.to_string()).collect();
    assert_eq!(clients.len(), 2, "{sessions:#?}");
    assert!(clients[0].starts_with("127.0.0.3:"), "{clients:?}");
    assert_eq!(clients[1], "192.0.2.44:5000");
    assert!(sessions.iter().all(|s| s.raw.contains(" tls=1.3")), "{sessions:#?}");
}
