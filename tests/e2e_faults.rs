//! Fault injection over real links: the client, shunt and every server run in their own network
//! namespace, joined by veth (tests/common/topo.rs), and faults are injected per server inside
//! its namespace: iptables (refused, black-holed, a 1 s connect), SIGSTOP (frozen), SIGKILL and
//! restarts (flapping, all down, random kills), `tc tbf` (a slow client link), a namespaced
//! `ip_local_port_range` (ephemeral-port squeeze). Servers are `examples/test_peer` processes;
//! clients are threads of the test that entered the client namespace with setns(2), so they can
//! check every byte against the harness's generated streams.
//!
//! Every test ends with [`Lab::invariants`]: shunt alive, no panic in its log, active
//! connections back to 0 (/status and /metrics), its sockets back to the baseline taken after
//! warm-up (pooled pipes allowed), no socket in CLOSE_WAIT, and idle CPU near 0.
//!
//! Each test prints a `RESULT` line with its figures (`cargo nextest run --test e2e_faults
//! --no-capture` shows them). Random choices come from a seed printed as `SHUNT_FAULT_SEED=N`;
//! set that variable to replay a run. `SHUNT_SOAK_SECS` sets the length of the mixed-load run
//! with random server kills (120 s by default, as the issue asks; shorter for a quick look).
//!
//! Needs root, iproute2 (`ip netns`), iptables and tc, like tests/e2e_netns.rs.

mod common;

use common::topo::{server_addr, Topo, LB_IP};
use common::*;
use socket2::{Domain, SockRef, Socket, Type};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;
/// The service's port on the balancer (inside the lb namespace; no clash between tests).
const SVC_PORT: u16 = 8000;
/// The admin endpoint, on the lb namespace's own loopback.
const ADMIN: &str = "127.0.0.1:9090";

fn lb_addr() -> SocketAddr {
    SocketAddr::from((LB_IP, SVC_PORT))
}

// ------------------------------------------------------------------------------------------------
// Random choices that can be replayed
// ------------------------------------------------------------------------------------------------

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    /// From `SHUNT_FAULT_SEED`, else from the clock; the seed is printed for a replay.
    fn seeded(test: &str) -> Rng {
        let seed = std::env::var("SHUNT_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{test}: SHUNT_FAULT_SEED={seed}");
        Rng(seed)
    }

    fn fork(&mut self, k: u64) -> Rng {
        Rng(splitmix(self.next() ^ k))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }

    /// Uniform in 0..n (0 when n is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// 0..=max, spread evenly over orders of magnitude (as many 10-byte as 1-MiB sizes).
    fn size(&mut self, max: u64) -> u64 {
        let bits = 64 - max.leading_zeros() as u64;
        let b = self.below(bits + 1);
        if b == 0 {
            return 0;
        }
        self.range(1 << (b - 1), (1u64 << b) - 1).min(max)
    }
}

// ------------------------------------------------------------------------------------------------
// Clients (threads inside the client namespace)
// ------------------------------------------------------------------------------------------------

/// The 25-byte request header test_peer reads: mode, seed, len, arg.
fn header(mode: u8, seed: u64, len: u64) -> [u8; 25] {
    let mut h = [0u8; 25];
    h[0] = mode;
    h[1..9].copy_from_slice(&seed.to_le_bytes());
    h[9..17].copy_from_slice(&len.to_le_bytes());
    h
}

fn dial(addr: SocketAddr, read_timeout: Duration) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.set_write_timeout(Some(T))?;
    Ok(s)
}

/// A client socket whose receive buffer is pinned before connect (the window stays small).
fn dial_small_rcvbuf(addr: SocketAddr, rcvbuf: usize, read_timeout: Duration) -> io::Result<TcpStream> {
    dial_bound(addr, Some(rcvbuf), read_timeout).1
}

/// Connects from a source port chosen (by binding) before the connect, and returns that port
/// even when the connect fails: a session that shunt accepted and reset at once (its server
/// died at that instant) can still be matched with shunt's log line for it.
fn dial_bound(addr: SocketAddr, rcvbuf: Option<usize>, read_timeout: Duration) -> (u16, io::Result<TcpStream>) {
    let s = match Socket::new(Domain::IPV4, Type::STREAM, None) {
        Ok(s) => s,
        Err(e) => return (0, Err(e)),
    };
    let bound = s.bind(&SocketAddr::from(([0, 0, 0, 0], 0)).into()).and_then(|_| s.local_addr());
    let port = bound.ok().and_then(|a| a.as_socket()).map_or(0, |a| a.port());
    let connected = (|| {
        if let Some(n) = rcvbuf {
            s.set_recv_buffer_size(n)?;
        }
        s.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(read_timeout))?;
        s.set_write_timeout(Some(T))?;
        Ok(s)
    })();
    (port, connected)
}

/// Closes with RST instead of FIN.
fn abort(s: TcpStream) {
    let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// How a stream from a server ended, as the client saw it.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// Every byte, then a clean EOF.
    Complete,
    /// A connection reset (RST) after `got` bytes.
    Reset,
    /// A clean EOF before the end: a truncation a client could take for a whole answer.
    Eof,
    Timeout,
    /// A byte that is not the stream's: lost, reordered, or someone else's data.
    Corrupt(String),
    /// The connect to the balancer itself failed.
    NoConnect(String),
    Other(String),
}

impl End {
    fn of(e: &io::Error) -> End {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => End::Reset,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => End::Timeout,
            // read_exact met a clean EOF: a FIN where the stream should have gone on.
            io::ErrorKind::UnexpectedEof => End::Eof,
            _ => End::Other(e.to_string()),
        }
    }

    /// A failure that no fault excuses.
    fn is_bug(&self) -> bool {
        matches!(self, End::Eof | End::Corrupt(_))
    }
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Complete => write!(f, "complete"),
            End::Reset => write!(f, "reset"),
            End::Eof => write!(f, "clean EOF before the end"),
            End::Timeout => write!(f, "timeout"),
            End::Corrupt(m) => write!(f, "corrupt: {m}"),
            End::NoConnect(m) => write!(f, "connect failed: {m}"),
            End::Other(m) => write!(f, "error: {m}"),
        }
    }
}

#[derive(Debug, Clone)]
struct Outcome {
    /// The server that answered (its name line), "" if none did.
    server: String,
    /// Stream bytes received and checked.
    got: u64,
    end: End,
    took: Duration,
    /// The client's local port: the session's key in shunt's log.
    port: u16,
    /// When the request started, relative to `epoch` passed in.
    at: Duration,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.end == End::Complete
    }
}

/// Reads stream `seed` (`len` bytes) from `r` to EOF or error, checking every byte.
fn read_checked(r: &mut impl Read, seed: u64, len: u64, got: &mut u64) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return if *got == len { End::Complete } else { End::Eof },
            Ok(n) => {
                if *got + n as u64 > len {
                    return End::Corrupt(format!("more than the {len} bytes of the stream"));
                }
                pattern_fill(seed, *got, &mut want[..n]);
                if buf[..n] != want[..n] {
                    let i = (0..n).find(|&i| buf[i] != want[i]).unwrap();
                    return End::Corrupt(format!("byte {} of stream {seed} differs", *got + i as u64));
                }
                *got += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return End::of(&e),
        }
    }
}

/// `Q` request: the server sends its name line, `len` bytes of stream `seed`, then closes.
fn query_at(addr: SocketAddr, seed: u64, len: u64, read_timeout: Duration, epoch: Instant) -> Outcome {
    query_with(addr, seed, len, read_timeout, epoch, How::Plain)
}

/// How a [`query_with`] client behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum How {
    Plain,
    /// FIN right after the request header.
    HalfClose,
    /// A 64 KiB receive buffer and a 10 ms nap after every read: a long-lived session.
    Slow,
}

/// Sleeps after every read: a slow reader.
struct Slow<R>(R, bool);

impl<R: Read> Read for Slow<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if self.1 {
            thread::sleep(Duration::from_millis(10));
        }
        Ok(n)
    }
}

fn query_with(addr: SocketAddr, seed: u64, len: u64, rt: Duration, epoch: Instant, how: How) -> Outcome {
    let t0 = Instant::now();
    let at = t0.saturating_duration_since(epoch);
    let mut out = Outcome { server: String::new(), got: 0, end: End::Complete, took: Duration::ZERO, port: 0, at };
    let finish = |mut o: Outcome, end: End| {
        o.end = end;
        o.took = t0.elapsed();
        o
    };
    let (port, dialed) = dial_bound(addr, (how == How::Slow).then_some(64 * 1024), rt);
    out.port = port;
    let mut s = match dialed {
        Ok(s) => s,
        // A refusal can be so quick that the reset beats connect()'s own completion check.
        Err(e) if End::of(&e) == End::Reset => return finish(out, End::Reset),
        Err(e) => return finish(out, End::NoConnect(e.to_string())),
    };
    if let Err(e) = s.write_all(&header(b'Q', seed, len)) {
        return finish(out, End::of(&e));
    }
    if how == How::HalfClose {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut r = BufReader::with_capacity(64 * 1024, Slow(s, how == How::Slow));
    let mut name = Vec::new();
    match r.read_until(b'\n', &mut name) {
        Ok(_) if name.ends_with(b"\n") => out.server = String::from_utf8_lossy(&name[..name.len() - 1]).into_owned(),
        Ok(_) => return finish(out, if name.is_empty() { End::Eof } else { End::Other(format!("name {name:?}")) }),
        Err(e) => return finish(out, End::of(&e)),
    }
    let mut got = 0;
    let end = read_checked(&mut r, seed, len, &mut got);
    out.got = got;
    finish(out, end)
}

fn query(seed: u64, len: u64, epoch: Instant) -> Outcome {
    query_at(lb_addr(), seed, len, T, epoch)
}

/// Sends small requests every 20 ms until one is served; returns how long after `since` that
/// was. Fails the test if none is served within `limit` of `since`.
fn first_served_since(since: Instant, limit: Duration, seed: u64, what: &str) -> Duration {
    let epoch = Instant::now();
    for i in 0.. {
        let o = query(seed + i, 1000, epoch);
        if o.ok() {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "no request served within {limit:?} {what}: {o:?}");
        thread::sleep(Duration::from_millis(20));
    }
    unreachable!()
}

/// An echo session of `len` bytes of stream `seed`, in chunks of up to `chunk_max` bytes, each
/// read back before the next is sent; then FIN, and a clean EOF must follow. With `abort_at`,
/// the client resets the connection once that many bytes went out (with one more chunk in
/// flight, sometimes). Returns whether it aborted.
fn echo_session(
    addr: SocketAddr,
    seed: u64,
    len: u64,
    chunk_max: u64,
    abort_at: Option<u64>,
    rng: &mut Rng,
) -> Result<bool, (End, String)> {
    let mut s = dial(addr, T).map_err(|e| (End::NoConnect(e.to_string()), format!("connect: {e}")))?;
    let fail = |what: String, e: &io::Error| (End::of(e), format!("{what}: {e}"));
    s.write_all(&header(b'E', seed, len)).map_err(|e| fail("header".into(), &e))?;
    let mut out = vec![0u8; chunk_max as usize];
    let mut back = vec![0u8; chunk_max as usize];
    let mut sent = 0u64;
    while sent < len {
        let n = rng.range(1, chunk_max).min(len - sent) as usize;
        pattern_fill(seed, sent, &mut out[..n]);
        s.write_all(&out[..n]).map_err(|e| fail(format!("write at {sent}"), &e))?;
        s.read_exact(&mut back[..n]).map_err(|e| fail(format!("echo of {sent}..{}", sent + n as u64), &e))?;
        if back[..n] != out[..n] {
            let i = (0..n).find(|&i| back[i] != out[i]).unwrap();
            let m = format!("echo byte {} of stream {seed} differs", sent + i as u64);
            return Err((End::Corrupt(m.clone()), m));
        }
        sent += n as u64;
        if abort_at.is_some_and(|a| sent >= a) {
            if sent < len && rng.chance(0.5) {
                let n = rng.range(1, chunk_max).min(len - sent) as usize;
                pattern_fill(seed, sent, &mut out[..n]);
                let _ = s.write_all(&out[..n]);
            }
            abort(s);
            return Ok(true);
        }
    }
    s.shutdown(Shutdown::Write).map_err(|e| fail("shutdown".into(), &e))?;
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(false),
        Ok(_) => {
            let m = format!("{} bytes after the echo", rest.len());
            Err((End::Corrupt(m.clone()), m))
        }
        Err(e) => Err(fail("waiting for the echo's EOF".into(), &e)),
    }
}

