//! The validated configuration: an immutable value built once per load (start-up or reload).
//!
//! `parse.rs` turns conf-file text into this value, collecting every error as `FILE:LINE: message`.
//! Nothing outside this module ever sees a conf-file string: workers, the health thread and the
//! admin thread receive an `Arc<Config>` and never mutate it. A reload builds a whole new value.

mod lexer;
mod parse;
mod parse_check;
mod parse_tls;
mod render;
mod secrets;

pub use parse::{load, parse_bytes, parse_bytes_offline};
pub use render::{
    acl_lines, check as check_text, duration as duration_text, per_source_lines, render, server_tls_text, tls_lines,
};

use crate::acl::Acl;
use crate::limits::PerSource;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default conf file location (DESIGN.md, "Command line").
pub const DEFAULT_PATH: &str = "/etc/shunt/shunt.conf";
/// The largest server weight (DESIGN.md).
pub const MAX_WEIGHT: u32 = 256;
/// `max_conns` when the file does not set it.
pub const DEFAULT_MAX_CONNS: usize = 100_000;

/// Everything a running shunt needs to know, checked whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this value was read from (for messages and reloads).
    pub path: PathBuf,
    /// Event-loop threads, each with its own `SO_REUSEPORT` listeners. At least 1.
    pub workers: usize,
    /// Proxied connections over all services together; at the cap, accepting pauses.
    pub max_conns: usize,
    /// Admin HTTP endpoint address; `None` = off.
    pub admin: Option<SocketAddr>,
    /// File whose content (trimmed) is the bearer token that admin POSTs need.
    pub admin_token: Option<PathBuf>,
    /// `user NAME`: the user shunt becomes once every listener is bound.
    pub user: Option<String>,
    /// How long SIGTERM waits for live connections.
    pub drain_timeout: Duration,
    /// Log level from the `log` directive; `RUST_LOG`, when set, wins.
    pub log_level: log::LevelFilter,
    /// Services in file order. Names are unique.
    pub services: Vec<Service>,
    /// Global `allow`/`deny` lines: checked before each service's own.
    pub acl: Acl,
    /// Global `max_conns_per_ip` / `rate_per_ip`: one table over every service.
    pub per_source: PerSource,
}

/// One service: its listeners, its server pool, its policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// Line of the `service` directive (for messages).
    pub line: usize,
    /// At least one.
    pub binds: Vec<Bind>,
    pub balance: Balance,
    /// At least one; names unique within the service.
    pub servers: Vec<Server>,
    pub check: Check,
    /// On a failed connect, try the next server this many more times.
    pub retries: u32,
    /// A session's deadlines, copied into it when it starts.
    pub timeouts: Timeouts,
    /// Per-service cap on proxied connections (`max_conns N` inside a service); `None` = no cap.
    pub max_conns: Option<usize>,
    /// `timeout queue`: how long clients may wait in the listen backlog while a connection cap
    /// (the service's or the global one) is full. Once no room has freed for that long, waiting
    /// and new clients are refused with a reset, counted as refused_total{reason="limit"},
    /// until room frees up. Zero refuses at once.
    pub queue_timeout: Duration,
    /// `splice on|off|always`: how plain TCP moves (see [`Splice`]).
    pub splice: Splice,
    /// `on_down close`: a server going down takes its live sessions with it (reset both ways).
    pub on_down_close: bool,
    /// `tls ...` lines: TLS is terminated for this service's clients. `None`: plain TCP.
    pub tls: Option<Tls>,
    /// `route sni PATTERN SERVICE` lines, in file order (the first match wins).
    pub routes: Vec<Route>,
    /// The service's `allow`/`deny` lines.
    pub acl: Acl,
    /// The service's `max_conns_per_ip` / `rate_per_ip`.
    pub per_source: PerSource,
    /// `proxy_protocol v1|v2`: each server connection starts with a PROXY header.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// `route sni PATTERN SERVICE`: clients asking for a matching server name go to another
/// service's servers (terminated if this service has `tls`, passed through untouched if not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub pattern: SniPattern,
    /// The target service's name, and its position in `Config::services` (set once the whole
    /// file is read).
    pub service: String,
    pub target: usize,
    pub line: usize,
}

/// A server name pattern of a route: compared with the lower-cased name the client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniPattern {
    /// `api.example.com`: that name only.
    Exact(String),
    /// `*.example.com`, held as `.example.com`: every name under it, at any depth (as nginx's
    /// `server_name`), not `example.com` itself.
    Under(String),
}

