//! `make install` and `make uninstall` as a packager runs them (`DESTDIR`, `PREFIX`): the binary,
//! the systemd unit pointing at it, the sysusers.d entry, and /etc/shunt/shunt.conf from the
//! example, never overwriting an operator's; uninstall removes what install put there and keeps
//! a conf the operator changed.

mod common;

use common::{plain_cargo_env, TempDir};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn make(target: &str, destdir: &Path) -> String {
    // `install` builds first: it finds the build `make test` made (see plain_cargo_env).
    let out = plain_cargo_env(&mut Command::new("make"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--no-print-directory", target, "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", destdir.display()))
        .output()
        .expect("run make");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "make {target} failed:\n{text}");
    text
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

#[test]
fn install_then_uninstall_into_a_destdir() {
    let root = TempDir::new("destdir");
    let r = root.path();
    make("install", r);
    let (bin, unit) = (r.join("usr/bin/shunt"), r.join("usr/lib/systemd/system/shunt.service"));
    let (users, conf) = (r.join("usr/lib/sysusers.d/shunt.conf"), r.join("etc/shunt/shunt.conf"));
    assert_eq!((mode(&bin), mode(&unit), mode(&users), mode(&conf)), (0o755, 0o644, 0o644, 0o644));
    let unit_text = fs::read_to_string(&unit).unwrap();
    assert!(unit_text.contains("\nExecStart=/usr/bin/shunt -c /etc/shunt/shunt.conf\n"), "{unit_text}");
    assert!(!unit_text.contains("/usr/local/bin"), "every path follows PREFIX:\n{unit_text}");
    let example = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/example.conf")).unwrap();
    assert_eq!(fs::read(&conf).unwrap(), example);
    // The installed binary accepts the installed conf.
    let check = Command::new(&bin).arg("--check").arg("-c").arg(&conf).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // The operator edits the conf; a second install (an upgrade of the package) keeps it.
    fs::write(&conf, "# mine\nservice web\n  bind 127.0.0.1:80\n  server a 127.0.0.1:8080\n").unwrap();
    let said = make("install", r);
    assert!(said.contains("shunt.conf exists: left as it is"), "{said}");
    assert!(fs::read_to_string(&conf).unwrap().starts_with("# mine"));

    make("uninstall", r);
    for gone in [&bin, &unit, &users] {
        assert!(!gone.exists(), "{} left behind", gone.display());
    }
    assert!(fs::read_to_string(&conf).unwrap().starts_with("# mine"), "the operator's conf stays");

    // Unchanged, the example goes too, and its directory with it.
    fs::write(&conf, &example).unwrap();
    make("uninstall", r);
    assert!(!r.join("etc/shunt").exists());
}
