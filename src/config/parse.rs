//! Conf-file bytes → a validated [`Config`]. Owns the grammar, the defaults, and the checks that
//! need the whole file (services without binds or servers, listen-address conflicts).
//!
//! Stage one is `lexer` (tokens per line, and the forms a single value takes); stage two, here,
//! gives directives their meaning (STYLE.md 4.9). An error never stops the walk: the file is
//! rejected with every error found, in line order, each as `FILE:LINE: keyword: message` telling
//! how to fix it. Server host names are resolved here, once per load, so nothing downstream ever
//! sees a name or a string.

use crate::acl::{Acl, Cidr, Rule};
use crate::limits::{PerSource, Rate};
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::slice;
use std::time::Duration;

use super::lexer::{
    self, admin_addr, check_name, duration, is_hostname, listen_addr, not_ip, number, parse_ip, show, Line, Token,
};
use super::{
    Balance, Bind, Check, Config, ConfigError, ListenAddr, Server, ServerTls, Service, Splice, Timeouts, Verify,
};

const GLOBAL_ONLY: &[&str] = &["workers", "admin", "admin_token", "drain_timeout", "log", "user"];
/// Directives that are global before the first service and the service's own inside one.
const BOTH: &[&str] = &["max_conns", "allow", "deny", "max_conns_per_ip", "rate_per_ip"];
const SERVICE_ONLY: &[&str] = &[
    "bind",
    "balance",
    "server",
    "check",
    "retries",
    "timeout",
    "splice",
    "tls",
    "route",
    "proxy_protocol",
    "on_down",
];
const SERVER_OPTIONS: &[&str] = &["weight", "backup", "disabled", "maxconn", "tls", "ca", "verify", "sni"];
const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];
const BALANCES: &[&str] = &["roundrobin", "leastconn", "first", "source", "maglev"];

// Upper bounds catch typos (an extra zero) before they become a thread or memory storm; none of
// them limits a real deployment. MAX_WEIGHT is DESIGN.md's.
const MAX_WORKERS: u64 = 256;
const MAX_WEIGHT: u64 = super::MAX_WEIGHT as u64;
const MAX_RETRIES: u64 = 100;
/// Connection caps: `Server::maxconn` is a `u32`.
const MAX_COUNT: u64 = u32::MAX as u64;

pub(super) type Res<T> = Result<T, String>;

/// Reads `path` and parses it; an unreadable file is one error on line 0.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_bytes(&bytes, path).and_then(|mut c| {
            super::secrets::read(&mut c)?;
            Ok(c)
        }),
        Err(e) => Err(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read the conf file: {e}"),
        }]),
    }
}

/// Parses conf-file bytes read from `file` (named in messages). Never panics; on failure returns
/// every error found, sorted by line.
pub fn parse_bytes(bytes: &[u8], file: &Path) -> Result<Config, Vec<ConfigError>> {
    parse_with(bytes, file, resolve)
}

/// `parse_bytes` without the resolver: a server host name is checked as usual but stands for
/// 127.0.0.1. For the fuzzer and its corpus replay, whose made-up names must not become DNS
/// queries (slow, and traffic that leaves the machine).
pub fn parse_bytes_offline(bytes: &[u8], file: &Path) -> Result<Config, Vec<ConfigError>> {
    parse_with(bytes, file, |_, port| Ok(SocketAddr::from(([127, 0, 0, 1], port))))
}

/// How a server host name (already checked by `is_hostname`) and port become an address.
type Resolver = fn(&str, u16) -> Res<SocketAddr>;

fn parse_with(bytes: &[u8], file: &Path, resolve: Resolver) -> Result<Config, Vec<ConfigError>> {
    let mut p = Parser {
        cfg: Config {
            path: file.to_path_buf(),
            workers: 1,
            max_conns: super::DEFAULT_MAX_CONNS,
            admin: None,
            admin_token: None,
            user: None,
            drain_timeout: Duration::from_secs(30),
            log_level: log::LevelFilter::Info,
            services: Vec::new(),
            acl: Acl::default(),
            per_source: PerSource::default(),
        },
        acl: Vec::new(),
        seen: Vec::new(),
        blocks: Vec::new(),
        errors: Vec::new(),
        resolve,
    };
    for line in lexer::lex(bytes) {
        p.line(&line);
    }
    p.finish()
}

