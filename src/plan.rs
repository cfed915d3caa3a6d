//! What a reload would change: services, listeners and servers added, removed and changed
//! (with the fields that changed), global settings, and how many live sessions each change
//! touches. A pure function of the two configurations and the live counts, so the running
//! shunt (`POST /reload?dry_run=1`, JSON) and `shunt --plan` (text, from `GET /config` and
//! `GET /metrics`) compute the same plan.
//!
//! The identities are the reload's (see `Generation::build` and the supervisor): services by
//! name, servers by (service, name) with the address part of the identity, listeners by the
//! address as spelled.

use crate::admin::json_string;
use crate::config::{check_text, duration_text as dur, Bind, Config, ListenAddr, Server, Service};
use std::fmt::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Added,
    Removed,
    Changed,
}

impl What {
    fn word(self) -> &'static str {
        match self {
            What::Added => "added",
            What::Removed => "removed",
            What::Changed => "changed",
        }
    }
    fn sign(self) -> char {
        match self {
            What::Added => '+',
            What::Removed => '-',
            What::Changed => '~',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub what: What,
    /// `service`, `listener`, `server` or `global`.
    pub kind: &'static str,
    /// `web`, `web/web-01`, `127.0.0.1:8080`, `workers`.
    pub name: String,
    /// What changed, each as `field old -> new`; for an added or removed item, what it is.
    pub fields: Vec<String>,
    /// Live sessions the change touches: a removed server's go on to their end there, a changed
    /// service's keep the settings they started with.
    pub live_sessions: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Global settings a reload cannot apply (they need a restart or an upgrade).
    pub restart_needed: Vec<String>,
}

/// Live session counts, by name.
pub trait Live {
    fn service(&self, service: &str) -> u64;
    fn server(&self, service: &str, server: &str) -> u64;
}

/// What taking `new` in place of `old` would change.
pub fn diff(old: &Config, new: &Config, live: &impl Live) -> Plan {
    let mut plan = Plan { changes: globals(old, new), restart_needed: restart_needed(old, new) };
    for s in &new.services {
        match old.services.iter().find(|o| o.name == s.name) {
            None => plan.push(What::Added, "service", &s.name, vec![summary(s)], 0),
            Some(o) => {
                let fields = service_fields(o, s);
                if !fields.is_empty() {
                    plan.push(What::Changed, "service", &s.name, fields, live.service(&s.name));
                }
                servers(&mut plan, o, s, live);
            }
        }
    }
    for o in old.services.iter().filter(|o| !new.services.iter().any(|s| s.name == o.name)) {
        let why = "its live sessions go on to their end".to_string();
        plan.push(What::Removed, "service", &o.name, vec![why], live.service(&o.name));
    }
    listeners(&mut plan, old, new);
    plan
}

impl Plan {
    fn push(&mut self, what: What, kind: &'static str, name: &str, fields: Vec<String>, live_sessions: u64) {
        self.changes.push(Change { what, kind, name: name.to_string(), fields, live_sessions });
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// `POST /reload?dry_run=1`'s answer.
    pub fn to_json(&self) -> String {
        let mut o = String::from("{\"changes\":[");
        for (i, c) in self.changes.iter().enumerate() {
            let fields: Vec<String> = c.fields.iter().map(|f| json_string(f)).collect();
            let _ = write!(
                o,
                "{}{{\"change\":\"{}\",\"kind\":\"{}\",\"name\":{},\"fields\":[{}],\"live_sessions\":{}}}",
                if i > 0 { "," } else { "" },
                c.what.word(),
                c.kind,
                json_string(&c.name),
                fields.join(","),
                c.live_sessions
            );
        }
        let restart: Vec<String> = self.restart_needed.iter().map(|r| json_string(r)).collect();
        let _ = write!(o, "],\"restart_needed\":[{}]}}", restart.join(","));
        o
    }

    /// What `shunt --plan` prints: one line per change.
    pub fn to_text(&self) -> String {
        if self.changes.is_empty() {
            return "no change\n".to_string();
        }
        let mut o = String::new();
        for c in &self.changes {
            let _ = write!(o, "{} {} {}", c.what.sign(), c.kind, c.name);
            if !c.fields.is_empty() {
                let _ = write!(o, ": {}", c.fields.join("; "));
            }
            if c.live_sessions > 0 {
                let _ = write!(o, " ({} live session(s))", c.live_sessions);
            }
            o.push('\n');
        }
        o
    }
}

/// `bind 127.0.0.1:80, 2 servers, roundrobin`: what an added service is.
fn summary(s: &Service) -> String {
    let binds: Vec<String> = s.binds.iter().map(|b| b.addr.to_string()).collect();
    format!("bind {}, {} server(s), balance {}", binds.join(" "), s.servers.len(), s.balance.name())
}

fn service_fields(o: &Service, s: &Service) -> Vec<String> {
    let mut f = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            f.push(format!("{name} {a} -> {b}"));
        }
    };
    cmp("balance", o.balance.name().into(), s.balance.name().into());
    let check = |s: &Service| check_text(&s.check).unwrap_or_else(|| "none".into());
    cmp("check", check(o), check(s));
    cmp("retries", o.retries.to_string(), s.retries.to_string());
    cmp("timeout connect", dur(o.timeouts.connect), dur(s.timeouts.connect));
    cmp("timeout idle", dur(o.timeouts.idle), dur(s.timeouts.idle));
    cmp("timeout fin", dur(o.timeouts.fin), dur(s.timeouts.fin));
    cmp("timeout handshake", dur(o.timeouts.handshake), dur(s.timeouts.handshake));
    let tls =
        |s: &Service| s.tls.as_ref().map_or("none".into(), |t| crate::config::tls_lines(t).trim().replace('\n', ";"));
    cmp("tls", tls(o), tls(s));
    let routes = |s: &Service| {
        let r: Vec<String> = s.routes.iter().map(|r| format!("{} {}", r.pattern, r.service)).collect();
        if r.is_empty() {
            "none".to_string()
        } else {
            r.join("; ")
        }
    };
    cmp("route sni", routes(o), routes(s));
    let acl = |s: &Service| none_if_empty(crate::config::acl_lines(&s.acl, "").trim().replace('\n', "; "));
    cmp("allow/deny", acl(o), acl(s));
    let per =
        |s: &Service| none_if_empty(crate::config::per_source_lines(&s.per_source, "").trim().replace('\n', "; "));
    cmp("per-source limits", per(o), per(s));
    let pp = |s: &Service| s.proxy_protocol.map_or("none", |v| v.name()).to_string();
    cmp("proxy_protocol", pp(o), pp(s));
    cmp("timeout queue", dur(o.queue_timeout), dur(s.queue_timeout));
    let cap = |m: Option<usize>| m.map_or("none".into(), |m| m.to_string());
    cmp("max_conns", cap(o.max_conns), cap(s.max_conns));
    cmp("splice", format!("{:?}", o.splice).to_lowercase(), format!("{:?}", s.splice).to_lowercase());
    let on_down = |s: &Service| if s.on_down_close { "close" } else { "keep" }.to_string();
    cmp("on_down", on_down(o), on_down(s));
    f
}

