//! TLS under faults: handshakes that never finish (slowloris), bytes that are not TLS, half-close
//! in both directions (`close_notify` ↔ FIN, with a rustls client: nothing else can half-close
//! TLS), truncation, certificates replaced by a reload, and churn with aborts mid-handshake and
//! mid-stream that must leave no descriptor, CLOSE_WAIT socket or open session behind.

mod common;

use common::certs::{Ca, Issued, KeyKind};
use common::tls::*;
use common::*;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

/// One service `web` terminating TLS with `cert` in front of `server`; `extra` more lines.
fn conf(cert: &Issued, server: SocketAddr, extra: &str) -> String {
    format!(
        "log info\nadmin 127.0.0.1:0\nservice web\n  bind 127.0.0.1:0\n  tls cert {} key {}\n  server s {server}\n{extra}",
        cert.cert.display(),
        cert.key.display()
    )
}

fn failures(shunt: &Shunt, reason: &str) -> f64 {
    let m = http_get(shunt.admin(), "/metrics").1;
    metric(&m, &format!("shunt_tls_handshake_failures_total{{service=\"web\",reason=\"{reason}\"}}"))
}

/// Echoes `len` pattern bytes through a TLS session in 16 KiB rounds (write one, read it back).
fn tls_echo(s: &mut TlsStream, seed: u64, len: u64) -> Result<(), String> {
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(16 * 1024);
        let mut chunk = vec![0u8; n as usize];
        pattern_fill(seed, sent, &mut chunk);
        s.write_all(&chunk).map_err(|e| format!("write at {sent}: {e}"))?;
        let mut back = vec![0u8; n as usize];
        s.read_exact(&mut back).map_err(|e| format!("read at {sent}: {e}"))?;
        if back != chunk {
            return Err(format!("echo differs in bytes {sent}..{}", sent + n));
        }
        sent += n;
    }
    Ok(())
}