/// Where each singleton directive (or server name, as `server NAME`) was first given, to report a
/// second one.
pub(super) type Seen = Vec<(String, usize)>;

struct Parser {
    /// Globals filled in place; `services` stays empty until `finish`.
    cfg: Config,
    /// Global `allow`/`deny` rules, compiled at `finish`.
    acl: Vec<Rule>,
    seen: Seen,
    blocks: Vec<Block>,
    errors: Vec<(usize, String)>,
    resolve: Resolver,
}

/// A service being read.
struct Block {
    svc: Service,
    /// The service's `allow`/`deny` rules, compiled at `finish`.
    acl: Vec<Rule>,
    seen: Seen,
    /// False when the `service` line itself was wrong: whole-file checks then skip the block, since
    /// they would only echo that error.
    named: bool,
    /// Any `bind` line, valid or not, so "no bind" never echoes an error already reported.
    any_bind: bool,
    any_server: bool,
    /// Any `route` line, valid or not: a front service may have no server of its own.
    any_route: bool,
    /// A `tls` line had an error: "no certificate" would only echo it.
    tls_broken: bool,
}

impl Block {
    fn new(name: String, line: usize) -> Block {
        Block {
            svc: Service {
                name,
                line,
                binds: Vec::new(),
                balance: Balance::default(),
                servers: Vec::new(),
                check: Check::default(),
                retries: 3,
                timeouts: Timeouts::default(),
                max_conns: None,
                queue_timeout: Duration::from_secs(5),
                splice: Splice::Auto,
                on_down_close: false,
                tls: None,
                routes: Vec::new(),
                acl: Acl::default(),
                per_source: PerSource::default(),
                proxy_protocol: None,
            },
            acl: Vec::new(),
            seen: Vec::new(),
            named: false,
            any_bind: false,
            any_server: false,
            any_route: false,
            tls_broken: false,
        }
    }
}

pub(super) fn once(seen: &mut Seen, key: &str, line: usize) -> Res<()> {
    match seen.iter().find(|(k, _)| k == key) {
        Some((_, first)) => Err(format!("duplicate \"{key}\" (first given on line {first}): keep only one")),
        None => {
            seen.push((key.to_string(), line));
            Ok(())
        }
    }
}

impl Parser {
    fn line(&mut self, line: &Line) {
        let n = line.number;
        if let Some(e) = &line.error {
            self.errors.push((n, e.clone()));
            // A broken line still counts for what it was meant to be: after a broken `service`
            // line the lines belong to a new service, not the one before, and a broken `bind` or
            // `server` line must not also yield "service has no bind/server".
            let Some(first) = line.tokens.first().filter(|t| !t.quoted) else {
                return;
            };
            match (first.bytes.as_slice(), self.blocks.last_mut()) {
                (b"service", _) => self.blocks.push(Block::new(String::new(), n)),
                (b"bind", Some(b)) => b.any_bind = true,
                (b"server", Some(b)) => b.any_server = true,
                _ => {}
            }
            return;
        }
        let Some(first) = line.tokens.first() else {
            return;
        };
        let result = match first.text() {
            Some(kw) => self.directive(kw, &line.tokens[1..], n),
            None => Err("the directive name is not valid UTF-8 text".to_string()),
        };
        if let Err(e) = result {
            self.errors.push((n, e));
        }
    }

    fn directive(&mut self, kw: &str, a: &[Token], n: usize) -> Res<()> {
        if kw == "service" {
            return self.service(a, n).map_err(|e| format!("service: {e}"));
        }
        let Some(block) = self.blocks.last_mut() else {
            if SERVICE_ONLY.contains(&kw) {
                return Err(format!("{} belongs to a service: add a \"service NAME\" line before it", show(kw)));
            }
            return self.global(kw, a, n);
        };
        if GLOBAL_ONLY.contains(&kw) {
            let first = self.blocks[0].svc.line;
            return Err(format!(
                "{} is a global directive: it must come before the first service (line {first})",
                show(kw)
            ));
        }
        service_directive(block, kw, a, n, self.resolve)
    }

