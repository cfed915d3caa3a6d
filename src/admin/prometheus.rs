//! The `/metrics` document: Prometheus text exposition format 0.0.4 (what `promtool check
//! metrics` validates). Every family has HELP and TYPE; counters end in `_total`; units are
//! base units (seconds, bytes).

use crate::metrics::{HistogramSnapshot, CONNECT_BUCKETS, DURATION_BUCKETS};
use crate::snapshot::{ServerSnapshot, ServerState, Snapshot, WorkerLoad};
use std::fmt::Write;

/// Process facts read from /proc at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessFacts {
    pub open_fds: usize,
    pub resident_bytes: u64,
    pub cpu_seconds: f64,
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
        ProcessFacts { open_fds: crate::net::open_fds(), resident_bytes, cpu_seconds }
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

pub fn render(snap: &Snapshot, process: ProcessFacts) -> String {
    let mut out = Out(String::with_capacity(8192));
    let o = &mut out;

    o.family("shunt_build_info", "gauge", "Always 1; the version is a label.");
    o.sample("shunt_build_info", &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")), 1);
    o.family("shunt_uptime_seconds", "gauge", "Seconds since shunt started.");
    o.sample("shunt_uptime_seconds", "", snap.uptime.as_secs_f64());
    o.family("shunt_active_connections", "gauge", "Proxied connections open now, all services.");
    o.sample("shunt_active_connections", "", snap.active);
    o.family("shunt_max_connections", "gauge", "The global connection cap in force.");
    o.sample("shunt_max_connections", "", snap.max_conns);
    o.family("shunt_workers", "gauge", "Event-loop threads.");
    o.sample("shunt_workers", "", snap.workers);
    type Load = fn(&WorkerLoad) -> u64;
    let per_worker: [(&str, &str, Load); 3] = [
        ("shunt_worker_sessions", "Sessions a worker holds now.", |w| w.sessions),
        ("shunt_worker_timers", "Deadlines in a worker's timer heap (at most one per session).", |w| w.timers),
        ("shunt_worker_pipes", "Pipes a worker holds, lent and idle (two descriptors each).", |w| w.pipes),
    ];
    for (name, help, get) in per_worker {
        o.family(name, "gauge", help);
        for (i, w) in snap.per_worker.iter().enumerate() {
            o.sample(name, &format!("worker=\"{i}\""), get(w));
        }
    }
    o.family("shunt_process_open_fds", "gauge", "Open file descriptors of the process.");
    o.sample("shunt_process_open_fds", "", process.open_fds);
    o.family("shunt_process_resident_memory_bytes", "gauge", "Resident memory of the process.");
    o.sample("shunt_process_resident_memory_bytes", "", process.resident_bytes);
    o.family("shunt_process_cpu_seconds_total", "counter", "User and system CPU time of the process.");
    o.sample("shunt_process_cpu_seconds_total", "", process.cpu_seconds);

    let svc_labels = |s: &str| format!("service=\"{}\"", label(s));
    o.family("shunt_service_accepted_total", "counter", "Client connections accepted.");
    for s in &snap.services {
        o.sample("shunt_service_accepted_total", &svc_labels(&s.name), s.accepted);
    }
    o.family(
        "shunt_service_refused_total",
        "counter",
        "Client connections refused, by reason (acl, limit, no_server).",
    );
    for s in &snap.services {
        for (reason, n) in [("acl", s.refused_acl), ("limit", s.refused_limit), ("no_server", s.refused_no_server)] {
            o.sample("shunt_service_refused_total", &format!("{},reason=\"{reason}\"", svc_labels(&s.name)), n);
        }
    }
    o.family(
        "shunt_service_limit_pauses_total",
        "counter",
        "Times accepting paused at a connection cap (max_conns); clients wait in the listen backlog up to timeout queue.",
    );
    for s in &snap.services {
        o.sample("shunt_service_limit_pauses_total", &svc_labels(&s.name), s.limit_pauses);
    }
    o.family("shunt_service_active_connections", "gauge", "Proxied connections open now.");
    for s in &snap.services {
        o.sample("shunt_service_active_connections", &svc_labels(&s.name), s.active);
    }
    o.family("shunt_service_session_duration_seconds", "histogram", "Duration of finished sessions.");
    for s in &snap.services {
        o.histogram(
            "shunt_service_session_duration_seconds",
            &svc_labels(&s.name),
            DURATION_BUCKETS,
            &s.session_duration,
        );
    }

    let servers = || snap.services.iter().flat_map(|s| s.servers.iter().map(move |v| (s, v)));
    let srv_labels = |s: &str, v: &str| format!("service=\"{}\",server=\"{}\"", label(s), label(v));
    o.family("shunt_server_up", "gauge", "1 while the health checks say the server is up.");
    for (s, v) in servers() {
        o.sample("shunt_server_up", &srv_labels(&s.name, &v.name), u8::from(v.healthy));
    }
    o.family("shunt_server_state", "gauge", "1 for the server's current state (up, down, drain, disabled).");
    for (s, v) in servers() {
        for state in [ServerState::Up, ServerState::Down, ServerState::Drain, ServerState::Disabled] {
            let labels = format!("{},state=\"{}\"", srv_labels(&s.name, &v.name), state.name());
            o.sample("shunt_server_state", &labels, u8::from(v.state == state));
        }
    }
    // The plain one-sample-per-server families: (name, type, help, value).
    type ServerValue = fn(&ServerSnapshot) -> String;
    let families: [(&str, &str, &str, ServerValue); 9] = [
        ("shunt_server_weight", "gauge", "Configured weight.", |v| v.weight.to_string()),
        ("shunt_server_active_connections", "gauge", "Connections open to the server now.", |v| v.active.to_string()),
        ("shunt_server_connections_total", "counter", "Connections established to the server.", |v| {
            v.connects.to_string()
        }),
        ("shunt_server_connect_failures_total", "counter", "Connects to the server that failed or timed out.", |v| {
            v.failed_connects.to_string()
        }),
        ("shunt_server_received_bytes_total", "counter", "Bytes received from the server.", |v| v.bytes_in.to_string()),
        ("shunt_server_sent_bytes_total", "counter", "Bytes sent to the server.", |v| v.bytes_out.to_string()),
        ("shunt_server_checks_total", "counter", "Active probes finished.", |v| v.checks.to_string()),
        ("shunt_server_check_duration_seconds", "gauge", "Duration of the last active probe.", |v| {
            (v.last_check.duration_us as f64 / 1e6).to_string()
        }),
        (
            "shunt_server_check_success",
            "gauge",
            "1 if the last active probe passed, 0 if it failed, -1 before any.",
            |v| {
                match v.last_check.ok {
                    Some(true) => "1",
                    Some(false) => "0",
                    None => "-1",
                }
                .to_string()
            },
        ),
    ];
    for (name, kind, help, value) in families {
        o.family(name, kind, help);
        for (s, v) in servers() {
            o.sample(name, &srv_labels(&s.name, &v.name), value(v));
        }
    }
    o.family("shunt_server_connect_seconds", "histogram", "Time to establish connections to the server.");
    for (s, v) in servers() {
        o.histogram("shunt_server_connect_seconds", &srv_labels(&s.name, &v.name), CONNECT_BUCKETS, &v.connect_time);
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
