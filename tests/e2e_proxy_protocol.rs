//! `proxy_protocol v1|v2` towards servers, read by a real reader: nginx `listen …
//! proxy_protocol`, which answers `GET /pp` with the address and port the header carried.
//! Clients come from real source addresses (127.0.0.N, and ::1), and health probes send a
//! header without a client (v1 `UNKNOWN`, v2 `LOCAL`) that nginx takes.

mod common;

use common::haproxy::HaproxyReader;
use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);

/// `curl http://ADDR/pp` from source address `from`: the body.
fn pp_from(from: IpAddr, addr: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--interface", &from.to_string()])
        .arg(format!("http://{}/pp", addr))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn check(version: &str) {
    let nginx = Nginx::start_opts(NginxOpts { name: "nginx-pp", proxy_protocol: true, ..NginxOpts::default() });
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  bind [::1]:0\n  proxy_protocol {version}\n\
         \x20 check http GET /health expect 200 interval 200ms\n  server n {}\n",
        nginx.addr
    );
    let mut shunt = start_shunt(&conf);
    let (v4, v6) = (shunt.addrs("web")[0], shunt.addrs("web")[1]);
    // The probe's header without a client: nginx takes it and answers the check.
    wait_for(T, "the server to be up through its PROXY-reading listener", || {
        let status = status_json(shunt.admin());
        status["services"][0]["servers"][0]["state"] == "up"
            && status["services"][0]["servers"][0]["checks"].as_u64() > Some(1)
    });
    for n in [5u8, 9] {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
        let body = pp_from(from, v4);
        let (addr, port) = body.split_once(' ').unwrap_or_else(|| panic!("{version}: {body:?}"));
        assert_eq!(addr, from.to_string(), "{version}: the header carries the client's address");
        assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "{version}: {body}");
    }
    assert_eq!(pp_from("::1".parse().unwrap(), v6).split(' ').next(), Some("::1"), "{version} over IPv6");
    let sessions = shunt.wait_all_logged(T);
    assert_eq!(sessions.len(), 3);
    // The port in the header is the client's own: the one shunt logged for it.
    assert!(sessions.iter().all(|s| s.code == "--"), "{sessions:#?}");
}

#[test]
fn v1_headers_carry_each_clients_address_to_nginx() {
    check("v1");
}

#[test]
fn v2_headers_carry_each_clients_address_to_nginx() {
    check("v2");
}

#[test]
fn haproxy_accept_proxy_reads_v1_and_v2_headers() {
    let reader = HaproxyReader::start();
    let conf = format!(
        "log info\nadmin 127.0.0.1:0\n\
         service one\n  bind 127.0.0.1:0\n  proxy_protocol v1\n  server h {addr}\n\
         service two\n  bind 127.0.0.1:0\n  proxy_protocol v2\n  server h {addr}\n",
        addr = reader.addr
    );
    let mut shunt = start_shunt(&conf);
    for (service, n) in [("one", 6u8), ("two", 7)] {
        let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, n));
        let body = pp_from(from, shunt.addr(service));
        assert_eq!(body.split(' ').next(), Some(from.to_string().as_str()), "{service}: {body}");
    }
    assert_eq!(shunt.wait_all_logged(T).len(), 2);
}