#[test]
fn slow_handshakes_are_all_closed_at_timeout_handshake_and_reach_no_server() {
    const SILENT: usize = 100;
    const DRIBBLING: usize = 100;
    let handshake = Duration::from_secs(2);
    let mut ca = Ca::new("slow-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let backend = SinkServer::start();
    let mut shunt = start_shunt(&conf(&cert, backend.addr, "  timeout handshake 2s\n"));
    let addr = shunt.addr("web");
    let hello = Arc::new(client_hello("localhost", &client_config(&ca.cert, &[], None)));

    // Half send nothing; half send a real ClientHello one byte every 500 ms, which would take
    // minutes: the deadline runs from the accept and no byte moves it.
    let clients: Vec<_> = (0..SILENT + DRIBBLING)
        .map(|i| {
            let hello = hello.clone();
            thread::spawn(move || -> Result<Duration, String> {
                let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
                let start = Instant::now();
                s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                let mut next_byte = 0;
                let mut buf = [0u8; 1024];
                while start.elapsed() < Duration::from_secs(20) {
                    if i >= SILENT && start.elapsed() >= Duration::from_millis(500) * next_byte as u32 {
                        if s.write_all(&hello[next_byte..next_byte + 1]).is_err() {
                            return Ok(start.elapsed());
                        }
                        next_byte += 1;
                    }
                    match s.read(&mut buf) {
                        Ok(0) => return Ok(start.elapsed()),
                        Ok(n) => return Err(format!("{n} bytes came to a client that sent no ClientHello")),
                        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => return Ok(start.elapsed()),
                    }
                }
                Err("still open after 20 s".into())
            })
        })
        .collect();
    let took: Vec<Duration> = clients.into_iter().map(|c| c.join().unwrap().unwrap()).collect();
    let (min, max) = (took.iter().min().unwrap(), took.iter().max().unwrap());
    // Each closed at the deadline: not before (less the client's own connect time), and not
    // much after (a loaded 2-core machine may be late by a few hundred ms; a deadline moved by
    // the dribbled bytes would be seconds late).
    assert!(*min >= handshake - Duration::from_millis(200), "closed early: {min:?}");
    assert!(*max < handshake + Duration::from_secs(2), "closed late: {max:?}");

    let sessions = shunt.wait_all_logged(T);
    assert_eq!(count_codes(&sessions).get("TH"), Some(&(SILENT + DRIBBLING)), "{:?}", count_codes(&sessions));
    assert_eq!(failures(&shunt, "timeout") as usize, SILENT + DRIBBLING);
    assert_eq!(backend.accepted(), 0, "no server connection for a handshake that never completed");
}

#[test]
fn bytes_that_are_not_tls_close_that_connection_and_nothing_else() {
    let mut ca = Ca::new("garbage-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let echo = EchoServer::start();
    let mut shunt = start_shunt(&conf(&cert, echo.addr, ""));
    let addr = shunt.addr("web");
    let config = client_config(&ca.cert, &[], None);
    let mut live = tls_connect(addr, "localhost", &config).unwrap();
    tls_echo(&mut live, 1, 1 << 20).unwrap();

    let mut noise = vec![0u8; 4096];
    pattern_fill(7, 0, &mut noise);
    noise[0] = b'x'; // not a TLS content type
    let hello = client_hello("localhost", &config);
    let mut hello_then_noise = hello[..hello.len() / 2].to_vec();
    hello_then_noise.extend_from_slice(&noise);
    let bad: [(&str, &[u8]); 4] = [
        ("plain HTTP", b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
        ("random bytes", &noise),
        ("a record header claiming 64 KiB", &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3]),
        ("half a ClientHello, then noise", &hello_then_noise),
    ];
    for (what, bytes) in bad {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(bytes).unwrap();
        assert!(closed_within(&mut s, T).is_some(), "{what}: the connection was not closed");
    }

    // The session that was already there goes on untouched.
    tls_echo(&mut live, 2, 1 << 20).unwrap();
    send_close_notify(&mut live).unwrap();
    assert_eq!(read_to_close_notify(&mut live).unwrap(), b"");
    let sessions = shunt.wait_all_logged(T);
    assert_eq!(count_codes(&sessions).get("HH"), Some(&bad.len()), "{sessions:?}");
    assert_eq!(echo.accepted(), 1, "only the TLS client reached the server");
    assert!(failures(&shunt, "not_tls") >= 2.0, "plain HTTP and noise are not TLS");
}

#[test]
fn close_notify_becomes_a_fin_and_the_servers_data_still_flows_back() {
    let mut ca = Ca::new("half-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    // Reads the request to its end (the FIN), then answers with 256 KiB and closes.
    let server = TcpServer::start(|mut s, stats| {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).is_ok() {
            stats.bytes_in.fetch_add(got.len() as u64, Ordering::SeqCst);
            let _ = write_pattern(&mut s, got.len() as u64, 256 << 10);
        }
        let _ = s.shutdown(Shutdown::Write);
    });
    let mut shunt = start_shunt(&conf(&cert, server.addr, ""));
    let mut s = tls_connect(shunt.addr("web"), "localhost", &client_config(&ca.cert, &[], None)).unwrap();
    write_pattern(&mut s, 9, 100_000).unwrap();
    send_close_notify(&mut s).unwrap();
    // The server saw our close_notify as a FIN (it answered only after it), its answer came
    // through after our half was closed, and its FIN came as a close_notify (not a truncation,
    // which rustls would report as UnexpectedEof).
    let answer = read_to_close_notify(&mut s).unwrap();
    assert_eq!(answer.len(), 256 << 10);
    expect_pattern(&mut &answer[..], 100_000, 256 << 10).unwrap();
    assert_eq!(server.bytes_in(), 100_000);
    let sessions = shunt.wait_all_logged(T);
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].code == "--" && !sessions[0].raw.contains("truncated"), "{}", sessions[0].raw);
}