impl SniPattern {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            SniPattern::Exact(n) => n == name,
            SniPattern::Under(suffix) => name.len() > suffix.len() && name.ends_with(suffix.as_str()),
        }
    }
}

impl fmt::Display for SniPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SniPattern::Exact(n) => f.write_str(n),
            SniPattern::Under(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// What a service's `tls` lines say. The files are read (and checked: a key that does not match
/// its certificate is an error) when the configuration is loaded, by `crate::tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// `tls cert FILE key FILE`, in file order: chosen by the client's SNI, the first when none
    /// matches.
    pub certs: Vec<CertKey>,
    /// `tls versions`: TLS 1.2 and 1.3 by default (rustls has nothing older).
    pub versions: Vec<TlsVersion>,
    /// `tls alpn`: protocols offered, in preference order (none by default).
    pub alpn: Vec<String>,
    /// `tls client_ca FILE` and its line: clients must present a certificate this CA signed.
    pub client_ca: Option<(PathBuf, usize)>,
    /// The first `tls` line (for messages).
    pub line: usize,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl TlsVersion {
    /// The conf spelling: `1.2`, `1.3`.
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

/// The deadlines of one session. A session copies its service's when it starts, so a reload's
/// new values reach only new sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `timeout connect`: a server connect attempt that takes longer fails (and is retried).
    pub connect: Duration,
    /// `timeout idle`: no byte in either direction for this long: close both sides.
    pub idle: Duration,
    /// `timeout fin`: one direction finished (or a peer reset and its last bytes wait for the
    /// other peer to take them) and no byte moved for this long: close. HAProxy's
    /// `timeout client-fin`/`server-fin`; without it a half-closed session would wait out the
    /// idle timeout.
    pub fin: Duration,
    /// `timeout handshake`: the whole TLS handshake, never reset per byte (a client sending a
    /// byte now and then cannot hold a session open).
    pub handshake: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(600),
            fin: Duration::from_secs(30),
            handshake: Duration::from_secs(5),
        }
    }
}

/// How a service moves plain TCP bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Splice {
    /// `on` (default): bulk transfers move with splice(2) through a pipe, never entering
    /// userspace; a flow starts on the copy path and switches once a read fills a whole buffer,
    /// and switches back when its messages are small again. Small messages are cheaper to copy
    /// (two syscalls) than to splice (three: the pipe adds a hop).
    #[default]
    Auto,
    /// `always`: every byte moves with splice(2).
    Always,
    /// `off`: every byte moves through fixed userspace buffers.
    Off,
}

/// A listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// `*:PORT`: every IPv4 and IPv6 address (one dual-stack `[::]` socket).
    Any(u16),
    /// A concrete address such as `127.0.0.1:80`, `0.0.0.0:80`, `[::1]:80`, `[::]:80`.
    Addr(SocketAddr),
}

impl ListenAddr {
    /// The socket address to bind. `Any` binds `[::]` with `IPV6_V6ONLY` off.
    pub fn socket_addr(&self) -> SocketAddr {
        match *self {
            ListenAddr::Any(port) => SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), port),
            ListenAddr::Addr(a) => a,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Any(port) => write!(f, "*:{port}"),
            ListenAddr::Addr(a) => write!(f, "{a}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    pub addr: ListenAddr,
    pub line: usize,
    /// `accept_proxy`: every client of this bind starts with a PROXY header (v1 or v2), whose
    /// client address then stands for the peer's.
    pub accept_proxy: bool,
    /// `defer_accept`: the kernel hands over a connection once its client has sent something
    /// (`TCP_DEFER_ACCEPT`), sparing a wake-up per connection; only for protocols where the
    /// client speaks first (HTTP, TLS, PROXY), never SMTP, MySQL or the like.
    pub defer_accept: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Unique within its service.
    pub name: String,
    pub addr: SocketAddr,
    /// 0..=256; 0 = no new connections.
    pub weight: u32,
    /// Gets traffic only while no non-backup server of the service is up.
    pub backup: bool,
    /// Starts administratively disabled: no traffic, no probes.
    pub disabled: bool,
    /// Cap on this server's concurrent connections; `None` = no cap.
    pub maxconn: Option<u32>,
    /// `tls ...` options: shunt speaks TLS to this server (sessions and health probes).
    pub tls: Option<ServerTls>,
    pub line: usize,
}

/// `server NAME ADDR tls [ca FILE | verify none] [sni NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub verify: Verify,
    /// The name sent as SNI and checked against the server's certificate: `sni NAME`, or the
    /// host name the address was given as; `None` for an address (checked as an IP address).
    pub name: Option<String>,
}

