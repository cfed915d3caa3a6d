//! A [`Config`] back to conf text (`GET /config`, and what `shunt --plan` compares against):
//! every setting spelled out, defaults included, so the text says exactly what runs. Parsing
//! the text gives the same value back (line numbers aside); server host names appear as the
//! addresses they resolved to, and secrets stay file names.

use super::{Check, CheckKind, Config, Server, Splice, StatusMatch, Tls, Verify};
use std::fmt::Write;
use std::time::Duration;

/// The conf text of `c`.
pub fn render(c: &Config) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# the running configuration, from {}", c.path.display());
    let _ = writeln!(o, "workers {}", c.workers);
    let _ = writeln!(o, "max_conns {}", c.max_conns);
    if let Some(a) = c.admin {
        let _ = writeln!(o, "admin {a}");
    }
    if let Some(u) = &c.user {
        let _ = writeln!(o, "user {u}");
    }
    if let Some(t) = &c.admin_token {
        let _ = writeln!(o, "admin_token {}", quote(t.as_os_str().as_encoded_bytes()));
    }
    let _ = writeln!(o, "drain_timeout {}", duration(c.drain_timeout));
    let _ = writeln!(o, "log {}", c.log_level.as_str().to_ascii_lowercase());
    o.push_str(&acl_lines(&c.acl, ""));
    o.push_str(&per_source_lines(&c.per_source, ""));
    for s in &c.services {
        let _ = writeln!(o, "\nservice {}", s.name);
        for b in &s.binds {
            let proxy = if b.accept_proxy { " accept_proxy" } else { "" };
            let defer = if b.defer_accept { " defer_accept" } else { "" };
            let _ = writeln!(o, "  bind {}{proxy}{defer}", b.addr);
        }
        let _ = writeln!(o, "  balance {}", s.balance.name());
        for v in &s.servers {
            let _ = write!(o, "  server {} {} weight {}", v.name, v.addr, v.weight);
            if v.backup {
                o.push_str(" backup");
            }
            if v.disabled {
                o.push_str(" disabled");
            }
            if let Some(m) = v.maxconn {
                let _ = write!(o, " maxconn {m}");
            }
            o.push_str(&server_tls_text(v));
            o.push('\n');
        }
        if let Some(line) = check(&s.check) {
            let _ = writeln!(o, "  {line}");
        }
        let _ = writeln!(o, "  retries {}", s.retries);
        let t = &s.timeouts;
        let _ = writeln!(o, "  timeout connect {}", duration(t.connect));
        let _ = writeln!(o, "  timeout idle {}", duration(t.idle));
        let _ = writeln!(o, "  timeout fin {}", duration(t.fin));
        let _ = writeln!(o, "  timeout handshake {}", duration(t.handshake));
        let _ = writeln!(o, "  timeout queue {}", duration(s.queue_timeout));
        if let Some(m) = s.max_conns {
            let _ = writeln!(o, "  max_conns {m}");
        }
        let splice = match s.splice {
            Splice::Auto => "on",
            Splice::Always => "always",
            Splice::Off => "off",
        };
        let _ = writeln!(o, "  splice {splice}");
        if s.on_down_close {
            o.push_str("  on_down close\n");
        }
        if let Some(tls) = &s.tls {
            o.push_str(&tls_lines(tls));
        }
        for r in &s.routes {
            let _ = writeln!(o, "  route sni {} {}", r.pattern, r.service);
        }
        o.push_str(&acl_lines(&s.acl, "  "));
        o.push_str(&per_source_lines(&s.per_source, "  "));
        if let Some(v) = s.proxy_protocol {
            let _ = writeln!(o, "  proxy_protocol {}", v.name());
        }
    }
    o
}

/// `allow`/`deny` lines, one rule each, in their order.
pub fn acl_lines(acl: &crate::acl::Acl, indent: &str) -> String {
    let mut o = String::new();
    for r in acl.rules() {
        let _ = writeln!(o, "{indent}{} {}", if r.allow { "allow" } else { "deny" }, r.net);
    }
    o
}

