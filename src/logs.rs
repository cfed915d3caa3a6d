//! Logging helpers: rate-limited warnings (no log storm when the same error repeats, e.g.
//! EMFILE under load) and the one-line session summary.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

/// At most this many lines per key, per thread, per window.
const BURST: u32 = 5;
const WINDOW: Duration = Duration::from_secs(1);

struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

thread_local! {
    // Per thread so the data path takes no lock; each worker limits its own repeats.
    static WINDOWS: RefCell<HashMap<&'static str, Window>> = RefCell::new(HashMap::new());
}

/// Logs at warn unless lines with the same `key` already filled this thread's window; the
/// first line of the next window says how many were dropped.
pub fn limited_warn(key: &'static str, args: fmt::Arguments<'_>) {
    let now = Instant::now();
    let verdict = WINDOWS.with(|w| admit(w.borrow_mut().entry(key).or_insert_with(|| Window::new(now)), now));
    match verdict {
        Some(0) => log::warn!("{args}"),
        Some(dropped) => log::warn!("{args} ({dropped} similar message(s) suppressed)"),
        None => {}
    }
}

impl Window {
    fn new(now: Instant) -> Window {
        Window { started: now, logged: 0, suppressed: 0 }
    }
}

/// Whether one more line fits the window: `Some(lines dropped since the last one logged)`, or
/// `None` to drop it.
fn admit(win: &mut Window, now: Instant) -> Option<u64> {
    if now.duration_since(win.started) >= WINDOW {
        let dropped = win.suppressed;
        *win = Window { started: now, logged: 1, suppressed: 0 };
        Some(dropped)
    } else if win.logged < BURST {
        win.logged += 1;
        Some(0)
    } else {
        win.suppressed += 1;
        None
    }
}

/// How and where a session ended, in the spirit of HAProxy's two-letter termination state.
/// First letter: who or what ended it. Second: the phase it was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Both directions finished with FIN.
    Normal,
    /// The client reset or failed.
    ClientAbort,
    /// The server reset or failed, or every connect attempt failed.
    ServerAbort,
    /// The last connect attempt timed out.
    ConnectTimeout,
    /// No byte either way for `timeout idle`.
    IdleTimeout,
    /// No server could take the connection (all down, drained, full).
    NoServer,
    /// Out of descriptors or memory locally.
    Resource,
    /// Closed by shutdown at the end of `drain_timeout`.
    Killed,
    /// The client's TLS handshake failed (a protocol error, no shared version or cipher, a
    /// client certificate refused), or its PROXY header was malformed or too long.
    BadHandshake,
    /// Refused by an `allow`/`deny` rule or a per-source limit once its PROXY header said who
    /// the client is (refusals at accept close the connection before it is a session).
    Denied,
    /// Its server went down and the service says `on_down close`.
    ServerDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The TLS handshake with the client.
    Handshake,
    Connect,
    Data,
}

/// The termination code, e.g. `--`, `CD`, `SC`, `sC`, `TD`, `NC`, `RC`, `KD`.
pub fn term_code(cause: Cause, phase: Phase) -> [char; 2] {
    let who = match cause {
        Cause::Normal => return ['-', '-'],
        Cause::ClientAbort => 'C',
        Cause::ServerAbort => 'S',
        Cause::ConnectTimeout => 's',
        Cause::IdleTimeout => 'T',
        Cause::NoServer => 'N',
        Cause::Resource => 'R',
        Cause::Killed => 'K',
        Cause::BadHandshake => 'H',
        Cause::Denied => 'P',
        Cause::ServerDown => 'D',
    };
    let when = match phase {
        Phase::Handshake => 'H',
        Phase::Connect => 'C',
        Phase::Data => 'D',
    };
    [who, when]
}

/// The TLS part of a session line: ` tls=1.3 cipher=… sni=… alpn=…`, and ` truncated` when the
/// client's FIN came without a close_notify.
pub fn tls_fields(info: &crate::tls::TlsInfo, truncated: bool) -> String {
    let mut out = format!(" tls={} cipher={}", info.version, info.cipher);
    if let Some(sni) = &info.sni {
        out.push_str(&format!(" sni={sni}"));
    }
    if let Some(alpn) = &info.alpn {
        out.push_str(&format!(" alpn={alpn}"));
    }
    if truncated {
        out.push_str(" truncated");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_limited_per_window_and_counted() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        let verdicts: Vec<Option<u64>> = (0..8).map(|_| admit(&mut w, t0)).collect();
        assert_eq!(verdicts, vec![Some(0), Some(0), Some(0), Some(0), Some(0), None, None, None]);
        // The next window's first line reports the three dropped ones.
        assert_eq!(admit(&mut w, t0 + WINDOW), Some(3));
        assert_eq!(admit(&mut w, t0 + WINDOW), Some(0));
    }

    #[test]
    fn codes() {
        assert_eq!(term_code(Cause::Normal, Phase::Data), ['-', '-']);
        assert_eq!(term_code(Cause::ServerAbort, Phase::Connect), ['S', 'C']);
        assert_eq!(term_code(Cause::IdleTimeout, Phase::Data), ['T', 'D']);
        assert_eq!(term_code(Cause::ConnectTimeout, Phase::Connect), ['s', 'C']);
        assert_eq!(term_code(Cause::BadHandshake, Phase::Handshake), ['H', 'H']);
        assert_eq!(term_code(Cause::IdleTimeout, Phase::Handshake), ['T', 'H']);
        assert_eq!(term_code(Cause::Denied, Phase::Handshake), ['P', 'H']);
    }
}