// ------------------------------------------------------------------------------------------------
// shunt's log
// ------------------------------------------------------------------------------------------------

/// One session line: `10.77.0.2:PORT svc/s0 -- up=25 down=1003 connect_ms=0 duration_ms=2`.
#[derive(Debug, Clone)]
struct Session {
    port: u16,
    service: String,
    server: String,
    code: String,
    up: u64,
    down: u64,
    connect_ms: i64,
    duration_ms: i64,
    raw: String,
}

fn sessions(log: &str) -> Vec<Session> {
    let mut out = Vec::new();
    for line in log.lines() {
        let Some((_, rest)) = line.split_once("] ") else { continue };
        let w: Vec<&str> = rest.split_whitespace().collect();
        if w.len() < 6 || !w[3].starts_with("up=") {
            continue;
        }
        let (Ok(client), Some((service, server))) = (w[0].parse::<SocketAddr>(), w[1].split_once('/')) else {
            continue;
        };
        let num = |k: &str| w.iter().find_map(|x| x.strip_prefix(k)).and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
        out.push(Session {
            port: client.port(),
            service: service.to_string(),
            server: server.to_string(),
            code: w[2].to_string(),
            up: num("up=") as u64,
            down: num("down=") as u64,
            connect_ms: num("connect_ms="),
            duration_ms: num("duration_ms="),
            raw: line.to_string(),
        });
    }
    out
}

fn count_codes(s: &[Session]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for x in s {
        *m.entry(x.code.clone()).or_insert(0) += 1;
    }
    m
}

/// Waits until shunt's log has at least `n` session lines; returns them all.
fn wait_sessions(shunt: &Shunt, n: usize, timeout: Duration) -> Vec<Session> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = sessions(&shunt.log());
        if s.len() >= n {
            return s;
        }
        assert!(Instant::now() < deadline, "{} session lines in shunt's log after {timeout:?}, want {n}", s.len());
        thread::sleep(Duration::from_millis(20));
    }
}

fn metric_in(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(key).filter(|r| r.starts_with(' ')).and_then(|r| r.trim().parse().ok()))
}

