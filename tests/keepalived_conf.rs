//! conf/keepalived.conf and its active-active variant, filled in as a node's would be, pass
//! keepalived's own configuration test (`keepalived -t`) inside a network namespace that has
//! the interface and address they name; every placeholder is filled; and the test can fail: a
//! broken line is refused.

mod common;

use common::netns::Netns;
use common::*;
use std::fs;

/// The conf file `name` with `values` put in for its placeholders; panics on one left over.
fn filled(name: &str, values: &[(&str, &str)]) -> String {
    let mut text = fs::read_to_string(repo_root().join("conf").join(name)).unwrap();
    for (key, value) in values {
        text = text.replace(&format!("@{key}@"), value);
    }
    let body: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect::<Vec<_>>().join("\n");
    assert!(!body.contains('@'), "{name}: a placeholder was left:\n{body}");
    text
}

/// `keepalived -t -f` on `text` inside `ns`: its exit code and what it said.
fn config_test(ns: &Netns, dir: &TempDir, text: &str) -> (i32, String) {
    let path = dir.join("keepalived.conf");
    fs::write(&path, text).unwrap();
    let out = ns.command(&["keepalived", "-t", "-f", path.to_str().unwrap()]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), said)
}

#[test]
fn both_recipes_pass_keepalived_s_own_config_test() {
    let ns = Netns::new().unwrap();
    ns.exec_ok(&["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"]).unwrap();
    ns.exec_ok(&["ip", "link", "set", "v0", "up"]).unwrap();
    ns.exec_ok(&["ip", "addr", "add", "10.99.0.1/24", "dev", "v0"]).unwrap();
    let dir = TempDir::new("keepalived");
    let node = [
        ("NODE", "lb1"),
        ("IFACE", "v0"),
        ("SELF_IP", "10.99.0.1"),
        ("PEER_IP", "10.99.0.2"),
        ("ADMIN", "127.0.0.1:9090"),
    ];
    let mut single = node.to_vec();
    single.extend([("VIP", "10.99.0.10"), ("PRIORITY", "150")]);
    let mut pair = node.to_vec();
    pair.extend([("VIP_A", "10.99.0.10"), ("VIP_B", "10.99.0.11"), ("PRIORITY_A", "150"), ("PRIORITY_B", "100")]);
    for (name, values) in [("keepalived.conf", &single), ("keepalived-active-active.conf", &pair)] {
        let text = filled(name, values);
        assert!(text.contains("nopreempt") && text.contains("/healthz?service=web"), "{name}");
        let (code, said) = config_test(&ns, &dir, &text);
        assert_eq!(code, 0, "{name}: keepalived -t:\n{said}");
        // The same check refuses a broken file, so a pass means something.
        let (code, said) = config_test(&ns, &dir, &text.replace("advert_int 0.5", "advert_intx 0.5"));
        assert_ne!(code, 0, "{name}: a broken file passed:\n{said}");
    }
}