fn servers(plan: &mut Plan, o: &Service, s: &Service, live: &impl Live) {
    let label = |v: &Server| format!("{}/{}", s.name, v.name);
    for v in &s.servers {
        match o.servers.iter().find(|w| w.name == v.name) {
            None => plan.push(What::Added, "server", &label(v), vec![format!("address {}", v.addr)], 0),
            Some(w) if w.addr != v.addr => {
                let why =
                    format!("address {} -> {} (a new server: its health and counters start afresh)", w.addr, v.addr);
                plan.push(What::Changed, "server", &label(v), vec![why], live.server(&o.name, &w.name));
            }
            Some(w) => {
                let mut f = Vec::new();
                let mut cmp = |name: &str, a: String, b: String| {
                    if a != b {
                        f.push(format!("{name} {a} -> {b}"));
                    }
                };
                cmp("weight", w.weight.to_string(), v.weight.to_string());
                cmp("backup", w.backup.to_string(), v.backup.to_string());
                cmp("disabled", w.disabled.to_string(), v.disabled.to_string());
                let cap = |m: Option<u32>| m.map_or("none".into(), |m| m.to_string());
                cmp("maxconn", cap(w.maxconn), cap(v.maxconn));
                let tls = |v: &Server| crate::config::server_tls_text(v).trim().to_string();
                cmp("tls", tls(w), tls(v));
                if !f.is_empty() {
                    plan.push(What::Changed, "server", &label(v), f, live.server(&o.name, &w.name));
                }
            }
        }
    }
    for w in o.servers.iter().filter(|w| !s.servers.iter().any(|v| v.name == w.name)) {
        let why = "its live sessions go on to their end".to_string();
        plan.push(What::Removed, "server", &label(w), vec![why], live.server(&o.name, &w.name));
    }
}

/// Every bind as (service, address, ordinal among binds spelled the same, the bind), in file
/// order.
fn binds(c: &Config) -> Vec<(&str, ListenAddr, usize, &Bind)> {
    let mut out: Vec<(&str, ListenAddr, usize, &Bind)> = Vec::new();
    for s in &c.services {
        for b in &s.binds {
            let ordinal = out.iter().filter(|(_, a, _, _)| *a == b.addr).count();
            out.push((&s.name, b.addr, ordinal, b));
        }
    }
    out
}

