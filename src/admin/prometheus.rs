//! The `/metrics` document: Prometheus text exposition format 0.0.4 (what `promtool check
//! metrics` validates). Every family has HELP and TYPE; counters end in `_total`; units are
//! base units (seconds, bytes).

use crate::metrics::names::*;
use crate::metrics::{HistogramSnapshot, CONNECT_BUCKETS, DURATION_BUCKETS, HANDSHAKE_BUCKETS};
use crate::snapshot::{ServerSnapshot, ServerState, ServiceSnapshot, Snapshot, WorkerLoad};
use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

/// Process facts read from /proc at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFacts {
    pub open_fds: usize,
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
    pub log_lines_dropped: u64,
}

impl ProcessFacts {
    pub fn read() -> ProcessFacts {
        // statm: size resident shared ... in pages; stat: utime and stime in clock ticks.
        let page = 4096u64;
        let resident_bytes = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
            .map_or(0, |pages| pages * page);
        let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the parenthesised command name; utime and stime are 14 and 15.
                let rest = &s[s.rfind(')')? + 2..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = f.get(11)?.parse().ok()?;
                let stime: f64 = f.get(12)?.parse().ok()?;
                Some((utime + stime) / 100.0)
            })
            .unwrap_or(0.0);
        ProcessFacts {
            open_fds: crate::net::open_fds(),
            resident_bytes,
            cpu_seconds,
            log_lines_dropped: crate::logsink::dropped(),
        }
    }
}

/// Reload outcomes, read from the supervisor at scrape time.
pub struct ReloadFacts {
    pub ok: u64,
    pub failed: u64,
    /// Unix time of the last reload taken; 0 before any.
    pub last_ok_unix: u64,
}

impl ReloadFacts {
    pub fn read(supervisor: &crate::supervisor::Supervisor) -> ReloadFacts {
        let r = &supervisor.reloads;
        ReloadFacts {
            ok: r.ok.load(Relaxed),
            failed: r.failed.load(Relaxed),
            last_ok_unix: r.last_ok_unix.load(Relaxed),
        }
    }
}

/// Escapes a label value (backslash, quote, newline), as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{labels}}} {value}");
        }
    }
    fn histogram(&mut self, name: &str, labels: &str, bounds: &[f64], h: &HistogramSnapshot) {
        let mut cumulative = 0u64;
        for (i, b) in bounds.iter().enumerate() {
            cumulative += h.counts.get(i).copied().unwrap_or(0);
            self.sample(&format!("{name}_bucket"), &format!("{labels},le=\"{b}\""), cumulative);
        }
        let count = h.count();
        self.sample(&format!("{name}_bucket"), &format!("{labels},le=\"+Inf\""), count);
        self.sample(&format!("{name}_sum"), labels, h.sum_us as f64 / 1e6);
        self.sample(&format!("{name}_count"), labels, count);
    }
}