#[test]
fn a_servers_fin_becomes_close_notify_and_the_client_may_still_send() {
    let mut ca = Ca::new("half2-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    // Says hello and closes its side at once, then reads whatever still comes.
    let server = TcpServer::start(|mut s, stats| {
        let _ = s.write_all(b"hello\n");
        let _ = s.shutdown(Shutdown::Write);
        let mut got = Vec::new();
        if s.read_to_end(&mut got).is_ok() && expect_pattern(&mut &got[..], 5, got.len() as u64).is_ok() {
            stats.bytes_in.fetch_add(got.len() as u64, Ordering::SeqCst);
        }
    });
    let mut shunt = start_shunt(&conf(&cert, server.addr, ""));
    let mut s = tls_connect(shunt.addr("web"), "localhost", &client_config(&ca.cert, &[], None)).unwrap();
    assert_eq!(read_to_close_notify(&mut s).unwrap(), b"hello\n", "the server's FIN arrives as close_notify");
    write_pattern(&mut s, 5, 300_000).unwrap();
    send_close_notify(&mut s).unwrap();
    wait_for(T, "the server to read all 300 000 bytes sent after its FIN", || server.bytes_in() == 300_000);
    let sessions = shunt.wait_all_logged(T);
    assert!(sessions[0].code == "--" && sessions[0].up == 300_000, "{}", sessions[0].raw);
}

#[test]
fn a_fin_without_close_notify_is_logged_as_a_truncation() {
    let mut ca = Ca::new("trunc-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let echo = EchoServer::start();
    let mut shunt = start_shunt(&conf(&cert, echo.addr, ""));
    let mut s = tls_connect(shunt.addr("web"), "localhost", &client_config(&ca.cert, &[], None)).unwrap();
    tls_echo(&mut s, 3, 10_000).unwrap();
    // A TCP FIN, no close_notify. It goes on to the server as a FIN; the echo server's own FIN
    // comes back as a clean close_notify (its direction was not truncated).
    s.sock.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_close_notify(&mut s).unwrap(), b"");
    let sessions = shunt.wait_all_logged(T);
    assert!(sessions[0].raw.ends_with(" truncated"), "{}", sessions[0].raw);
}

/// Waits until `f()` (a byte count) has not moved for half a second; its last value.
fn settled(what: &str, f: impl Fn() -> u64) -> u64 {
    let mut last = (u64::MAX, Instant::now());
    wait_for(Duration::from_secs(30), what, || {
        let now = f();
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() >= Duration::from_millis(500)
    });
    last.0
}

#[test]
fn a_client_that_never_reads_and_one_that_never_stops_sending_are_held_back() {
    const LEN: u64 = 96 << 20;
    let mut ca = Ca::new("bp-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let go = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server_go = Arc::clone(&go);
    // Connection 1: pushes LEN bytes at a client that reads nothing yet. Connection 2: reads
    // nothing until `go`, then everything.
    let server = TcpServer::start(move |mut s, stats| {
        if stats.accepted.load(Ordering::SeqCst) == 1 {
            let mut buf = vec![0u8; 256 * 1024];
            for off in (0..LEN).step_by(buf.len()) {
                pattern_fill(31, off, &mut buf);
                if s.write_all(&buf).is_err() {
                    return;
                }
                stats.bytes_out.fetch_add(buf.len() as u64, Ordering::SeqCst);
            }
            let _ = s.shutdown(Shutdown::Write);
        } else {
            while !server_go.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(10));
            }
            let mut got = Vec::new();
            if s.read_to_end(&mut got).is_ok() && expect_pattern(&mut &got[..], 32, LEN).is_ok() {
                stats.bytes_in.fetch_add(got.len() as u64, Ordering::SeqCst);
            }
            let _ = s.shutdown(Shutdown::Write);
        }
    });
    let mut shunt = start_shunt(&conf(&cert, server.addr, ""));
    let config = client_config(&ca.cert, &[], None);
    let addr = shunt.addr("web");
    let rss_before = shunt.rss_kib();

    // Downloads: the server is held back once the kernels' buffers are full; shunt holds at
    // most its buffers for the session.
    let mut reader = tls_over(connect_rcvbuf(addr, 4096), "localhost", &config).unwrap();
    let pushed = settled("the server to be held back", || server.bytes_out());
    let rss = shunt.rss_kib();
    assert!(pushed < LEN / 2, "the server pushed {pushed} of {LEN} bytes at a client that reads nothing");
    assert!(rss < rss_before + 2048, "shunt's RSS grew from {rss_before} to {rss} KiB");
    let mut got = Vec::new();
    reader.read_to_end(&mut got).unwrap();
    expect_pattern(&mut &got[..], 31, LEN).unwrap();
    send_close_notify(&mut reader).unwrap();
    drop(reader);

    // Uploads: the client is held back while the server reads nothing.
    let sent = Arc::new(AtomicU64::new(0));
    let writer = {
        let (config, sent) = (config.clone(), Arc::clone(&sent));
        thread::spawn(move || -> io::Result<()> {
            let mut s = tls_connect(addr, "localhost", &config)?;
            s.sock.set_write_timeout(Some(Duration::from_secs(60)))?;
            let mut buf = vec![0u8; 64 * 1024];
            for off in (0..LEN).step_by(buf.len()) {
                pattern_fill(32, off, &mut buf);
                s.write_all(&buf)?;
                sent.fetch_add(buf.len() as u64, Ordering::SeqCst);
            }
            send_close_notify(&mut s)?;
            // What shunt sent (session tickets, then the server's end as close_notify) is read,
            // so the close is a FIN, not a reset over unread bytes.
            read_to_close_notify(&mut s).map(drop)
        })
    };
    let accepted = settled("the client to be held back", || sent.load(Ordering::SeqCst));
    let rss = shunt.rss_kib();
    assert!(accepted < LEN / 2, "the client sent {accepted} of {LEN} bytes to a server that reads nothing");
    assert!(rss < rss_before + 2048, "shunt's RSS grew from {rss_before} to {rss} KiB");
    go.store(true, Ordering::SeqCst);
    writer.join().unwrap().unwrap();
    wait_for(T, "the server to read every byte", || server.bytes_in() == LEN);
    let sessions = shunt.wait_all_logged(T);
    assert!(sessions.iter().all(|s| s.code == "--"), "{sessions:#?}");
}