/// `max_conns_per_ip` and `rate_per_ip`, when set.
pub fn per_source_lines(p: &crate::limits::PerSource, indent: &str) -> String {
    let mut o = String::new();
    if let Some(n) = p.max_conns {
        let _ = writeln!(o, "{indent}max_conns_per_ip {n}");
    }
    if let Some(r) = p.rate {
        let unit = if r.per.as_secs() == 60 { "m" } else { "s" };
        let _ = writeln!(o, "{indent}rate_per_ip {}/{unit}", r.count);
    }
    o
}

/// A server line's TLS options (` tls ca FILE sni NAME`), or nothing for plain TCP.
pub fn server_tls_text(v: &Server) -> String {
    let Some(t) = &v.tls else {
        return String::new();
    };
    let mut o = " tls".to_string();
    match &t.verify {
        Verify::SystemRoots => {}
        Verify::Ca(file) => {
            let _ = write!(o, " ca {}", quote(file.as_os_str().as_encoded_bytes()));
        }
        Verify::Nothing => o.push_str(" verify none"),
    }
    if let Some(name) = &t.name {
        let _ = write!(o, " sni {name}");
    }
    o
}

/// A service's `tls` lines.
pub fn tls_lines(t: &Tls) -> String {
    let mut o = String::new();
    for c in &t.certs {
        let (cert, key) = (quote(c.cert.as_os_str().as_encoded_bytes()), quote(c.key.as_os_str().as_encoded_bytes()));
        let _ = writeln!(o, "  tls cert {cert} key {key}");
    }
    let versions: Vec<&str> = t.versions.iter().map(|v| v.name()).collect();
    let _ = writeln!(o, "  tls versions {}", versions.join(" "));
    if !t.alpn.is_empty() {
        let alpn: Vec<String> = t.alpn.iter().map(|p| quote(p.as_bytes())).collect();
        let _ = writeln!(o, "  tls alpn {}", alpn.join(" "));
    }
    if let Some((ca, _)) = &t.client_ca {
        let _ = writeln!(o, "  tls client_ca {}", quote(ca.as_os_str().as_encoded_bytes()));
    }
    o
}

/// The `check ...` line of `c` (`None` without a check).
pub fn check(c: &Check) -> Option<String> {
    let kind = match &c.kind {
        CheckKind::None => return None,
        CheckKind::Tcp => "tcp".to_string(),
        CheckKind::Send { send, expect } => format!("send {} expect {}", quote(send), quote(expect)),
        CheckKind::Http { method, path, expect } => {
            let status = match expect {
                StatusMatch::Exact(s) => s.to_string(),
                StatusMatch::Class(d) => format!("{d}xx"),
            };
            format!("http {method} {path} expect {status}")
        }
        CheckKind::Redis { role, password } => {
            let mut k = "redis".to_string();
            if let Some(r) = role {
                let _ = write!(k, " role {}", r.name());
            }
            if let Some(p) = password {
                let _ = write!(k, " password {}", quote(p.path.as_os_str().as_encoded_bytes()));
            }
            k
        }
        CheckKind::Pgsql { user, password, dbname, role } => {
            let mut k = format!("pgsql user {}", quote(user.as_bytes()));
            if let Some(p) = password {
                let _ = write!(k, " password {}", quote(p.path.as_os_str().as_encoded_bytes()));
            }
            if let Some(d) = dbname {
                let _ = write!(k, " dbname {}", quote(d.as_bytes()));
            }
            if let Some(r) = role {
                let _ = write!(k, " role {}", r.name());
            }
            k
        }
    };
    let mut line = format!(
        "check {kind} interval {} timeout {} rise {} fall {}",
        duration(c.interval),
        duration(c.timeout),
        c.rise,
        c.fall
    );
    if let Some(p) = c.port {
        let _ = write!(line, " port {p}");
    }
    Some(line)
}

