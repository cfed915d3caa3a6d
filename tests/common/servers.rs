//! Plain-TCP peers played by threads of the test: a thread-per-connection [`TcpServer`] with
//! counters, and the backends built on it (echo, sink, a name greeter, an HTTP health endpoint),
//! plus addresses that refuse ([`Refuser`]) or never answer ([`BlackHole`]). All on 127.0.0.1:0.

use super::wait::wait_for;
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Counters shared by a [`TcpServer`]'s threads.
#[derive(Default)]
pub struct ServerStats {
    pub accepted: AtomicUsize,
    pub active: AtomicUsize,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// A thread-per-connection TCP server on 127.0.0.1:0 running `handler` for each connection.
/// On drop it stops accepting and shuts down every live connection, so its threads end.
pub struct TcpServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Note: the server keeps a clone of every accepted stream (for [`TcpServer::close_all`]),
    /// so a handler that merely drops its stream sends neither FIN nor RST: it must
    /// `shutdown` it. Use [`TcpServer::start_unheld`] for handlers whose close must count.
    pub fn start<F>(handler: F) -> TcpServer
    where
        F: Fn(TcpStream, &ServerStats) + Send + Sync + 'static,
    {
        TcpServer::start_opt(true, handler)
    }

    /// Like [`TcpServer::start`], but keeps no clone of the accepted streams: when the handler
    /// drops its stream the socket really closes (with RST if it set `SO_LINGER` 0). Drop and
    /// `close_all` cannot end such connections, so the handler must end by itself (timeouts).
    pub fn start_unheld<F>(handler: F) -> TcpServer
    where
        F: Fn(TcpStream, &ServerStats) + Send + Sync + 'static,
    {
        TcpServer::start_opt(false, handler)
    }

    fn start_opt<F>(hold: bool, handler: F) -> TcpServer
    where
        F: Fn(TcpStream, &ServerStats) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let handler = Arc::new(handler);
        let acceptor = {
            let (stats, stop, conns) = (stats.clone(), stop.clone(), conns.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break; // woken by Drop's own connect
                    }
                    let Ok(conn) = conn else { continue };
                    stats.accepted.fetch_add(1, Ordering::SeqCst);
                    if hold {
                        if let Ok(c) = conn.try_clone() {
                            conns.lock().unwrap().push(c);
                        }
                    }
                    let (stats, handler) = (stats.clone(), handler.clone());
                    thread::spawn(move || {
                        stats.active.fetch_add(1, Ordering::SeqCst);
                        handler(conn, &stats);
                        stats.active.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        TcpServer { addr, stats, stop, conns, acceptor: Some(acceptor) }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose handler is still running.
    pub fn active(&self) -> usize {
        self.stats.active.load(Ordering::SeqCst)
    }

    pub fn bytes_in(&self) -> u64 {
        self.stats.bytes_in.load(Ordering::SeqCst)
    }

    pub fn bytes_out(&self) -> u64 {
        self.stats.bytes_out.load(Ordering::SeqCst)
    }

    /// Shuts down both directions of every connection accepted so far (the server "dies" for its
    /// live connections, while still accepting new ones).
    pub fn close_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // A blocking accept() only returns on a connection: make one to wake the acceptor.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        self.close_all();
    }
}

/// Echo backend: writes back everything it reads. Honours half-close: when the client's FIN
/// arrives (read returns 0) it shuts down its own write side once everything has been echoed,
/// and the connection closes only then.
pub struct EchoServer(pub TcpServer);

impl EchoServer {
    pub fn start() -> EchoServer {
        EchoServer(TcpServer::start(|mut s, stats| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = s.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        stats.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                        stats.bytes_out.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        }))
    }
}

impl Deref for EchoServer {
    type Target = TcpServer;
    fn deref(&self) -> &TcpServer {
        &self.0
    }
}

/// Sink backend: reads and discards everything, counting bytes ([`TcpServer::bytes_in`]); on the
/// client's FIN it closes its side too.
pub struct SinkServer(pub TcpServer);

impl SinkServer {
    pub fn start() -> SinkServer {
        SinkServer(TcpServer::start(|mut s, stats| {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        let _ = s.shutdown(Shutdown::Write);
                        return;
                    }
                    Ok(n) => {
                        stats.bytes_in.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        }))
    }

    /// Waits until at least `n` bytes have arrived in total.
    pub fn wait_bytes(&self, n: u64, timeout: Duration) {
        wait_for(timeout, &format!("sink to receive {n} bytes"), || self.bytes_in() >= n);
    }
}

impl Deref for SinkServer {
    type Target = TcpServer;
    fn deref(&self) -> &TcpServer {
        &self.0
    }
}

/// A backend that answers every connection with `name` (no newline) and closes: which server a
/// connection reached, in one read to EOF.
pub fn name_server(name: &'static str) -> TcpServer {
    TcpServer::start_unheld(move |mut s, _| {
        let _ = s.write_all(name.as_bytes());
    })
}

/// A backend whose `GET /health` answers 200 while `healthy` is set and 503 otherwise; any other
/// request gets the backend's name (raw, no HTTP framing), then the connection closes.
pub fn health_server(name: &'static str, healthy: Arc<AtomicBool>) -> TcpServer {
    TcpServer::start_unheld(move |mut s, _| {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        let reply = if buf[..n].starts_with(b"GET /health") {
            if healthy.load(Ordering::SeqCst) {
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_string()
            } else {
                "HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n".to_string()
            }
        } else {
            name.to_string()
        };
        let _ = s.write_all(reply.as_bytes());
    })
}

/// An address where nothing listens and nothing else can start listening while this is held:
/// a socket bound to 127.0.0.1:0 that does not listen, so connects to it are refused (RST).
/// [`Refuser::listen`] later turns that very port into a server, with no window for another
/// process to take it.
pub struct Refuser {
    sock: Socket,
    pub addr: SocketAddr,
}

impl Refuser {
    pub fn new() -> Refuser {
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind 127.0.0.1:0");
        let addr = sock.local_addr().expect("local_addr").as_socket().expect("an IP address");
        Refuser { sock, addr }
    }

    /// Starts listening on the held port.
    pub fn listen(self) -> TcpListener {
        self.sock.listen(128).expect("listen on the held port");
        self.sock.into()
    }
}

/// A listener whose accept queue is full: further SYNs are dropped, so connects to it hang like
/// connects to a black-holed host. Held open while this lives.
pub struct BlackHole {
    listener: Socket,
    filler: TcpStream,
    pub addr: SocketAddr,
}

impl BlackHole {
    pub fn new() -> BlackHole {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let filler = TcpStream::connect(addr).unwrap();
        // Make sure the queue is really full: one more connect must not complete. (A loaded
        // machine can only make this connect slower, never make it succeed.)
        let probe = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        assert!(probe.is_err(), "accept queue not full, cannot simulate a black hole");
        BlackHole { listener: s, filler, addr }
    }

    /// The server comes to life: the filler goes (its connection is the first one accepted,
    /// and reads EOF) and the listener is returned, so connects whose SYN the kernel dropped
    /// complete at their next retransmission (1, 3, 7... s after the first SYN).
    pub fn open(self) -> TcpListener {
        drop(self.filler);
        self.listener.into()
    }
}
