//! Fault injection, the mixed-load run (see tests/common/lab for the lab: namespaces joined by
//! veth, test_peer servers, clients that check every byte, and the invariants every test ends
//! with): short requests, big answers and big echoes for 2 minutes while servers are killed and
//! restarted at random; no request may fail that a retry could have saved.
//!
//! `SHUNT_SOAK_SECS` sets the length (120 s by default, as the issue asks; shorter for a quick
//! look). Random choices come from a seed printed as `SHUNT_FAULT_SEED=N`; set that variable to
//! replay a run. The test prints a `RESULT` line with its figures (`--no-capture` shows them).
//! Needs root and iproute2 (`ip netns`).

mod common;

use common::lab::*;
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct SoakStats {
    outs: Vec<Outcome>,
    echo_ok: usize,
    /// (how it ended, message, started at, took)
    echo_fail: Vec<(End, String, Duration, Duration)>,
    bytes: u64,
}

#[test]
fn soak_mixed_load_with_random_server_kills_fails_no_request_a_retry_could_save() {
    let secs: u64 = std::env::var("SHUNT_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    const SERVERS: usize = 3;
    let svc = "  retries 2\n  timeout connect 1s\n  timeout idle 30s\n\
      check send \"PING\\n\" expect \"PONG\" interval 500ms timeout 1s rise 2 fall 2\n";
    let mut lab = Lab::start(&[&[], &[], &[]], &conf(&["", "", ""], "workers 2\n", svc));
    lab.warm_up(6);
    let base = lab.baseline();
    let mut rng = Rng::seeded("soak");
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let ns = lab.client_ns();
    let mut load = Vec::new();
    // Short requests, as many as a few web clients make (2-10 ms apart: pacing the load).
    for t in 0..6u64 {
        let (stop, mut rng) = (Arc::clone(&stop), rng.fork(t));
        load.push(spawn_in(&ns, move || {
            let mut st = SoakStats::default();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let len = rng.size(64 * 1024);
                let o = query((t << 40) | i, len, epoch);
                if o.ok() {
                    st.bytes += len;
                }
                st.outs.push(o);
                i += 1;
                thread::sleep(Duration::from_millis(rng.range(2, 10)));
            }
            st
        }));
    }
    // Bulk: big answers and big echoes.
    for t in 6..8u64 {
        let (stop, mut rng) = (Arc::clone(&stop), rng.fork(t));
        load.push(spawn_in(&ns, move || {
            let mut st = SoakStats::default();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let seed = (t << 40) | i;
                if i % 2 == 0 {
                    let len = rng.size(8 * MIB);
                    let o = query(seed, len, epoch);
                    if o.ok() {
                        st.bytes += len;
                    }
                    st.outs.push(o);
                } else {
                    let len = rng.size(4 * MIB);
                    let t0 = Instant::now();
                    match echo_session(lb_addr(), seed, len, 128 * 1024, None, &mut rng) {
                        Ok(_) => {
                            st.echo_ok += 1;
                            st.bytes += 2 * len;
                        }
                        Err((end, m)) => st.echo_fail.push((end, m, t0 - epoch, t0.elapsed())),
                    }
                }
                // A pause between bulk sessions: this is a fault test, not a benchmark, and the
                // rest of `make test` shares the two cores.
                thread::sleep(Duration::from_millis(20));
                i += 1;
            }
            st
        }));
    }
    // Chaos: every 0.5-2 s kill a random running server, restart it after 0.3-1.5 s; but only
    // while another running server is UP in shunt's view (a restarted server is DOWN until it
    // passed `rise` probes, and no balancer can use a server it holds DOWN).
    let deadline = epoch + Duration::from_secs(secs);
    let mut dead_until: Vec<Option<Instant>> = vec![None; SERVERS];
    let mut kills = 0;
    let mut kill_log: Vec<(Duration, String)> = Vec::new();
    let mut next_kill = Instant::now() + Duration::from_millis(rng.range(500, 2000));
    while Instant::now() < deadline {
        let now = Instant::now();
        for (i, until) in dead_until.iter_mut().enumerate() {
            if until.is_some_and(|t| now >= t) {
                lab.restart(i);
                *until = None;
            }
        }
        if now >= next_kill {
            let alive: Vec<usize> = (0..SERVERS).filter(|&i| dead_until[i].is_none()).collect();
            let up = lab.up_servers();
            let i = alive[rng.below(alive.len() as u64) as usize];
            if alive.iter().any(|&j| j != i && up.contains(&format!("s{j}"))) {
                kill_log.push((epoch.elapsed(), format!("s{i}")));
                lab.kill(i);
                kills += 1;
                dead_until[i] = Some(now + Duration::from_millis(rng.range(300, 1500)));
            }
            next_kill = now + Duration::from_millis(rng.range(500, 2000));
        }
        thread::sleep(Duration::from_millis(10)); // the chaos loop's tick
    }
    for (i, until) in dead_until.iter().enumerate() {
        if until.is_some() {
            lab.restart(i);
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut all = SoakStats::default();
    for h in load {
        let st = h.join().expect("load thread");
        all.outs.extend(st.outs);
        all.echo_ok += st.echo_ok;
        all.echo_fail.extend(st.echo_fail);
        all.bytes += st.bytes;
    }
    let ran = epoch.elapsed();
    let corrupt: Vec<&Outcome> = all.outs.iter().filter(|o| matches!(o.end, End::Corrupt(_))).collect();
    assert!(corrupt.is_empty(), "corrupted answers: {corrupt:?}");
    let log = lab.wait_all_logged();
    let codes = count_codes(&log);
    for bad in ["SC", "sC", "NC", "RC"] {
        assert!(!codes.contains_key(bad), "connect-phase failures reached clients: {codes:?}");
    }
    // Every failed request is explained by a kill: shunt logged SD (the server reset or died
    // mid-session), or the killed server's kernel closed the connection with a FIN after the
    // bytes it had (a truncation an L4 proxy cannot tell from a whole answer): then shunt's
    // line says "--" and exactly the bytes the client got.
    let fails: Vec<&Outcome> = all.outs.iter().filter(|o| !o.ok()).collect();
    let (fin_truncations, mut unexplained) = explain_failures(&fails, &log, &kill_log);
    for (end, m, at, took) in &all.echo_fail {
        if !matches!(end, End::Reset | End::Eof) || !killed_during(&kill_log, None, *at, *took) {
            unexplained.push(format!("echo session at {at:?} for {took:?}: {end}: {m}"));
        }
    }
    assert!(
        unexplained.is_empty(),
        "client errors not caused by a server dying mid-session (kills {kill_log:?}):\n{}",
        unexplained.join("\n")
    );
    let sd = codes.get("SD").copied().unwrap_or(0);
    let sd_empty = log.iter().filter(|s| s.code == "SD" && s.down == 0).count();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for e in fails.iter().map(|o| &o.end).chain(all.echo_fail.iter().map(|(e, ..)| e)) {
        *kinds.entry(e.to_string()).or_insert(0) += 1;
    }
    let mut lat: Vec<Duration> = all.outs.iter().filter(|o| o.ok() && o.got <= 64 * 1024).map(|o| o.took).collect();
    let (p50, p99, pmax) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99), percentile(&mut lat, 1.0));
    let inv = lab.invariants(&base);
    eprintln!(
        "RESULT soak {secs} s: {} requests + {} echo sessions ({} MiB checked) with {kills} random kills: {} failed \
         ({kinds:?}), every one a session live on a server when it was killed ({sd} SD, {sd_empty} of them before \
         any answer byte; {fin_truncations} answers cut short by the dying server's own FIN), 0 SC/sC/NC/RC; short-request latency p50 {p50:.2?} p99 {p99:.2?} max {pmax:.2?}; \
         ran {ran:.2?}; codes {codes:?}; {inv}",
        all.outs.len(),
        all.echo_ok + all.echo_fail.len(),
        all.bytes / MIB,
        fails.len() + all.echo_fail.len()
    );
}