/// In the largest unit that states it exactly: `250ms`, `2s`, `5m`, `1h`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_string(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// A quoted string the lexer reads back as exactly `bytes`.
fn quote(bytes: &[u8]) -> String {
    let mut o = String::from("\"");
    for &b in bytes {
        match b {
            b'"' => o.push_str("\\\""),
            b'\\' => o.push_str("\\\\"),
            b'\r' => o.push_str("\\r"),
            b'\n' => o.push_str("\\n"),
            b'\t' => o.push_str("\\t"),
            b' '..=b'~' => o.push(b as char),
            _ => {
                let _ = write!(o, "\\x{b:02x}");
            }
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_bytes;
    use std::path::Path;

    /// Line numbers differ between a file and its rendering; everything else must not.
    fn without_lines(mut c: Config) -> Config {
        c.path = "x".into();
        for s in &mut c.services {
            s.line = 0;
            if let Some(t) = &mut s.tls {
                t.line = 0;
                t.certs.iter_mut().for_each(|c| c.line = 0);
                if let Some((_, line)) = &mut t.client_ca {
                    *line = 0;
                }
            }
            s.binds.iter_mut().for_each(|b| b.line = 0);
            s.servers.iter_mut().for_each(|v| v.line = 0);
            s.check.line = 0;
        }
        c
    }

    fn round_trip(text: &str) {
        let c = parse_bytes(text.as_bytes(), Path::new("a.conf")).unwrap();
        let rendered = render(&c);
        let back = parse_bytes(rendered.as_bytes(), Path::new("b.conf"))
            .unwrap_or_else(|e| panic!("rendering does not parse: {e:?}\n{rendered}"));
        assert_eq!(without_lines(back), without_lines(c), "\n{rendered}");
    }

    #[test]
    fn every_setting_survives_a_round_trip() {
        round_trip(
            "workers 3\nmax_conns 500\nadmin [::1]:9090\nadmin_token \"/etc/a b#c\"\nuser www-data\ndrain_timeout 250ms\nlog debug\n\
             service web\n bind *:8080\n bind [::1]:8081 accept_proxy\n bind 0.0.0.0:8082 defer_accept\n server a 127.0.0.1:1 weight 0 backup disabled maxconn 7\n\
             server b [::1]:2\n check http HEAD /h?x=1 expect 2xx interval 5m timeout 1500ms rise 4 fall 5 port 99\n\
             retries 0\n timeout connect 1h\n timeout idle 90s\n timeout fin 2s\n timeout queue 0s\n max_conns 9\n splice off\n\
             timeout handshake 3s\n tls cert a.pem key \"b c.key\"\n tls cert d.pem key e.key\n tls versions 1.3\n\
             tls alpn h2 http/1.1\n tls client_ca ca.pem\n\
             service r\n bind 127.0.0.1:0\n server x 127.0.0.1:3\n check send \"PING\\r\\n\\x00\\\"\\\\\" expect \"+PONG\\xff\"\n\
             service t\n bind 127.0.0.1:0\n server x 127.0.0.1:3\n check tcp\n splice always\n on_down close\n\
             service k\n bind 127.0.0.1:0\n server x 127.0.0.1:3\n check redis role replica password \"/etc/r pw\" interval 1s\n\
             service k2\n bind 127.0.0.1:0\n server x 127.0.0.1:3\n check redis\n\
             service p\n bind 127.0.0.1:0\n server x 127.0.0.1:3\n check pgsql user \"shunt check\" password /p dbname postgres role standby\n",
        );
        for b in ["roundrobin", "leastconn", "first", "source"] {
            round_trip(&format!("service s\n bind 127.0.0.1:0\n balance {b}\n server x 127.0.0.1:3\n"));
        }
    }

    #[test]
    fn durations_take_the_largest_exact_unit() {
        let d = |ms| duration(Duration::from_millis(ms));
        assert_eq!(
            [d(0), d(250), d(2000), d(90_000), d(300_000), d(7_200_000)],
            ["0s", "250ms", "2s", "90s", "5m", "2h"]
        );
    }
}