/// The end-entity certificate a new session is shown.
fn presented(addr: SocketAddr, ca: &Ca) -> Vec<u8> {
    let s = tls_connect(addr, "localhost", &client_config(&ca.cert, &[], None)).unwrap();
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn a_reload_rereads_certificates_and_live_sessions_keep_theirs() {
    let mut ca = Ca::new("reload-ca");
    let (old, new) = (ca.server(&["localhost"], KeyKind::EcdsaP256), ca.server(&["localhost"], KeyKind::Rsa2048));
    let dir = TempDir::new("live-cert");
    let live = Issued { cert: dir.join("site.pem"), key: dir.join("site.key") };
    let install = |c: &Issued| {
        std::fs::copy(&c.cert, &live.cert).unwrap();
        std::fs::copy(&c.key, &live.key).unwrap();
    };
    install(&old);
    let echo = EchoServer::start();
    let conf = conf(&live, echo.addr, "");
    let mut shunt = start_shunt(&conf);
    let addr = shunt.addr("web");
    let old_der = pem_certs(&old.cert)[0].to_vec();
    let new_der = pem_certs(&new.cert)[0].to_vec();
    assert!(presented(addr, &ca) == old_der, "the first certificate is served");
    let mut session = tls_connect(addr, "localhost", &client_config(&ca.cert, &[], None)).unwrap();
    tls_echo(&mut session, 1, 50_000).unwrap();

    install(&new);
    shunt.reload(&conf);
    shunt.wait_log("(generation 2)", T);
    assert!(presented(addr, &ca) == new_der, "new handshakes use the new files");
    tls_echo(&mut session, 2, 50_000).expect("the live session goes on with its own");
    assert!(session.conn.peer_certificates().unwrap()[0].as_ref() == old_der, "the live session had the old one");

    // A key that does not go with the certificate: the reload is refused, FILE:LINE first.
    std::fs::copy(&old.key, &live.key).unwrap();
    shunt.reload(&conf);
    let line = shunt.wait_log("shunt.conf:5: tls cert: key", T);
    assert!(line.contains("does not go with certificate"), "{line}");
    assert!(presented(addr, &ca) == new_der, "the running configuration stays");
    let (code, _, err) = shunt_check(&conf);
    assert_eq!(code, 1, "--check catches it too: {err}");
    assert!(err.contains("shunt.conf:5: tls cert: key") && err.contains("does not go with"), "{err}");
    std::fs::remove_file(&live.key).unwrap();
    let (code, _, err) = shunt_check(&conf);
    assert!(code == 1 && err.contains("shunt.conf:5: tls cert: key") && err.contains("No such file"), "{err}");
    tls_echo(&mut session, 3, 50_000).unwrap();
}

/// How a churn client behaves.
#[derive(Clone, Copy, Debug)]
enum Churn {
    /// A whole session: echo, close_notify, read to the end.
    Clean,
    /// Half a ClientHello, then a reset.
    ResetInHandshake,
    /// Half a ClientHello, then a FIN.
    FinInHandshake,
    /// A completed handshake and some data, then a reset.
    ResetInStream,
    /// The server resets mid-stream (it reads an `ABORT` request).
    ServerResets,
}

const CHURN: [Churn; 5] =
    [Churn::Clean, Churn::ResetInHandshake, Churn::FinInHandshake, Churn::ResetInStream, Churn::ServerResets];

fn churn_once(addr: SocketAddr, config: &Arc<rustls::ClientConfig>, how: Churn, seed: u64) -> io::Result<()> {
    match how {
        Churn::Clean => {
            let mut s = tls_connect(addr, "localhost", config)?;
            tls_echo(&mut s, seed, 20_000).map_err(io::Error::other)?;
            send_close_notify(&mut s)?;
            read_to_close_notify(&mut s).map(drop)
        }
        Churn::ResetInHandshake | Churn::FinInHandshake => {
            let hello = client_hello("localhost", config);
            let mut s = TcpStream::connect(addr)?;
            s.write_all(&hello[..hello.len() / 2])?;
            if let Churn::FinInHandshake = how {
                s.shutdown(Shutdown::Write)?;
                closed_within(&mut s, T).ok_or_else(|| io::Error::other("not closed after a FIN"))?;
            } else {
                abort(s);
            }
            Ok(())
        }
        Churn::ResetInStream => {
            let mut s = tls_connect(addr, "localhost", config)?;
            tls_echo(&mut s, seed, 20_000).map_err(io::Error::other)?;
            s.write_all(&[7; 5000])?;
            abort(s.sock);
            Ok(())
        }
        Churn::ServerResets => {
            let mut s = tls_connect(addr, "localhost", config)?;
            s.write_all(b"ABORT")?;
            let mut rest = Vec::new();
            match s.read_to_end(&mut rest) {
                Ok(_) => Err(io::Error::other("a server reset passed on as a clean close")),
                Err(_) => Ok(()),
            }
        }
    }
}

/// shunt's descriptors by kind (sockets, pipes, other) once it holds no TCP socket but its
/// listeners (the admin endpoint's own connections included, which the tests' reads of
/// /metrics leave behind for a moment).
fn idle_descriptors(shunt: &Shunt) -> (usize, usize, usize) {
    let only_listeners = || tcp_sockets(shunt.pid()).iter().all(|s| s.state == TcpState::Listen);
    wait_for(T, "shunt to hold no TCP socket but its listeners", only_listeners);
    fd_kinds(shunt.pid())
}

#[test]
fn tls_churn_with_aborts_leaves_no_descriptor_close_wait_or_session_behind() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 40;
    let mut ca = Ca::new("churn-ca");
    let cert = ca.server(&["localhost"], KeyKind::EcdsaP256);
    let resets = Arc::new(AtomicU64::new(0));
    let r = resets.clone();
    // An echo server that resets a connection whose first bytes are `ABORT`.
    let server = TcpServer::start_unheld(move |mut s, _| {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || buf[..n].starts_with(b"ABORT") {
                if n > 0 {
                    r.fetch_add(1, Ordering::SeqCst);
                    set_linger_zero(&s);
                }
                return;
            }
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let mut shunt = start_shunt(&conf(&cert, server.addr, "  timeout handshake 5s\n"));
    let addr = shunt.addr("web");
    let config = client_config(&ca.cert, &[], None);
    churn_once(addr, &config, Churn::Clean, 0).unwrap();
    shunt.wait_all_logged(T);
    let base = idle_descriptors(&shunt);

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let config = config.clone();
            thread::spawn(move || {
                for i in 0..ROUNDS {
                    let how = CHURN[((t + i) % CHURN.len() as u64) as usize];
                    churn_once(addr, &config, how, t * 1000 + i).unwrap_or_else(|e| panic!("{how:?}: {e}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }

    let sessions = shunt.wait_all_logged(T);
    let codes = count_codes(&sessions);
    let per_kind = (THREADS * ROUNDS / CHURN.len() as u64) as usize;
    assert_eq!(codes.get("--"), Some(&(per_kind + 1)), "{codes:?}");
    assert_eq!(codes.get("CH"), Some(&(2 * per_kind)), "client gone mid-handshake: {codes:?}");
    assert_eq!(codes.get("CD"), Some(&per_kind), "client reset mid-stream: {codes:?}");
    assert_eq!(codes.get("SD"), Some(&per_kind), "server reset mid-stream: {codes:?}");
    assert_eq!(resets.load(Ordering::SeqCst), per_kind as u64);
    // Every connection gone (a leak would stay in CLOSE_WAIT or ESTABLISHED), and the count of
    // descriptors by kind as before the churn.
    let now = idle_descriptors(&shunt);
    assert_eq!(now, base, "descriptors (sockets, pipes, other), sockets {:?}", tcp_sockets(shunt.pid()));
    let m = http_get(shunt.admin(), "/metrics").1;
    let ok = metric(&m, "shunt_tls_handshakes_total{service=\"web\"}") as usize;
    assert_eq!(ok, 1 + 3 * per_kind, "{m}");
    assert_eq!(failures(&shunt, "client_closed") as usize, 2 * per_kind, "{m}");
}