fn listeners(plan: &mut Plan, old: &Config, new: &Config) {
    let (before, after) = (binds(old), binds(new));
    for &(service, addr, ordinal, bind) in &after {
        let Some(&(was, _, _, was_bind)) = before.iter().find(|(_, a, n, _)| *a == addr && *n == ordinal) else {
            plan.push(What::Added, "listener", &addr.to_string(), vec![format!("service {service}")], 0);
            continue;
        };
        let mut fields = Vec::new();
        if was != service {
            fields.push(format!("service {was} -> {service}"));
        }
        let on = |p: bool| if p { "on" } else { "off" };
        for (option, then, now) in [
            ("accept_proxy", was_bind.accept_proxy, bind.accept_proxy),
            ("defer_accept", was_bind.defer_accept, bind.defer_accept),
        ] {
            if then != now {
                fields.push(format!("{option} {} -> {} for new connections", on(then), on(now)));
            }
        }
        if !fields.is_empty() {
            plan.push(What::Changed, "listener", &addr.to_string(), fields, 0);
        }
    }
    for &(service, addr, ordinal, _) in &before {
        if !after.iter().any(|(_, a, n, _)| *a == addr && *n == ordinal) {
            let why = format!("service {service}; sessions it accepted go on");
            plan.push(What::Removed, "listener", &addr.to_string(), vec![why], 0);
        }
    }
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() {
        "none".to_string()
    } else {
        s
    }
}

fn globals(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    let mut cmp = |name: &str, a: String, b: String| {
        if a != b {
            let restart = RESTART_NEEDED.contains(&name);
            let mut fields = vec![format!("{a} -> {b}")];
            if restart {
                fields.push("needs a restart or an upgrade".to_string());
            }
            out.push(Change { what: What::Changed, kind: "global", name: name.to_string(), fields, live_sessions: 0 });
        }
    };
    // Port 0 asks for any port: the same address as the one it got, not a change.
    let any_port = |a: Option<std::net::SocketAddr>, b: Option<std::net::SocketAddr>| match (a, b) {
        (Some(a), Some(b)) if a.ip() == b.ip() && (a.port() == 0 || b.port() == 0) => Some(b),
        _ => a,
    };
    let admin = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
    let token = |t: &Option<std::path::PathBuf>| t.as_ref().map_or("none".into(), |t| t.display().to_string());
    cmp("workers", old.workers.to_string(), new.workers.to_string());
    cmp("max_conns", old.max_conns.to_string(), new.max_conns.to_string());
    cmp("admin", admin(any_port(old.admin, new.admin)), admin(new.admin));
    cmp("admin_token", token(&old.admin_token), token(&new.admin_token));
    cmp("user", old.user.clone().unwrap_or("none".into()), new.user.clone().unwrap_or("none".into()));
    cmp("drain_timeout", dur(old.drain_timeout), dur(new.drain_timeout));
    cmp("log", old.log_level.to_string(), new.log_level.to_string());
    let acl = |c: &Config| none_if_empty(crate::config::acl_lines(&c.acl, "").trim().replace('\n', "; "));
    cmp("allow/deny", acl(old), acl(new));
    let per = |c: &Config| none_if_empty(crate::config::per_source_lines(&c.per_source, "").trim().replace('\n', "; "));
    cmp("per-source limits", per(old), per(new));
    out
}

/// Global settings a reload cannot change in a running process.
const RESTART_NEEDED: &[&str] = &["workers", "admin", "log", "user"];

/// The global settings that changed but need a restart (or an upgrade), as messages.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    globals(old, new)
        .into_iter()
        .filter(|c| RESTART_NEEDED.contains(&c.name.as_str()))
        .map(|c| format!("{} {} needs a restart or an upgrade", c.name, c.fields[0]))
        .collect()
}

/// Live counts read from a running shunt's `/metrics`.
#[derive(Debug, Default)]
pub struct Scraped {
    services: Vec<(String, u64)>,
    servers: Vec<(String, String, u64)>,
}

impl Scraped {
    /// Reads the active-connection gauges out of Prometheus text.
    pub fn parse(metrics: &str) -> Scraped {
        let mut out = Scraped::default();
        for line in metrics.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(n) = value.parse::<f64>() else { continue };
            let label = |key: &str| {
                let start = series.find(&format!("{key}=\""))? + key.len() + 2;
                Some(series[start..].split('"').next()?.to_string())
            };
            if series.starts_with(crate::metrics::names::SERVICE_ACTIVE) {
                if let Some(s) = label("service") {
                    out.services.push((s, n as u64));
                }
            } else if series.starts_with(crate::metrics::names::SERVER_ACTIVE) {
                if let (Some(s), Some(v)) = (label("service"), label("server")) {
                    out.servers.push((s, v, n as u64));
                }
            }
        }
        out
    }
}

