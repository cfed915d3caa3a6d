//! Real Redis servers for the database-tier tests: `redis-server` on a free loopback port, its
//! files in the test's own directory, no persistence, optionally with `requirepass` and as a
//! replica of another; `redis-cli` for commands. Killed on drop.

use super::ports::{on_free_port, says_addr_in_use, Bound};
use super::proc::{Proc, TempDir};
use super::procfs::is_listening;
use super::wait::{wait_for, START_TIMEOUT};
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

pub struct Redis {
    pub addr: SocketAddr,
    pub password: Option<String>,
    pub proc: Proc,
    _dir: TempDir,
}

impl Redis {
    /// A master (no `replica_of`) or a replica of `replica_of`, with `requirepass` (and
    /// `masterauth`) set to `password` if given.
    pub fn start(name: &str, password: Option<&str>, replica_of: Option<SocketAddr>) -> Redis {
        let redis = on_free_port(name, |port| Redis::try_start(name, port, password, replica_of));
        if replica_of.is_some() {
            wait_for(START_TIMEOUT, &format!("{name} to sync with its master"), || {
                redis.info("replication").contains("master_link_status:up")
            });
        }
        redis
    }

    fn try_start(name: &str, port: u16, password: Option<&str>, replica_of: Option<SocketAddr>) -> Bound<Redis> {
        let dir = TempDir::new("redis");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir.path());
        if let Some(p) = password {
            cmd.args(["--requirepass", p, "--masterauth", p]);
        }
        if let Some(m) = replica_of {
            cmd.args(["--replicaof", &m.ip().to_string(), &m.port().to_string()]);
        }
        let mut proc = Proc::spawn(&format!("redis {name}"), cmd, &dir.join("redis.log"));
        let deadline = Instant::now() + START_TIMEOUT;
        while !is_listening(proc.pid(), port) {
            if let Some(st) = proc.try_status() {
                if says_addr_in_use(&proc.log()) {
                    return Bound::InUse;
                }
                panic!("redis {name} exited ({}): {}", Proc::describe(st), proc.log());
            }
            assert!(Instant::now() < deadline, "redis {name} not listening on {port}");
            thread::sleep(Duration::from_millis(10));
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        Bound::Up(Redis { addr, password: password.map(str::to_string), proc, _dir: dir })
    }

    /// `redis-cli` with `args` against this server: its output (trimmed).
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.addr, self.password.as_deref(), args)
    }

    pub fn info(&self, section: &str) -> String {
        self.cli(&["INFO", section])
    }
}

/// `redis-cli -h -p [-a] ARGS` against `addr` (a server or shunt in front of one).
pub fn cli(addr: SocketAddr, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "--no-auth-warning"]);
    if let Some(p) = password {
        cmd.args(["-a", p]);
    }
    let out = cmd.args(args).output().expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
