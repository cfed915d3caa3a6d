//! Fault injection, data integrity (see tests/common/lab for the lab: namespaces joined by veth,
//! test_peer servers, clients that check every byte, and the invariants every test ends with):
//! 200 churning clients with random sizes, aborts and server resets, every stream byte-exact;
//! and an EOF right behind the data on a slow client link, which must lose nothing.
//!
//! Each test prints a `RESULT` line with its figures (`--no-capture` shows them). Random choices
//! come from a seed printed as `SHUNT_FAULT_SEED=N`; set that variable to replay a run. Needs
//! root, iproute2 (`ip netns`), iptables and tc.

mod common;

use common::lab::*;
use common::topo::{server_addr, Topo, LB_IP};
use common::*;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------------
// Data integrity under churn
// ------------------------------------------------------------------------------------------------

#[derive(Default, Debug)]
struct Tally {
    echo_ok: usize,
    query_ok: usize,
    client_aborts: usize,
    server_resets: usize,
    reset_bytes: u64,
    bytes: u64,
    failures: Vec<String>,
}

#[test]
fn churn_200_clients_random_sizes_aborts_and_resets_every_stream_byte_exact() {
    const CLIENTS: usize = 200;
    const ROUNDS: u64 = 10;
    let mut lab = Lab::start(
        &[&[], &[]],
        &conf(&["", ""], "workers 2\n", &format!("{FAULT_SVC}  splice on\n").replace("timeout 300ms", "timeout 1s")),
    );
    lab.warm_up(4);
    let base = lab.baseline();
    let mut rng = Rng::seeded("churn");
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut rng = rng.fork(c as u64);
            let barrier = Arc::clone(&barrier);
            spawn_in(&lab.client_ns(), move || {
                barrier.wait();
                let mut t = Tally::default();
                for r in 0..ROUNDS {
                    // Unique per session: a byte delivered to the wrong client cannot match.
                    let seed = ((c as u64) << 32) | r;
                    let roll = rng.below(100);
                    if roll < 45 {
                        let len = rng.size(2 * MIB);
                        match echo_session(lb_addr(), seed, len, 64 * 1024, None, &mut rng) {
                            Ok(_) => {
                                t.echo_ok += 1;
                                t.bytes += 2 * len;
                            }
                            Err((_, m)) => t.failures.push(format!("client {c} echo {len} B: {m}")),
                        }
                    } else if roll < 65 {
                        let len = rng.size(4 * MIB);
                        let o = query(seed, len, t0);
                        if o.ok() {
                            t.query_ok += 1;
                            t.bytes += len;
                        } else {
                            t.failures.push(format!("client {c} query {len} B: {o:?}"));
                        }
                    } else if roll < 82 {
                        let len = rng.range(2, 2 * MIB);
                        let at = rng.range(1, len - 1);
                        match echo_session(lb_addr(), seed, len, 64 * 1024, Some(at), &mut rng) {
                            Ok(true) => t.client_aborts += 1,
                            Ok(false) => t.failures.push(format!("client {c}: abort at {at} of {len} did not happen")),
                            Err((_, m)) => t.failures.push(format!("client {c} echo to abort at {at}/{len}: {m}")),
                        }
                    } else {
                        // The server writes `len` bytes and resets: the client must see a
                        // prefix of its stream, then a reset, never a clean EOF.
                        let len = rng.size(MIB);
                        let mut s = match dial(lb_addr(), T) {
                            Ok(s) => s,
                            Err(e) => {
                                t.failures.push(format!("client {c}: connect: {e}"));
                                continue;
                            }
                        };
                        if let Err(e) = s.write_all(&header(b'R', seed, len)) {
                            t.failures.push(format!("client {c}: header: {e}"));
                            continue;
                        }
                        let mut got = 0;
                        match read_checked(&mut s, seed, len, &mut got) {
                            End::Reset => {
                                t.server_resets += 1;
                                t.reset_bytes += got;
                            }
                            end => t.failures.push(format!(
                                "client {c}: server reset after {len} B, client saw {end:?} after {got} B"
                            )),
                        }
                    }
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for h in handles {
        let t = h.join().expect("client thread");
        all.echo_ok += t.echo_ok;
        all.query_ok += t.query_ok;
        all.client_aborts += t.client_aborts;
        all.server_resets += t.server_resets;
        all.reset_bytes += t.reset_bytes;
        all.bytes += t.bytes;
        all.failures.extend(t.failures);
    }
    let took = t0.elapsed();
    assert!(all.failures.is_empty(), "{} failed session(s):\n{}", all.failures.len(), all.failures.join("\n"));
    let total = CLIENTS * ROUNDS as usize;
    assert_eq!(all.echo_ok + all.query_ok + all.client_aborts + all.server_resets, total);

    // shunt's view: one line per session, and each ended the way its client made it end.
    let codes = count_codes(&lab.shunt.wait_sessions(4 + total, T));
    let get = |c: &str| codes.get(c).copied().unwrap_or(0);
    assert_eq!(get("--"), 4 + all.echo_ok + all.query_ok, "clean sessions; codes {codes:?}");
    assert_eq!(get("CD"), all.client_aborts, "client aborts; codes {codes:?}");
    assert_eq!(get("SD"), all.server_resets, "server resets; codes {codes:?}");
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT churn: {CLIENTS} concurrent clients x {ROUNDS} sessions in {took:.2?}: {} echo + {} query byte-exact \
         ({} MiB checked), {} client aborts (CD), {} server resets (SD, {} KiB of prefixes checked), 0 failures; \
         codes {codes:?}; {inv}",
        all.echo_ok,
        all.query_ok,
        all.bytes / MIB,
        all.client_aborts,
        all.server_resets,
        all.reset_bytes / 1024
    );
}

// ------------------------------------------------------------------------------------------------
// EOF with data in flight
// ------------------------------------------------------------------------------------------------

#[test]
fn eof_right_behind_the_data_loses_nothing_on_a_slow_client_link() {
    // The server writes N bytes and closes at once. The link from shunt to the client runs at
    // 100 Mbit/s through tbf while the server's link is fast, so shunt reads the server's EOF
    // while its pipe or buffer (and its socket towards the client) still hold data: the FIN
    // must wait behind every byte. One service per splice mode.
    let modes = ["on", "off", "always"];
    let mut c = format!("log info\nadmin {ADMIN}\n");
    for (k, m) in modes.iter().enumerate() {
        c.push_str(&format!(
            "service {m}\n  bind {LB_IP}:{}\n  server s0 {}\n  splice {m}\n  timeout idle 30s\n",
            SVC_PORT + k as u16,
            server_addr(0)
        ));
    }
    let mut lab = Lab::start_with(&[&[]], &c, |topo| {
        topo.lb
            .exec_ok(&[
                "tc",
                "qdisc",
                "add",
                "dev",
                Topo::CLIENT_IF,
                "root",
                "tbf",
                "rate",
                "100mbit",
                "burst",
                "256kb",
                "latency",
                "100ms",
            ])
            .unwrap_or_else(|e| panic!("tc: {e}"));
    });
    let epoch = Instant::now();
    lab.client(|| {
        for k in 0..3 {
            let o = query_at(SocketAddr::from((LB_IP, SVC_PORT + k)), 1, 10, T, epoch);
            assert!(o.ok(), "{o:?}");
        }
    });
    let base = lab.baseline();
    let sizes: [u64; 14] =
        [0, 1, 1460, 16383, 16384, 16385, 65535, 65536, 65537, 262143, 262144, 262145, MIB + 7, 4 * MIB + 3];
    let t0 = Instant::now();
    let mut checked = 0u64;
    let mut n = 0usize;
    let mut slowest = Duration::ZERO;
    for (k, mode) in modes.iter().enumerate() {
        let addr = SocketAddr::from((LB_IP, SVC_PORT + k as u16));
        let (bytes, count, slow) = lab.client(|| {
            let mut bytes = 0;
            let mut count = 0;
            let mut slow = Duration::ZERO;
            for (i, &len) in sizes.iter().enumerate() {
                for (h, how) in [How::Plain, How::HalfClose].into_iter().enumerate() {
                    let seed = 1000 * k as u64 + 10 * i as u64 + h as u64;
                    let o = query_with(addr, seed, len, T, epoch, how);
                    assert!(o.ok(), "splice {mode}, {len} bytes, client {how:?}: {o:?}");
                    bytes += len;
                    count += 1;
                    slow = slow.max(o.took);
                }
            }
            // Several at once: sessions reaching EOF while other flows hold the worker's pools.
            let hs: Vec<_> = (0..6u64)
                .map(|j| {
                    let len = 512 * 1024 + 977 * j;
                    thread::spawn(move || (len, query_at(addr, 5000 + 100 * k as u64 + j, len, T, epoch)))
                })
                .collect();
            for h in hs {
                let (len, o) = h.join().unwrap();
                assert!(o.ok(), "splice {mode}, concurrent {len} bytes: {o:?}");
                bytes += len;
                count += 1;
            }
            (bytes, count, slow)
        });
        checked += bytes;
        n += count;
        slowest = slowest.max(slow);
    }
    let took = t0.elapsed();
    let s = lab.shunt.wait_sessions(3 + n, T);
    for x in &s {
        assert_eq!(x.code, "--", "every stream ended cleanly: {}", x.raw);
        assert_eq!(x.up, 25, "the request header, and nothing else, went up: {}", x.raw);
    }
    for &len in &sizes {
        // name line "s0\n" + the stream
        let want = len + 3;
        for m in modes {
            let got = s.iter().filter(|x| x.service == m && x.down == want).count();
            assert!(got >= 2, "splice {m}: sessions that delivered {want} bytes: {got}");
        }
    }
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT eof-in-flight: {n} streams (sizes 0..4 MiB, splice on/off/always, with and without client half-close, \
         6 concurrent) over a 100 Mbit/s client link in {took:.2?}: all {} MiB delivered byte-exact before the FIN; \
         slowest {slowest:.2?}; {inv}",
        checked / MIB
    );
}