/// How a server's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Against the system's CA bundle (the default).
    SystemRoots,
    /// Against the CAs of this PEM file (`ca FILE`).
    Ca(PathBuf),
    /// Not at all (`verify none`): encryption without authentication.
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round robin (nginx's algorithm).
    #[default]
    RoundRobin,
    /// The server with the fewest active connections relative to its weight.
    LeastConn,
    /// The first server in file order that has room (`maxconn`).
    First,
    /// A hash of the client address picks the server.
    Source,
    /// Consistent hashing of the client address through a Maglev table (`balance::maglev`).
    Maglev,
}

/// The health check applied to every server of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    pub fall: u32,
    /// Probe this port instead of the server's.
    pub port: Option<u16>,
    /// The `check` line (0 without one).
    pub line: usize,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            kind: CheckKind::None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            port: None,
            line: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    /// No `check` line: no periodic probes while servers are up. A server that passive checks
    /// marked down is probed with a TCP connect until it rises again.
    None,
    /// A connect succeeds.
    Tcp,
    /// Connect, send `send`, the reply must contain `expect`.
    Send { send: Vec<u8>, expect: Vec<u8> },
    /// An HTTP/1.1 request; the status must match.
    Http { method: String, path: String, expect: StatusMatch },
    /// RESP: `AUTH` when a password file is given, then `INFO replication`; the role must match.
    Redis { role: Option<RedisRole>, password: Option<Secret> },
    /// The PostgreSQL protocol: log in as `user`, then `SELECT pg_is_in_recovery()`.
    Pgsql { user: String, password: Option<Secret>, dbname: Option<String>, role: Option<PgRole> },
}

/// `check pgsql role primary|standby`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgRole {
    Primary,
    Standby,
}

impl PgRole {
    pub fn name(self) -> &'static str {
        match self {
            PgRole::Primary => "primary",
            PgRole::Standby => "standby",
        }
    }
}

/// `check redis role master|replica`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisRole {
    Master,
    Replica,
}

impl RedisRole {
    pub fn name(self) -> &'static str {
        match self {
            RedisRole::Master => "master",
            RedisRole::Replica => "replica",
        }
    }
}

/// A password file (`password FILE`): its path as written, and, once the configuration is
/// loaded (`config::load`), its first line without the line ending. The secret never leaves the
/// process: `GET /config` shows the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub path: PathBuf,
    pub value: String,
}

/// `expect 200` or `expect 2xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    /// The hundreds digit: `2xx` is `Class(2)`.
    Class(u16),
}

impl Balance {
    /// The conf-file spelling.
    pub fn name(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
            Balance::First => "first",
            Balance::Source => "source",
            Balance::Maglev => "maglev",
        }
    }
}

impl StatusMatch {
    pub fn matches(&self, status: u16) -> bool {
        match *self {
            StatusMatch::Exact(s) => s == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

/// One configuration error, reported as `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the error concerns the file as a whole (unreadable, empty of services).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The `ordinal`-th bind (0-based, in file order over every service) spelled `conf`: how a
    /// listener, kept over reloads by its spelling, finds the bind it serves now.
    pub fn bind_at(&self, conf: ListenAddr, ordinal: usize) -> Option<&Bind> {
        self.services.iter().flat_map(|s| &s.binds).filter(|b| b.addr == conf).nth(ordinal)
    }

    /// One line per service, for `--check`.
    pub fn summary(&self) -> Vec<String> {
        self.services
            .iter()
            .map(|s| {
                let binds: Vec<String> = s.binds.iter().map(|b| b.addr.to_string()).collect();
                format!(
                    "service {}: bind {} -> {} server(s), balance {}, check {}",
                    s.name,
                    binds.join(","),
                    s.servers.len(),
                    s.balance.name(),
                    match &s.check.kind {
                        CheckKind::None => "none (passive only)",
                        CheckKind::Tcp => "tcp",
                        CheckKind::Send { .. } => "send/expect",
                        CheckKind::Http { .. } => "http",
                        CheckKind::Redis { .. } => "redis",
                        CheckKind::Pgsql { .. } => "pgsql",
                    }
                )
            })
            .collect()
    }
}