fn srv_metric(name: &str, server: &str) -> String {
    format!("{name}{{service=\"svc\",server=\"{server}\"}}")
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

// ------------------------------------------------------------------------------------------------
// The lab: topology, servers, shunt
// ------------------------------------------------------------------------------------------------

/// The service block most fault tests use: two retries, quick probes that expect `PONG`
/// (test_peer answers `PING`), rise 2, and the first failure decisive.
const FAULT_SVC: &str = "  retries 2\n  timeout connect 500ms\n  timeout idle 30s\n\
  check send \"PING\\n\" expect \"PONG\" interval 300ms timeout 300ms rise 2 fall 1\n";

/// A conf with service `svc` on 10.77.0.1:8000 over `n` servers (with per-server options),
/// the admin endpoint on the lb namespace's loopback, `global` and `service` lines added.
fn conf(server_opts: &[&str], global: &str, service: &str) -> String {
    let mut c = format!("log info\nadmin {ADMIN}\n{global}service svc\n  bind {}\n", lb_addr());
    for (i, opts) in server_opts.iter().enumerate() {
        c.push_str(&format!("  server s{i} {}{opts}\n", server_addr(i)));
    }
    c.push_str(service);
    c
}

/// Declared in drop order: shunt and the servers are killed before the namespaces go.
struct Lab {
    shunt: Shunt,
    servers: Vec<Option<Proc>>,
    server_args: Vec<Vec<String>>,
    dir: TempDir,
    workers: usize,
    topo: Topo,
}

struct Baseline {
    sockets: usize,
    other: usize,
    fds: usize,
    rss_kib: u64,
}

impl Lab {
    fn start(server_args: &[&[&str]], conf: &str) -> Lab {
        Lab::start_with(server_args, conf, |_| {})
    }

    /// `setup` runs on the topology before the servers and shunt start (sysctl, tc).
    fn start_with(server_args: &[&[&str]], conf: &str, setup: impl FnOnce(&Topo)) -> Lab {
        let topo = Topo::new(server_args.len());
        setup(&topo);
        let dir = TempDir::new("faults");
        let server_args: Vec<Vec<String>> =
            server_args.iter().map(|a| a.iter().map(|s| s.to_string()).collect()).collect();
        let servers = (0..server_args.len()).map(|i| Some(spawn_peer(&topo, i, &server_args[i], &dir))).collect();
        let shunt = start_shunt_wrapped(&["ip", "netns", "exec", &topo.lb.name], conf);
        let workers = conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("workers ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(1);
        Lab { shunt, servers, server_args, dir, workers, topo }
    }

    fn client_ns(&self) -> String {
        self.topo.client.name.clone()
    }

    /// Runs `f` on a thread in the client namespace.
    fn client<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        run_in(&self.topo.client.name, f)
    }

    fn admin(&self, path: &str) -> (u16, String) {
        run_in(&self.topo.lb.name, || http_get(ADMIN, path))
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.admin("/status").1).expect("/status is JSON")
    }

    fn active(&self) -> u64 {
        self.status()["active_connections"].as_u64().expect("active_connections")
    }

    fn metrics(&self) -> String {
        self.admin("/metrics").1
    }

    fn metric(&self, key: &str) -> f64 {
        let m = self.metrics();
        metric_in(&m, key).unwrap_or_else(|| panic!("no metric {key} in:\n{m}"))
    }

    /// Runs `argv` inside server `i`'s namespace.
    fn in_server(&self, i: usize, argv: &[&str]) {
        self.topo.servers[i].exec_ok(argv).unwrap_or_else(|e| panic!("{e}"));
    }

    fn in_lb(&self, argv: &[&str]) -> String {
        self.topo.lb.exec_ok(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.servers[i].take() {
            p.signal(libc::SIGKILL);
            p.wait_timeout(T).expect("a SIGKILLed server exits");
        }
    }

    fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "s{i} is running");
        self.servers[i] = Some(spawn_peer(&self.topo, i, &self.server_args[i], &self.dir));
    }

    fn signal(&mut self, i: usize, sig: i32) {
        self.servers[i].as_mut().expect("server running").signal(sig);
    }

    /// The servers shunt holds UP now (/status).
    fn up_servers(&self) -> Vec<String> {
        let st = self.status();
        st["services"][0]["servers"]
            .as_array()
            .expect("servers in /status")
            .iter()
            .filter(|v| v["state"] == "up")
            .map(|v| v["name"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn up_lines(&self, server: &str) -> usize {
        self.shunt.log_lines(&format!("server svc/{server} is UP")).len()
    }

    fn down_lines(&self, server: &str) -> usize {
        self.shunt.log_lines(&format!("server svc/{server} is DOWN")).len()
    }

    /// `n` queries spread over the servers, so every worker and pool has seen traffic.
    fn warm_up(&self, n: usize) {
        let outs = self.client(|| (0..n).map(|i| query(900_000 + i as u64, 1000, Instant::now())).collect::<Vec<_>>());
        for o in &outs {
            assert!(o.ok(), "warm-up query failed: {o:?}");
        }
    }

    /// Descriptors and memory once warmed up. A probe in flight holds a socket for a moment:
    /// the fewest sockets over a few samples is the baseline.
    fn baseline(&self) -> Baseline {
        let pid = self.shunt.pid();
        let mut best: Option<(usize, usize, usize)> = None;
        for _ in 0..20 {
            let k = fd_kinds(pid);
            if best.is_none_or(|b| k.0 < b.0) {
                best = Some(k);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let (sockets, _pipes, other) = best.unwrap();
        Baseline { sockets, other, fds: fd_count(pid), rss_kib: self.shunt.rss_kib() }
    }

    /// The invariants every test ends with; returns a one-line summary.
    fn invariants(&mut self, base: &Baseline) -> String {
        let pid = self.shunt.pid();
        assert!(self.shunt.is_running(), "shunt died; log:\n{}", self.shunt.log());
        let log = self.shunt.log();
        assert!(!log.contains("panicked"), "a panic in shunt's log:\n{log}");
        wait_for(T, "active connections back to 0 in /status", || self.active() == 0);
        let deadline = Instant::now() + T;
        let mut kinds = fd_kinds(pid);
        let mut close_wait = sockets_in_state(pid, "CLOSE_WAIT");
        loop {
            if kinds.0 <= base.sockets && close_wait == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "after {T:?}: shunt holds {} sockets (baseline {}), {close_wait} in CLOSE_WAIT; its sockets: {:?}",
                kinds.0,
                base.sockets,
                tcp_sockets(pid).iter().map(|s| (s.local, s.remote, s.state)).collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(20));
            kinds = fd_kinds(pid);
            close_wait = sockets_in_state(pid, "CLOSE_WAIT");
        }
        let pipe_cap = 2 * 256 * self.workers;
        assert!(kinds.1 <= pipe_cap, "{} pipe descriptors (the pools keep at most {pipe_cap})", kinds.1);
        // Files the admin thread opens while it answers a scrape (/proc/self/stat, statm, fd)
        // come and go; a leak shows as more than the baseline, never fewer.
        assert!(
            kinds.2 <= base.other,
            "descriptors other than sockets and pipes: {} > baseline {}",
            kinds.2,
            base.other
        );
        let m = self.metrics();
        assert_eq!(metric_in(&m, "shunt_active_connections"), Some(0.0), "shunt_active_connections");
        let fds_metric = metric_in(&m, "shunt_process_open_fds").unwrap_or(-1.0);
        let cpu0 = cpu_time(pid);
        let t0 = Instant::now();
        thread::sleep(Duration::from_secs(1));
        let cpu = cpu_time(pid) - cpu0;
        let wall = t0.elapsed();
        assert!(cpu < Duration::from_millis(50), "shunt used {cpu:?} of CPU in {wall:?} of idle time");
        format!(
            "invariants ok: alive, no panic, 0 active, {} fds (baseline {}, metric {fds_metric}), {} pipe ends, \
             0 CLOSE_WAIT, idle CPU {cpu:?}/{wall:.2?}, RSS {} KiB (baseline {})",
            fd_count(pid),
            base.fds,
            kinds.1,
            self.shunt.rss_kib(),
            base.rss_kib
        )
    }
}

fn spawn_peer(topo: &Topo, i: usize, args: &[String], dir: &TempDir) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    if args.first() == Some(&"echo-loop") {
        let listen = server_addr(i).to_string();
        topo.spawn_server(i, &["echo-loop", "--listen", &listen], dir)
    } else {
        topo.serve(i, &args, dir)
    }
}

/// Waits for `log_count` to exceed `before`; returns how long that took from `since`.
fn wait_edge(
    lab: &Lab,
    what: &str,
    before: usize,
    since: Instant,
    timeout: Duration,
    count: impl Fn(&Lab) -> usize,
) -> Duration {
    wait_for(timeout, what, || count(lab) > before);
    since.elapsed()
}

/// Queries until one is answered by `server`; returns how long that took from `since`.
fn wait_served_by(lab: &Lab, server: &str, since: Instant, timeout: Duration) -> Duration {
    let epoch = Instant::now();
    lab.client(|| {
        wait_for(timeout, &format!("a query answered by {server}"), || {
            let o = query(7_000_000 + epoch.elapsed().as_micros() as u64, 100, epoch);
            o.ok() && o.server == server
        })
    });
    since.elapsed()
}

// ------------------------------------------------------------------------------------------------
// 1. Data integrity under churn
// ------------------------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Tally {
    echo_ok: usize,
    query_ok: usize,
    client_aborts: usize,
    server_resets: usize,
    reset_bytes: u64,
    bytes: u64,
    failures: Vec<String>,
}

#[test]
fn churn_200_clients_random_sizes_aborts_and_resets_every_stream_byte_exact() {
    const CLIENTS: usize = 200;
    const ROUNDS: u64 = 10;
    let mut lab = Lab::start(
        &[&[], &[]],
        &conf(&["", ""], "workers 2\n", &format!("{FAULT_SVC}  splice on\n").replace("timeout 300ms", "timeout 1s")),
    );
    lab.warm_up(4);
    let base = lab.baseline();
    let mut rng = Rng::seeded("churn");
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut rng = rng.fork(c as u64);
            let barrier = Arc::clone(&barrier);
            spawn_in(&lab.client_ns(), move || {
                barrier.wait();
                let mut t = Tally::default();
                for r in 0..ROUNDS {
                    // Unique per session: a byte delivered to the wrong client cannot match.
                    let seed = ((c as u64) << 32) | r;
                    let roll = rng.below(100);
                    if roll < 45 {
                        let len = rng.size(2 * MIB);
                        match echo_session(lb_addr(), seed, len, 64 * 1024, None, &mut rng) {
                            Ok(_) => {
                                t.echo_ok += 1;
                                t.bytes += 2 * len;
                            }
                            Err((_, m)) => t.failures.push(format!("client {c} echo {len} B: {m}")),
                        }
                    } else if roll < 65 {
                        let len = rng.size(4 * MIB);
                        let o = query(seed, len, t0);
                        if o.ok() {
                            t.query_ok += 1;
                            t.bytes += len;
                        } else {
                            t.failures.push(format!("client {c} query {len} B: {o:?}"));
                        }
                    } else if roll < 82 {
                        let len = rng.range(2, 2 * MIB);
                        let at = rng.range(1, len - 1);
                        match echo_session(lb_addr(), seed, len, 64 * 1024, Some(at), &mut rng) {
                            Ok(true) => t.client_aborts += 1,
                            Ok(false) => t.failures.push(format!("client {c}: abort at {at} of {len} did not happen")),
                            Err((_, m)) => t.failures.push(format!("client {c} echo to abort at {at}/{len}: {m}")),
                        }
                    } else {
                        // The server writes `len` bytes and resets: the client must see a
                        // prefix of its stream, then a reset, never a clean EOF.
                        let len = rng.size(MIB);
                        let mut s = match dial(lb_addr(), T) {
                            Ok(s) => s,
                            Err(e) => {
                                t.failures.push(format!("client {c}: connect: {e}"));
                                continue;
                            }
                        };
                        if let Err(e) = s.write_all(&header(b'R', seed, len)) {
                            t.failures.push(format!("client {c}: header: {e}"));
                            continue;
                        }
                        let mut got = 0;
                        match read_checked(&mut s, seed, len, &mut got) {
                            End::Reset => {
                                t.server_resets += 1;
                                t.reset_bytes += got;
                            }
                            end => t.failures.push(format!(
                                "client {c}: server reset after {len} B, client saw {end:?} after {got} B"
                            )),
                        }
                    }
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for h in handles {
        let t = h.join().expect("client thread");
        all.echo_ok += t.echo_ok;
        all.query_ok += t.query_ok;
        all.client_aborts += t.client_aborts;
        all.server_resets += t.server_resets;
        all.reset_bytes += t.reset_bytes;
        all.bytes += t.bytes;
        all.failures.extend(t.failures);
    }
    let took = t0.elapsed();
    assert!(all.failures.is_empty(), "{} failed session(s):\n{}", all.failures.len(), all.failures.join("\n"));
    let total = CLIENTS * ROUNDS as usize;
    assert_eq!(all.echo_ok + all.query_ok + all.client_aborts + all.server_resets, total);

    // shunt's view: one line per session, and each ended the way its client made it end.
    let codes = count_codes(&wait_sessions(&lab.shunt, 4 + total, T));
    let get = |c: &str| codes.get(c).copied().unwrap_or(0);
    assert_eq!(get("--"), 4 + all.echo_ok + all.query_ok, "clean sessions; codes {codes:?}");
    assert_eq!(get("CD"), all.client_aborts, "client aborts; codes {codes:?}");
    assert_eq!(get("SD"), all.server_resets, "server resets; codes {codes:?}");
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT churn: {CLIENTS} concurrent clients x {ROUNDS} sessions in {took:.2?}: {} echo + {} query byte-exact \
         ({} MiB checked), {} client aborts (CD), {} server resets (SD, {} KiB of prefixes checked), 0 failures; \
         codes {codes:?}; {inv}",
        all.echo_ok,
        all.query_ok,
        all.bytes / MIB,
        all.client_aborts,
        all.server_resets,
        all.reset_bytes / 1024
    );
}

// ------------------------------------------------------------------------------------------------
// 2. EOF with data in flight
// ------------------------------------------------------------------------------------------------

#[test]
fn eof_right_behind_the_data_loses_nothing_on_a_slow_client_link() {
    // The server writes N bytes and closes at once. The link from shunt to the client runs at
    // 100 Mbit/s through tbf while the server's link is fast, so shunt reads the server's EOF
    // while its pipe or buffer (and its socket towards the client) still hold data: the FIN
    // must wait behind every byte. One service per splice mode.
    let modes = ["on", "off", "always"];
    let mut c = format!("log info\nadmin {ADMIN}\n");
    for (k, m) in modes.iter().enumerate() {
        c.push_str(&format!(
            "service {m}\n  bind {LB_IP}:{}\n  server s0 {}\n  splice {m}\n  timeout idle 30s\n",
            SVC_PORT + k as u16,
            server_addr(0)
        ));
    }
    let mut lab = Lab::start_with(&[&[]], &c, |topo| {
        topo.lb
            .exec_ok(&[
                "tc",
                "qdisc",
                "add",
                "dev",
                Topo::CLIENT_IF,
                "root",
                "tbf",
                "rate",
                "100mbit",
                "burst",
                "256kb",
                "latency",
                "100ms",
            ])
            .unwrap_or_else(|e| panic!("tc: {e}"));
    });
    let epoch = Instant::now();
    lab.client(|| {
        for k in 0..3 {
            let o = query_at(SocketAddr::from((LB_IP, SVC_PORT + k)), 1, 10, T, epoch);
            assert!(o.ok(), "{o:?}");
        }
    });
    let base = lab.baseline();
    let sizes: [u64; 14] =
        [0, 1, 1460, 16383, 16384, 16385, 65535, 65536, 65537, 262143, 262144, 262145, MIB + 7, 4 * MIB + 3];
    let t0 = Instant::now();
    let mut checked = 0u64;
    let mut n = 0usize;
    let mut slowest = Duration::ZERO;
    for (k, mode) in modes.iter().enumerate() {
        let addr = SocketAddr::from((LB_IP, SVC_PORT + k as u16));
        let (bytes, count, slow) = lab.client(|| {
            let mut bytes = 0;
            let mut count = 0;
            let mut slow = Duration::ZERO;
            for (i, &len) in sizes.iter().enumerate() {
                for (h, how) in [How::Plain, How::HalfClose].into_iter().enumerate() {
                    let seed = 1000 * k as u64 + 10 * i as u64 + h as u64;
                    let o = query_with(addr, seed, len, T, epoch, how);
                    assert!(o.ok(), "splice {mode}, {len} bytes, client {how:?}: {o:?}");
                    bytes += len;
                    count += 1;
                    slow = slow.max(o.took);
                }
            }
            // Several at once: sessions reaching EOF while other flows hold the worker's pools.
            let hs: Vec<_> = (0..6u64)
                .map(|j| {
                    let len = 512 * 1024 + 977 * j;
                    thread::spawn(move || (len, query_at(addr, 5000 + 100 * k as u64 + j, len, T, epoch)))
                })
                .collect();
            for h in hs {
                let (len, o) = h.join().unwrap();
                assert!(o.ok(), "splice {mode}, concurrent {len} bytes: {o:?}");
                bytes += len;
                count += 1;
            }
            (bytes, count, slow)
        });
        checked += bytes;
        n += count;
        slowest = slowest.max(slow);
    }
    let took = t0.elapsed();
    let s = wait_sessions(&lab.shunt, 3 + n, T);
    for x in &s {
        assert_eq!(x.code, "--", "every stream ended cleanly: {}", x.raw);
        assert_eq!(x.up, 25, "the request header, and nothing else, went up: {}", x.raw);
    }
    for &len in &sizes {
        // name line "s0\n" + the stream
        let want = len + 3;
        for m in modes {
            let got = s.iter().filter(|x| x.service == m && x.down == want).count();
            assert!(got >= 2, "splice {m}: sessions that delivered {want} bytes: {got}");
        }
    }
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT eof-in-flight: {n} streams (sizes 0..4 MiB, splice on/off/always, with and without client half-close, \
         6 concurrent) over a 100 Mbit/s client link in {took:.2?}: all {} MiB delivered byte-exact before the FIN; \
         slowest {slowest:.2?}; {inv}",
        checked / MIB
    );
}

// ------------------------------------------------------------------------------------------------
// 3. Server faults: refused, black-holed, frozen, slow, resetting, flapping, all down
// ------------------------------------------------------------------------------------------------

fn two_server_lab(service: &str, server_args: &[&[&str]]) -> Lab {
    let lab = Lab::start(server_args, &conf(&["", ""], "", service));
    lab.warm_up(4);
    lab
}

/// `n` sequential queries from the client: outcomes, in order.
fn sequential(lab: &Lab, n: usize, len: u64, seed0: u64) -> Vec<Outcome> {
    let epoch = Instant::now();
    lab.client(|| (0..n).map(|i| query(seed0 + i as u64, len, epoch)).collect())
}

fn served_by(outs: &[Outcome], server: &str) -> usize {
    outs.iter().filter(|o| o.ok() && o.server == server).count()
}

fn max_took(outs: &[Outcome]) -> Duration {
    outs.iter().map(|o| o.took).max().unwrap_or_default()
}

/// A firewall fault on s0 that makes its connects fail (refused or unanswered): no client
/// request fails, at most one waits, and s0 comes back within rise x interval once lifted.
fn unreachable_server(rule: &[&str], name: &str, max_slow: Duration) {
    let mut lab = two_server_lab(FAULT_SVC, &[&[], &[]]);
    let base = lab.baseline();
    let add: Vec<&str> = ["iptables", "-A"].iter().chain(rule).copied().collect();
    let del: Vec<&str> = ["iptables", "-D"].iter().chain(rule).copied().collect();
    let downs = lab.down_lines("s0");
    lab.in_server(0, &add);
    let t_fault = Instant::now();
    let outs = sequential(&lab, 50, 2000, 10_000);
    let failed: Vec<&Outcome> = outs.iter().filter(|o| !o.ok()).collect();
    assert!(failed.is_empty(), "{name}: requests failed although s1 could take them: {failed:?}");
    let on_s0 = served_by(&outs, "s0");
    assert_eq!(on_s0, 0, "{name}: s0 cannot answer");
    let slow: Vec<Duration> = outs.iter().map(|o| o.took).filter(|d| *d >= Duration::from_millis(250)).collect();
    assert!(slow.len() <= 1, "{name}: more than one request waited for s0: {slow:?}");
    let worst = max_took(&outs);
    assert!(worst < max_slow, "{name}: a request waited {worst:?}");
    let down_after = wait_edge(&lab, "s0 DOWN", downs, t_fault, T, |l| l.down_lines("s0"));
    let failed_connects = lab.metric(&srv_metric("shunt_server_connect_failures_total", "s0"));
    assert!(
        failed_connects <= 1.0,
        "{name}: {failed_connects} connects to s0 failed in traffic (at most one per worker)"
    );

    let ups = lab.up_lines("s0");
    lab.in_server(0, &del);
    let t_fix = Instant::now();
    let up_after = wait_edge(&lab, "s0 UP again", ups, t_fix, T, |l| l.up_lines("s0"));
    let served_after = wait_served_by(&lab, "s0", t_fix, T);
    // rise 2 x interval 300 ms, plus up to one interval before the next probe, plus a busy
    // machine's slack.
    assert!(up_after < Duration::from_millis(2500), "{name}: s0 back UP {up_after:?} after the fault was lifted");
    let outs2 = sequential(&lab, 10, 2000, 20_000);
    assert!(outs2.iter().all(Outcome::ok), "{outs2:?}");
    assert!(served_by(&outs2, "s0") >= 4, "{name}: s0 takes its share again: {outs2:?}");
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT {name}: 50 requests, 0 errors, max wait {worst:.2?} ({} waited >= 250 ms), {failed_connects} failed \
         connect(s) in traffic, s0 DOWN {down_after:.2?} after the fault; UP {up_after:.2?} and serving \
         {served_after:.2?} after it was lifted (rise 2 x 300 ms); {inv}",
        slow.len()
    );
}

#[test]
fn refused_server_costs_no_request_and_rises_again() {
    unreachable_server(
        &["INPUT", "-p", "tcp", "--dport", "7000", "-j", "REJECT", "--reject-with", "tcp-reset"],
        "refused",
        Duration::from_millis(500),
    );
}

#[test]
fn black_holed_server_costs_one_connect_timeout_at_most_and_rises_again() {
    unreachable_server(
        &["INPUT", "-p", "tcp", "--dport", "7000", "--syn", "-j", "DROP"],
        "black hole",
        Duration::from_millis(500 + 1000),
    );
}

#[test]
fn slow_connect_of_one_second_is_waited_for_not_failed() {
    // The first SYN of every connection to s0 is dropped (hashlimit keyed on the source port
    // lets the retransmission through), so each connect takes the kernel's 1 s SYN timeout.
    // shunt's connect timeout (3 s) and probe timeout (2 s) allow it: no error, no DOWN, and
    // the clients routed to s0 wait about 1 s each, no more.
    let svc = "  retries 2\n  timeout connect 3s\n  timeout idle 30s\n\
      check send \"PING\\n\" expect \"PONG\" interval 300ms timeout 2s rise 2 fall 1\n";
    let mut lab = two_server_lab(svc, &[&[], &[]]);
    let base = lab.baseline();
    let rule = [
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "7000",
        "--syn",
        "-m",
        "hashlimit",
        "--hashlimit-name",
        "slowsyn",
        "--hashlimit-mode",
        "srcip,srcport",
        "--hashlimit-upto",
        "1/hour",
        "--hashlimit-burst",
        "1",
        "-j",
        "DROP",
    ];
    let add: Vec<&str> = ["iptables", "-A"].iter().chain(&rule).copied().collect();
    let del: Vec<&str> = ["iptables", "-D"].iter().chain(&rule).copied().collect();
    lab.in_server(0, &add);
    let downs = lab.down_lines("s0");
    let epoch = Instant::now();
    let outs: Vec<Outcome> = lab.client(|| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                thread::spawn(move || (0..4u64).map(|i| query(30_000 + 10 * t + i, 5000, epoch)).collect::<Vec<_>>())
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<&Outcome> = outs.iter().filter(|o| !o.ok()).collect();
    assert!(failed.is_empty(), "slow connects failed: {failed:?}");
    let mut s0: Vec<Duration> = outs.iter().filter(|o| o.server == "s0").map(|o| o.took).collect();
    let mut s1: Vec<Duration> = outs.iter().filter(|o| o.server == "s1").map(|o| o.took).collect();
    assert!(!s0.is_empty() && !s1.is_empty(), "both servers took requests: {outs:?}");
    let (s0_min, s0_max, s1_max) = (percentile(&mut s0, 0.0), percentile(&mut s0, 1.0), percentile(&mut s1, 1.0));
    assert!(s0_min >= Duration::from_millis(800), "the fault was in place: fastest s0 request {s0_min:?}");
    assert!(s0_max < Duration::from_millis(2500), "a 1 s connect made a client wait {s0_max:?}");
    assert!(s1_max < Duration::from_millis(800), "s1's clients waited {s1_max:?}");
    assert_eq!(lab.down_lines("s0"), downs, "a slow server is not a dead one:\n{}", lab.shunt.log());
    let log = sessions(&lab.shunt.log());
    let connect_ms: Vec<i64> = log.iter().filter(|x| x.server == "s0" && x.port != 0).map(|x| x.connect_ms).collect();
    assert!(
        connect_ms.iter().filter(|&&ms| ms >= 900).count() >= s0.len(),
        "connect_ms of s0's sessions: {connect_ms:?}"
    );
    // Lifted: s0's probes (each 1 s in SYN_SENT so far) are quick again and hold no socket.
    lab.in_server(0, &del);
    let outs2 = sequential(&lab, 6, 5000, 31_000);
    assert!(outs2.iter().all(|o| o.ok() && o.took < Duration::from_millis(500)), "after the fault: {outs2:?}");
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT slow connect: 16 requests (4 at a time), 0 errors; {} on s0 waited {s0_min:.2?}..{s0_max:.2?} \
         (connect_ms {:?}), {} on s1 at most {s1_max:.2?}; s0 never marked DOWN; {inv}",
        s0.len(),
        connect_ms.iter().filter(|&&ms| ms >= 900).collect::<Vec<_>>(),
        s1.len()
    );
}

#[test]
fn frozen_server_is_taken_out_by_probes_and_its_waiting_clients_are_served_after_sigcont() {
    // SIGSTOP: the kernel still completes handshakes (the listen backlog), so connects succeed
    // and nothing a balancer can retry fails; only the probe (PING expects PONG within 300 ms)
    // can tell. Requests that reached s0 before its DOWN wait in its backlog, and are served
    // when it resumes; every request after the verdict goes to s1 at once.
    let mut lab = two_server_lab(&FAULT_SVC.replace("timeout connect 500ms", "timeout connect 1s"), &[&[], &[]]);
    let base = lab.baseline();
    let downs = lab.down_lines("s0");
    let epoch = Instant::now();
    lab.signal(0, libc::SIGSTOP);
    let t_stop = epoch.elapsed();
    // One request every 25 ms for 2 s, each on its own thread (a stuck one blocks nobody).
    let mut hs = Vec::new();
    let mut t_down: Option<Duration> = None;
    for i in 0..80u64 {
        hs.push(spawn_in(&lab.client_ns(), move || {
            query_at(lb_addr(), 40_000 + i, 3000, Duration::from_secs(20), epoch)
        }));
        if t_down.is_none() && lab.down_lines("s0") > downs {
            t_down = Some(epoch.elapsed());
        }
        thread::sleep(Duration::from_millis(25));
    }
    let t_down = t_down.unwrap_or_else(|| {
        wait_for(T, "s0 DOWN", || lab.down_lines("s0") > downs);
        epoch.elapsed()
    });
    thread::sleep(Duration::from_millis(500));
    let ups = lab.up_lines("s0");
    lab.signal(0, libc::SIGCONT);
    let t_cont = Instant::now();
    let outs: Vec<Outcome> = hs.into_iter().map(|h| h.join().unwrap()).collect();
    let failed: Vec<&Outcome> = outs.iter().filter(|o| !o.ok()).collect();
    assert!(failed.is_empty(), "a frozen server made requests fail: {failed:?}");
    let detect = t_down - t_stop;
    assert!(detect < Duration::from_millis(1500), "s0 DOWN {detect:?} after SIGSTOP (interval 300 ms, timeout 300 ms)");
    let down_line = lab.shunt.log_lines("server svc/s0 is DOWN").pop().unwrap();
    assert!(down_line.contains("timeout"), "{down_line}");
    // Requests that started once the verdict was out: all on s1, none waited.
    let after: Vec<&Outcome> = outs.iter().filter(|o| o.at > t_down + Duration::from_millis(100)).collect();
    assert!(!after.is_empty());
    for o in &after {
        assert_eq!(o.server, "s1", "after the DOWN verdict: {o:?}");
        assert!(o.took < Duration::from_millis(1000), "after the DOWN verdict a request waited: {o:?}");
    }
    let stuck: Vec<&Outcome> = outs.iter().filter(|o| o.server == "s0").collect();
    for o in &stuck {
        assert!(o.at <= t_down + Duration::from_millis(100), "sent to the frozen s0 after its DOWN: {o:?}");
    }
    let up_after = wait_edge(&lab, "s0 UP after SIGCONT", ups, t_cont, T, |l| l.up_lines("s0"));
    assert!(up_after < Duration::from_millis(2500), "s0 UP {up_after:?} after SIGCONT");
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT frozen: 80 requests over 2 s, 0 errors; s0 DOWN {detect:.2?} after SIGSTOP; {} requests reached \
         s0 before the verdict and were served after SIGCONT; {} sent after it all on s1, max wait {:.2?}; \
         s0 UP {up_after:.2?} after SIGCONT; {inv}",
        stuck.len(),
        after.len(),
        after.iter().map(|o| o.took).max().unwrap_or_default()
    );
}

