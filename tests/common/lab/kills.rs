//! Telling the client errors that a server's death explains from those a balancer should have
//! saved: a failed session must have been live on a server when it was killed, and shunt's log
//! line for it must say so.

use super::super::logs::Session;
use super::client::{End, Outcome};
use std::collections::HashMap;
use std::time::Duration;

/// How far a session may lie from a kill and still be its victim. It covers the scheduler and
/// the dying process: SIGKILL returns at once, but a process holding thousands of sockets closes
/// its listener some time later, and until then the kernel still completes handshakes that the
/// close then resets (seen: 60 ms on a loaded machine; 500 ms leaves room for a busier one).
pub const KILL_SLACK: Duration = Duration::from_millis(500);

/// Whether a kill of `server` (None: any server) happened while a session of `at..at+took` was
/// live; `kills` are `(time since epoch, server)`.
pub fn killed_during(kills: &[(Duration, String)], server: Option<&str>, at: Duration, took: Duration) -> bool {
    kills.iter().any(|(t, s)| server.is_none_or(|x| x == s) && *t + KILL_SLACK >= at && *t <= at + took + KILL_SLACK)
}

/// Explains failed queries by the kills: shunt logged SD for the session (the server reset or
/// died mid-session), or the killed server's kernel closed the connection with a FIN after the
/// bytes it had (a truncation no L4 proxy can tell from a whole answer): then shunt's line says
/// "--" and exactly the bytes the client got. Returns the number of such FIN truncations and a
/// description of every failure left unexplained.
pub fn explain_failures(fails: &[&Outcome], log: &[Session], kills: &[(Duration, String)]) -> (usize, Vec<String>) {
    let mut by_port: HashMap<u16, Vec<&Session>> = HashMap::new();
    for x in log {
        by_port.entry(x.port).or_default().push(x);
    }
    let mut fin_truncations = 0;
    let mut unexplained = Vec::new();
    for o in fails {
        let lines = by_port.get(&o.port).cloned().unwrap_or_default();
        let sd = lines.iter().any(|x| x.code == "SD" && killed_during(kills, Some(&x.server), o.at, o.took));
        // What shunt delivered: the name line and the stream bytes the client checked (none at
        // all when the server died before it even sent its name).
        let delivered = if o.server.is_empty() { 0 } else { o.server.len() as u64 + 1 + o.got };
        let fin = o.end == End::Eof
            && lines.iter().any(|x| {
                x.code == "--"
                    && x.down == delivered
                    && (o.server.is_empty() || x.server == o.server)
                    && killed_during(kills, Some(&x.server), o.at, o.took)
            });
        fin_truncations += usize::from(fin);
        if !sd && !fin {
            let lines: Vec<&str> = lines.iter().map(|x| x.raw.as_str()).collect();
            unexplained.push(format!("{o:?}; shunt: {lines:#?}"));
        }
    }
    (fin_truncations, unexplained)
}
