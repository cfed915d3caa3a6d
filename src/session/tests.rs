//! The session state machine with real loopback sockets and time passed in: fixtures per
//! phase, names `phase_event_outcome`.
use super::*;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};

const CONNECT: Duration = Duration::from_secs(2);
const IDLE: Duration = Duration::from_secs(60);
const FIN: Duration = Duration::from_secs(5);
const TIMEOUTS: Timeouts = Timeouts { connect: CONNECT, idle: IDLE, fin: FIN, handshake: Duration::from_secs(5) };

/// (our non-blocking end, the peer's blocking end)
fn pair() -> (TcpStream, std::net::TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (ours, _) = l.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (TcpStream::from_std(ours), peer)
}

/// Blocks until `fd` is readable (a readiness check, not a sleep).
fn wait_readable(fd: &impl AsFd) {
    assert!(sys::wait_readable(fd.as_fd(), 5000).unwrap(), "socket did not become readable");
}

struct Fixture {
    session: Session,
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    pools: Pools,
    t0: Instant,
}

fn session_connecting(splice: Splice) -> Fixture {
    let t0 = Instant::now();
    let (c, client) = pair();
    let (b, server) = pair();
    let service = Arc::new(ServiceRuntime::new("s", 1));
    let settings = Settings { splice, timeouts: TIMEOUTS, retries: 0 };
    let mut session = Session::new(7, service, c, "127.0.0.1:1".parse().unwrap(), settings, t0);
    let conf = crate::config::Server {
        name: "b".into(),
        addr: "127.0.0.1:1".parse().unwrap(),
        weight: 1,
        backup: false,
        disabled: false,
        maxconn: None,
        tls: None,
        line: 1,
    };
    session.connecting(b, Arc::new(ServerRuntime::new(&conf, 1)), t0);
    Fixture { session, client, server, pools: Pools::default(), t0 }
}

fn session_streaming(splice: Splice) -> Fixture {
    let mut f = session_connecting(splice);
    f.session.connected(f.t0 + Duration::from_millis(3));
    f
}

impl Fixture {
    /// Feeds readiness for both sides and pumps at `now`.
    fn pump_at(&mut self, now: Instant) -> (Step, usize, usize) {
        self.session.note(Side::Client, true, true, false);
        self.session.note(Side::Backend, true, true, false);
        self.session.pump(now, &mut self.pools)
    }

    /// As epoll reports it once `side`'s peer sent FIN or RST: readable with RDHUP/ERR.
    fn pump_after_close(&mut self, side: Side, now: Instant) -> (Step, usize, usize) {
        self.session.note(side, true, true, true);
        self.pump_at(now)
    }
}

mod tls;

#[test]
fn connecting_deadline_is_the_connect_timeout() {
    let f = session_connecting(Splice::Auto);
    assert_eq!(f.session.phase, Phase::Connecting { since: f.t0 });
    assert_eq!(f.session.deadline(), f.t0 + CONNECT);
}

#[test]
fn connecting_then_connected_records_connect_time_and_arms_idle() {
    let f = session_streaming(Splice::Auto);
    assert_eq!(f.session.phase, Phase::Streaming);
    assert_eq!(f.session.connect_time, Some(Duration::from_millis(3)));
    assert_eq!(f.session.deadline(), f.t0 + Duration::from_millis(3) + IDLE);
}

#[test]
fn streaming_bytes_move_and_push_the_idle_deadline_to_now() {
    for splice in [Splice::Off, Splice::Always] {
        let mut f = session_streaming(splice);
        f.client.write_all(b"hello").unwrap();
        wait_readable(&f.session.client);
        let later = f.t0 + Duration::from_secs(30);
        let (step, up, down) = f.pump_at(later);
        assert_eq!((step, up, down), (Step::Continue, 5, 0), "{splice:?}");
        let mut buf = [0u8; 5];
        f.server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(f.session.deadline(), later + IDLE);
        assert_eq!(f.pools.pipes_lent, 0, "an emptied pipe goes back to the pool");
    }
}

#[test]
fn streaming_nothing_moved_keeps_the_idle_deadline() {
    let mut f = session_streaming(Splice::Auto);
    let before = f.session.deadline();
    let (step, up, down) = f.pump_at(f.t0 + Duration::from_secs(10));
    assert_eq!((step, up, down), (Step::Continue, 0, 0));
    assert_eq!(f.session.deadline(), before);
}

#[test]
fn streaming_client_eof_is_forwarded_as_fin_after_the_data() {
    let mut f = session_streaming(Splice::Auto);
    f.client.write_all(b"last words").unwrap();
    f.client.shutdown(Shutdown::Write).unwrap();
    wait_readable(&f.session.client);
    let (step, up, _) = f.pump_after_close(Side::Client, f.t0);
    assert_eq!(step, Step::Continue, "the other direction is still open");
    assert_eq!(up, 10);
    assert!(f.session.up.done());
    let mut got = Vec::new();
    f.server.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"last words", "data, then EOF");
    // The server answers after the client's FIN: the half-closed session still carries it.
    f.server.write_all(b"reply").unwrap();
    f.server.shutdown(Shutdown::Write).unwrap();
    wait_readable(f.session.backend.as_ref().unwrap());
    let (step, _, down) = f.pump_after_close(Side::Backend, f.t0);
    assert_eq!((step, down), (Step::Close(Cause::Normal), 5));
    // The worker closes the session: that close is the client's FIN.
    drop(f.session);
    let mut got = Vec::new();
    f.client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"reply");
}

