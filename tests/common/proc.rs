//! Things a test makes that must not outlive it: child processes ([`Proc`], SIGKILLed and reaped
//! on drop, their output captured to a file and shown when the test fails), processes that are
//! not our children ([`KillOnDrop`]), and scratch directories ([`TempDir`], kept when the test
//! fails so its confs and logs can be read).

use super::procfs::comm;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------------
// Temporary directories
// ------------------------------------------------------------------------------------------------

/// A fresh directory under `$TMPDIR/shunt-tests/`, removed on drop — unless the test is panicking
/// (or `SHUNT_KEEP_TMP` is set), in which case it is kept and its path printed.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        // The test's name (libtest names the thread after it) makes a kept directory findable;
        // pid + sequence number make it unique across parallel tests and processes.
        let test = thread::current()
            .name()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect::<String>();
        let path = std::env::temp_dir().join("shunt-tests").join(format!(
            "{test}-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path); // a leftover from a crashed run with a recycled pid
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() || std::env::var_os("SHUNT_KEEP_TMP").is_some() {
            eprintln!("[harness] kept {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes `data` to a file in `dir` and returns its path (for admin_token files and the like).
pub fn write_file(dir: &TempDir, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    let mut f = File::create(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(data).expect("write file");
    p
}

// ------------------------------------------------------------------------------------------------
// Child processes
// ------------------------------------------------------------------------------------------------

/// A child process that cannot outlive the test: dropped, it is SIGKILLed and reaped.
/// Its stdout and stderr go to a log file; if the test panics, the log's tail is printed.
pub struct Proc {
    name: String,
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> Proc {
        let log = OpenOptions::new()
            .create(true)
            .append(true) // both streams share the file: O_APPEND keeps their lines whole
            .open(log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("dup log fd");
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name} ({cmd:?}): {e}"));
        Proc { name: name.to_string(), child, log_path: log_path.to_path_buf(), status: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` (e.g. `libc::SIGHUP`). A process already reaped gets nothing: its pid may
    /// belong to someone else by now.
    pub fn signal(&mut self, sig: i32) {
        if self.try_status().is_some() {
            return;
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}): {}", self.pid(), io::Error::last_os_error());
    }

    /// The exit status if the process has exited (reaping it), else None. Never blocks.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; panics (with the log) if it does not.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_timeout(timeout) {
            Some(s) => s,
            None => panic!(
                "{} (pid {}) still running {timeout:?} after SIGTERM; log:\n{}",
                self.name,
                self.pid(),
                self.log()
            ),
        }
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Describes how the process ended: "exit code 1", "signal 9".
    pub fn describe(status: ExitStatus) -> String {
        match (status.code(), status.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => format!("{status:?}"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            // SIGKILL, not SIGTERM: a drop must not hang on a process that ignores TERM.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "[harness] ---- last {} lines of {} (pid {}, {}) ----\n{}\n[harness] ---- end ----",
                tail.len(),
                self.name,
                self.child.id(),
                self.log_path.display(),
                tail.join("\n")
            );
        }
    }
}

/// SIGKILLs a process that is not our own child (e.g. shunt under strace) on drop, if it is
/// still there and still has the command name it had: a pid is not reused while that holds.
pub struct KillOnDrop {
    pub pid: u32,
    comm: Option<String>,
}

impl KillOnDrop {
    pub fn new(pid: u32) -> KillOnDrop {
        KillOnDrop { pid, comm: comm(pid) }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.comm.is_some() && comm(self.pid) == self.comm {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}