impl Live for Scraped {
    fn service(&self, service: &str) -> u64 {
        self.services.iter().find(|(s, _)| s == service).map_or(0, |(_, n)| *n)
    }
    fn server(&self, service: &str, server: &str) -> u64 {
        self.servers.iter().find(|(s, v, _)| s == service && v == server).map_or(0, |(_, _, n)| *n)
    }
}

/// `GET path` from a running shunt's admin endpoint: the body of a `200` answer.
pub fn fetch(admin: std::net::SocketAddr, path: &str) -> Result<String, String> {
    use std::io::{Read, Write as _};
    let limit = std::time::Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&admin, limit)
        .map_err(|e| format!("cannot reach the running shunt's admin endpoint {admin}: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {admin}\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("reading {path} from {admin}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{admin}{path}: not an HTTP answer"))?;
    match head.split_whitespace().nth(1) {
        Some("200") => Ok(body.to_string()),
        status => Err(format!("{admin}{path} answered {}", status.unwrap_or("nothing"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_bytes;
    use std::path::Path;

    struct Counts;
    impl Live for Counts {
        fn service(&self, service: &str) -> u64 {
            service.len() as u64
        }
        fn server(&self, _: &str, server: &str) -> u64 {
            10 + server.len() as u64
        }
    }

    fn conf(text: &str) -> Config {
        parse_bytes(text.as_bytes(), Path::new("t.conf")).unwrap()
    }

    #[test]
    fn live_counts_come_from_the_active_gauges() {
        let m = "# HELP x\nshunt_service_active_connections{service=\"web\"} 5\n\
                 shunt_server_active_connections{service=\"web\",server=\"a\"} 3\n\
                 shunt_server_connections_total{service=\"web\",server=\"a\"} 99\n";
        let live = Scraped::parse(m);
        assert_eq!((live.service("web"), live.server("web", "a"), live.server("web", "b")), (5, 3, 0));
    }

    #[test]
    fn nothing_changed_is_an_empty_plan() {
        let c = conf("service a\n bind 127.0.0.1:1000\n server x 127.0.0.1:1\n");
        let plan = diff(&c, &c.clone(), &Counts);
        assert!(plan.is_empty());
        assert_eq!(plan.to_text(), "no change\n");
    }

    #[test]
    fn every_kind_of_change_is_named_with_its_live_sessions() {
        let old = conf(
            "workers 1\nservice web\n bind 127.0.0.1:1000\n bind 127.0.0.1:1001\n server a 127.0.0.1:1\n server b 127.0.0.1:2\n\
             server c 127.0.0.1:3\nservice gone\n bind 127.0.0.1:1002\n server z 127.0.0.1:9\n",
        );
        let new = conf(
            "workers 2\nservice web\n balance leastconn\n bind 127.0.0.1:1000 accept_proxy defer_accept\n bind 127.0.0.1:1003\n\
             server a 127.0.0.1:1 weight 3\n server b 127.0.0.1:22\n server d 127.0.0.1:4\nservice fresh\n\
             bind 127.0.0.1:1002\n server y 127.0.0.1:8\n",
        );
        let plan = diff(&old, &new, &Counts);
        let text = plan.to_text();
        for line in [
            "~ global workers: 1 -> 2; needs a restart or an upgrade\n",
            "~ service web: balance roundrobin -> leastconn (3 live session(s))\n",
            "~ server web/a: weight 1 -> 3 (11 live session(s))\n",
            "~ server web/b: address 127.0.0.1:2 -> 127.0.0.1:22 (a new server: its health and counters start afresh) (11 live session(s))\n",
            "+ server web/d: address 127.0.0.1:4\n",
            "- server web/c: its live sessions go on to their end (11 live session(s))\n",
            "+ service fresh: bind 127.0.0.1:1002, 1 server(s), balance roundrobin\n",
            "- service gone: its live sessions go on to their end (4 live session(s))\n",
            "+ listener 127.0.0.1:1003: service web\n",
            "~ listener 127.0.0.1:1002: service gone -> fresh\n",
            "- listener 127.0.0.1:1001: service web; sessions it accepted go on\n",
            "~ listener 127.0.0.1:1000: accept_proxy off -> on for new connections; defer_accept off -> on for new \
             connections\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.lines().count(), 12, "{text}");
        assert_eq!(plan.restart_needed, vec!["workers 1 -> 2 needs a restart or an upgrade"]);
        let json: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
        assert_eq!(json["changes"].as_array().unwrap().len(), 12);
        assert_eq!(json["changes"][2]["name"], "web/a");
        assert_eq!(json["changes"][2]["live_sessions"], 11);
    }
}