    fn global(&mut self, kw: &str, a: &[Token], n: usize) -> Res<()> {
        if kw == "allow" || kw == "deny" {
            return acl_line(&mut self.acl, kw, a, n).map_err(|e| format!("{kw}: {e}"));
        }
        if kw == "max_conns_per_ip" || kw == "rate_per_ip" {
            let result = once(&mut self.seen, kw, n).and_then(|()| per_source(&mut self.cfg.per_source, kw, a));
            return result.map_err(|e| format!("{kw}: {e}"));
        }
        if !GLOBAL_ONLY.contains(&kw) && !BOTH.contains(&kw) {
            return Err(unknown(kw, None));
        }
        let result = once(&mut self.seen, kw, n).and_then(|()| set_global(&mut self.cfg, kw, a));
        result.map_err(|e| format!("{kw}: {e}"))
    }

    fn service(&mut self, a: &[Token], n: usize) -> Res<()> {
        let name = a.first().map(|t| String::from_utf8_lossy(&t.bytes).into_owned());
        self.blocks.push(Block::new(name.unwrap_or_default(), n));
        let name = one(a, "service NAME")?;
        check_name("service name", name)?;
        let earlier = &self.blocks[..self.blocks.len() - 1];
        if let Some(b) = earlier.iter().find(|b| b.named && b.svc.name == name) {
            return Err(format!(
                "duplicate service name {} (first on line {}): service names must be unique",
                show(name),
                b.svc.line
            ));
        }
        if let Some(b) = self.blocks.last_mut() {
            b.named = true;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Config, Vec<ConfigError>> {
        if self.blocks.is_empty() {
            self.errors.push((
                0,
                "no service defined: add a \"service NAME\" line followed by at least one bind \
                 and one server line"
                    .to_string(),
            ));
        }
        self.resolve_routes();
        for b in self.blocks.iter().filter(|b| b.named) {
            let name = show(&b.svc.name);
            // A service only routes reach needs no listener of its own.
            let routed_to = self.blocks.iter().any(|o| o.svc.routes.iter().any(|r| r.service == b.svc.name));
            if !b.any_bind && !routed_to {
                let e = format!("service {name} has no bind line: add one, e.g. \"bind *:8080\"");
                self.errors.push((b.svc.line, e));
            }
            if let Some(tls) = b.svc.tls.as_ref().filter(|_| !b.tls_broken) {
                if let Err(e) = super::parse_tls::check(tls) {
                    self.errors.push((tls.line, e));
                }
            }
            if !b.any_server && !b.any_route && b.svc.routes.is_empty() {
                let e = format!(
                    "service {name} has no server line: \
                     add one, e.g. \"server web-01 127.0.0.1:9001\""
                );
                self.errors.push((b.svc.line, e));
            }
        }
        self.conflicts();
        if !self.errors.is_empty() {
            self.errors.sort_by_key(|e| e.0);
            let file = &self.cfg.path;
            let errors = self.errors.into_iter();
            return Err(errors.map(|(line, message)| ConfigError { file: file.clone(), line, message }).collect());
        }
        self.cfg.acl = Acl::new(self.acl);
        self.cfg.services = self.blocks.into_iter().map(|b| Service { acl: Acl::new(b.acl), ..b.svc }).collect();
        Ok(self.cfg)
    }

    /// Points each route at its target service's position; a target that does not exist, or
    /// that routes itself (a second hop would need a second ClientHello), is an error.
    fn resolve_routes(&mut self) {
        let names: Vec<(String, bool)> =
            self.blocks.iter().map(|b| (b.svc.name.clone(), !b.svc.routes.is_empty() || b.any_route)).collect();
        for b in self.blocks.iter_mut().filter(|b| b.named) {
            for r in &mut b.svc.routes {
                match names.iter().position(|(name, _)| *name == r.service) {
                    None => {
                        self.errors.push((r.line, format!("route: no service named {} in this file", show(&r.service))))
                    }
                    Some(_) if r.service == b.svc.name => {
                        self.errors.push((r.line, "route: a service cannot route to itself".to_string()))
                    }
                    Some(i) if names[i].1 => self.errors.push((
                        r.line,
                        format!("route: service {} has routes of its own: routes go one hop only", show(&r.service)),
                    )),
                    Some(i) => r.target = i,
                }
            }
        }
    }

    /// Two listeners on overlapping addresses would split or steal each other's connections
    /// (`SO_REUSEPORT` lets both binds succeed), so the later one is an error.
    fn conflicts(&mut self) {
        let mut earlier: HashMap<u16, Vec<(ListenAddr, String)>> = HashMap::new();
        if let (Some(admin), Some((_, line))) = (self.cfg.admin, self.seen.iter().find(|(k, _)| k == "admin")) {
            let what = format!("admin {admin} on line {line}");
            earlier.entry(admin.port()).or_default().push((ListenAddr::Addr(admin), what));
        }
        for b in &self.blocks {
            for bind in &b.svc.binds {
                let port = bind.addr.socket_addr().port();
                // why: each port-0 listener gets its own ephemeral port; tests bind many.
                if port == 0 {
                    continue;
                }
                let list = earlier.entry(port).or_default();
                if let Some((_, what)) = list.iter().find(|(a, _)| overlaps(*a, bind.addr)) {
                    let e =
                        format!("bind: {} conflicts with {what}: an address can be listened on only once", bind.addr);
                    self.errors.push((bind.line, e));
                }
                let what = format!("bind {} on line {} (service {})", bind.addr, bind.line, show(&b.svc.name));
                list.push((bind.addr, what));
            }
        }
    }
}

/// Same port, and one address takes the other's traffic: `*` takes every address, `0.0.0.0`
/// every IPv4 one, `[::]` every IPv6 one (`*` is the dual-stack form).
fn overlaps(a: ListenAddr, b: ListenAddr) -> bool {
    fn covers(w: ListenAddr, x: ListenAddr) -> bool {
        match (w, x) {
            (ListenAddr::Any(_), _) => true,
            (ListenAddr::Addr(w), ListenAddr::Addr(x)) => {
                w.ip() == x.ip() || (w.ip().is_unspecified() && w.is_ipv4() == x.is_ipv4())
            }
            (ListenAddr::Addr(_), ListenAddr::Any(_)) => false,
        }
    }
    a.socket_addr().port() == b.socket_addr().port() && (covers(a, b) || covers(b, a))
}

/// A user name as `useradd` takes them: letters, digits, `_`, `-`, `.`, not starting with `-`.
/// Whether the user exists is checked at start, where its ids are looked up.
fn user_name(s: &str) -> Res<String> {
    let fine = |b: u8| b.is_ascii_alphanumeric() || b"_-.".contains(&b);
    if s.is_empty() || s.len() > 32 || s.starts_with('-') || !s.bytes().all(fine) {
        return Err(format!("{} is not a user name (letters, digits, _ - ., at most 32)", show(s)));
    }
    Ok(s.to_string())
}

fn set_global(c: &mut Config, kw: &str, a: &[Token]) -> Res<()> {
    match kw {
        "workers" => c.workers = number("", one(a, "workers N")?, 1, MAX_WORKERS)? as usize,
        "max_conns" => c.max_conns = number("", one(a, "max_conns N")?, 1, MAX_COUNT)? as usize,
        "admin" => c.admin = Some(admin_addr(one(a, "admin IP:PORT")?)?),
        "admin_token" => {
            let [t] = a else {
                return Err(arity("admin_token FILE"));
            };
            if t.bytes.is_empty() {
                return Err("the file name is empty: give the token file's path".to_string());
            }
            c.admin_token = Some(PathBuf::from(std::ffi::OsStr::from_bytes(&t.bytes)));
        }
        "user" => c.user = Some(user_name(one(a, "user NAME")?)?),
        "drain_timeout" => c.drain_timeout = duration("", one(a, "drain_timeout DURATION")?, true)?,
        "log" => {
            let level = one(a, "log error|warn|info|debug|trace")?;
            c.log_level = match level {
                "error" => log::LevelFilter::Error,
                "warn" => log::LevelFilter::Warn,
                "info" => log::LevelFilter::Info,
                "debug" => log::LevelFilter::Debug,
                "trace" => log::LevelFilter::Trace,
                _ => return Err(choice("level", level, LEVELS)),
            }
        }
        _ => return Err(unknown(kw, None)),
    }
    Ok(())
}

fn service_directive(b: &mut Block, kw: &str, a: &[Token], n: usize, resolve: Resolver) -> Res<()> {
    let result = match kw {
        "bind" => bind(b, a, n),
        "server" => server(b, a, n, resolve),
        "timeout" => timeout(b, a, n),
        "tls" => super::parse_tls::tls_line(&mut b.svc.tls, &mut b.seen, a, n).inspect_err(|_| b.tls_broken = true),
        "route" => super::parse_tls::route_line(&mut b.svc.routes, a, n).inspect_err(|_| b.any_route = true),
        "allow" | "deny" => acl_line(&mut b.acl, kw, a, n),
        "max_conns_per_ip" | "rate_per_ip" => {
            once(&mut b.seen, kw, n).and_then(|()| per_source(&mut b.svc.per_source, kw, a))
        }
        "check" => once(&mut b.seen, kw, n).and_then(|()| {
            b.svc.check = Check { line: n, ..super::parse_check::check(a)? };
            Ok(())
        }),
        "proxy_protocol" => once(&mut b.seen, kw, n).and_then(|()| {
            b.svc.proxy_protocol = Some(match one(a, "proxy_protocol v1|v2")? {
                "v1" => crate::proxy_protocol::Version::V1,
                "v2" => crate::proxy_protocol::Version::V2,
                v => return Err(choice("version", v, &["v1", "v2"])),
            });
            Ok(())
        }),
        "balance" | "retries" | "max_conns" | "splice" | "on_down" => {
            once(&mut b.seen, kw, n).and_then(|()| set_policy(&mut b.svc, kw, a))
        }
        _ => return Err(unknown(kw, Some(&b.svc.name))),
    };
    result.map_err(|e| format!("{kw}: {e}"))
}

fn set_policy(svc: &mut Service, kw: &str, a: &[Token]) -> Res<()> {
    match kw {
        "balance" => {
            let v = one(a, "balance roundrobin|leastconn|first|source|maglev")?;
            svc.balance = match v {
                "roundrobin" => Balance::RoundRobin,
                "leastconn" => Balance::LeastConn,
                "first" => Balance::First,
                "source" => Balance::Source,
                "maglev" => Balance::Maglev,
                _ => return Err(choice("algorithm", v, BALANCES)),
            }
        }
        "retries" => svc.retries = number("", one(a, "retries N")?, 0, MAX_RETRIES)? as u32,
        "max_conns" => svc.max_conns = Some(number("", one(a, "max_conns N")?, 1, MAX_COUNT)? as usize),
        "splice" => {
            svc.splice = match one(a, "splice on|off|always")? {
                "on" => Splice::Auto,
                "always" => Splice::Always,
                "off" => Splice::Off,
                v => return Err(choice("value", v, &["on", "off", "always"])),
            }
        }
        "on_down" => {
            svc.on_down_close = match one(a, "on_down keep|close")? {
                "keep" => false,
                "close" => true,
                v => return Err(choice("value", v, &["keep", "close"])),
            }
        }
        _ => return Err(unknown(kw, Some(&svc.name))),
    }
    Ok(())
}

/// `max_conns_per_ip N` or `rate_per_ip N/s` (`N/m`: per minute).
fn per_source(limits: &mut PerSource, kw: &str, a: &[Token]) -> Res<()> {
    if kw == "max_conns_per_ip" {
        limits.max_conns = Some(number("", one(a, "max_conns_per_ip N")?, 1, MAX_COUNT)? as u32);
        return Ok(());
    }
    let v = one(a, "rate_per_ip N/s, e.g. rate_per_ip 50/s")?;
    let (count, per) = match v.rsplit_once('/') {
        Some((count, "s")) => (count, Duration::from_secs(1)),
        Some((count, "m")) => (count, Duration::from_secs(60)),
        _ => return Err(format!("{} is not a rate: give N/s or N/m, e.g. 50/s", show(v))),
    };
    let count = number("", count, 1, MAX_COUNT)? as u32;
    limits.rate = Some(Rate { count, per });
    Ok(())
}

/// One `allow` or `deny` line: one or more prefixes, each a rule in line order.
fn acl_line(rules: &mut Vec<Rule>, kw: &str, a: &[Token], n: usize) -> Res<()> {
    if a.is_empty() {
        return Err(arity(&format!("{kw} CIDR..., e.g. {kw} 10.0.0.0/8 2001:db8::/32")));
    }
    for t in a {
        let net = Cidr::parse(text(t)?)?;
        rules.push(Rule { allow: kw == "allow", net, line: n });
    }
    Ok(())
}

fn bind(b: &mut Block, a: &[Token], n: usize) -> Res<()> {
    b.any_bind = true;
    let Some((addr, options)) = a.split_first() else {
        return Err(arity("bind ADDR [accept_proxy] [defer_accept]"));
    };
    let mut bind = Bind { addr: listen_addr(text(addr)?)?, line: n, accept_proxy: false, defer_accept: false };
    for opt in options {
        let flag = match opt.bytes.as_slice() {
            b"accept_proxy" => &mut bind.accept_proxy,
            b"defer_accept" => &mut bind.defer_accept,
            other => {
                let other = show(&String::from_utf8_lossy(other));
                return Err(format!("unknown option {other}: expected accept_proxy or defer_accept"));
            }
        };
        if std::mem::replace(flag, true) {
            return Err(format!("{} given twice", String::from_utf8_lossy(&opt.bytes)));
        }
    }
    b.svc.binds.push(bind);
    Ok(())
}

fn server(b: &mut Block, a: &[Token], n: usize, resolve: Resolver) -> Res<()> {
    b.any_server = true;
    let [name, addr, opts @ ..] = a else {
        return Err(arity(
            "server NAME ADDR [weight N] [backup] [disabled] [maxconn N] [tls [ca FILE | verify none] [sni NAME]]",
        ));
    };
    let name = text(name)?;
    check_name("server name", name)?;
    // Names go into `seen` before the rest of the line is checked, so a duplicate is caught even
    // when the first line with that name had another error.
    let key = format!("server {name}");
    if let Some((_, first)) = b.seen.iter().find(|(k, _)| *k == key) {
        return Err(format!(
            "duplicate server name {} (first on line {first}): names must be unique in a service",
            show(name)
        ));
    }
    b.seen.push((key, n));
    let addr_text = text(addr)?;
    let addr = server_addr(addr_text, resolve)?;
    let mut s = Server {
        name: name.to_string(),
        addr,
        weight: 1,
        backup: false,
        disabled: false,
        maxconn: None,
        tls: None,
        line: n,
    };
    let (mut tls, mut verify, mut sni) = (false, None, None);
    options(opts, |opt, it| {
        match opt {
            "weight" => s.weight = number("weight ", value(it, "weight N")?, 0, MAX_WEIGHT)? as u32,
            "maxconn" => s.maxconn = Some(number("maxconn ", value(it, "maxconn N")?, 1, MAX_COUNT)? as u32),
            "backup" => s.backup = true,
            "disabled" => s.disabled = true,
            "tls" => tls = true,
            "ca" | "verify" if verify.is_some() => {
                return Err("give one of \"ca FILE\" and \"verify none\", not both".to_string())
            }
            "ca" => {
                let file = value(it, "ca FILE")?;
                if file.is_empty() {
                    return Err("the ca file name is empty".to_string());
                }
                verify = Some(Verify::Ca(PathBuf::from(file)));
            }
            "verify" => match value(it, "verify none")? {
                "none" => verify = Some(Verify::Nothing),
                v => return Err(choice("verify value", v, &["none"])),
            },
            "sni" => {
                let name = value(it, "sni NAME")?;
                if !is_hostname(name) {
                    return Err(format!("sni {} is not a host name", show(name)));
                }
                sni = Some(name.to_ascii_lowercase());
            }
            _ => return Err(choice("option", opt, SERVER_OPTIONS)),
        }
        Ok(())
    })?;
    if !tls && (verify.is_some() || sni.is_some()) {
        return Err("ca, verify and sni are options of tls: add \"tls\" before them".to_string());
    }
    if tls {
        // The name to check: `sni`, or the host the address was written with.
        let host = addr_text.rsplit_once(':').map(|(h, _)| h).filter(|h| is_hostname(h));
        let name = sni.or_else(|| host.map(str::to_ascii_lowercase));
        s.tls = Some(ServerTls { verify: verify.unwrap_or(Verify::SystemRoots), name });
    }
    b.svc.servers.push(s);
    Ok(())
}

fn timeout(b: &mut Block, a: &[Token], n: usize) -> Res<()> {
    let [kind, d] = a else {
        return Err(arity("timeout connect|idle|fin|handshake|queue DURATION"));
    };
    match text(kind)? {
        "connect" => {
            once(&mut b.seen, "timeout connect", n)?;
            b.svc.timeouts.connect = duration("connect ", text(d)?, false)?;
        }
        "idle" => {
            once(&mut b.seen, "timeout idle", n)?;
            b.svc.timeouts.idle = duration("idle ", text(d)?, false)?;
        }
        "fin" => {
            once(&mut b.seen, "timeout fin", n)?;
            b.svc.timeouts.fin = duration("fin ", text(d)?, false)?;
        }
        "handshake" => {
            once(&mut b.seen, "timeout handshake", n)?;
            b.svc.timeouts.handshake = duration("handshake ", text(d)?, false)?;
        }
        "queue" => {
            once(&mut b.seen, "timeout queue", n)?;
            b.svc.queue_timeout = duration("queue ", text(d)?, true)?;
        }
        k => return Err(choice("kind", k, &["connect", "idle", "fin", "handshake", "queue"])),
    }
    Ok(())
}

/// IP literal or host name; a name is resolved now, and its first address is kept.
fn server_addr(s: &str, resolve: Resolver) -> Res<SocketAddr> {
    let hint = "expected IP:PORT, [IPv6]:PORT or HOST:PORT, e.g. 127.0.0.1:9001";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("address {} has no port: {hint}", show(s)));
    };
    let port = number("port ", port, 1, 65535)? as u16;
    if let Some(ip) = parse_ip(host) {
        return Ok(SocketAddr::new(ip, port));
    }
    if host == "*" {
        return Err(format!("a server needs a concrete address, not *: {hint}"));
    }
    if !is_hostname(host) {
        return Err(not_ip(s, host, hint));
    }
    resolve(host, port)
}

