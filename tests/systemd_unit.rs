//! `conf/shunt.service` as systemd itself judges it: `systemd-analyze security --offline=true`
//! must rate its exposure "OK" or better (3.0 or less on its 0–10 scale), and the unit keeps the
//! settings the rest of shunt relies on (notify, the reload and upgrade paths, descriptors).

use std::path::Path;
use std::process::Command;

fn unit_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/shunt.service")
}

/// The number in systemd-analyze's `→ Overall exposure level for shunt.service: 1.9 OK` line.
fn exposure(report: &str) -> Option<f64> {
    let line = report.lines().find(|l| l.contains("Overall exposure level for shunt.service:"))?;
    line.rsplit(':').next()?.split_whitespace().next()?.parse().ok()
}

#[test]
fn systemd_rates_the_unit_ok_or_better() {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit_path())
        .output()
        .expect("run systemd-analyze (Debian package systemd; make test installs it)");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let level = exposure(&report).unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(level <= 3.0, "exposure {level} > 3.0:\n{report}");
}

#[test]
fn the_unit_keeps_what_shunt_relies_on() {
    let unit = std::fs::read_to_string(unit_path()).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=1048576",
        "User=shunt",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(unit.lines().any(|l| l == line), "conf/shunt.service lacks {line:?}");
    }
}

#[test]
fn the_exposure_line_is_read() {
    assert_eq!(exposure("x\n→ Overall exposure level for shunt.service: 1.9 OK 🙂\n"), Some(1.9));
    assert_eq!(exposure("→ Overall exposure level for shunt.service: 9.6 UNSAFE 😨"), Some(9.6));
    assert_eq!(exposure("nothing"), None);
}
