//! Conf-file bytes → a validated [`Config`]. Owns the grammar, the defaults, and the checks that
//! need the whole file (services without binds or servers, listen-address conflicts).
//!
//! Stage one is `lexer` (tokens per line, and the forms a single value takes); stage two, here,
//! gives directives their meaning (STYLE.md 4.9). An error never stops the walk: the file is
//! rejected with every error found, in line order, each as `FILE:LINE: keyword: message` telling
//! how to fix it. Server host names are resolved here, once per load, so nothing downstream ever
//! sees a name or a string.

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::slice;
use std::time::Duration;

use super::lexer::{
    self, admin_addr, check_name, duration, http_path, is_hostname, listen_addr, method, not_ip, number, parse_ip,
    show, status, Line, Token,
};
use super::{Balance, Bind, Check, CheckKind, Config, ConfigError, ListenAddr, Server, Service};

const GLOBAL_ONLY: &[&str] = &["workers", "admin", "admin_token", "drain_timeout", "log"];
const SERVICE_ONLY: &[&str] = &["bind", "balance", "server", "check", "retries", "timeout", "splice"];
/// Names DESIGN.md keeps for later work: refused by name, so a conf written for a newer shunt fails
/// loudly instead of running without its ACLs or TLS.
const RESERVED: &[&str] =
    &["tls", "allow", "deny", "max_conns_per_ip", "rate_per_ip", "proxy_protocol", "accept_proxy"];
const SERVER_OPTIONS: &[&str] = &["weight", "backup", "disabled", "maxconn"];
const CHECK_OPTIONS: &[&str] = &["interval", "timeout", "rise", "fall", "port"];
const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];
const BALANCES: &[&str] = &["roundrobin", "leastconn", "first", "source"];

// Upper bounds catch typos (an extra zero) before they become a thread or memory storm; none of
// them limits a real deployment. MAX_WEIGHT is DESIGN.md's.
const MAX_WORKERS: u64 = 256;
const MAX_WEIGHT: u64 = 256;
const MAX_RETRIES: u64 = 100;
const MAX_RISE_FALL: u64 = 1000;
/// Connection caps: `Server::maxconn` is a `u32`.
const MAX_COUNT: u64 = u32::MAX as u64;

type Res<T> = Result<T, String>;

/// Reads `path` and parses it; an unreadable file is one error on line 0.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_bytes(&bytes, path),
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
    let mut p = Parser {
        cfg: Config {
            path: file.to_path_buf(),
            workers: 1,
            max_conns: super::DEFAULT_MAX_CONNS,
            admin: None,
            admin_token: None,
            drain_timeout: Duration::from_secs(30),
            log_level: log::LevelFilter::Info,
            services: Vec::new(),
        },
        seen: Vec::new(),
        blocks: Vec::new(),
        errors: Vec::new(),
    };
    for line in lexer::lex(bytes) {
        p.line(&line);
    }
    p.finish()
}

/// Where each singleton directive (or server name, as `server NAME`) was first given, to report a
/// second one.
type Seen = Vec<(String, usize)>;

struct Parser {
    /// Globals filled in place; `services` stays empty until `finish`.
    cfg: Config,
    seen: Seen,
    blocks: Vec<Block>,
    errors: Vec<(usize, String)>,
}

/// A service being read.
struct Block {
    svc: Service,
    seen: Seen,
    /// False when the `service` line itself was wrong: whole-file checks then skip the block, since
    /// they would only echo that error.
    named: bool,
    /// Any `bind` line, valid or not, so "no bind" never echoes an error already reported.
    any_bind: bool,
    any_server: bool,
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
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(600),
                max_conns: None,
                splice: true,
            },
            seen: Vec::new(),
            named: false,
            any_bind: false,
            any_server: false,
        }
    }
}

