//! `balance maglev` between two shunt "nodes" with the same servers listed in different orders,
//! and clients from many source addresses (127.0.0.N): both nodes send each client to the same
//! server; disabling a server on both moves its clients only (the same way on both nodes), and
//! enabling it brings every client back where it was.

mod common;

use common::*;
use std::io::Read;
use std::net::SocketAddr;

const CLIENTS: std::ops::RangeInclusive<u8> = 2..=81;

/// Which server answered each client (by source address) through `addr`.
fn servers_seen(addr: SocketAddr) -> Vec<String> {
    CLIENTS
        .map(|n| {
            let mut c = connect_from(loopback(n), addr).unwrap_or_else(|e| panic!("127.0.0.{n}: {e}"));
            let mut name = String::new();
            c.read_to_string(&mut name).unwrap();
            name
        })
        .collect()
}

#[test]
fn two_nodes_agree_and_a_server_that_leaves_moves_only_its_clients() {
    let servers = [name_server("alpha"), name_server("bravo"), name_server("charlie")];
    let node = |order: [usize; 3]| {
        let lines: String = order.iter().map(|&i| format!("  server s{i} {}\n", servers[i].addr)).collect();
        start_shunt(&format!("admin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  balance maglev\n{lines}"))
    };
    let (one, two) = (node([0, 1, 2]), node([2, 0, 1]));
    let before = servers_seen(one.addr("web"));
    assert_eq!(servers_seen(two.addr("web")), before, "both nodes send each client to the same server");
    for name in ["alpha", "bravo", "charlie"] {
        let share = before.iter().filter(|s| *s == name).count();
        assert!(share >= 10, "{name} got {share} of {} clients: {before:?}", before.len());
    }
    // A client keeps its server from one connection to the next.
    assert_eq!(servers_seen(one.addr("web")), before);

    for shunt in [&one, &two] {
        assert_eq!(http_post(shunt.admin(), "/servers/web/s1/disable", None, b"").0, 200);
    }
    let without = servers_seen(one.addr("web"));
    assert_eq!(servers_seen(two.addr("web")), without, "the nodes agree without bravo too");
    for (b, w) in before.iter().zip(&without) {
        match b.as_str() {
            "bravo" => assert_ne!(w, "bravo"),
            _ => assert_eq!(b, w, "a client not on bravo moved: {before:?} -> {without:?}"),
        }
    }
    let heirs: std::collections::BTreeSet<&String> =
        before.iter().zip(&without).filter(|(b, _)| *b == "bravo").map(|(_, w)| w).collect();
    assert_eq!(heirs.len(), 2, "bravo's clients spread over both others: {heirs:?}");

    for shunt in [&one, &two] {
        assert_eq!(http_post(shunt.admin(), "/servers/web/s1/enable", None, b"").0, 200);
    }
    assert_eq!(servers_seen(one.addr("web")), before, "bravo's clients came back");
    assert_eq!(servers_seen(two.addr("web")), before);
}