/// The system resolver (getaddrinfo): the first address.
fn resolve(host: &str, port: u16) -> Res<SocketAddr> {
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}; check the name or write an IP", show(host)))?;
    addrs.next().ok_or_else(|| format!("{} resolves to no address", show(host)))
}

pub(super) fn text(t: &Token) -> Res<&str> {
    t.text().ok_or_else(|| {
        "argument is not valid UTF-8 text (only check send/expect strings may hold raw bytes)".to_string()
    })
}

fn one<'t>(a: &'t [Token], syntax: &str) -> Res<&'t str> {
    match a {
        [t] => text(t),
        _ => Err(arity(syntax)),
    }
}

/// The next token of an option list, as the value of the option named in `example`.
/// Walks `NAME [VALUE]` options, each allowed once: `apply` takes the option's value from the
/// iterator when it has one.
pub(super) fn options<'t>(
    opts: &'t [Token],
    mut apply: impl FnMut(&'t str, &mut slice::Iter<'t, Token>) -> Res<()>,
) -> Res<()> {
    let mut seen = Vec::new();
    let mut it = opts.iter();
    while let Some(t) = it.next() {
        let opt = text(t)?;
        if seen.contains(&opt) {
            return Err(format!("option {opt} given twice: keep only one"));
        }
        apply(opt, &mut it)?;
        seen.push(opt);
    }
    Ok(())
}

