//! What /proc says about a process (any process: shunt, nginx, a test peer, the test itself):
//! descriptors, memory, CPU time, TCP sockets and their states, children. Read-only, and it
//! opens no connection, so looking never changes what is looked at.

use super::wait::{wait_for, START_TIMEOUT};
use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}")).count()
}

/// Open descriptors of `pid` by kind: (sockets, pipes, everything else); zeros once it is gone.
/// A descriptor closed between the listing and its readlink is not counted: it is not open.
pub fn fd_kinds(pid: u32) -> (usize, usize, usize) {
    let (mut sockets, mut pipes, mut other) = (0, 0, 0);
    for t in fd_targets(pid) {
        if t.starts_with("socket:") {
            sockets += 1;
        } else if t.starts_with("pipe:") {
            pipes += 1;
        } else {
            other += 1;
        }
    }
    (sockets, pipes, other)
}

/// What each open descriptor of `pid` refers to (`socket:[N]`, `pipe:[N]`, a path,
/// `anon_inode:[eventpoll]`...); empty once it is gone.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten().filter_map(|fd| fs::read_link(fd.path()).ok()).map(|t| t.to_string_lossy().into_owned()).collect()
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    try_rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// VmRSS of `pid` in KiB, None once it is gone (for samplers that must not panic after a
/// failure elsewhere).
pub fn try_rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// User + system CPU time `pid` has used so far (all its threads), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// The CPU time `pid` uses while `window` of wall time passes (waiting by design: this measures
/// what a process does when nothing happens). Returns (CPU, wall time actually passed).
pub fn cpu_over(pid: u32, window: Duration) -> (Duration, Duration) {
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    thread::sleep(window);
    (cpu_time(pid) - cpu0, t0.elapsed())
}

/// The direct children of `pid` (every thread's), from /proc/PID/task/*/children.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(c) = fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

/// The command name of `pid` (/proc/PID/comm), None once it is gone.
pub fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

// ------------------------------------------------------------------------------------------------
// TCP sockets
// ------------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown(u8),
}

impl TcpState {
    /// From the hex code in /proc/net/tcp (include/net/tcp_states.h).
    fn from_code(c: u8) -> TcpState {
        use TcpState::*;
        match c {
            0x01 => Established,
            0x02 => SynSent,
            0x03 => SynRecv,
            0x04 => FinWait1,
            0x05 => FinWait2,
            0x06 => TimeWait,
            0x07 => Close,
            0x08 => CloseWait,
            0x09 => LastAck,
            0x0A => Listen,
            0x0B => Closing,
            0x0C => NewSynRecv,
            other => Unknown(other),
        }
    }

    /// From the names `ss` and netstat print: "CLOSE_WAIT", "close-wait", "ESTAB"...
    pub fn parse(name: &str) -> TcpState {
        use TcpState::*;
        match name.to_ascii_uppercase().replace('-', "_").as_str() {
            "ESTABLISHED" | "ESTAB" => Established,
            "SYN_SENT" => SynSent,
            "SYN_RECV" => SynRecv,
            "FIN_WAIT1" | "FIN_WAIT_1" => FinWait1,
            "FIN_WAIT2" | "FIN_WAIT_2" => FinWait2,
            "TIME_WAIT" => TimeWait,
            "CLOSE" | "CLOSED" => Close,
            "CLOSE_WAIT" => CloseWait,
            "LAST_ACK" => LastAck,
            "LISTEN" => Listen,
            "CLOSING" => Closing,
            "NEW_SYN_RECV" => NewSynRecv,
            other => panic!("unknown TCP state name {other:?}"),
        }
    }
}

/// One TCP socket, from a /proc/.../net/tcp{,6} table.
#[derive(Clone, Debug)]
pub struct TcpSocket {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub inode: u64,
}

/// The TCP sockets (IPv4 and IPv6) that process `pid` holds open.
///
/// A socket belongs to the process when one of its /proc/PID/fd links reads `socket:[INODE]`.
/// The tables come from /proc/PID/net, i.e. the process's own network namespace, so this also
/// works for a process started inside `ip netns exec`. Sockets the process has closed but the
/// kernel still keeps (TIME_WAIT, orphaned FIN_WAIT) have no fd and are not listed.
pub fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new(); // the process has gone: it holds nothing
    };
    let mut inodes = HashSet::new();
    for fd in fds.flatten() {
        if let Ok(target) = fs::read_link(fd.path()) {
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(n) = n.parse::<u64>() {
                    inodes.insert(n);
                }
            }
        }
    }
    net_sockets(&format!("/proc/{pid}/net")).into_iter().filter(|s| inodes.contains(&s.inode)).collect()
}

/// Every TCP socket of the namespace that `net_dir` (`/proc/net`, `/proc/PID/net`) shows,
/// whoever holds it, TIME_WAIT included.
pub fn net_sockets(net_dir: &str) -> Vec<TcpSocket> {
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("{net_dir}/{table}")) else {
            continue; // no IPv6 in this kernel/namespace
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote), Ok(code), Ok(inode)) =
                (parse_proc_addr(f[1]), parse_proc_addr(f[2]), u8::from_str_radix(f[3], 16), f[9].parse::<u64>())
            else {
                continue;
            };
            out.push(TcpSocket { local, remote, state: TcpState::from_code(code), inode });
        }
    }
    out
}

/// Number of `pid`'s TCP sockets in `state` (a name such as "CLOSE_WAIT").
pub fn sockets_in_state(pid: u32, state: &str) -> usize {
    let want = TcpState::parse(state);
    tcp_sockets(pid).iter().filter(|s| s.state == want).count()
}

/// Whether process `pid` has a TCP socket in LISTEN state on `port` (any local address).
pub fn is_listening(pid: u32, port: u16) -> bool {
    tcp_sockets(pid).iter().any(|s| s.state == TcpState::Listen && s.local.port() == port)
}

/// Waits until process `pid` listens on `port` (see [`is_listening`]); opens no connection.
pub fn wait_listening(pid: u32, port: u16) {
    wait_for(START_TIMEOUT, &format!("pid {pid} to listen on port {port}"), || is_listening(pid, port));
}

/// Parses `0100007F:1F90` (IPv4) or the 32-hex-digit IPv6 form. The kernel prints each 32-bit
/// word of the address in host byte order (little-endian here), the port in big-endian hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> =
        (0..ip.len() / 8).map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16)).collect::<Result<_, _>>().ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(SocketAddr::from((b, port)))
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(SocketAddr::from((b, port)))
        }
        _ => None,
    }
}