#[test]
fn server_resetting_mid_stream_is_passed_on_as_a_reset_never_as_a_clean_end() {
    // s0 resets every connection after 100 kB of its answer. Nothing can be retried once bytes
    // flowed; what matters is that s0's clients see a reset (not a FIN that would make a
    // truncated answer look whole), that their bytes are the right ones, and that s1's clients
    // are untouched.
    let mut lab = two_server_lab(FAULT_SVC, &[&["--reset-after", "100000"], &[]]);
    let base = lab.baseline();
    let epoch = Instant::now();
    let outs: Vec<Outcome> = lab.client(|| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                thread::spawn(move || (0..6u64).map(|i| query(50_000 + 10 * t + i, MIB, epoch)).collect::<Vec<_>>())
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let bugs: Vec<&Outcome> = outs.iter().filter(|o| o.end.is_bug()).collect();
    assert!(bugs.is_empty(), "truncated or corrupted answers: {bugs:?}");
    // (A reset may in principle overtake even the name line: such a client counts with s0's.)
    let (s1, s0): (Vec<&Outcome>, Vec<&Outcome>) = outs.iter().partition(|o| o.server == "s1");
    assert!(!s0.is_empty() && !s1.is_empty());
    for o in &s1 {
        assert!(o.ok(), "s1's client: {o:?}");
    }
    for o in &s0 {
        assert_eq!(o.end, End::Reset, "s0 reset this one: {o:?}");
        assert!(o.got <= 100_000, "{o:?}");
    }
    let s = wait_sessions(&lab.shunt, 4 + outs.len(), T);
    let sd = s.iter().filter(|x| x.server == "s0" && x.code == "SD").count();
    assert_eq!(sd, s0.len(), "every reset logged as SD");
    assert_eq!(lab.down_lines("s0"), 0, "a server that resets streams still accepts connections");
    let got: Vec<u64> = s0.iter().map(|o| o.got).collect();
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT resetting mid-stream: 24 x 1 MiB requests; {} on s0 all ended in RST after {}..{} checked bytes \
         (0 clean EOFs), {} on s1 complete; {sd} SD lines; {inv}",
        s0.len(),
        got.iter().min().unwrap(),
        got.iter().max().unwrap(),
        s1.len()
    );
}

