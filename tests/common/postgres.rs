//! Real PostgreSQL 15 servers for the database-tier tests: a primary made with `initdb`
//! (SCRAM-SHA-256 passwords, `fsync=off`, small buffers, TCP on loopback only) and a
//! streaming standby made from it with `pg_basebackup -R`, on free loopback ports, run as the
//! `postgres` user (the server refuses root); `psql` for queries. Killed on drop.

use super::ports::{on_free_port, Bound};
use super::proc::{Proc, TempDir};
use super::procfs::is_listening;
use super::wait::START_TIMEOUT;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

pub const SUPERUSER: &str = "postgres";

/// The server programs' directory of the newest PostgreSQL installed (Debian keeps them in
/// /usr/lib/postgresql/VERSION/bin, off the PATH).
fn pg_bin() -> String {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    versions.sort();
    let v = versions.last().expect("a PostgreSQL server in /usr/lib/postgresql (make test installs it)");
    format!("/usr/lib/postgresql/{v}/bin")
}

pub struct Postgres {
    pub addr: SocketAddr,
    pub proc: Proc,
    pub data: PathBuf,
    _dir: TempDir,
}

/// `argv` as the postgres user (setpriv execs in place: the pid is the program's).
fn as_postgres(argv: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).args(argv);
    c
}

fn run_ok(what: &str, mut cmd: Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A directory the postgres user owns.
fn owned_dir(what: &str) -> TempDir {
    let dir = TempDir::new(what);
    run_ok("chown", {
        let mut c = Command::new("chown");
        c.args(["-R", "postgres:postgres"]).arg(dir.path());
        c
    });
    dir
}

impl Postgres {
    /// A primary whose superuser `postgres` has `password` (SCRAM-SHA-256 for every TCP login).
    pub fn primary(name: &str, password: &str) -> Postgres {
        let dir = owned_dir("pg-primary");
        let data = dir.join("data");
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, password).unwrap();
        run_ok("chown pwfile", {
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(&pwfile);
            c
        });
        run_ok("initdb", {
            let (d, p) = (data.to_str().unwrap(), pwfile.to_str().unwrap());
            let mut c =
                as_postgres(&[&format!("{}/initdb", pg_bin()), "-D", d, "-U", SUPERUSER, "--auth=scram-sha-256"]);
            c.arg(format!("--pwfile={p}")).arg("-N");
            c
        });
        let conf = "listen_addresses = '127.0.0.1'\nfsync = off\nfull_page_writes = off\nsynchronous_commit = off\n\
                    shared_buffers = 16MB\nmax_connections = 40\nwal_level = replica\nmax_wal_senders = 4\n\
                    hot_standby = on\nlog_min_messages = warning\n";
        append(&data.join("postgresql.conf"), conf);
        // First match wins: a user for each login method a check must speak, then everyone else
        // with SCRAM. The users themselves are made once the server runs (`LOGIN_USERS`).
        std::fs::write(
            data.join("pg_hba.conf"),
            "host all trust_user 127.0.0.1/32 trust\nhost all clear_user 127.0.0.1/32 password\n\
             host all md5_user 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 scram-sha-256\n\
             host replication all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let pg = Postgres::start(name, dir, data);
        let users = format!(
            "CREATE ROLE trust_user LOGIN; CREATE ROLE clear_user LOGIN PASSWORD '{password}'; \
             SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD '{password}';"
        );
        psql(pg.addr, password, &users).unwrap_or_else(|e| panic!("creating the login users: {e}"));
        pg
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`).
    pub fn standby_of(name: &str, primary: &Postgres, password: &str) -> Postgres {
        let dir = owned_dir("pg-standby");
        let data = dir.join("data");
        let mut c = as_postgres(&[
            &format!("{}/pg_basebackup", pg_bin()),
            "-h",
            "127.0.0.1",
            "-U",
            SUPERUSER,
            "-R",
            "-X",
            "stream",
        ]);
        c.arg("-p").arg(primary.addr.port().to_string()).arg("-D").arg(&data).env("PGPASSWORD", password);
        run_ok("pg_basebackup", c);
        Postgres::start(name, dir, data)
    }

    fn start(name: &str, dir: TempDir, data: PathBuf) -> Postgres {
        let (port, proc) = on_free_port(name, |port| {
            let mut cmd = as_postgres(&[&format!("{}/postgres", pg_bin()), "-D", data.to_str().unwrap()]);
            // No Unix socket: a test directory's path can pass the 107 bytes a socket path may
            // have, and TCP on loopback is what shunt and the clients use anyway.
            cmd.args(["-p", &port.to_string(), "-k", ""]);
            let mut proc = Proc::spawn(&format!("postgres {name}"), cmd, &dir.join("postgres.log"));
            let deadline = Instant::now() + START_TIMEOUT * 2;
            while !is_listening(proc.pid(), port) {
                if let Some(st) = proc.try_status() {
                    if proc.log().contains("could not bind") || proc.log().contains("already in use") {
                        return Bound::InUse;
                    }
                    panic!("postgres {name} exited ({}): {}", Proc::describe(st), proc.log());
                }
                assert!(Instant::now() < deadline, "postgres {name} not listening on {port}:\n{}", proc.log());
                thread::sleep(Duration::from_millis(20));
            }
            // Listening is not ready: while it starts up the server refuses logins (57P03).
            let ready = || {
                Command::new(format!("{}/pg_isready", pg_bin()))
                    .args(["-q", "-h", "127.0.0.1", "-p"])
                    .arg(port.to_string())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            while !ready() {
                assert!(Instant::now() < deadline, "postgres {name} not ready on {port}:\n{}", proc.log());
                thread::sleep(Duration::from_millis(20));
            }
            Bound::Up((port, proc))
        });
        Postgres { addr: SocketAddr::from(([127, 0, 0, 1], port)), proc, data, _dir: dir }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `psql -tAc SQL` against `addr` (a server or shunt in front of one): stdout, or stderr on
/// failure.
pub fn psql(addr: SocketAddr, password: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-U", SUPERUSER, "-d", "postgres"])
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "5")
        .output()
        .expect("run psql");
    match out.status.success() {
        true => Ok(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}