fn once(seen: &mut Seen, key: &str, line: usize) -> Res<()> {
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
        if RESERVED.contains(&kw) {
            return Err(format!(
                "{} is not supported yet: remove it (the name is reserved for a later version)",
                show(kw)
            ));
        }
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
        service_directive(block, kw, a, n)
    }

    fn global(&mut self, kw: &str, a: &[Token], n: usize) -> Res<()> {
        if !GLOBAL_ONLY.contains(&kw) && kw != "max_conns" {
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
        for b in self.blocks.iter().filter(|b| b.named) {
            let name = show(&b.svc.name);
            if !b.any_bind {
                let e = format!("service {name} has no bind line: add one, e.g. \"bind *:8080\"");
                self.errors.push((b.svc.line, e));
            }
            if !b.any_server {
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
        self.cfg.services = self.blocks.into_iter().map(|b| b.svc).collect();
        Ok(self.cfg)
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

fn service_directive(b: &mut Block, kw: &str, a: &[Token], n: usize) -> Res<()> {
    let result = match kw {
        "bind" => bind(b, a, n),
        "server" => server(b, a, n),
        "timeout" => timeout(b, a, n),
        "check" => once(&mut b.seen, kw, n).and_then(|()| {
            b.svc.check = check(a)?;
            Ok(())
        }),
        "balance" | "retries" | "max_conns" | "splice" => {
            once(&mut b.seen, kw, n).and_then(|()| set_policy(&mut b.svc, kw, a))
        }
        _ => return Err(unknown(kw, Some(&b.svc.name))),
    };
    result.map_err(|e| format!("{kw}: {e}"))
}

fn set_policy(svc: &mut Service, kw: &str, a: &[Token]) -> Res<()> {
    match kw {
        "balance" => {
            let v = one(a, "balance roundrobin|leastconn|first|source")?;
            svc.balance = match v {
                "roundrobin" => Balance::RoundRobin,
                "leastconn" => Balance::LeastConn,
                "first" => Balance::First,
                "source" => Balance::Source,
                _ => return Err(choice("algorithm", v, BALANCES)),
            }
        }
        "retries" => svc.retries = number("", one(a, "retries N")?, 0, MAX_RETRIES)? as u32,
        "max_conns" => svc.max_conns = Some(number("", one(a, "max_conns N")?, 1, MAX_COUNT)? as usize),
        "splice" => {
            svc.splice = match one(a, "splice on|off")? {
                "on" => true,
                "off" => false,
                v => return Err(choice("value", v, &["on", "off"])),
            }
        }
        _ => return Err(unknown(kw, Some(&svc.name))),
    }
    Ok(())
}

fn bind(b: &mut Block, a: &[Token], n: usize) -> Res<()> {
    b.any_bind = true;
    let addr = match a {
        [addr] => text(addr)?,
        [_, opt] if opt.bytes == b"accept_proxy" => {
            return Err("the accept_proxy option is not supported yet: remove it".to_string())
        }
        _ => return Err(arity("bind ADDR")),
    };
    b.svc.binds.push(Bind { addr: listen_addr(addr)?, line: n });
    Ok(())
}

fn server(b: &mut Block, a: &[Token], n: usize) -> Res<()> {
    b.any_server = true;
    let [name, addr, opts @ ..] = a else {
        return Err(arity("server NAME ADDR [weight N] [backup] [disabled] [maxconn N]"));
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
    let addr = server_addr(text(addr)?)?;
    let mut s =
        Server { name: name.to_string(), addr, weight: 1, backup: false, disabled: false, maxconn: None, line: n };
    let mut seen = Vec::new();
    let mut it = opts.iter();
    while let Some(t) = it.next() {
        let opt = text(t)?;
        if seen.contains(&opt) {
            return Err(format!("option {opt} given twice: keep only one"));
        }
        match opt {
            "weight" => s.weight = number("weight ", value(&mut it, "weight N")?, 0, MAX_WEIGHT)? as u32,
            "maxconn" => s.maxconn = Some(number("maxconn ", value(&mut it, "maxconn N")?, 1, MAX_COUNT)? as u32),
            "backup" => s.backup = true,
            "disabled" => s.disabled = true,
            _ => return Err(choice("option", opt, SERVER_OPTIONS)),
        }
        seen.push(opt);
    }
    b.svc.servers.push(s);
    Ok(())
}

fn timeout(b: &mut Block, a: &[Token], n: usize) -> Res<()> {
    let [kind, d] = a else {
        return Err(arity("timeout connect|idle DURATION"));
    };
    match text(kind)? {
        "connect" => {
            once(&mut b.seen, "timeout connect", n)?;
            b.svc.connect_timeout = duration("connect ", text(d)?, false)?;
        }
        "idle" => {
            once(&mut b.seen, "timeout idle", n)?;
            b.svc.idle_timeout = duration("idle ", text(d)?, false)?;
        }
        k => return Err(choice("kind", k, &["connect", "idle"])),
    }
    Ok(())
}

fn check(a: &[Token]) -> Res<Check> {
    let Some(kind) = a.first() else {
        return Err(arity("check tcp|send|http ... [interval D] [timeout D] [rise N] [fall N] [port N]"));
    };
    let is_expect = |t: &Token| t.bytes == b"expect";
    let (kind, opts) = match text(kind)? {
        "tcp" => (CheckKind::Tcp, &a[1..]),
        "send" => match a {
            [_, send, e, expect, rest @ ..] if is_expect(e) => {
                if expect.bytes.is_empty() {
                    let e = "the expect string is empty: give bytes the reply must contain";
                    return Err(format!("{e}, e.g. expect \"+PONG\""));
                }
                (CheckKind::Send { send: send.bytes.clone(), expect: expect.bytes.clone() }, rest)
            }
            _ => return Err(arity("check send \"BYTES\" expect \"BYTES\" [options]")),
        },
        "http" => match a {
            [_, m, p, e, st, rest @ ..] if is_expect(e) => {
                let kind = CheckKind::Http {
                    method: method(text(m)?)?,
                    path: http_path(text(p)?)?,
                    expect: status(text(st)?)?,
                };
                (kind, rest)
            }
            _ => return Err(arity("check http METHOD PATH expect STATUS [options]")),
        },
        k => return Err(choice("kind", k, &["tcp", "send", "http"])),
    };
    let mut c = Check { kind, ..Check::default() };
    let mut seen = Vec::new();
    let mut it = opts.iter();
    while let Some(t) = it.next() {
        let opt = text(t)?;
        if seen.contains(&opt) {
            return Err(format!("option {opt} given twice: keep only one"));
        }
        match opt {
            "interval" => c.interval = duration("interval ", value(&mut it, "interval 2s")?, false)?,
            "timeout" => c.timeout = duration("timeout ", value(&mut it, "timeout 1s")?, false)?,
            "rise" => c.rise = number("rise ", value(&mut it, "rise N")?, 1, MAX_RISE_FALL)? as u32,
            "fall" => c.fall = number("fall ", value(&mut it, "fall N")?, 1, MAX_RISE_FALL)? as u32,
            "port" => c.port = Some(number("port ", value(&mut it, "port N")?, 1, 65535)? as u16),
            _ => return Err(choice("option", opt, CHECK_OPTIONS)),
        }
        seen.push(opt);
    }
    Ok(c)
}

/// IP literal or host name; a name is resolved now, and its first address is kept.
fn server_addr(s: &str) -> Res<SocketAddr> {
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
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}; check the name or write an IP", show(host)))?;
    addrs.next().ok_or_else(|| format!("{} resolves to no address", show(host)))
}

fn text(t: &Token) -> Res<&str> {
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
fn value<'t>(it: &mut slice::Iter<'t, Token>, example: &str) -> Res<&'t str> {
    match it.next() {
        Some(t) => text(t),
        None => Err(format!("missing value: expected \"{example}\"")),
    }
}

fn arity(syntax: &str) -> String {
    format!("wrong number of arguments, expected: {syntax}")
}

fn unknown(kw: &str, service: Option<&str>) -> String {
    let mut e = format!("unknown directive {}", show(kw));
    if let Some(s) = service {
        e.push_str(&format!(" in service {}", show(s)));
    }
    let known = GLOBAL_ONLY.iter().chain(SERVICE_ONLY).chain(&["max_conns", "service"]);
    if let Some(s) = closest(kw, known.copied()) {
        e.push_str(&format!(" (did you mean \"{s}\"?)"));
    }
    e
}

fn choice(what: &str, got: &str, options: &[&str]) -> String {
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
mod tests {
    use super::*;
    use crate::config::StatusMatch;

    /// One valid service (lines 1-3); each error case adds exactly one mistake to it. A macro, so
    /// `concat!` can build the cases from it.
    macro_rules! ok {
        () => {
            "service web\nbind *:0\nserver a 127.0.0.1:9001\n"
        };
        (+ $tail:literal) => {
            concat!(ok!(), $tail)
        };
        ($head:literal + $tail:literal) => {
            concat!($head, ok!(), $tail)
        };
        ($head:literal +) => {
            concat!($head, ok!())
        };
    }
    const OK: &str = ok!();

    fn parse(src: &str) -> Result<Config, Vec<ConfigError>> {
        parse_bytes(src.as_bytes(), Path::new("t.conf"))
    }

    fn errors(src: &[u8]) -> Vec<(usize, String)> {
        match parse_bytes(src, Path::new("t.conf")) {
            Ok(_) => Vec::new(),
            Err(errs) => errs.into_iter().map(|e| (e.line, e.message)).collect(),
        }
    }

    fn srv(name: &str, addr: &str, line: usize) -> Server {
        let addr = addr.parse().unwrap();
        Server { name: name.into(), addr, weight: 1, backup: false, disabled: false, maxconn: None, line }
    }

    fn svc(name: &str, line: usize, binds: &[(ListenAddr, usize)]) -> Service {
        let mut s = Block::new(name.into(), line).svc;
        s.binds = binds.iter().map(|&(addr, line)| Bind { addr, line }).collect();
        s
    }

    fn addr(s: &str) -> ListenAddr {
        ListenAddr::Addr(s.parse().unwrap())
    }

    #[test]
    fn design_example_plus_every_option_parses_exactly() {
        let src = r#"# ---- global ----
workers        1                  # event-loop threads, each with its own SO_REUSEPORT listeners
max_conns      100000             # proxied connections, all services together
admin          127.0.0.1:9090     # admin HTTP endpoint (metrics, status, control); absent = off
admin_token    /etc/shunt/token   # optional: a file whose content is the bearer token
drain_timeout  30s                # how long SIGTERM waits for live connections
log            info               # error | warn | info | debug | trace; RUST_LOG, when set, wins

# ---- a service: its listeners, its server pool, its policies ----
service web
  bind         *:8080                         # one or more
  balance      roundrobin                     # roundrobin | leastconn | first | source
  server       web-01 127.0.0.1:9001 weight 3
  server       web-02 127.0.0.1:9002          # weight 1 by default
  server       spare  127.0.0.1:9003 backup   # gets traffic only while no non-backup server is up
  check        tcp interval 2s timeout 1s rise 2 fall 3
  retries      2                              # on a failed connect, try the next server
  timeout      connect 2s
  timeout      idle 10m                       # no byte in either direction: close both sides
service cache.v2
  bind 127.0.0.1:6380
  bind [::1]:6380
  bind 0.0.0.0:0
  balance leastconn
  server r1 [::1]:6379 weight 0 disabled maxconn 50
  server r2 127.0.0.1:6379 maxconn 7 backup weight 256
  check send "PING\r\n" expect "+PONG\x00" port 6400 fall 10 rise 1 timeout 5s interval 250ms
  retries 0
  timeout idle 1h
  timeout connect 100ms
  max_conns 500
  splice off
service api_1
  bind [::]:80
  bind *:81
  balance first
  server a 10.0.0.1:80
  check http GET /health?x=1 expect 2xx
service s
  bind *:82
  balance source
  server b 10.0.0.2:1
  check http HEAD / expect 204 interval 5m
"#;
        let mut web = svc("web", 10, &[(ListenAddr::Any(8080), 11)]);
        web.servers = vec![
            Server { weight: 3, ..srv("web-01", "127.0.0.1:9001", 13) },
            srv("web-02", "127.0.0.1:9002", 14),
            Server { backup: true, ..srv("spare", "127.0.0.1:9003", 15) },
        ];
        web.check.kind = CheckKind::Tcp;
        web.retries = 2;
        web.connect_timeout = Duration::from_secs(2);
        let binds = [(addr("127.0.0.1:6380"), 21), (addr("[::1]:6380"), 22), (addr("0.0.0.0:0"), 23)];
        let mut cache = svc("cache.v2", 20, &binds);
        cache.balance = Balance::LeastConn;
        let r1 = srv("r1", "[::1]:6379", 25);
        let r2 = srv("r2", "127.0.0.1:6379", 26);
        cache.servers = vec![
            Server { weight: 0, disabled: true, maxconn: Some(50), ..r1 },
            Server { weight: 256, backup: true, maxconn: Some(7), ..r2 },
        ];
        let kind = CheckKind::Send { send: b"PING\r\n".to_vec(), expect: b"+PONG\0".to_vec() };
        let (interval, timeout) = (Duration::from_millis(250), Duration::from_secs(5));
        cache.check = Check { kind, interval, timeout, rise: 1, fall: 10, port: Some(6400) };
        cache.retries = 0;
        cache.idle_timeout = Duration::from_secs(3600);
        cache.connect_timeout = Duration::from_millis(100);
        cache.max_conns = Some(500);
        cache.splice = false;
        let mut api = svc("api_1", 33, &[(addr("[::]:80"), 34), (ListenAddr::Any(81), 35)]);
        api.balance = Balance::First;
        api.servers = vec![srv("a", "10.0.0.1:80", 37)];
        let (method, path, expect) = ("GET".into(), "/health?x=1".into(), StatusMatch::Class(2));
        api.check.kind = CheckKind::Http { method, path, expect };
        let mut s = svc("s", 39, &[(ListenAddr::Any(82), 40)]);
        s.balance = Balance::Source;
        s.servers = vec![srv("b", "10.0.0.2:1", 42)];
        let (method, path, expect) = ("HEAD".into(), "/".into(), StatusMatch::Exact(204));
        s.check.kind = CheckKind::Http { method, path, expect };
        s.check.interval = Duration::from_secs(300);
        let want = Config {
            path: PathBuf::from("t.conf"),
            workers: 1,
            max_conns: 100_000,
            admin: Some("127.0.0.1:9090".parse().unwrap()),
            admin_token: Some(PathBuf::from("/etc/shunt/token")),
            drain_timeout: Duration::from_secs(30),
            log_level: log::LevelFilter::Info,
            services: vec![web, cache, api, s],
        };
        assert_eq!(parse(src), Ok(want));
    }

    #[test]
    fn globals_other_than_the_defaults() {
        let src = "workers 4\nmax_conns 5000\nadmin [::1]:9091\nadmin_token \"/run/a b\"\n\
                   drain_timeout 0s\nlog trace\n";
        let want = Config {
            path: PathBuf::from("t.conf"),
            workers: 4,
            max_conns: 5000,
            admin: Some("[::1]:9091".parse().unwrap()),
            admin_token: Some(PathBuf::from("/run/a b")),
            drain_timeout: Duration::ZERO,
            log_level: log::LevelFilter::Trace,
            services: Vec::new(),
        };
        let mut got = parse(&format!("{src}{OK}")).unwrap();
        got.services.clear();
        assert_eq!(got, want);
    }

    #[test]
    fn defaults() {
        let web = Service {
            name: "web".into(),
            line: 1,
            binds: vec![Bind { addr: ListenAddr::Any(0), line: 2 }],
            balance: Balance::RoundRobin,
            servers: vec![srv("a", "127.0.0.1:9001", 3)],
            check: Check::default(),
            retries: 3,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_conns: None,
            splice: true,
        };
        let want = Config {
            path: PathBuf::from("t.conf"),
            workers: 1,
            max_conns: 100_000,
            admin: None,
            admin_token: None,
            drain_timeout: Duration::from_secs(30),
            log_level: log::LevelFilter::Info,
            services: vec![web],
        };
        assert_eq!(parse(OK), Ok(want));
    }

    #[test]
    fn log_levels() {
        let levels = ["error", "warn", "info", "debug", "trace"];
        for (word, level) in levels.into_iter().zip(log::LevelFilter::iter().skip(1)) {
            assert_eq!(parse(&format!("log {word}\n{OK}")).unwrap().log_level, level);
        }
    }

    #[test]
    fn host_names_resolve_at_parse_time() {
        let c = parse("service web\nbind *:0\nserver a localhost:9001\n").unwrap();
        let a = c.services[0].servers[0].addr;
        assert!(a.ip().is_loopback() && a.port() == 9001, "{a}");
    }

    #[test]
    fn binds_that_do_not_overlap_are_fine() {
        let src = "service a\nbind *:0\nbind *:0\nbind 127.0.0.1:0\nbind [::]:80\nbind 0.0.0.0:80\n\
                   bind 127.0.0.1:81\nbind 127.0.0.2:81\nbind [::1]:82\nbind 0.0.0.0:82\n\
                   server s 10.0.0.1:1\n";
        assert_eq!(errors(src.as_bytes()), vec![]);
    }

    #[test]
    fn crlf_files_and_send_checks_with_empty_send_parse() {
        let c = parse("service web\r\nbind *:0\r\nserver a 127.0.0.1:1\r\ncheck send \"\" expect \"220\"\r\n");
        let want = CheckKind::Send { send: Vec::new(), expect: b"220".to_vec() };
        assert_eq!(c.unwrap().services[0].check.kind, want);
    }

    #[test]
    fn the_project_conf_files_parse() {
        for src in [include_str!("../../conf/example.conf"), include_str!("../../conf/shunt.conf")] {
            assert_eq!(errors(src.as_bytes()), vec![]);
        }
    }

    #[test]
    fn every_error_is_reported_in_line_order() {
        let src = "workers 0\nbind *:80\nservice web\nbind *:99999\nbalance fast\n\
                   server a 127.0.0.1:0\nserver a 127.0.0.1:3\nsever b 127.0.0.1:1\n\
                   check http GET / expect 999\nservice api\nbind *:1\n";
        let errs = errors(src.as_bytes());
        let lines: Vec<usize> = errs.iter().map(|e| e.0).collect();
        assert_eq!(lines, vec![1, 2, 4, 5, 6, 7, 8, 9, 10], "{errs:?}");
        assert!(errs[5].1.contains("duplicate server name"), "{errs:?}");
    }

    #[test]
    fn errors_display_as_file_line_message() {
        let errs = parse(&format!("{OK}retries x\n")).unwrap_err();
        assert_eq!(errs[0].to_string(), r#"t.conf:4: retries: "x" is not a whole number: expected 0-100"#);
        assert_eq!(parse("").unwrap_err()[0].to_string(), format!("t.conf: {}", errors(b"")[0].1));
    }

    #[test]
    fn unknown_directive_without_a_close_match_suggests_nothing() {
        let errs = errors(format!("{OK}frobnicate 1\n").as_bytes());
        assert_eq!(errs, vec![(4, r#"unknown directive "frobnicate" in service "web""#.to_string())]);
    }

    #[test]
    fn load_reads_files_and_reports_unreadable_ones() {
        let missing = load(Path::new("/nonexistent/shunt.conf")).unwrap_err();
        assert_eq!((missing.len(), missing[0].line), (1, 0));
        assert!(missing[0].message.contains("cannot read the conf file"), "{missing:?}");
        let path = std::env::temp_dir().join(format!("shunt-parse-test-{}.conf", std::process::id()));
        std::fs::write(&path, OK).unwrap();
        let c = load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.unwrap().path, path);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 42;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        // why: whole words reach deeper than random bytes, which rarely get past the lexer.
        let words: Vec<&str> = "service bind server check workers timeout max_conns log web *:80 \
             127.0.0.1:0 [::1]:9 weight 300 -1 0s 5x 99999999999999999999h expect http send \
             \"\\x41 \"a\" # tcp 2xx accept_proxy \t \n \n"
            .split(' ')
            .collect();
        for round in 0..400 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..next() % 200).map(|_| next() as u8).collect()
            } else {
                let n = next() % 60;
                let picked: Vec<&str> = (0..n).map(|_| words[next() as usize % words.len()]).collect();
                picked.join(" ").into_bytes()
            };
            let _ = parse_bytes(&bytes, Path::new("g.conf"));
        }
        let errs = errors(b"\xff\xfe\x00service");
        assert_eq!(errs.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1]);
    }

    macro_rules! error_cases {
        ($($name:ident: $src:expr => $line:expr, $frag:expr;)*) => {$(
            #[test]
            fn $name() {
                let errs = errors(AsRef::<[u8]>::as_ref($src));
                let hit = errs.len() == 1 && errs[0].0 == $line && errs[0].1.contains($frag);
                assert!(hit, "want one error on line {} with {:?}, got {errs:?}", $line, $frag);
            }
        )*};
    }

    error_cases! {
        unknown_service_directive: ok!(+ "sever b 127.0.0.1:1\n")
            => 4, r#"unknown directive "sever" in service "web" (did you mean "server"?)"#;
        unknown_global_directive: ok!("Workers 2\n" +)
            => 1, r#"unknown directive "Workers" (did you mean "workers"?)"#;
        reserved_tls: ok!(+ "tls cert a key b\n") => 4, r#""tls" is not supported yet"#;
        reserved_allow: ok!(+ "allow 10.0.0.0/8\n") => 4, r#""allow" is not supported yet"#;
        reserved_deny: ok!("deny 0.0.0.0/0\n" +) => 1, r#""deny" is not supported yet"#;
        reserved_max_conns_per_ip: ok!(+ "max_conns_per_ip 5\n")
            => 4, r#""max_conns_per_ip" is not supported yet"#;
        reserved_rate_per_ip: ok!(+ "rate_per_ip 50/s\n")
            => 4, r#""rate_per_ip" is not supported yet"#;
        reserved_proxy_protocol: ok!(+ "proxy_protocol v2\n")
            => 4, r#""proxy_protocol" is not supported yet"#;
        accept_proxy_bind_option: "service web\nbind *:0 accept_proxy\nserver a 127.0.0.1:1\n"
            => 2, "bind: the accept_proxy option is not supported yet";
        global_inside_a_service: ok!(+ "workers 2\n")
            => 4, "is a global directive: it must come before the first service (line 1)";
        service_directive_before_any_service: ok!("balance first\n" +)
            => 1, r#""balance" belongs to a service: add a "service NAME" line before it"#;
        duplicate_global: ok!("workers 1\nworkers 2\n" +)
            => 2, r#"workers: duplicate "workers" (first given on line 1)"#;
        duplicate_balance: ok!(+ "balance first\nbalance source\n")
            => 5, r#"duplicate "balance" (first given on line 4)"#;
        duplicate_check: ok!(+ "check tcp\ncheck tcp\n") => 5, r#"duplicate "check""#;
        duplicate_timeout: ok!(+ "timeout idle 1s\ntimeout connect 1s\ntimeout idle 2s\n")
            => 6, r#"duplicate "timeout idle" (first given on line 4)"#;
        duplicate_server_option: ok!(+ "server b 127.0.0.1:2 backup backup\n")
            => 4, "option backup given twice";
        duplicate_check_option: ok!(+ "check tcp rise 2 rise 3\n") => 4, "option rise given twice";
        arity_workers: ok!("workers\n" +)
            => 1, "workers: wrong number of arguments, expected: workers N";
        arity_log: ok!("log info debug\n" +) => 1, "expected: log error|warn|info|debug|trace";
        arity_server: ok!(+ "server b\n")
            => 4, "expected: server NAME ADDR [weight N] [backup] [disabled] [maxconn N]";
        arity_bind: "service web\nbind\nserver a 127.0.0.1:1\n" => 2, "expected: bind ADDR";
        arity_service: "service\nbind *:0\nserver a 127.0.0.1:1\n"
            => 1, "service: wrong number of arguments, expected: service NAME";
        arity_check: ok!(+ "check\n") => 4, "check: wrong number of arguments";
        arity_check_send: ok!(+ "check send \"x\" \"y\"\n")
            => 4, r#"expected: check send "BYTES" expect "BYTES" [options]"#;
        arity_check_http: ok!(+ "check http GET / 200\n")
            => 4, "check http METHOD PATH expect STATUS";
        arity_timeout: ok!(+ "timeout connect\n") => 4, "expected: timeout connect|idle DURATION";
        number_zero: ok!("workers 0\n" +) => 1, "workers: 0 is out of range 1-256";
        weight_out_of_range: ok!(+ "server b 127.0.0.1:2 weight 300\n")
            => 4, "weight 300 is out of range 0-256";
        maxconn_zero: ok!(+ "server b 127.0.0.1:2 maxconn 0\n")
            => 4, "maxconn 0 is out of range 1-";
        retries_too_many: ok!(+ "retries 101\n") => 4, "retries: 101 is out of range 0-100";
        service_max_conns_zero: ok!(+ "max_conns 0\n") => 4, "max_conns: 0 is out of range 1-";
        check_rise_zero: ok!(+ "check tcp rise 0\n") => 4, "rise 0 is out of range 1-1000";
        check_port_zero: ok!(+ "check tcp port 0\n") => 4, "port 0 is out of range 1-65535";
        duration_bad_unit: ok!("drain_timeout 5x\n" +)
            => 1, r#"duration "5x": expected a number followed by ms, s, m or h, e.g. 250ms"#;
        check_interval_zero: ok!(+ "check tcp interval 0s\n")
            => 4, "check: interval duration 0s must be greater than zero";
        check_timeout_zero: ok!(+ "check tcp timeout 0ms\n")
            => 4, "timeout duration 0ms must be greater than zero";
        connect_timeout_zero: ok!(+ "timeout connect 0ms\n")
            => 4, "connect duration 0ms must be greater than zero";
        idle_timeout_zero: ok!(+ "timeout idle 0h\n")
            => 4, "idle duration 0h must be greater than zero";
        log_unknown_level: ok!("log inf\n" +)
            => 1, r#"unknown level "inf": expected one of error, warn, info, debug, trace (did"#;
        balance_unknown: ok!(+ "balance leastconns\n") => 4, r#"did you mean "leastconn"?"#;
        splice_unknown: ok!(+ "splice yes\n") => 4, "expected one of on, off";
        timeout_unknown_kind: ok!(+ "timeout read 1s\n")
            => 4, r#"unknown kind "read": expected one of connect, idle"#;
        check_unknown_kind: ok!(+ "check tpc\n") => 4, r#"(did you mean "tcp"?)"#;
        check_unknown_option: ok!(+ "check tcp intervall 2s\n")
            => 4, r#"one of interval, timeout, rise, fall, port (did you mean "interval"?)"#;
        check_missing_value: ok!(+ "check tcp rise\n") => 4, r#"missing value: expected "rise N""#;
        check_send_empty_expect: ok!(+ "check send \"x\" expect \"\"\n")
            => 4, "the expect string is empty";
        server_unknown_option: ok!(+ "server b 127.0.0.1:2 wieght 3\n")
            => 4, r#"(did you mean "weight"?)"#;
        server_missing_value: ok!(+ "server b 127.0.0.1:2 weight\n")
            => 4, r#"missing value: expected "weight N""#;
        admin_token_empty: ok!("admin_token \"\"\n" +) => 1, "admin_token: the file name is empty";
        server_port_zero: ok!(+ "server b 127.0.0.1:0\n") => 4, "port 0 is out of range 1-65535";
        server_no_port: ok!(+ "server b 127.0.0.1\n") => 4, r#"address "127.0.0.1" has no port"#;
        server_wildcard: ok!(+ "server b *:80\n") => 4, "a server needs a concrete address";
        server_bad_host: ok!(+ "server b bad_host:80\n")
            => 4, r#""bad_host" is not a valid address"#;
        server_numeric_host: ok!(+ "server b 10.1:80\n") => 4, r#""10.1" is not a valid address"#;
        service_bad_name: "service we/b\nbind *:0\nserver a 127.0.0.1:1\n"
            => 1, r#"service: service name "we/b" may only use letters, digits, '_', '.' and '-'"#;
        duplicate_service: ok!(+ "service web\nbind *:0\nserver a 127.0.0.1:2\n")
            => 4, r#"duplicate service name "web" (first on line 1)"#;
        duplicate_server: ok!(+ "server a 127.0.0.1:2\n")
            => 4, r#"duplicate server name "a" (first on line 3)"#;
        service_without_bind: "service web\nserver a 127.0.0.1:1\n"
            => 1, r#"service "web" has no bind line: add one, e.g. "bind *:8080""#;
        service_without_server: "service web\nbind *:0\n"
            => 1, r#"service "web" has no server line"#;
        no_service_empty_file: "" => 0, "no service defined";
        no_service_globals_only: "workers 2\n# only a comment\n" => 0, "no service defined";
        conflict_across_services:
            ok!("service a\nbind *:80\nserver s 10.0.0.1:1\n" + "bind 127.0.0.1:80")
            => 7, r#"bind: 127.0.0.1:80 conflicts with bind *:80 on line 2 (service "a")"#;
        bind_conflict_same_address: ok!(+ "bind [::1]:80\nbind [::1]:80\n")
            => 5, "[::1]:80 conflicts with bind [::1]:80 on line 4";
        bind_conflict_ipv4_wildcard: ok!(+ "bind 127.0.0.1:80\nbind 0.0.0.0:80\n")
            => 5, "0.0.0.0:80 conflicts with bind 127.0.0.1:80 on line 4";
        bind_conflict_with_admin: ok!("admin 127.0.0.1:9090\n" + "bind *:9090\n")
            => 5, "*:9090 conflicts with admin 127.0.0.1:9090 on line 1";
        lexer_error_surfaces: ok!(+ "check send \"PING\n")
            => 4, "unterminated quote starting at column 12";
        invalid_utf8_line: b"service web\nbind *:0\nserver a 127.0.0.1:1\nbalance \xff\n"
            => 4, "line is not valid UTF-8";
        non_utf8_quoted_argument: ok!(+ "balance \"\\xff\"\n")
            => 4, "balance: argument is not valid UTF-8 text";
        broken_bind_line_counts_as_a_bind: b"service web\nbind *:0\xff\nserver a 127.0.0.1:1\n"
            => 2, "line is not valid UTF-8 (byte 0xff at column 9)";
        broken_server_line_counts_as_a_server: "service web\nbind *:0\nserver a \"127.0.0.1:1\n"
            => 3, "unterminated quote";
        broken_service_line_opens_a_service: ok!(+ "balance first\nservice \"api\nbalance first\n")
            => 5, "unterminated quote";
    }
}
