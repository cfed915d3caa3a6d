//! conf/nftables.conf for real: the seed's site in network namespaces (a client network, a
//! balancer running shunt on a virtual IP, a web server, a management network), the very ruleset
//! file loaded on the balancer and on the web server with the addresses set to the test's. A
//! client reaches the web server through shunt and is refused when it tries directly; the admin
//! port answers the management network and refuses the client network. Each refusal is first
//! shown to succeed without the ruleset, so the test cannot pass by a broken topology.
//!
//! ```text
//!   client 10.88.1.2 ── 10.88.1.1 (+ VIP 10.88.1.10)  lb  10.88.2.1 ── 10.88.2.2 web (nginx)
//!                                          10.88.3.1
//!   mgmt 10.88.3.2 ───────────────────────────┘
//! ```

mod common;

use common::netns::Netns;
use common::*;
use std::fs;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);
const ADMIN_PORT: u16 = 9090;

/// A veth pair from `a` (`a_if`, `a_ip`/24) to `b` (`eth0`, `b_ip`/24, default route via `a_ip`).
fn link(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_ip: &str) {
    a.exec_ok(&["ip", "link", "add", a_if, "type", "veth", "peer", "name", "eth0", "netns", &b.name]).unwrap();
    a.exec_ok(&["ip", "addr", "add", &format!("{a_ip}/24"), "dev", a_if]).unwrap();
    b.exec_ok(&["ip", "addr", "add", &format!("{b_ip}/24"), "dev", "eth0"]).unwrap();
    a.exec_ok(&["ip", "link", "set", a_if, "up"]).unwrap();
    b.exec_ok(&["ip", "link", "set", "eth0", "up"]).unwrap();
    b.exec_ok(&["ip", "route", "add", "default", "via", a_ip]).unwrap();
}

/// conf/nftables.conf with its address lines set to the test's site.
fn ruleset(web_port: u16) -> String {
    let text = fs::read_to_string(repo_root().join("conf/nftables.conf")).unwrap();
    let set = |text: String, name: &str, value: &str| {
        let line =
            text.lines().find(|l| l.starts_with(&format!("define {name} "))).unwrap_or_else(|| panic!("no {name}"));
        text.replace(line, &format!("define {name} = {value}"))
    };
    let text = set(text, "BALANCERS", "{ 10.88.1.1, 10.88.2.1, 10.88.3.1 }");
    let text = set(text, "VIP", "10.88.1.10");
    let text = set(text, "WEB_SERVERS", "{ 10.88.2.2 }");
    let text = set(text, "MGMT_NET", "10.88.3.0/24");
    let text = set(text, "SERVICE_PORTS", "{ 80 }");
    let text = set(text, "ADMIN_PORT", &ADMIN_PORT.to_string());
    set(text, "WEB_PORT", &web_port.to_string())
}

/// `curl URL` inside `ns`: Ok(body), or Err(curl's exit code and complaint).
fn curl_in(ns: &Netns, url: &str) -> Result<String, (i32, String)> {
    let out =
        ns.command(&["curl", "-sS", "--fail", "--connect-timeout", "5", "--max-time", "10", url]).output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).trim().to_string())),
    }
}

/// curl could not connect (its exit code 7): the firewall's reset refused it; a timeout, the
/// other way to fail, is exit code 28.
fn refused(result: Result<String, (i32, String)>, what: &str) {
    match result {
        Err((7, _)) => {}
        other => panic!("{what}: expected a refused connection, got {other:?}"),
    }
}

#[test]
fn the_site_ruleset_lets_in_only_what_each_machine_serves() {
    let (client, lb, web, mgmt) =
        (Netns::new().unwrap(), Netns::new().unwrap(), Netns::new().unwrap(), Netns::new().unwrap());
    link(&lb, "c0", "10.88.1.1", &client, "10.88.1.2");
    link(&lb, "w0", "10.88.2.1", &web, "10.88.2.2");
    link(&lb, "m0", "10.88.3.1", &mgmt, "10.88.3.2");
    lb.exec_ok(&["ip", "addr", "add", "10.88.1.10/24", "dev", "c0"]).unwrap();
    lb.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();

    let nginx = Nginx::start_opts(NginxOpts {
        name: "nginx-site",
        netns: Some(&web.name),
        listen_ip: "10.88.2.2".parse().unwrap(),
        ..NginxOpts::default()
    });
    let conf = format!(
        "log info\nadmin 0.0.0.0:{ADMIN_PORT}\nservice web\n  bind 10.88.1.10:80\n\
         \x20 check http GET /health expect 200 interval 200ms\n  server w {}\n",
        nginx.addr
    );
    let _shunt = start_shunt_wrapped(&["ip", "netns", "exec", &lb.name], &conf);
    let (direct, admin_lb) = (format!("http://{}/", nginx.addr), format!("http://10.88.1.1:{ADMIN_PORT}/healthz"));

    // Without the ruleset the client reaches everything: the web server and the admin port.
    wait_for(T, "the server up", || curl_in(&client, &admin_lb).is_ok());
    assert_eq!(curl_in(&client, &direct).as_deref(), Ok("nginx-site"));

    let rules = ruleset(nginx.addr.port());
    let file = TempDir::new("nft");
    fs::write(file.join("nftables.conf"), &rules).unwrap();
    let path = file.join("nftables.conf");
    for ns in [&lb, &web] {
        let out = ns.command(&["nft", "-f", path.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "nft -f in {}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
    }

    // Through shunt on the VIP: served. Straight to the web server: refused by its firewall.
    assert_eq!(curl_in(&client, "http://10.88.1.10/").as_deref(), Ok("nginx-site"));
    refused(curl_in(&client, &direct), "the client straight to the web server");
    // The admin port: refused from the client network, open to the management network.
    refused(curl_in(&client, &admin_lb), "the admin port from the client network");
    refused(curl_in(&client, &format!("http://10.88.1.10:{ADMIN_PORT}/healthz")), "the admin port on the VIP");
    assert_eq!(curl_in(&mgmt, &format!("http://10.88.3.1:{ADMIN_PORT}/healthz")).as_deref(), Ok("ok"));
    // Nor does the management network reach the web server past the balancer.
    refused(curl_in(&mgmt, &direct), "the management network straight to the web server");
    // Health checks still reach the web server from the balancer: it stays up.
    let status = curl_in(&mgmt, &format!("http://10.88.3.1:{ADMIN_PORT}/status")).unwrap();
    assert!(status.contains("\"state\":\"up\""), "{status}");
}