pub fn render(snap: &Snapshot, process: ProcessFacts, reloads: ReloadFacts) -> String {
    let mut out = Out(String::with_capacity(8192));
    let o = &mut out;

    o.family(RELOADS, "counter", "Reloads asked for (SIGHUP, POST /reload), by result.");
    o.sample(RELOADS, "result=\"ok\"", reloads.ok);
    o.sample(RELOADS, "result=\"error\"", reloads.failed);
    o.family(LAST_RELOAD, "gauge", "Unix time of the last reload taken (0: none since start).");
    o.sample(LAST_RELOAD, "", reloads.last_ok_unix);
    o.family(CONFIG_GENERATION, "gauge", "Configuration generation in force: 1 at start, +1 per reload taken.");
    o.sample(CONFIG_GENERATION, "", snap.generation);
    o.family(CONFIG_INFO, "gauge", "Always 1; the hash of the configuration in force is a label.");
    o.sample(CONFIG_INFO, &format!("hash=\"{:016x}\"", snap.config_hash), 1);

    o.family(BUILD_INFO, "gauge", "Always 1; the version is a label.");
    o.sample(BUILD_INFO, &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1);
    let process_wide: [(&str, &str, &str, f64); 8] = [
        (UPTIME, "gauge", "Seconds since shunt started.", snap.uptime.as_secs_f64()),
        (ACTIVE, "gauge", "Proxied connections open now, all services.", snap.active as f64),
        (MAX_CONNECTIONS, "gauge", "The global connection cap in force.", snap.max_conns as f64),
        (WORKERS, "gauge", "Event-loop threads.", snap.workers as f64),
        (
            LOG_LINES_DROPPED,
            "counter",
            "Log lines dropped because stderr did not keep up (the log queue was full).",
            process.log_lines_dropped as f64,
        ),
        (OPEN_FDS, "gauge", "Open file descriptors of the process.", process.open_fds as f64),
        (RESIDENT_MEMORY, "gauge", "Resident memory of the process.", process.resident_bytes as f64),
        (CPU_SECONDS, "counter", "User and system CPU time of the process.", process.cpu_seconds),
    ];
    for (name, kind, help, value) in process_wide {
        o.family(name, kind, help);
        o.sample(name, "", value);
    }
    type Load = fn(&WorkerLoad) -> u64;
    let per_worker: [(&str, &str, &str, Load); 4] = [
        (WORKER_SESSIONS, "gauge", "Sessions a worker holds now.", |w| w.sessions),
        (WORKER_TIMERS, "gauge", "Deadlines in a worker's timer heap (at most one per session).", |w| w.timers),
        (WORKER_PIPES, "gauge", "Pipes a worker holds, lent and idle (two descriptors each).", |w| w.pipes),
        (WORKER_DISPATCHED, "counter", "Connections a worker accepted and passed to a less loaded worker.", |w| {
            w.dispatched
        }),
    ];
    for (name, kind, help, get) in per_worker {
        o.family(name, kind, help);
        for (i, w) in snap.per_worker.iter().enumerate() {
            o.sample(name, &format!("worker=\"{i}\""), get(w));
        }
    }

    let svc_labels = |s: &str| format!("service=\"{}\"", label(s));
    type ServiceValue = fn(&ServiceSnapshot) -> u64;
    let services: [(&str, &str, &str, ServiceValue); 3] = [
        (SERVICE_ACCEPTED, "counter", "Client connections accepted.", |s| s.accepted),
        (
            SERVICE_LIMIT_PAUSES,
            "counter",
            "Times accepting paused at a connection cap (max_conns); clients wait in the listen backlog up to \
             timeout queue.",
            |s| s.limit_pauses,
        ),
        (SERVICE_ACTIVE, "gauge", "Proxied connections open now.", |s| s.active),
    ];
    for (name, kind, help, value) in services {
        o.family(name, kind, help);
        for s in &snap.services {
            o.sample(name, &svc_labels(&s.name), value(s));
        }
    }
    o.family(SERVICE_REFUSED, "counter", "Client connections refused, by reason (acl, per_ip, limit, no_server).");
    for s in &snap.services {
        let reasons = [
            ("acl", s.refused_acl),
            ("per_ip", s.refused_per_ip),
            ("limit", s.refused_limit),
            ("no_server", s.refused_no_server),
        ];
        for (reason, n) in reasons {
            o.sample(SERVICE_REFUSED, &format!("{},reason=\"{reason}\"", svc_labels(&s.name)), n);
        }
    }
    let scopes =
        || std::iter::once(("global", &snap.per_ip)).chain(snap.services.iter().map(|s| (s.name.as_str(), &s.per_ip)));
    type PerIpValue = fn(&crate::snapshot::PerIpSnapshot) -> u64;
    let per_ip: [(&str, &str, &str, PerIpValue); 3] = [
        (PER_IP_SOURCES, "gauge", "Client sources (IPv4 addresses, IPv6 /64s) with live connections, per scope of max_conns_per_ip/rate_per_ip.", |p| p.live_sources),
        (PER_IP_CONNS, "gauge", "Live connections counted by source, per scope.", |p| p.live_conns),
        (PER_IP_UNTRACKED, "counter", "New sources let in untracked because the per-source table was full of live sources.", |p| p.untracked),
    ];
    for (name, kind, help, value) in per_ip {
        o.family(name, kind, help);
        for (scope, p) in scopes() {
            o.sample(name, &format!("scope=\"{}\"", label(scope)), value(p));
        }
    }
    o.family(SERVICE_SESSION_DURATION, "histogram", "Duration of finished sessions.");
    for s in &snap.services {
        o.histogram(SERVICE_SESSION_DURATION, &svc_labels(&s.name), DURATION_BUCKETS, &s.session_duration);
    }

    let tls = || snap.services.iter().filter_map(|s| Some((s, s.tls.as_ref()?)));
    o.family(TLS_HANDSHAKES, "counter", "TLS handshakes completed.");
    for (s, t) in tls() {
        o.sample(TLS_HANDSHAKES, &svc_labels(&s.name), t.handshakes_ok);
    }
    o.family(TLS_HANDSHAKE_FAILURES, "counter", "TLS handshakes that failed or timed out, by reason.");
    for (s, t) in tls() {
        for (reason, n) in crate::tls::FAILURE_REASONS.iter().zip(&t.failed) {
            o.sample(TLS_HANDSHAKE_FAILURES, &format!("{},reason=\"{reason}\"", svc_labels(&s.name)), n);
        }
    }
    o.family(TLS_HANDSHAKE_TIME, "histogram", "Time from accept to a completed TLS handshake.");
    for (s, t) in tls() {
        o.histogram(TLS_HANDSHAKE_TIME, &svc_labels(&s.name), HANDSHAKE_BUCKETS, &t.handshake_time);
    }
    o.family(TLS_SESSIONS, "counter", "TLS sessions by protocol version.");
    for (s, t) in tls() {
        for (version, n) in [("1.2", t.versions[0]), ("1.3", t.versions[1])] {
            o.sample(TLS_SESSIONS, &format!("{},version=\"{version}\"", svc_labels(&s.name)), n);
        }
    }

    o.family(SERVICE_CLOSED_ON_DOWN, "counter", "Sessions closed because their server went down (on_down close).");
    for s in &snap.services {
        o.sample(SERVICE_CLOSED_ON_DOWN, &svc_labels(&s.name), s.closed_on_down);
    }
    let proxied = || snap.services.iter().filter_map(|s| Some((s, s.proxy.as_ref()?)));
    o.family(PROXY_HEADERS, "counter", "PROXY headers read on accept_proxy binds.");
    for (s, (ok, _)) in proxied() {
        o.sample(PROXY_HEADERS, &svc_labels(&s.name), ok);
    }
    o.family(PROXY_HEADER_FAILURES, "counter", "accept_proxy connections closed for their PROXY header, by reason.");
    for (s, (_, failed)) in proxied() {
        for (reason, n) in crate::proxy_protocol::parse::REASONS.iter().zip(failed) {
            o.sample(PROXY_HEADER_FAILURES, &format!("{},reason=\"{reason}\"", svc_labels(&s.name)), n);
        }
    }

    let servers = || snap.services.iter().flat_map(|s| s.servers.iter().map(move |v| (s, v)));
    let srv_labels = |s: &str, v: &str| format!("service=\"{}\",server=\"{}\"", label(s), label(v));
    o.family(SERVER_STATE, "gauge", "1 for the server's current state (up, down, drain, disabled).");
    for (s, v) in servers() {
        for state in [ServerState::Up, ServerState::Down, ServerState::Drain, ServerState::Disabled] {
            let labels = format!("{},state=\"{}\"", srv_labels(&s.name, &v.name), state.name());
            o.sample(SERVER_STATE, &labels, u8::from(v.state == state));
        }
    }
    // The plain one-sample-per-server families: (name, type, help, value).
    type ServerValue = fn(&ServerSnapshot) -> String;
    let families: [(&str, &str, &str, ServerValue); 10] = [
        (SERVER_UP, "gauge", "1 while the health checks say the server is up.", |v| u8::from(v.healthy).to_string()),
        (SERVER_WEIGHT, "gauge", "Configured weight.", |v| v.weight.to_string()),
        (SERVER_ACTIVE, "gauge", "Connections open to the server now.", |v| v.active.to_string()),
        (SERVER_CONNECTIONS, "counter", "Connections established to the server.", |v| v.connects.to_string()),
        (SERVER_CONNECT_FAILURES, "counter", "Connects to the server that failed or timed out.", |v| {
            v.failed_connects.to_string()
        }),
        (
            SERVER_RECEIVED_BYTES,
            "counter",
            "Bytes from the server written to its clients' sockets (see the README on resets).",
            |v| v.bytes_down.to_string(),
        ),
        (
            SERVER_SENT_BYTES,
            "counter",
            "Bytes from clients written to the server's sockets (see the README on resets).",
            |v| v.bytes_up.to_string(),
        ),
        (SERVER_CHECKS, "counter", "Active probes finished.", |v| v.checks.to_string()),
        (SERVER_CHECK_DURATION, "gauge", "Duration of the last active probe.", |v| {
            (v.last_check.duration_us as f64 / 1e6).to_string()
        }),
        (SERVER_CHECK_SUCCESS, "gauge", "1 if the last active probe passed, 0 if it failed, -1 before any.", |v| {
            match v.last_check.ok {
                Some(true) => "1",
                Some(false) => "0",
                None => "-1",
            }
            .to_string()
        }),
    ];
    for (name, kind, help, value) in families {
        o.family(name, kind, help);
        for (s, v) in servers() {
            o.sample(name, &srv_labels(&s.name, &v.name), value(v));
        }
    }
    o.family(SERVER_CONNECT_TIME, "histogram", "Time to establish connections to the server.");
    for (s, v) in servers() {
        o.histogram(SERVER_CONNECT_TIME, &srv_labels(&s.name, &v.name), CONNECT_BUCKETS, &v.connect_time);
    }
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histogram_is_cumulative_with_inf_sum_and_count() {
        let mut o = Out(String::new());
        let h = HistogramSnapshot { counts: vec![1, 2, 3], sum_us: 1_500_000 };
        o.histogram("x_seconds", "s=\"a\"", &[0.1, 1.0], &h);
        let text = o.0;
        assert!(text.contains("x_seconds_bucket{s=\"a\",le=\"0.1\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{s=\"a\",le=\"1\"} 3\n"));
        assert!(text.contains("x_seconds_bucket{s=\"a\",le=\"+Inf\"} 6\n"));
        assert!(text.contains("x_seconds_sum{s=\"a\"} 1.5\n"));
        assert!(text.contains("x_seconds_count{s=\"a\"} 6\n"));
    }
}
