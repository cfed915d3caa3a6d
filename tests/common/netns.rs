//! Network namespaces of the test's own: [`Netns`] (made with `lo` up, deleted on drop, even on
//! panic), processes inside one (`ip netns exec`, [`Netns::command`]) and threads of the test
//! inside one ([`run_in`], [`spawn_in`]: a network namespace is a per-thread attribute, so a
//! thread that entered one opens its sockets there, and threads it spawns start there too).
//! Firewall rules, sysctls and qdiscs go inside such a namespace, never in the root one.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

/// A network namespace with `lo` up, deleted on drop. Declare it before the processes that run
/// in it, so they are killed before it goes.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `shunt-e2e-PID-N`. An error when namespaces cannot be made (the caller decides
    /// whether that may be skipped; see `SHUNT_SKIP_NETNS`).
    pub fn new() -> io::Result<Netns> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let name = format!("shunt-e2e-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        Netns::named(&name)
    }

    /// Creates namespace `name` (deleting a leftover of that name first).
    pub fn named(name: &str) -> io::Result<Netns> {
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
        run_ok("ip", &["netns", "add", name])?;
        let ns = Netns { name: name.to_string() };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A Command running `argv` inside the namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(argv);
        c
    }

    /// Runs `argv` inside the namespace; an error carries its stderr.
    pub fn exec_ok(&self, argv: &[&str]) -> io::Result<String> {
        let out = self.command(argv).stdin(Stdio::null()).output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!(
                "{argv:?} in netns {}: {}: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stderr(Stdio::null()).status();
    }
}

/// Runs `prog args...` to completion; an error carries its stderr.
pub fn run_ok(prog: &str, args: &[&str]) -> io::Result<()> {
    let out = Command::new(prog).args(args).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{prog} {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `f` on a thread inside namespace `ns` and returns its result (a panic in `f` is
/// passed on as is).
pub fn run_in<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|sc| {
        let h = sc.spawn(|| {
            enter_netns(ns);
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Spawns a thread inside namespace `ns`.
pub fn spawn_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let ns = ns.to_string();
    thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || {
            enter_netns(&ns);
            f()
        })
        .expect("spawn a thread")
}

/// Moves the calling thread into network namespace `ns` (a name under /run/netns).
pub fn enter_netns(ns: &str) {
    let path = ["/run/netns", "/var/run/netns"]
        .iter()
        .map(|d| PathBuf::from(d).join(ns))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("namespace {ns} not found under /run/netns"));
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns(2) on a descriptor we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns into {ns}: {}", io::Error::last_os_error());
}
