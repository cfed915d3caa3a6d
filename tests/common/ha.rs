//! The balancer pair of scripts/ha-demo.sh, run by the script itself ([`Pair`]): a client, two
//! nodes `lb1` and `lb2` each running shunt and keepalived, two web servers, all in network
//! namespaces the script makes under a prefix of this test's own. The test causes failures
//! (a killed shunt, a link down, lost servers) with the pids and names the script leaves in its
//! directory, and measures them from the client's side with a [`Prober`]: a request every
//! 100 ms, each with its own deadline, so one that hangs does not hide the ones after it.
//! Everything is stopped and every namespace deleted on drop, even after a failed assertion.

use super::bins::demo_script;
use super::clients::connect_from;
use super::netns::spawn_in;
use super::proc::TempDir;
use super::wait::wait_for;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The virtual IP (and, active-active, the second one, whose master is lb2).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 10);
pub const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
/// Each probe's deadline for connect, write and read.
const PROBE_LIMIT: Duration = Duration::from_millis(800);

/// The pair, as scripts/ha-demo.sh runs it.
pub struct Pair {
    script: Child,
    prefix: String,
    pub dir: TempDir,
}

impl Pair {
    /// Starts the script (`args`, e.g. `["--balance", "maglev"]`) and waits until it says ready:
    /// the client got answers through every VIP.
    pub fn start(args: &[&str]) -> Pair {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!("ha{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let dir = TempDir::new("ha");
        let script = demo_script("ha-demo.sh", &dir.join("script.log"))
            .args(args)
            .env("HA_PREFIX", &prefix)
            .env("HA_DIR", dir.path())
            .env("HA_NO_BUILD", "1")
            .spawn()
            .unwrap();
        let mut pair = Pair { script, prefix, dir };
        wait_for(Duration::from_secs(60), "ha-demo.sh to say ready", || {
            assert!(matches!(pair.script.try_wait(), Ok(None)), "ha-demo.sh exited:\n{}", pair.script_log());
            pair.script_log().contains("ha-demo: ready")
        });
        pair
    }

    pub fn script_log(&self) -> String {
        fs::read_to_string(self.dir.join("script.log")).unwrap_or_default()
    }

    /// The namespace of `node` (client, lb1, lb2, web1, web2, switch).
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    /// The pid of `what` (shunt, keepalived, web) on `node`, from the script's pid file.
    pub fn pid(&self, node: &str, what: &str) -> i32 {
        let path = self.dir.join(&format!("{node}/{what}.pid"));
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().parse().unwrap()
    }

    /// What `what` on `node` logged so far.
    pub fn log(&self, node: &str, what: &str) -> String {
        fs::read_to_string(self.dir.join(&format!("{node}/{what}.log"))).unwrap_or_default()
    }

    /// `kill -9` of shunt on `node`: the process dies, keepalived on the node does not.
    pub fn kill_shunt(&self, node: &str) {
        // SAFETY: kill(2) on a pid this test's script started.
        assert_eq!(unsafe { libc::kill(self.pid(node, "shunt"), libc::SIGKILL) }, 0);
    }

    /// `ip link set eth0 up|down` inside `node`: the node's only link to the segment.
    pub fn set_link(&self, node: &str, up: bool) {
        self.ip(node, &["link", "set", "eth0", if up { "up" } else { "down" }]);
    }

    /// Runs `ip -n NS args…`, panicking on failure.
    pub fn ip(&self, node: &str, args: &[&str]) -> String {
        let out = Command::new("ip").arg("-n").arg(self.ns(node)).args(args).output().unwrap();
        assert!(out.status.success(), "ip -n {} {args:?}: {}", self.ns(node), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Which balancer node has `vip` on its interface now (None: neither; both is a failure).
    pub fn holder(&self, vip: Ipv4Addr) -> Option<&'static str> {
        let has =
            |node: &str| self.ip(node, &["-o", "-4", "addr", "show", "dev", "eth0"]).contains(&format!(" {vip}/"));
        match (has("lb1"), has("lb2")) {
            (true, true) => panic!("both nodes hold {vip}"),
            (true, false) => Some("lb1"),
            (false, true) => Some("lb2"),
            (false, false) => None,
        }
    }

    /// Waits until `node` holds `vip`.
    pub fn wait_holder(&self, vip: Ipv4Addr, node: &str, limit: Duration) {
        wait_for(limit, &format!("{node} to hold {vip}"), || self.holder(vip) == Some(node));
    }

    /// Gives the client extra source addresses 10.77.0.`first`… (`count` of them), to play
    /// many clients from.
    pub fn client_sources(&self, first: u8, count: u8) -> Vec<IpAddr> {
        (first..first + count)
            .map(|n| {
                let ip = Ipv4Addr::new(10, 77, 0, n);
                self.ip("client", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
                IpAddr::V4(ip)
            })
            .collect()
    }

    /// Runs `f` on a thread inside the client's namespace.
    pub fn in_client<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        spawn_in(&self.ns("client"), f).join().unwrap()
    }

    /// SIGINT to the script's process group, as Ctrl-C would, and its exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the process group this test started.
        unsafe { libc::kill(-(self.script.id() as i32), libc::SIGINT) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.script.try_wait().unwrap() {
                return st;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "ha-demo.sh did not exit:\n{}", self.script_log());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The namespaces named with this pair's prefix that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if matches!(self.script.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on the script this test started; its EXIT trap stops the rest.
            unsafe { libc::kill(self.script.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(30) && matches!(self.script.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = self.script.kill();
            let _ = self.script.wait();
        }
        // Whatever the script could not stop (it was killed, or failed half-way).
        for node in ["lb1", "lb2", "web1", "web2"] {
            for what in ["keepalived", "shunt", "web"] {
                if let Ok(pid) = fs::read_to_string(self.dir.join(&format!("{node}/{what}.pid"))) {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        // SAFETY: as above; a pid that is gone gives ESRCH, nothing else.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        for ns in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

/// `GET /` through `addr` from source `from` (any when None) with [`PROBE_LIMIT`]: the name of
/// the web server that answered ("web-01"), or the error.
pub fn server_name(from: Option<IpAddr>, addr: SocketAddr) -> io::Result<String> {
    let mut s = match from {
        Some(ip) => connect_from(ip, addr)?,
        None => TcpStream::connect_timeout(&addr, PROBE_LIMIT)?,
    };
    s.set_read_timeout(Some(PROBE_LIMIT))?;
    s.set_write_timeout(Some(PROBE_LIMIT))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    name_in(&answer)
}

/// The web server's name in an answer of the demo backend ("… hello from web-01 …").
fn name_in(answer: &str) -> io::Result<String> {
    let ok = answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200");
    match answer.split("hello from ").nth(1).and_then(|r| r.split_whitespace().next()) {
        Some(name) if ok => Ok(name.to_string()),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("not an answer: {answer:?}"))),
    }
}

/// One HTTP/1.1 keep-alive connection, for a session that must outlive a change of the pair.
pub struct KeepAlive {
    stream: TcpStream,
}

impl KeepAlive {
    pub fn open(addr: SocketAddr) -> io::Result<KeepAlive> {
        let stream = TcpStream::connect_timeout(&addr, PROBE_LIMIT)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(KeepAlive { stream })
    }

    /// One request on the connection: the server's name, or the error (reset, closed, timeout).
    pub fn get(&mut self) -> io::Result<String> {
        self.stream.write_all(b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n")?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if self.stream.read(&mut byte)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no length in {head:?}")))?;
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body)?;
        name_in(&(head + &String::from_utf8_lossy(&body)))
    }
}

/// Requests through a VIP every 100 ms from the client's namespace, each on its own thread with
/// its own deadline; records when each started and whether it was answered.
pub struct Prober {
    stop: Arc<AtomicBool>,
    results: Arc<Mutex<Vec<(Instant, bool)>>>,
    driver: Option<JoinHandle<()>>,
}

impl Prober {
    pub fn start(pair: &Pair, vip: Ipv4Addr) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(Vec::new()));
        let (stop2, results2) = (stop.clone(), results.clone());
        let addr = SocketAddr::from((vip, 80));
        // Threads a thread in the namespace spawns start in it too.
        let driver = spawn_in(&pair.ns("client"), move || {
            let mut probes = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                let results = results2.clone();
                let started = Instant::now();
                probes.push(thread::spawn(move || {
                    let ok = server_name(None, addr).is_ok();
                    results.lock().unwrap().push((started, ok));
                }));
                thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
            probes.into_iter().for_each(|p| p.join().unwrap());
        });
        Prober { stop, results, driver: Some(driver) }
    }

    /// Waits until a probe started at or after `since` was answered.
    pub fn wait_answered_after(&self, since: Instant, limit: Duration) {
        wait_for(limit, "a probe answered", || self.results.lock().unwrap().iter().any(|&(t, ok)| ok && t >= since));
    }

    /// Probes one second more, stops, and returns the outage a fault at `fault` caused: from
    /// the fault to the start of the first answered probe after the last failed one (so a
    /// probe that slipped through early does not end it); and how many probes failed.
    pub fn outage_after(mut self, fault: Instant) -> (Duration, usize) {
        thread::sleep(Duration::from_secs(1));
        self.stop.store(true, Ordering::Relaxed);
        self.driver.take().unwrap().join().unwrap();
        let mut results = self.results.lock().unwrap().clone();
        results.sort_by_key(|&(t, _)| t);
        let failed: Vec<Instant> = results.iter().filter(|&&(t, ok)| !ok && t >= fault).map(|&(t, _)| t).collect();
        let last_failure = failed.last().copied().unwrap_or(fault);
        let back = results
            .iter()
            .find(|&&(t, ok)| ok && t >= last_failure)
            .unwrap_or_else(|| panic!("no probe answered after the last failure: {results:?}"))
            .0;
        (back - fault, failed.len())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(d) = self.driver.take() {
            let _ = d.join();
        }
    }
}