#[test]
fn bytes_before_a_server_reset_are_counted_in_the_log_and_metrics() {
    // s0 writes its name line and 100 kB, then resets. The clients read them (a prefix at
    // least), but shunt's session line says down=0 (or 3): Flow::pump returns Err on the reset
    // and drops the count of what that same call had already delivered, so the log's bytes,
    // /status bytes_in and shunt_server_received_bytes_total all miss it.
    let mut lab = Lab::start(&[&["--reset-after", "100000"]], &conf(&[""], "", FAULT_SVC));
    let base = lab.baseline();
    let epoch = Instant::now();
    let outs: Vec<Outcome> = lab.client(|| (0..5u64).map(|i| query(95_000 + i, MIB, epoch)).collect());
    let log = wait_sessions(&lab.shunt, outs.len(), T);
    let got: u64 = outs.iter().map(|o| o.got + if o.server.is_empty() { 0 } else { 3 }).sum();
    let counted: u64 = log.iter().map(|x| x.down).sum();
    let metric = lab.metric(&srv_metric("shunt_server_received_bytes_total", "s0")) as u64;
    for o in &outs {
        let line = log.iter().find(|x| x.port == o.port).unwrap_or_else(|| panic!("no line for {o:?}"));
        assert!(line.down >= o.got + 3, "the client received {} bytes, shunt logged: {}", o.got + 3, line.raw);
    }
    assert!(metric >= got, "shunt_server_received_bytes_total {metric}, clients received {got}");
    let inv = lab.invariants(&base);
    eprintln!("RESULT reset accounting: clients received {got} bytes, log says {counted}, metric {metric}; {inv}");
}

/// A kill of `server` happened while a session of `at..at+took` was live. The slack covers
/// the scheduler and the dying process: SIGKILL returns at once, but a process holding
/// thousands of sockets closes its listener some time later, and until then the kernel still
/// completes handshakes that the close then resets (seen: 60 ms on a loaded machine).
/// `server` None: any server.
fn killed_during(kills: &[(Duration, String)], server: Option<&str>, at: Duration, took: Duration) -> bool {
    let slack = Duration::from_millis(250);
    kills.iter().any(|(t, s)| server.is_none_or(|x| x == s) && *t + slack >= at && *t <= at + took + slack)
}

/// Explains failed queries by the kills (`(time since epoch, server)`): shunt logged SD for the
/// session (the server reset or died mid-session), or the killed server's kernel closed the
/// connection with a FIN after the bytes it had (a truncation no L4 proxy can tell from a whole
/// answer): then shunt's line says "--" and exactly the bytes the client got. Returns the
/// number of such FIN truncations and a description of every failure left unexplained.
fn explain_failures(fails: &[&Outcome], log: &[Session], kills: &[(Duration, String)]) -> (usize, Vec<String>) {
    let mut by_port: HashMap<u16, Vec<&Session>> = HashMap::new();
    for x in log {
        by_port.entry(x.port).or_default().push(x);
    }
    let mut fin_truncations = 0;
    let mut unexplained = Vec::new();
    for o in fails {
        let lines = by_port.get(&o.port).cloned().unwrap_or_default();
        let sd = lines.iter().any(|x| x.code == "SD" && killed_during(kills, Some(&x.server), o.at, o.took));
        // What shunt delivered: the name line and the stream bytes the client checked (none at
        // all when the server died before it even sent its name).
        let delivered = if o.server.is_empty() { 0 } else { o.server.len() as u64 + 1 + o.got };
        let fin = o.end == End::Eof
            && lines.iter().any(|x| {
                x.code == "--"
                    && x.down == delivered
                    && (o.server.is_empty() || x.server == o.server)
                    && killed_during(kills, Some(&x.server), o.at, o.took)
            });
        fin_truncations += usize::from(fin);
        if !sd && !fin {
            let lines: Vec<&str> = lines.iter().map(|x| x.raw.as_str()).collect();
            unexplained.push(format!("{o:?}; shunt: {lines:#?}"));
        }
    }
    (fin_truncations, unexplained)
}

#[test]
fn flapping_server_costs_only_the_sessions_it_kills() {
    // s0 is killed and restarted again and again (dead 400 ms, alive 800 ms) while four
    // clients keep asking: three with short requests, one reading 1 MiB answers slowly, so
    // some sessions are live on s0 when it dies. A failed connect is retried on s1, so the only
    // client errors are sessions that were live on s0 when it died.
    let mut lab = two_server_lab(FAULT_SVC, &[&[], &[]]);
    let base = lab.baseline();
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let clients: Vec<_> = (0..4u64)
        .map(|t| {
            let stop = Arc::clone(&stop);
            spawn_in(&lab.client_ns(), move || {
                let mut outs = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let seed = 60_000 + 100_000 * t + i;
                    outs.push(if t == 0 {
                        query_with(lb_addr(), seed, MIB, T, epoch, How::Slow)
                    } else {
                        query(seed, 20_000, epoch)
                    });
                    i += 1;
                    thread::sleep(Duration::from_millis(5));
                }
                outs
            })
        })
        .collect();
    const FLAPS: usize = 5;
    let mut kills = Vec::new();
    for _ in 0..FLAPS {
        thread::sleep(Duration::from_millis(800));
        kills.push((epoch.elapsed(), "s0".to_string()));
        lab.kill(0);
        thread::sleep(Duration::from_millis(400));
        lab.restart(0);
    }
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let outs: Vec<Outcome> = clients.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let corrupt: Vec<&Outcome> = outs.iter().filter(|o| matches!(o.end, End::Corrupt(_))).collect();
    assert!(corrupt.is_empty(), "corrupted answers: {corrupt:?}");
    let fails: Vec<&Outcome> = outs.iter().filter(|o| !o.ok()).collect();
    let log = sessions(&lab.shunt.log());
    let (fin_truncations, unexplained) = explain_failures(&fails, &log, &kills);
    assert!(unexplained.is_empty(), "client errors a retry could have avoided:\n{}", unexplained.join("\n"));
    let codes = count_codes(&log);
    for bad in ["SC", "sC", "NC", "RC"] {
        assert!(!codes.contains_key(bad), "a connect-phase failure reached a client: {codes:?}");
    }
    let (downs, ups) = (lab.down_lines("s0"), lab.up_lines("s0"));
    assert!(downs <= FLAPS + 1, "{downs} DOWN edges for {FLAPS} deaths");
    assert_eq!(lab.down_lines("s1"), 0, "s1 was never in trouble");
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT flapping: {} requests during {FLAPS} kill/restart cycles, {} failed, each one a session live on s0 \
         when it died ({} SD, {fin_truncations} cut short by the dying server's FIN); {} served by s0; s0 DOWN \
         {downs}x / UP {ups}x; codes {codes:?}; {inv}",
        outs.len(),
        fails.len(),
        codes.get("SD").copied().unwrap_or(0),
        served_by(&outs, "s0")
    );
}