pub(super) fn value<'t>(it: &mut slice::Iter<'t, Token>, example: &str) -> Res<&'t str> {
    match it.next() {
        Some(t) => text(t),
        None => Err(format!("missing value: expected \"{example}\"")),
    }
}

pub(super) fn arity(syntax: &str) -> String {
    format!("wrong number of arguments, expected: {syntax}")
}

fn unknown(kw: &str, service: Option<&str>) -> String {
    let mut e = format!("unknown directive {}", show(kw));
    if let Some(s) = service {
        e.push_str(&format!(" in service {}", show(s)));
    }
    let known = GLOBAL_ONLY.iter().chain(SERVICE_ONLY).chain(BOTH).chain(&["service"]);
    if let Some(s) = closest(kw, known.copied()) {
        e.push_str(&format!(" (did you mean \"{s}\"?)"));
    }
    e
}

pub(super) fn choice(what: &str, got: &str, options: &[&str]) -> String {
    let mut e = format!("unknown {what} {}: expected one of {}", show(got), options.join(", "));
    if let Some(s) = closest(got, options.iter().copied()) {
        e.push_str(&format!(" (did you mean \"{s}\"?)"));
    }
    e
}

/// The candidate within edit distance 2, nearest first.
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates.map(|c| (edit_distance(word, c), c)).filter(|&(d, _)| d <= 2).min_by_key(|&(d, _)| d).map(|(_, c)| c)
}

/// Levenshtein distance, case-insensitive (`Server` → `server`); long words are never close.
fn edit_distance(a: &str, b: &str) -> usize {
    // why: the length test first, on a bounded prefix, so a megabyte of garbage costs nothing.
    if a.chars().take(64).count().abs_diff(b.chars().count()) > 2 {
        return usize::MAX;
    }
    let a: Vec<char> = a.chars().flat_map(char::to_lowercase).collect();
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb)).min(row[j] + 1).min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
