//! Global `user NAME`: shunt, started as root, binds a port below 1024 and then runs as that user
//! for good (the kernel's view in /proc: every uid and gid, the groups, no capability left), and
//! everything after start still works: traffic with splice pipes, health probes, the admin
//! endpoint, a reload, a binary upgrade. A user that does not exist stops the start; root
//! without `user` is warned about.

mod common;

use common::*;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

const T: Duration = Duration::from_secs(10);
const NOBODY: &str = "65534";

/// A port below 1024 free on 127.0.0.1 just now (only root may bind it: proof shunt bound first).
fn low_port() -> u16 {
    (700..1000).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port below 1024")
}

/// The `Key:` line of /proc/PID/status, its fields.
fn proc_status(pid: u32, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = text.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key} in\n{text}"));
    line[key.len()..].split_whitespace().map(str::to_string).collect()
}

/// `GET /big` through `addr` with curl: whether all of nginx's 1 MiB file arrived.
fn big_file_arrives(addr: SocketAddr) -> bool {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "-o", "/dev/null", "-w", "%{size_download}"])
        .arg(format!("http://{addr}/big"))
        .output()
        .expect("run curl");
    out.status.success() && String::from_utf8_lossy(&out.stdout) == (1 << 20).to_string()
}

fn conf(port: u16, nginx: SocketAddr, user: &str) -> String {
    format!(
        "log info\n{user}admin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:{port}\n  splice always\n\
         \x20 check http GET /health expect 200 interval 200ms\n  server n {nginx}\n"
    )
}

#[test]
fn runs_as_the_user_after_binding_and_everything_after_start_works() {
    assert_eq!(proc_status(std::process::id(), "Uid:")[1], "0", "this test starts shunt as root");
    let nginx = Nginx::start("nginx-user");
    let port = low_port();
    let mut shunt = start_shunt(&conf(port, nginx.addr, "user nobody\n"));
    let pid = shunt.proc.pid();
    assert_eq!(proc_status(pid, "Uid:"), [NOBODY; 4], "real, effective, saved and filesystem uid");
    assert_eq!(proc_status(pid, "Gid:"), [NOBODY; 4]);
    assert_eq!(proc_status(pid, "Groups:"), [NOBODY], "root's supplementary groups are gone");
    assert_eq!(proc_status(pid, "CapEff:"), ["0000000000000000"], "no capability left to regain root");
    assert_eq!(proc_status(pid, "CapPrm:"), ["0000000000000000"]);
    shunt.wait_log("running as user nobody (uid 65534, gid 65534)", T);
    assert!(shunt.log_lines("running as root").is_empty(), "no warning with `user`");

    // Health probes, then 1 MiB through splice pipes, from the port only root could bind.
    wait_for(T, "the server up by its health checks", || {
        status_json(shunt.admin())["services"][0]["servers"][0]["state"] == "up"
    });
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(big_file_arrives(addr), "1 MiB through shunt as nobody");

    // A reload re-reads the conf (readable by nobody) and applies it.
    let mut next = conf(port, nginx.addr, "user nobody\n");
    next.push_str("  server m 127.0.0.1:1 disabled\n");
    shunt.reload(&next);
    wait_for(T, "the reload applied", || status_json(shunt.admin())["services"][0]["servers"][1]["name"] == "m");

    // An upgrade re-executes the binary as nobody: the new process is that user from its start
    // (it finds itself already unprivileged) and takes the listener bound on the low port.
    shunt.signal(libc::SIGUSR2);
    let line = shunt.wait_log("upgrade: this process (pid ", T);
    let new: u32 = line.split("(pid ").nth(1).unwrap().split(')').next().unwrap().parse().unwrap();
    let _guard = KillOnDrop::new(new);
    assert!(shunt.wait_timeout(T).is_some_and(|s| s.success()), "the old process exits once replaced");
    assert_eq!(proc_status(new, "Uid:"), [NOBODY; 4]);
    assert!(big_file_arrives(addr), "1 MiB through the new process");
}

#[test]
fn an_unknown_user_stops_the_start() {
    let nginx = Nginx::start("nginx-nouser");
    let mut shunt = spawn_shunt_with(&shunt_bin(), &conf(0, nginx.addr, "user no-such-user-here\n"), &[]);
    let status = shunt.wait_timeout(T).expect("shunt exits");
    assert_eq!(status.code(), Some(2), "{}", shunt.proc.log());
    assert!(shunt.proc.log().contains("user no-such-user-here: no such user"), "{}", shunt.proc.log());
}

#[test]
fn root_without_user_is_warned_about() {
    let nginx = Nginx::start("nginx-root");
    let mut shunt = start_shunt(&conf(0, nginx.addr, ""));
    shunt.wait_log("running as root: add \"user NAME\"", T);
    assert_eq!(proc_status(shunt.proc.pid(), "Uid:")[0], "0");
}