#[test]
fn all_servers_down_is_refused_fast_and_service_returns_within_rise() {
    let mut lab = two_server_lab(FAULT_SVC, &[&[], &[]]);
    let base = lab.baseline();
    let nc0 = lab.metric("shunt_service_refused_total{service=\"svc\",reason=\"no_server\"}");
    lab.kill(0);
    lab.kill(1);
    let epoch = Instant::now();
    // While nobody can serve: every client is refused with a reset, quickly.
    let outs: Vec<Outcome> = lab.client(|| {
        (0..30u64)
            .map(|i| {
                let o = query(70_000 + i, 1000, epoch);
                thread::sleep(Duration::from_millis(50));
                o
            })
            .collect()
    });
    for o in &outs {
        assert_eq!(o.end, End::Reset, "no server: a refusal, as a reset: {o:?}");
        assert!(o.server.is_empty(), "{o:?}");
    }
    let worst = max_took(&outs);
    assert!(worst < Duration::from_millis(1000), "a refusal took {worst:?}");
    let (code, body) = lab.admin("/healthz");
    assert_eq!(code, 503, "/healthz with every server down: {body}");
    let log = sessions(&lab.shunt.log());
    let refused: Vec<&Session> = log.iter().filter(|s| s.code != "--").collect();
    assert_eq!(refused.len(), outs.len(), "one refusal line per client: {:?}", count_codes(&log));
    let nc = refused.iter().filter(|s| s.code == "NC").count();
    assert!(refused.iter().all(|s| ["NC", "SC"].contains(&s.code.as_str())), "{:?}", count_codes(&log));
    let nc_metric = lab.metric("shunt_service_refused_total{service=\"svc\",reason=\"no_server\"}") - nc0;
    assert_eq!(nc_metric as usize, nc, "refused_total{{reason=no_server}} counts every NC");

    // Both come back: the first client is served within rise x interval.
    let ups = (lab.up_lines("s0"), lab.up_lines("s1"));
    lab.restart(0);
    lab.restart(1);
    let t_back = Instant::now();
    let first_ok = lab.client(|| first_served_since(t_back, T, 80_000, "after the servers came back"));
    wait_for(T, "both servers UP", || lab.up_lines("s0") > ups.0 && lab.up_lines("s1") > ups.1);
    let both_up = t_back.elapsed();
    assert!(
        first_ok < Duration::from_millis(2500),
        "first request served {first_ok:?} after restart (rise 2 x 300 ms)"
    );
    let outs2 = sequential(&lab, 20, 1000, 90_000);
    assert!(outs2.iter().all(Outcome::ok), "{outs2:?}");
    assert!(served_by(&outs2, "s0") >= 5 && served_by(&outs2, "s1") >= 5, "both serve again");
    assert_eq!(lab.admin("/healthz").0, 200);
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT all down: {} requests refused with RST in at most {worst:.2?} ({nc} NC counted in \
         refused_total{{reason=no_server}}, {} SC), /healthz 503; after restart first request served in \
         {first_ok:.2?}, both UP in {both_up:.2?}, then 20/20 served; {inv}",
        outs.len(),
        refused.len() - nc
    );
}

// ------------------------------------------------------------------------------------------------
// 4. Clients that never read, read slowly, abort, or send nothing
// ------------------------------------------------------------------------------------------------

/// VmRSS of `pid` in KiB, 0 once it is gone (the sampler must not panic after a failure).
fn rss_or_zero(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok()))
        .unwrap_or(0)
}

/// What a slow reader saw: completed or cut short, how long it took, and the longest wait for
/// bytes (read to read, its own naps included).
struct SlowRead {
    complete: bool,
    got: u64,
    took: Duration,
    max_gap: Duration,
}

#[test]
fn misbehaving_clients_bounded_memory_and_idle_timeout_enforced() {
    // Four kinds of bad clients at once against a 2 s idle timeout:
    // - never read (64 MiB asked through a 64 KiB window): the flow stalls, the idle timeout
    //   closes the session (TD);
    // - read slowly (4 MiB at ~1.3 MB/s, longer than the idle timeout): bytes keep moving, so
    //   the session must not be cut (--);
    // - abort mid-stream (RST after 16 KiB): CD;
    // - connect and send nothing: closed at the idle timeout, never before (TD).
    // A client that is itself starved of CPU for the whole idle time (a loaded machine) is idle
    // for shunt too: such a slow reader or aborter may be closed by the timeout, and is counted
    // as starved, but only if its own longest wait for bytes reached the idle time.
    const EACH: usize = 40;
    const IDLE: Duration = Duration::from_secs(2);
    let starved = IDLE - Duration::from_millis(250);
    let svc = FAULT_SVC.replace("timeout idle 30s", "timeout idle 2s");
    let mut lab = two_server_lab(&svc, &[&[], &[]]);
    let base = lab.baseline();
    let pid = lab.shunt.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, max_rss) = (Arc::clone(&stop), Arc::clone(&max_rss));
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                max_rss.fetch_max(rss_or_zero(pid), Ordering::SeqCst);
                thread::sleep(Duration::from_millis(25));
            }
        })
    };
    let epoch = Instant::now();
    let ns = lab.client_ns();
    let never: Vec<_> = (0..EACH as u64)
        .map(|i| {
            spawn_in(&ns, move || -> Result<TcpStream, String> {
                let mut s = dial_small_rcvbuf(lb_addr(), 64 * 1024, T).map_err(|e| e.to_string())?;
                s.write_all(&header(b'Q', 100_000 + i, 64 * MIB)).map_err(|e| e.to_string())?;
                let mut b = [0u8; 3];
                s.read_exact(&mut b).map_err(|e| format!("never-reader: name line: {e}"))?;
                Ok(s)
            })
        })
        .collect();
    let slow: Vec<_> = (0..EACH as u64)
        .map(|i| {
            spawn_in(&ns, move || -> Result<SlowRead, String> {
                let t0 = Instant::now();
                let len = 4 * MIB;
                let seed = 200_000 + i;
                let mut s = dial_small_rcvbuf(lb_addr(), 64 * 1024, T).map_err(|e| e.to_string())?;
                s.write_all(&header(b'Q', seed, len)).map_err(|e| e.to_string())?;
                let mut name = [0u8; 3];
                s.read_exact(&mut name).map_err(|e| format!("slow reader: name line: {e}"))?;
                let (mut got, mut buf, mut want) = (0u64, vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
                let (mut last, mut max_gap) = (Instant::now(), Duration::ZERO);
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => return Err(format!("slow reader after {got} bytes: {e}")),
                    };
                    max_gap = max_gap.max(last.elapsed());
                    pattern_fill(seed, got, &mut want[..n]);
                    if buf[..n] != want[..n] || got + n as u64 > len {
                        return Err(format!("slow reader: bad bytes at {got}"));
                    }
                    got += n as u64;
                    thread::sleep(Duration::from_millis(50));
                    last = Instant::now();
                }
                max_gap = max_gap.max(last.elapsed());
                Ok(SlowRead { complete: got == len, got, took: t0.elapsed(), max_gap })
            })
        })
        .collect();
    // (aborted, or closed by the timeout first; time from connect to that)
    let aborters: Vec<_> = (0..EACH as u64)
        .map(|i| {
            spawn_in(&ns, move || -> Result<(bool, Duration), String> {
                let t0 = Instant::now();
                let seed = 300_000 + i;
                let mut s = dial_small_rcvbuf(lb_addr(), 64 * 1024, T).map_err(|e| e.to_string())?;
                s.write_all(&header(b'Q', seed, 64 * MIB)).map_err(|e| e.to_string())?;
                let mut b = vec![0u8; 3 + 16 * 1024];
                match s.read_exact(&mut b) {
                    Ok(()) => {
                        abort(s);
                        Ok((true, t0.elapsed()))
                    }
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok((false, t0.elapsed())),
                    Err(e) => Err(format!("aborter: {e}")),
                }
            })
        })
        .collect();
    let silent: Vec<_> = (0..EACH)
        .map(|_| {
            spawn_in(&ns, move || -> Result<Duration, String> {
                let t0 = Instant::now();
                let mut s = dial(lb_addr(), T).map_err(|e| e.to_string())?;
                let mut b = [0u8; 1];
                match s.read(&mut b) {
                    Ok(0) => Ok(t0.elapsed()),
                    Ok(_) => Err("a silent client got bytes".into()),
                    Err(e) => Err(format!("silent client: {e} after {:?}", t0.elapsed())),
                }
            })
        })
        .collect();
    let held: Vec<TcpStream> = never.into_iter().map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{e}"))).collect();
    let aborts: Vec<(bool, Duration)> =
        aborters.into_iter().map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{e}"))).collect();
    let slow: Vec<SlowRead> = slow.into_iter().map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{e}"))).collect();
    let mut silent_t: Vec<Duration> =
        silent.into_iter().map(|h| h.join().unwrap().unwrap_or_else(|e| panic!("{e}"))).collect();

    let cut: Vec<&SlowRead> = slow.iter().filter(|r| !r.complete).collect();
    for r in &cut {
        assert!(
            r.max_gap >= starved,
            "a slow reader that kept reading (longest wait {:.2?}) was cut after {} bytes, {:.2?}",
            r.max_gap,
            r.got,
            r.took
        );
    }
    let timed_out_aborters: Vec<&(bool, Duration)> = aborts.iter().filter(|a| !a.0).collect();
    for a in &timed_out_aborters {
        assert!(a.1 >= starved, "an aborter was closed {:.2?} after its connect, before the idle timeout", a.1);
    }
    let n_starved = cut.len() + timed_out_aborters.len();
    let log = wait_sessions(&lab.shunt, 4 + 4 * EACH, Duration::from_secs(20));
    let codes = count_codes(&log);
    let get = |c: &str| codes.get(c).copied().unwrap_or(0);
    // shunt's own view of the silent sessions: from accept to the idle close.
    let silent_ms: Vec<i64> = log.iter().filter(|x| x.code == "TD" && x.up == 0).map(|x| x.duration_ms).collect();
    let (silent_ms_min, silent_ms_max) =
        (silent_ms.iter().min().copied().unwrap_or(-1), silent_ms.iter().max().copied().unwrap_or(-1));
    let took = epoch.elapsed();
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    drop(held);
    let max_rss = max_rss.load(Ordering::SeqCst);
    assert_eq!(silent_ms.len(), EACH, "silent sessions end at the idle timeout (TD, nothing sent up): {codes:?}");
    assert!(silent_ms_min >= 2000, "a silent session closed before the idle timeout: {silent_ms:?}");
    assert_eq!(get("TD"), 2 * EACH + n_starved, "never-readers and silent clients end at the idle timeout: {codes:?}");
    assert_eq!(get("CD"), EACH - timed_out_aborters.len(), "aborters: {codes:?}");
    assert_eq!(get("--"), 4 + EACH - cut.len(), "slow readers finish: {codes:?}");
    let (sil_min, sil_max) = (percentile(&mut silent_t, 0.0), percentile(&mut silent_t, 1.0));
    assert!(sil_min >= IDLE - Duration::from_millis(100), "a silent client was closed after {sil_min:?}");
    assert!(sil_max < IDLE + Duration::from_secs(5), "a silent client was closed only after {sil_max:?}");
    let mut slow_t: Vec<Duration> = slow.iter().filter(|r| r.complete).map(|r| r.took).collect();
    let slow_min = percentile(&mut slow_t, 0.0);
    assert!(slow_t.is_empty() || slow_min > IDLE, "slow readers outlived the idle timeout: fastest {slow_min:?}");
    let gap = slow.iter().filter(|r| r.complete).map(|r| r.max_gap).max().unwrap_or_default();
    // Memory: at most a pipe (kernel memory) or a 16 KiB buffer per direction and session.
    assert!(
        max_rss < base.rss_kib + 24 * 1024,
        "shunt's RSS reached {max_rss} KiB (baseline {}) with {} misbehaving clients",
        base.rss_kib,
        4 * EACH
    );
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT misbehaving clients: {EACH} never-read + {EACH} slow (4 MiB at ~1.3 MB/s) + {EACH} abort + {EACH} \
         silent, in {took:.2?}: RSS max {max_rss} KiB (baseline {} KiB); silent closed after {sil_min:.2?}..{sil_max:.2?} \
         (idle 2 s; {silent_ms_min}..{silent_ms_max} ms in shunt's log); {} slow readers completed in \
         {slow_min:.2?}..{:.2?} (longest wait for bytes {gap:.2?}); {n_starved} clients starved of CPU past the idle \
         time (closed by it, as they should be); codes {codes:?}; {inv}",
        base.rss_kib,
        slow_t.len(),
        percentile(&mut slow_t, 1.0)
    );
}

