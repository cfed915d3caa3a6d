//! Reading shunt's log: the start-up lines that say where it listens, the one line per session
//! (`CLIENT SERVICE/SERVER CODE up=N down=N connect_ms=N duration_ms=N`), and the timestamps of
//! env_logger lines. Pure text functions; [`super::Shunt`] applies them to a live process.

use std::collections::BTreeMap;
use std::net::SocketAddr;

// ------------------------------------------------------------------------------------------------
// Start-up lines
// ------------------------------------------------------------------------------------------------

/// The log target of the start-up lines; shunt prints them whatever its log level.
const STARTUP: &str = "shunt::startup] ";

/// Where a shunt listens, from its start-up lines (`service NAME listening on ADDR`, one per
/// `bind` with port 0 resolved, and `admin endpoint listening on ADDR`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listening {
    /// (service, address) in the order shunt bound them.
    pub services: Vec<(String, SocketAddr)>,
    pub admin: Option<SocketAddr>,
}

impl Listening {
    /// Parses every start-up line of `log`; other lines are ignored.
    pub fn parse(log: &str) -> Listening {
        let mut out = Listening::default();
        for line in log.lines() {
            let Some((_, rest)) = line.split_once(STARTUP) else { continue };
            if let Some(addr) = rest.strip_prefix("admin endpoint listening on ") {
                out.admin = Some(parse_addr(line, addr));
            } else if let Some((name, addr)) =
                rest.strip_prefix("service ").and_then(|r| r.split_once(" listening on "))
            {
                out.services.push((name.to_string(), parse_addr(line, addr)));
            }
        }
        out
    }

    /// The addresses of service `name`, in bind order.
    pub fn of(&self, name: &str) -> Vec<SocketAddr> {
        self.services.iter().filter(|(n, _)| n == name).map(|(_, a)| *a).collect()
    }
}

fn parse_addr(line: &str, addr: &str) -> SocketAddr {
    addr.trim().parse().unwrap_or_else(|e| panic!("bad address in start-up line {line:?}: {e}"))
}

/// What a conf asks shunt to listen on, to know when it is all up: the number of `bind` lines
/// and whether there is an `admin` line (naively parsed: a `#` ends the line).
pub fn conf_listeners(conf: &str) -> (usize, bool) {
    let (mut binds, mut admin) = (0, false);
    for line in conf.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("bind"), Some(_)) => binds += 1,
            (Some("admin"), Some(_)) => admin = true,
            _ => {}
        }
    }
    (binds, admin)
}

// ------------------------------------------------------------------------------------------------
// Session lines
// ------------------------------------------------------------------------------------------------

/// One session line: `10.77.0.2:PORT svc/s0 -- up=25 down=1003 connect_ms=0 duration_ms=2`.
#[derive(Debug, Clone)]
pub struct Session {
    pub client: SocketAddr,
    pub port: u16,
    pub service: String,
    pub server: String,
    /// The termination code: `--` for a normal end, `CD`, `SD`, `TD`, `NC`...
    pub code: String,
    pub up: u64,
    pub down: u64,
    pub connect_ms: i64,
    pub duration_ms: i64,
    pub raw: String,
}

/// Every session line of `log`, in order.
pub fn sessions(log: &str) -> Vec<Session> {
    log.lines().filter_map(session).collect()
}

/// Parses one session line; None for any other line.
pub fn session(line: &str) -> Option<Session> {
    let (_, rest) = line.split_once("] ")?;
    let w: Vec<&str> = rest.split_whitespace().collect();
    if w.len() < 6 || !w[3].starts_with("up=") {
        return None;
    }
    let (Ok(client), Some((service, server))) = (w[0].parse::<SocketAddr>(), w[1].split_once('/')) else {
        return None;
    };
    let num = |k: &str| w.iter().find_map(|x| x.strip_prefix(k)).and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
    Some(Session {
        client,
        port: client.port(),
        service: service.to_string(),
        server: server.to_string(),
        code: w[2].to_string(),
        up: num("up=") as u64,
        down: num("down=") as u64,
        connect_ms: num("connect_ms="),
        duration_ms: num("duration_ms="),
        raw: line.to_string(),
    })
}

/// How many sessions ended with each termination code.
pub fn count_codes(s: &[Session]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for x in s {
        *m.entry(x.code.clone()).or_insert(0) += 1;
    }
    m
}

/// The value of `key` (`"up="`, `"down="`...) in a log line; panics if there is none.
pub fn field(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

// ------------------------------------------------------------------------------------------------
// Timestamps
// ------------------------------------------------------------------------------------------------

/// The time of day of an env_logger line (`[2025-01-02T03:04:05.678Z WARN  shunt] ...`) in
/// milliseconds since midnight UTC; None for a line without such a timestamp.
pub fn log_time_ms(line: &str) -> Option<u64> {
    let ts = line.strip_prefix('[')?.split_whitespace().next()?;
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut it = time.split(':');
    let (h, m, s) = (it.next()?, it.next()?, it.next()?);
    let (sec, frac) = s.split_once('.').unwrap_or((s, "0"));
    let frac_ms = format!("{frac:0<3}")[..3].parse::<u64>().ok()?;
    Some(((h.parse::<u64>().ok()? * 60 + m.parse::<u64>().ok()?) * 60 + sec.parse::<u64>().ok()?) * 1000 + frac_ms)
}

/// Milliseconds from log line `a` to log line `b` (both with timestamps), across midnight too.
pub fn log_ms_between(a: &str, b: &str) -> i64 {
    let (ta, tb) = (
        log_time_ms(a).unwrap_or_else(|| panic!("no timestamp in {a:?}")) as i64,
        log_time_ms(b).unwrap_or_else(|| panic!("no timestamp in {b:?}")) as i64,
    );
    let d = tb - ta;
    if d < -43_200_000 {
        d + 86_400_000
    } else {
        d
    }
}