#[test]
fn streaming_server_reset_flushes_its_bytes_then_closes_as_server_abort() {
    let mut f = session_streaming(Splice::Off);
    f.server.write_all(b"partial").unwrap();
    wait_readable(f.session.backend.as_ref().unwrap());
    let (step, _, down) = f.pump_at(f.t0);
    assert_eq!((step, down), (Step::Continue, 7));
    // Now the server aborts.
    crate::net::set_linger_zero(&f.server);
    drop(f.server);
    wait_readable(f.session.backend.as_ref().unwrap());
    f.session.note(Side::Backend, true, true, true);
    let (step, _, _) = f.session.pump(f.t0, &mut f.pools);
    assert_eq!(step, Step::Close(Cause::ServerAbort));
    let mut buf = [0u8; 7];
    f.client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"partial", "bytes sent before the reset were delivered");
}

#[test]
fn streaming_short_read_without_a_close_hint_waits_for_the_next_edge() {
    // A short read drained the socket; the FIN that follows raises its own edge (with
    // RDHUP), so the session must not spend a read on it before then.
    let mut f = session_streaming(Splice::Off);
    f.client.write_all(b"abc").unwrap();
    wait_readable(&f.session.client);
    let (_, up, _) = f.pump_at(f.t0);
    assert_eq!(up, 3);
    f.client.shutdown(Shutdown::Write).unwrap();
    wait_readable(&f.session.client);
    // Without the new edge nothing is read: no busy polling of a drained socket.
    assert_eq!(f.session.pump(f.t0, &mut f.pools), (Step::Continue, 0, 0));
    assert!(!f.session.up.src_eof);
    // The edge arrives (RDHUP): the EOF is read and passed on.
    f.pump_after_close(Side::Client, f.t0);
    assert!(f.session.up.done());
}

#[test]
fn streaming_client_reset_closes_as_client_abort() {
    let mut f = session_streaming(Splice::Auto);
    crate::net::set_linger_zero(&f.client);
    drop(f.client);
    wait_readable(&f.session.client);
    f.session.note(Side::Client, true, true, true);
    let (step, _, _) = f.session.pump(f.t0, &mut f.pools);
    assert_eq!(step, Step::Close(Cause::ClientAbort));
    f.session.close(Cause::ClientAbort, &mut f.pools);
    assert_eq!(f.pools.pipes_lent, 0);
}

#[test]
fn streaming_a_full_destination_holds_the_source_back_then_everything_flows() {
    // The client sends far more than the server reads. Non-blocking peers and pumps in
    // turn, so each step is decided by the sockets, not by time.
    // Byte `i` of the stream is `i % 251`: `chunk[from % 251..]` continues it anywhere.
    const LEN: usize = 256 << 20;
    let chunk: Vec<u8> = (0..251 * 1024).map(|i| (i % 251) as u8).collect();
    let mut f = session_streaming(Splice::Off);
    f.client.set_nonblocking(true).unwrap();
    f.server.set_nonblocking(true).unwrap();
    let write_some = |c: &mut std::net::TcpStream, from: usize| {
        let part = &chunk[from % 251..];
        c.write(&part[..part.len().min(LEN - from)])
    };
    let write_some = |c: &mut std::net::TcpStream, from: usize| match write_some(c, from) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(e) => panic!("client write: {e}"),
    };
    // The server reads nothing: once a round moves no byte, in or through, the client is
    // held back, with the session holding at most one buffer and the rest in the kernels.
    let mut sent = 0;
    loop {
        let wrote = write_some(&mut f.client, sent);
        sent += wrote;
        let (_, up, _) = f.pump_at(f.t0);
        assert!(f.session.up.pending() <= crate::relay::BUF_SIZE, "bounded: {}", f.session.up.pending());
        if wrote == 0 && up == 0 {
            break;
        }
    }
    assert!(sent < LEN / 4, "the client was not held back: it wrote {sent} of {LEN} bytes");
    // The server reads now: every byte arrives, in order, and the client gets to send the rest.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut got, mut buf) = (0, vec![0u8; 256 * 1024]);
    while got < LEN {
        assert!(Instant::now() < deadline, "stalled after {got} of {LEN} bytes ({sent} sent)");
        sent += write_some(&mut f.client, sent);
        f.pump_at(f.t0);
        match f.server.read(&mut buf) {
            Ok(0) => panic!("EOF after {got} bytes"),
            Ok(n) => {
                let at = buf[..n].iter().enumerate().position(|(i, &b)| usize::from(b) != (got + i) % 251);
                assert!(at.is_none(), "byte {} differs", got + at.unwrap_or(0));
                got += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("server read: {e}"),
        }
    }
}