// ------------------------------------------------------------------------------------------------
// 5. Scale: 8,000 connections, more than max_conns, an ephemeral-port squeeze
// ------------------------------------------------------------------------------------------------

/// One echo round trip of an 8-byte token.
fn echo_token(s: &mut TcpStream, token: u64) -> io::Result<()> {
    s.write_all(&token.to_le_bytes())?;
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    if u64::from_le_bytes(b) != token {
        return Err(io::Error::other(format!("token {token} came back as {}", u64::from_le_bytes(b))));
    }
    Ok(())
}

#[test]
fn eight_thousand_connections_then_more_than_max_conns_wait_then_are_refused_and_recover() {
    const N: usize = 8000;
    const EXTRA: usize = 100;
    const REFUSED: usize = 50;
    // Long enough that the first phase (100 waiting clients served once slots free) stays well
    // inside it even on a loaded machine.
    const QUEUE: Duration = Duration::from_secs(5);
    let c = conf(
        &["", ""],
        &format!("workers 2\nmax_conns {N}\n"),
        &format!("  timeout idle 5m\n  timeout queue {}s\n  check tcp interval 1s\n", QUEUE.as_secs()),
    );
    let mut lab = Lab::start(&[&["echo-loop"], &["echo-loop"]], &c);
    lab.client(|| {
        for t in 0..4u64 {
            let mut s = dial(lb_addr(), T).unwrap();
            echo_token(&mut s, t).unwrap();
        }
    });
    wait_for(T, "warm-up sessions closed", || lab.active() == 0);
    let base = lab.baseline();
    assert_eq!(lab.metric("shunt_max_connections"), N as f64, "max_conns in force");
    let t0 = Instant::now();
    let mut held: Vec<TcpStream> = lab.client(|| {
        let hs: Vec<_> = (0..4)
            .map(|t| {
                thread::spawn(move || {
                    (0..N / 4)
                        .map(|i| {
                            let token = (t * N / 4 + i) as u64;
                            let mut s = dial(lb_addr(), T).unwrap_or_else(|e| panic!("connection {token}: {e}"));
                            echo_token(&mut s, token).unwrap_or_else(|e| panic!("connection {token}: {e}"));
                            s
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let open_took = t0.elapsed();
    assert_eq!(held.len(), N);
    assert_eq!(lab.active(), N as u64, "/status active_connections");
    let (sockets, pipes, _) = fd_kinds(lab.shunt.pid());
    assert!(sockets >= base.sockets + 2 * N && sockets <= base.sockets + 2 * N + 2, "{sockets} sockets");
    let rss_full = lab.shunt.rss_kib();
    assert!(rss_full < base.rss_kib + 64 * 1024, "RSS {rss_full} KiB for {N} idle connections");

    // More clients than max_conns: they wait in the backlog, unserved, not refused (for up to
    // `timeout queue`).
    let t_extra = Instant::now();
    let mut extra: Vec<TcpStream> = lab.client(|| {
        (0..EXTRA)
            .map(|i| {
                let mut s = dial(lb_addr(), Duration::from_millis(300)).expect("the backlog takes the connection");
                s.write_all(&(1_000_000 + i as u64).to_le_bytes()).unwrap();
                s
            })
            .collect()
    });
    let mut b = [0u8; 8];
    let waited = extra[0].read(&mut b);
    assert!(
        matches!(&waited, Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut),
        "a connection beyond max_conns was served (or refused): {waited:?}"
    );
    let m = lab.metrics();
    assert_eq!(metric_in(&m, "shunt_active_connections"), Some(N as f64));
    assert_eq!(metric_in(&m, "shunt_service_refused_total{service=\"svc\",reason=\"limit\"}"), Some(0.0));
    assert_eq!(metric_in(&m, "shunt_service_refused_total{service=\"svc\",reason=\"no_server\"}"), Some(0.0));
    // The wait is visible: accepting paused at the cap (per worker and listener, at least once).
    let pauses = metric_in(&m, "shunt_service_limit_pauses_total{service=\"svc\"}").unwrap_or(0.0);
    assert!(pauses >= 1.0, "the pause at max_conns is counted: {pauses}");
    // Slots free up: the waiting clients are served.
    let t_free = Instant::now();
    held.drain(..EXTRA).for_each(drop);
    for (i, s) in extra.iter_mut().enumerate() {
        s.set_read_timeout(Some(T)).unwrap();
        s.read_exact(&mut b).unwrap_or_else(|e| panic!("waiting client {i} not served once slots freed: {e}"));
        assert_eq!(u64::from_le_bytes(b), 1_000_000 + i as u64);
    }
    let served_after = t_free.elapsed();
    assert!(t_free - t_extra < QUEUE, "the test was too slow to free slots within timeout queue");
    // The cap is full again (the served clients took the freed slots). Clients beyond it now wait
    // `timeout queue`, then are refused with a reset, each counted once in refused_total{limit}.
    assert_eq!(lab.active(), N as u64);
    let refused: Vec<(Duration, io::Result<usize>)> = lab.client(|| {
        let t0 = Instant::now();
        let mut late: Vec<TcpStream> = (0..REFUSED)
            .map(|i| {
                let mut s = dial(lb_addr(), T).expect("the backlog takes the connection");
                s.write_all(&(2_000_000 + i as u64).to_le_bytes()).unwrap();
                s
            })
            .collect();
        late.iter_mut()
            .map(|s| {
                let r = s.read(&mut [0u8; 8]);
                (t0.elapsed(), r)
            })
            .collect()
    });
    let mut refused_after = Vec::new();
    for (i, (at, r)) in refused.iter().enumerate() {
        assert!(
            matches!(r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "client {i} beyond a full cap was not refused with a reset: {r:?}"
        );
        refused_after.push(*at);
    }
    let (first_refusal, last_refusal) = (refused_after[0], refused_after[REFUSED - 1]);
    assert!(
        first_refusal >= QUEUE - Duration::from_millis(200) && last_refusal <= QUEUE + Duration::from_secs(2),
        "refusals came {first_refusal:.2?}-{last_refusal:.2?} after the clients arrived (timeout queue {QUEUE:?})"
    );
    let m = lab.metrics();
    assert_eq!(
        metric_in(&m, "shunt_service_refused_total{service=\"svc\",reason=\"limit\"}"),
        Some(REFUSED as f64),
        "every refusal at the cap counted once"
    );
    assert_eq!(metric_in(&m, "shunt_active_connections"), Some(N as f64), "the refusals touched no session");
    // Recovery: with room again, a new client is served at once.
    held.drain(..1).for_each(drop);
    wait_for(T, "a slot freed", || lab.active() < N as u64);
    lab.client(|| {
        let mut s = dial(lb_addr(), T).unwrap();
        echo_token(&mut s, 3_000_000).expect("a client after the cap freed is served");
    });
    // The long-held connections still carry bytes.
    for (i, s) in held.iter_mut().enumerate().step_by(20) {
        echo_token(s, 5_000_000 + i as u64).unwrap_or_else(|e| panic!("held connection {i}: {e}"));
    }
    assert!(lab.shunt.is_running());
    drop(held);
    drop(extra);
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT 8000 connections: opened and echoed in {open_took:.2?}; {sockets} sockets (baseline {}), {pipes} pipe \
         ends, RSS {rss_full} KiB (baseline {} KiB); {EXTRA} more than max_conns waited unserved with \
         refused_total 0, and were served {served_after:.2?} after {EXTRA} slots freed; with the cap full \
         again, {REFUSED} more were refused with a reset {first_refusal:.2?}-{last_refusal:.2?} after arriving \
         (timeout queue {QUEUE:?}), refused_total{{limit}} = {REFUSED}, and a client was served as soon as a slot \
         freed; {inv}",
        base.sockets, base.rss_kib
    );
}

#[test]
fn ephemeral_port_squeeze_fails_over_to_the_backup_then_refuses_cleanly_and_recovers() {
    // In the lb namespace only ~100 source ports exist (40000-40100), per destination. Held
    // connections use them up towards s0; the next connect fails (EADDRNOTAVAIL) and is retried
    // on the backup s1 on another address, which has its own ~100; once both are spent, clients
    // are refused at once with a reset and counted. Closing the connections (servers first, so
    // no port is left in TIME_WAIT on the balancer) brings service back.
    const CLIENTS: usize = 260;
    let c = conf(&["", " backup"], "", "  retries 3\n  timeout connect 1s\n  timeout idle 5m\n");
    let mut lab = Lab::start_with(&[&[], &[]], &c, |topo| {
        topo.lb
            .exec_ok(&["sysctl", "-w", "net.ipv4.ip_local_port_range=40000 40100"])
            .unwrap_or_else(|e| panic!("{e}"));
    });
    lab.warm_up(3);
    let base = lab.baseline();
    let t0 = Instant::now();
    // (stream if held, the server's name or the error, how long the answer took)
    let results: Vec<(Option<TcpStream>, String, Duration)> = lab.client(|| {
        (0..CLIENTS as u64)
            .map(|i| {
                let t = Instant::now();
                let mut s = match dial(lb_addr(), Duration::from_secs(3)) {
                    Ok(s) => s,
                    // (a refusal can be so quick that connect() itself reports the reset)
                    Err(e) => return (None, format!("{:?}", e.kind()), t.elapsed()),
                };
                if let Err(e) = s.write_all(&header(b'H', 400_000 + i, 0)) {
                    return (None, format!("{:?}", e.kind()), t.elapsed());
                }
                let mut name = [0u8; 3];
                match s.read_exact(&mut name) {
                    Ok(()) => (Some(s), String::from_utf8_lossy(&name[..2]).into_owned(), t.elapsed()),
                    Err(e) => (None, format!("{:?}", e.kind()), t.elapsed()),
                }
            })
            .collect()
    });
    let hold_took = t0.elapsed();
    let on = |n: &str| results.iter().filter(|r| r.0.is_some() && r.1 == n).count();
    let (s0, s1) = (on("s0"), on("s1"));
    let refused: Vec<(usize, String, Duration)> =
        results.iter().enumerate().filter(|(_, r)| r.0.is_none()).map(|(i, r)| (i, r.1.clone(), r.2)).collect();
    assert!((90..=101).contains(&s0), "connections held on s0 with ~100 source ports: {s0}");
    assert!((90..=101).contains(&s1), "connections held on the backup s1: {s1}");
    assert_eq!(s0 + s1 + refused.len(), CLIENTS);
    assert!(!refused.is_empty(), "the squeeze refused nobody");
    // No client was refused while the backup still had ports: every refusal comes after.
    assert!(refused.iter().all(|(i, _, _)| *i >= s0 + s1), "refused before both were full: {refused:?}");
    for (i, why, took) in &refused {
        assert!(
            ["ConnectionReset", "BrokenPipe"].contains(&why.as_str()),
            "client {i}: a clear refusal is a reset: {why}"
        );
        assert!(*took < Duration::from_secs(1), "client {i} waited {took:?} for its refusal");
    }
    assert!(lab.shunt.is_running());
    let log = lab.shunt.log();
    assert!(log.contains("os error 99"), "EADDRNOTAVAIL logged:\n{log}");
    let m = lab.metrics();
    let fail0 = metric_in(&m, &srv_metric("shunt_server_connect_failures_total", "s0")).unwrap();
    let fail1 = metric_in(&m, &srv_metric("shunt_server_connect_failures_total", "s1")).unwrap();
    let no_server = metric_in(&m, "shunt_service_refused_total{service=\"svc\",reason=\"no_server\"}").unwrap();
    assert!(fail0 >= 1.0 && fail1 >= 1.0, "failed connects counted: s0 {fail0}, s1 {fail1}");
    let s = sessions(&log);
    let codes = count_codes(&s);
    let nc = codes.get("NC").copied().unwrap_or(0);
    let sc = codes.get("SC").copied().unwrap_or(0);
    assert_eq!(nc + sc, refused.len(), "every refusal logged as NC or SC: {codes:?}");
    assert_eq!(no_server as usize, nc, "refused_total{{reason=no_server}} counts the NC refusals");

    // Release: each held client asks its server to close first.
    let t_release = Instant::now();
    let held: Vec<TcpStream> = results.into_iter().filter_map(|r| r.0).collect();
    lab.client(move || {
        for mut s in held {
            s.write_all(b"!").unwrap();
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
        }
    });
    wait_for(T, "held sessions closed", || lab.active() == 0);
    let recovered = lab.client(|| first_served_since(t_release, Duration::from_secs(20), 500_000, "after release"));
    let s0_back = wait_served_by(&lab, "s0", t_release, Duration::from_secs(20));
    let outs = sequential(&lab, 20, 1000, 600_000);
    assert!(outs.iter().all(Outcome::ok), "{outs:?}");
    assert_eq!(served_by(&outs, "s0"), 20, "s0 back, the backup idle again");
    // Source ports still parked in TIME_WAIT towards the servers (health probes close first).
    let time_wait = lab.in_lb(&["ss", "-Htn", "state", "time-wait", "dport", "=", ":7000"]).lines().count();
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT port squeeze: {CLIENTS} held clients in {hold_took:.2?}: {s0} on s0, then {s1} on the backup s1 \
         (0 refusals while it had ports), {} refused with RST in at most {:.2?} ({nc} NC = refused_total no_server, \
         {sc} SC; failed connects s0 {fail0}, s1 {fail1}); after release first request served in {recovered:.2?}, \
         s0 serving in {s0_back:.2?}; {time_wait} source ports in TIME_WAIT towards the servers; {inv}",
        refused.len(),
        refused.iter().map(|r| r.2).max().unwrap()
    );
}

// ------------------------------------------------------------------------------------------------
// 6. Mixed load with random server kills
// ------------------------------------------------------------------------------------------------

#[derive(Default)]
struct SoakStats {
    outs: Vec<Outcome>,
    echo_ok: usize,
    /// (how it ended, message, started at, took)
    echo_fail: Vec<(End, String, Duration, Duration)>,
    bytes: u64,
}

#[test]
fn soak_mixed_load_with_random_server_kills_fails_no_request_a_retry_could_save() {
    let secs: u64 = std::env::var("SHUNT_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    const SERVERS: usize = 3;
    let svc = "  retries 2\n  timeout connect 1s\n  timeout idle 30s\n\
      check send \"PING\\n\" expect \"PONG\" interval 500ms timeout 1s rise 2 fall 2\n";
    let mut lab = Lab::start(&[&[], &[], &[]], &conf(&["", "", ""], "workers 2\n", svc));
    lab.warm_up(6);
    let base = lab.baseline();
    let mut rng = Rng::seeded("soak");
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let ns = lab.client_ns();
    let mut load = Vec::new();
    // Short requests, as many as a few web clients make.
    for t in 0..6u64 {
        let (stop, mut rng) = (Arc::clone(&stop), rng.fork(t));
        load.push(spawn_in(&ns, move || {
            let mut st = SoakStats::default();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let len = rng.size(64 * 1024);
                let o = query((t << 40) | i, len, epoch);
                if o.ok() {
                    st.bytes += len;
                }
                st.outs.push(o);
                i += 1;
                thread::sleep(Duration::from_millis(rng.range(2, 10)));
            }
            st
        }));
    }
    // Bulk: big answers and big echoes.
    for t in 6..8u64 {
        let (stop, mut rng) = (Arc::clone(&stop), rng.fork(t));
        load.push(spawn_in(&ns, move || {
            let mut st = SoakStats::default();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let seed = (t << 40) | i;
                if i % 2 == 0 {
                    let len = rng.size(8 * MIB);
                    let o = query(seed, len, epoch);
                    if o.ok() {
                        st.bytes += len;
                    }
                    st.outs.push(o);
                } else {
                    let len = rng.size(4 * MIB);
                    let t0 = Instant::now();
                    match echo_session(lb_addr(), seed, len, 128 * 1024, None, &mut rng) {
                        Ok(_) => {
                            st.echo_ok += 1;
                            st.bytes += 2 * len;
                        }
                        Err((end, m)) => st.echo_fail.push((end, m, t0 - epoch, t0.elapsed())),
                    }
                }
                // A pause between bulk sessions: this is a fault test, not a benchmark, and the
                // rest of `make test` shares the two cores.
                thread::sleep(Duration::from_millis(20));
                i += 1;
            }
            st
        }));
    }
    // Chaos: every 0.5-2 s kill a random running server, restart it after 0.3-1.5 s; but only
    // while another running server is UP in shunt's view (a restarted server is DOWN until it
    // passed `rise` probes, and no balancer can use a server it holds DOWN).
    let deadline = epoch + Duration::from_secs(secs);
    let mut dead_until: Vec<Option<Instant>> = vec![None; SERVERS];
    let mut kills = 0;
    let mut kill_log: Vec<(Duration, String)> = Vec::new();
    let mut next_kill = Instant::now() + Duration::from_millis(rng.range(500, 2000));
    while Instant::now() < deadline {
        let now = Instant::now();
        for (i, until) in dead_until.iter_mut().enumerate() {
            if until.is_some_and(|t| now >= t) {
                lab.restart(i);
                *until = None;
            }
        }
        if now >= next_kill {
            let alive: Vec<usize> = (0..SERVERS).filter(|&i| dead_until[i].is_none()).collect();
            let up = lab.up_servers();
            let i = alive[rng.below(alive.len() as u64) as usize];
            if alive.iter().any(|&j| j != i && up.contains(&format!("s{j}"))) {
                kill_log.push((epoch.elapsed(), format!("s{i}")));
                lab.kill(i);
                kills += 1;
                dead_until[i] = Some(now + Duration::from_millis(rng.range(300, 1500)));
            }
            next_kill = now + Duration::from_millis(rng.range(500, 2000));
        }
        thread::sleep(Duration::from_millis(10));
    }
    for (i, until) in dead_until.iter().enumerate() {
        if until.is_some() {
            lab.restart(i);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut all = SoakStats::default();
    for h in load {
        let st = h.join().expect("load thread");
        all.outs.extend(st.outs);
        all.echo_ok += st.echo_ok;
        all.echo_fail.extend(st.echo_fail);
        all.bytes += st.bytes;
    }
    let ran = epoch.elapsed();
    let corrupt: Vec<&Outcome> = all.outs.iter().filter(|o| matches!(o.end, End::Corrupt(_))).collect();
    assert!(corrupt.is_empty(), "corrupted answers: {corrupt:?}");
    let log = sessions(&lab.shunt.log());
    let codes = count_codes(&log);
    for bad in ["SC", "sC", "NC", "RC"] {
        assert!(!codes.contains_key(bad), "connect-phase failures reached clients: {codes:?}");
    }
    // Every failed request is explained by a kill: shunt logged SD (the server reset or died
    // mid-session), or the killed server's kernel closed the connection with a FIN after the
    // bytes it had (a truncation an L4 proxy cannot tell from a whole answer): then shunt's
    // line says "--" and exactly the bytes the client got.
    let fails: Vec<&Outcome> = all.outs.iter().filter(|o| !o.ok()).collect();
    let (fin_truncations, mut unexplained) = explain_failures(&fails, &log, &kill_log);
    for (end, m, at, took) in &all.echo_fail {
        if !matches!(end, End::Reset | End::Eof) || !killed_during(&kill_log, None, *at, *took) {
            unexplained.push(format!("echo session at {at:?} for {took:?}: {end}: {m}"));
        }
    }
    assert!(
        unexplained.is_empty(),
        "client errors not caused by a server dying mid-session (kills {kill_log:?}):\n{}",
        unexplained.join("\n")
    );
    let sd = codes.get("SD").copied().unwrap_or(0);
    let sd_empty = log.iter().filter(|s| s.code == "SD" && s.down == 0).count();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for e in fails.iter().map(|o| &o.end).chain(all.echo_fail.iter().map(|(e, ..)| e)) {
        *kinds.entry(e.to_string()).or_insert(0) += 1;
    }
    let mut lat: Vec<Duration> = all.outs.iter().filter(|o| o.ok() && o.got <= 64 * 1024).map(|o| o.took).collect();
    let (p50, p99, pmax) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99), percentile(&mut lat, 1.0));
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT soak {secs} s: {} requests + {} echo sessions ({} MiB checked) with {kills} random kills: {} failed \
         ({kinds:?}), every one a session live on a server when it was killed ({sd} SD, {sd_empty} of them before \
         any answer byte; {fin_truncations} answers cut short by the dying server's own FIN), 0 SC/sC/NC/RC; short-request latency p50 {p50:.2?} p99 {p99:.2?} max {pmax:.2?}; \
         ran {ran:.2?}; codes {codes:?}; {inv}",
        all.outs.len(),
        all.echo_ok + all.echo_fail.len(),
        all.bytes / MIB,
        fails.len() + all.echo_fail.len()
    );
}
