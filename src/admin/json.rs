//! The `/status` document, written by hand: a small, fixed shape does not need a JSON crate,
//! only correct string escaping (RFC 8259 section 7).

use crate::snapshot::Snapshot;
use std::fmt::Write;

/// A JSON string literal for `s`.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn status(snap: &Snapshot) -> String {
    let mut o = String::with_capacity(4096);
    let _ = write!(
        o,
        "{{\"version\":{},\"uptime_seconds\":{:.3},\"active_connections\":{},\"max_connections\":{},\"generation\":{},\"config_hash\":\"{:016x}\",\"workers\":{},\"per_worker\":[",
        string(env!("CARGO_PKG_VERSION")),
        snap.uptime.as_secs_f64(),
        snap.active,
        snap.max_conns,
        snap.generation,
        snap.config_hash,
        snap.workers
    );
    for (i, w) in snap.per_worker.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        let _ = write!(o, "{sep}{{\"sessions\":{},\"timers\":{},\"pipes\":{}}}", w.sessions, w.timers, w.pipes);
    }
    o.push_str("],\"services\":[");
    for (i, s) in snap.services.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let listeners: Vec<String> = s.listeners.iter().map(|a| string(&a.to_string())).collect();
        let _ = write!(
            o,
            "{{\"name\":{},\"listeners\":[{}],\"balance\":{},\"active_connections\":{},\"accepted\":{},\
             \"refused\":{{\"acl\":{},\"per_ip\":{},\"limit\":{},\"no_server\":{}}},\"limit_pauses\":{},\"closed_on_down\":{},\
             \"per_ip\":{{\"live_sources\":{},\"live_connections\":{}}},\"servers\":[",
            string(&s.name),
            listeners.join(","),
            string(s.balance),
            s.active,
            s.accepted,
            s.refused_acl,
            s.refused_per_ip,
            s.refused_limit,
            s.refused_no_server,
            s.limit_pauses,
            s.closed_on_down,
            s.per_ip.live_sources,
            s.per_ip.live_conns
        );
        for (j, v) in s.servers.iter().enumerate() {
            if j > 0 {
                o.push(',');
            }
            let check = match v.last_check.ok {
                None => "null".to_string(),
                Some(ok) => format!(
                    "{{\"ok\":{ok},\"detail\":{},\"duration_ms\":{:.3}}}",
                    string(&v.last_check.detail),
                    v.last_check.duration_us as f64 / 1000.0
                ),
            };
            let _ = write!(
                o,
                "{{\"name\":{},\"address\":{},\"state\":{},\"healthy\":{},\"weight\":{},\"backup\":{},\
                 \"active_connections\":{},\"total_connections\":{},\"failed_connects\":{},\
                 \"bytes_in\":{},\"bytes_out\":{},\"checks\":{},\"last_check\":{check}}}",
                string(&v.name),
                string(&v.address.to_string()),
                string(v.state.name()),
                v.healthy,
                v.weight,
                v.backup,
                v.active,
                v.connects,
                v.failed_connects,
                // The document keeps its first names: in = from the server, out = to it.
                v.bytes_down,
                v.bytes_up,
                v.checks
            );
        }
        o.push(']');
        if let Some(t) = &s.tls {
            let failed: Vec<String> = crate::tls::FAILURE_REASONS
                .iter()
                .zip(&t.failed)
                .map(|(reason, n)| format!("{}:{n}", string(reason)))
                .collect();
            let _ = write!(
                o,
                ",\"tls\":{{\"handshakes\":{},\"handshake_failures\":{{{}}},\"sessions\":{{\"1.2\":{},\"1.3\":{}}}}}",
                t.handshakes_ok,
                failed.join(","),
                t.versions[0],
                t.versions[1]
            );
        }
        if let Some((ok, failed)) = &s.proxy {
            let failed: Vec<String> = crate::proxy_protocol::parse::REASONS
                .iter()
                .zip(failed)
                .map(|(reason, n)| format!("{}:{n}", string(reason)))
                .collect();
            let _ = write!(o, ",\"proxy_headers\":{{\"read\":{ok},\"failures\":{{{}}}}}", failed.join(","));
        }
        o.push('}');
    }
    o.push_str("]}");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
