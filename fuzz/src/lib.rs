//! What each fuzz target feeds and checks. The targets in `fuzz_targets/` are one line each; the
//! main crate's `tests/fuzz_corpus.rs` includes this very file and replays every corpus file
//! through the same functions, so the corpora are a regression suite that needs no cargo-fuzz.
//!
//! Every check panics on a broken invariant; a panic is what libFuzzer reports as a crash.

use shunt::admin::{parse_head, ParsedHead, MAX_REQUEST};
use shunt::config::{CheckKind, StatusMatch};
use shunt::health::probe::{http_status, judge, Verdict};
use std::path::Path;

/// Conf-file bytes: the parser never panics; a success has a summary line per service, a
/// failure at least one error, in line order, each printable as `FILE:LINE: message`.
///
/// Host names are not resolved (`parse_bytes_offline`): a fuzzer must not send made-up names to
/// the resolver. Everything else is `parse_bytes`.
pub fn conf(data: &[u8]) {
    match shunt::config::parse_bytes_offline(data, Path::new("fuzz.conf")) {
        Ok(config) => {
            let summary = config.summary();
            assert_eq!(summary.len(), config.services.len());
            assert!(summary.iter().all(|l| l.starts_with("service ")), "{summary:?}");
            assert!(!config.services.is_empty());
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a failure names at least one error");
            assert!(errors.windows(2).all(|w| w[0].line <= w[1].line), "errors in line order: {errors:?}");
            for e in &errors {
                assert!(e.to_string().starts_with("fuzz.conf:"), "{e}");
            }
        }
    }
}

/// A health-check reply: `http_status` and `judge` never panic, for every kind of check, at EOF
/// or not; at EOF every check is decided; and a reply once decided stays decided the same way
/// as more bytes arrive (the probe judges after every read).
///
/// The first byte picks how many of the following bytes form a `check send` expect string; the
/// rest is the reply.
pub fn probe_reply(data: &[u8]) {
    let _ = http_status(data);
    let (expect, reply) = match data.split_first() {
        Some((&n, rest)) => rest.split_at(usize::from(n % 8).min(rest.len())),
        None => (&[][..], data),
    };
    let kinds = [
        CheckKind::Tcp,
        CheckKind::Send { send: b"PING\r\n".to_vec(), expect: expect.to_vec() },
        CheckKind::Send { send: b"PING\r\n".to_vec(), expect: b"+PONG".to_vec() },
        http(StatusMatch::Exact(200)),
        http(StatusMatch::Exact(503)),
        http(StatusMatch::Class(2)),
        http(StatusMatch::Class(5)),
    ];
    let status = http_status(reply);
    // Cut points: a prefix that was decided must decide the whole reply the same way.
    let cuts = [reply.len() / 2, reply.len().saturating_sub(1)];
    for cut in cuts {
        if let Some(early) = http_status(&reply[..cut]) {
            assert_eq!(Some(early), status, "status decided on {cut} bytes changed");
        }
    }
    for kind in &kinds {
        let open = judge(kind, reply, false);
        let closed = judge(kind, reply, true);
        assert!(closed.is_some(), "{kind:?} undecided at EOF");
        if let Some(v) = &open {
            assert_eq!(Some(v), closed.as_ref(), "{kind:?}: EOF changed a decided verdict");
        }
        if let CheckKind::Http { expect, .. } = kind {
            if let Some(Ok(s)) = status {
                assert_eq!(open == Some(Verdict::Pass), expect.matches(s), "{kind:?} on status {s}");
            }
        }
        for cut in cuts {
            if let Some(early) = judge(kind, &reply[..cut], false) {
                assert_eq!(Some(early), open, "{kind:?}: verdict on {cut} bytes changed");
            }
        }
    }
}

fn http(expect: StatusMatch) -> CheckKind {
    CheckKind::Http { method: "GET".into(), path: "/health".into(), expect }
}

/// An admin request buffer: the parser never panics; it waits for more bytes only while fewer
/// than `MAX_REQUEST` arrived (the reader never buffers more), and never accepts a request whose
/// head (and body) exceed `MAX_REQUEST` or the bytes it was given.
pub fn admin_request(data: &[u8]) {
    match parse_head(data) {
        ParsedHead::Incomplete => assert!(data.len() < MAX_REQUEST, "still waiting after {} bytes", data.len()),
        ParsedHead::Refuse(status, message) => {
            assert!(matches!(status, 400 | 413 | 431), "status {status}");
            assert!(!message.is_empty());
        }
        ParsedHead::Request(h) => {
            let whole = h.head_len + h.body_len;
            assert!(whole <= MAX_REQUEST, "accepted {whole} bytes of head and body");
            assert!(whole <= data.len(), "accepted {whole} bytes out of {}", data.len());
            assert!(h.path.len() < h.head_len && !h.path.contains('?'), "{h:?}");
        }
    }
}

/// A binary-upgrade hand-over frame (`shunt::upgrade::wire`): the first byte is the frame kind,
/// the second the number of descriptors that came with it, the rest the payload. Decoding never
/// panics or allocates beyond what the payload could hold, and what decodes round-trips.
pub fn upgrade_frame(data: &[u8]) {
    let [kind, fds, payload @ ..] = data else { return };
    let _ = shunt::upgrade::wire::check(*kind, payload, usize::from(*fds));
}

/// Bytes a client sends first, read by SNI passthrough: `server_name` never panics, never looks
/// past its bound, decides a prefix the way it decides the whole (the worker asks again as
/// bytes arrive), and a name it returns is a lower-case host name.
pub fn client_hello(data: &[u8]) {
    use shunt::tls::hello::{server_name, MAX_HELLO};
    let whole = server_name(data);
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        let early = server_name(&data[..cut]);
        if !matches!(early, Ok(None)) {
            assert_eq!(early, whole, "decided on {cut} bytes, then changed");
        }
    }
    if data.len() > MAX_HELLO {
        assert_eq!(whole, server_name(&data[..MAX_HELLO]), "looked past the bound");
    }
    if let Ok(Some(Some(name))) = &whole {
        assert!(!name.is_empty() && name.len() <= 255, "{name:?}");
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)), "{name:?}");
    }
}

/// Bytes a client of an `accept_proxy` bind sends first: `parse` never panics, never looks past
/// its bound, decides a prefix the way it decides the whole (the worker asks again as bytes
/// arrive), and a header it accepts lies within the bytes (the worker consumes exactly that
/// many), a v1 one ending with its CRLF.
pub fn proxy_header(data: &[u8]) {
    use shunt::proxy_protocol::parse::{parse, MAX_HEADER};
    let whole = parse(data);
    for cut in [data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        let early = parse(&data[..cut]);
        if !matches!(early, Ok(None)) {
            assert_eq!(early, whole, "decided on {cut} bytes, then changed");
        }
    }
    if data.len() > MAX_HEADER {
        assert_eq!(whole, parse(&data[..MAX_HEADER]), "looked past the bound");
    }
    if let Ok(Some(h)) = whole {
        assert!(h.len <= data.len().min(MAX_HEADER), "{h:?} of {} bytes", data.len());
        if data[0] == b'P' {
            assert!(h.len <= 107 && data[..h.len].ends_with(b"\r\n"), "{h:?}");
        }
    }
}

/// Replies to a `check redis` probe (`AUTH`, then `INFO replication`): the judge never panics,
/// decides every reply at EOF, and a prefix it decides is decided as the whole is (the probe
/// judges after every read). The first byte picks whether `AUTH` was sent and which role is
/// asked for.
pub fn redis_reply(data: &[u8]) {
    use shunt::config::RedisRole;
    use shunt::health::redis::judge;
    let Some((&pick, reply)) = data.split_first() else { return };
    let auth = pick & 1 == 1;
    let role = [None, Some(RedisRole::Master), Some(RedisRole::Replica)][usize::from(pick >> 1) % 3];
    let whole = judge(reply, auth, role, false);
    assert!(judge(reply, auth, role, true).is_some(), "undecided at EOF");
    for cut in [reply.len() / 3, reply.len() / 2, reply.len().saturating_sub(1)] {
        if let Some(early) = judge(&reply[..cut], auth, role, false) {
            assert_eq!(Some(early), whole, "decided on {cut} bytes, then changed");
        }
    }
}

/// What a server answers a `check pgsql` probe, in pieces: the dialog never panics, never keeps
/// more than it was given, and whatever it decides, it decides once (the probe stops there). The
/// first byte picks the password, the role, and where the bytes are cut.
pub fn pgsql_reply(data: &[u8]) {
    use shunt::config::PgRole;
    use shunt::health::pgsql::{Dialog, Step};
    let Some((&pick, reply)) = data.split_first() else { return };
    let role = [None, Some(PgRole::Primary), Some(PgRole::Standby)][usize::from(pick & 3) % 3];
    let password = (pick & 4 != 0).then_some("pw");
    let mut dialog = Dialog::new("app", password, role);
    let mut buf = Vec::new();
    let step = usize::from(pick >> 3).max(1);
    for chunk in reply.chunks(step) {
        buf.extend_from_slice(chunk);
        let held = buf.len();
        match dialog.feed(&mut buf) {
            Step::Wait | Step::Send(_) => assert!(buf.len() <= held),
            Step::Done(..) => return,
        }
    }
    let _ = dialog.closed();
}
