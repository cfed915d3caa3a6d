//! Binary upgrade without dropping anything (SIGUSR2, `POST /upgrade`).
//!
//! The old process starts the executable now at its own path, with the same arguments and a
//! Unix socket it inherits (`SHUNT_UPGRADE_FD`). Over it the old one hands over every listening
//! socket (each worker's, so their accept queues move too: no connection waiting in a backlog
//! is lost), the admin listener and its servers' health, admin states and weights. The new one
//! starts with them and says `Ready`; only then does the old one stop accepting, and it hands
//! over its established plain-TCP sessions: both sockets, the pipes with the bytes in flight in
//! them (or the bytes of its copy buffers), the counts and ages. Sessions that cannot move
//! (connecting, aborting) finish in the old process, which exits once they are done. If the
//! new process fails to start, exits, or is not ready in time, the old one keeps serving, as if
//! nothing had been asked, and logs why.
//!
//! `wire.rs` is the frame format; this module drives both sides.

pub mod wire;

use crate::session::Moving;
use crate::supervisor::Supervisor;
use crate::sys;
use std::ffi::OsString;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wire::{BindOut, FlowOut, HeldOut, Hello, Kind, Reader, ServerOut, SessionOut, Writer};

/// The environment variable naming the inherited hand-over socket.
pub const FD_VAR: &str = "SHUNT_UPGRADE_FD";
/// How long the new process has to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each side waits for the other's next frame once the hand-over runs.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start the new binary: the path and arguments this process was started with.
#[derive(Debug, Clone)]
pub struct Program {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// What an upgrade did, from the old process's side.
#[derive(Debug, Clone, Copy)]
pub struct Upgraded {
    pub pid: u32,
    pub listeners: usize,
    pub sessions_moved: usize,
}

fn send_frame(link: &UnixStream, kind: Kind, payload: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut frame = wire::header(kind, payload.len()).to_vec();
    frame.extend_from_slice(payload);
    sys::send_with_fds(link.as_fd(), &frame, fds)
}

/// Reads exactly `buf.len()` bytes, collecting any descriptors that come with them.
fn recv_exact(link: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> Result<bool, String> {
    let mut got = 0;
    while got < buf.len() {
        let (n, more) =
            sys::recv_with_fds(link.as_fd(), &mut buf[got..]).map_err(|e| format!("hand-over socket: {e}"))?;
        fds.extend(more);
        if n == 0 {
            return if got == 0 { Ok(false) } else { Err("hand-over socket closed inside a frame".into()) };
        }
        got += n;
    }
    Ok(true)
}

/// A frame as received: its kind, payload, and the descriptors that came with it.
type Frame = (Kind, Vec<u8>, Vec<OwnedFd>);

/// The next frame, or `None` when the other side closed between frames.
fn recv_frame(link: &UnixStream) -> Result<Option<Frame>, String> {
    let mut fds = Vec::new();
    let mut header = [0u8; wire::HEADER];
    if !recv_exact(link, &mut header, &mut fds)? {
        return Ok(None);
    }
    let (kind, len) = wire::parse_header(&header)?;
    let mut payload = vec![0u8; len];
    if !recv_exact(link, &mut payload, &mut fds)? && len > 0 {
        return Err("hand-over socket closed inside a frame".into());
    }
    Ok(Some((kind, payload, fds)))
}

// ------------------------------------------------------------------------------------------------
// The old process
// ------------------------------------------------------------------------------------------------

/// Starts the new binary and hands everything over to it. `Err` means the old process keeps
/// serving (the new one was stopped if it was still running).
pub(crate) fn hand_over(sup: &Supervisor, program: &Program) -> Result<Upgraded, String> {
    let (link, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    sys::keep_across_exec(theirs.as_fd()).map_err(|e| format!("upgrade socket: {e}"))?;
    let mut child = Command::new(&program.exe)
        .args(&program.args)
        .env(FD_VAR, theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.exe.display()))?;
    drop(theirs);
    let pid = child.id();
    match introduce(sup, &link, &mut child) {
        Ok(listeners) => {
            crate::notify::send(&format!("MAINPID={pid}"));
            let sessions_moved = move_sessions(sup, &link);
            Ok(Upgraded { pid, listeners, sessions_moved })
        }
        Err(why) => {
            let _ = child.kill();
            let status = child.wait().map(|s| format!(" ({s})")).unwrap_or_default();
            Err(format!("the new process {pid}{status} did not take over: {why}"))
        }
    }
}

/// Sends the listeners and server states, then waits for `Ready`. Returns the listeners handed.
fn introduce(sup: &Supervisor, link: &UnixStream, child: &mut Child) -> Result<usize, String> {
    let generation = sup.stats().current();
    let held = sup.listener_copies();
    let mut hello = Hello { binds: Vec::new(), admin: false, servers: Vec::new() };
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    for (listening, sockets) in held.iter() {
        hello.binds.push(BindOut { conf: listening.conf.to_string(), addr: listening.addr, sockets: sockets.len() });
        fds.extend(sockets.iter().map(|s| s.as_fd()));
    }
    let admin = sup.admin_copy();
    if let Some(a) = admin {
        hello.admin = true;
        fds.push(a.as_fd());
    }
    for (si, rt) in generation.all_servers() {
        hello.servers.push(ServerOut {
            service: generation.config.services[si].name.clone(),
            name: rt.name.clone(),
            addr: rt.addr,
            up: rt.up.load(std::sync::atomic::Ordering::Relaxed),
            admin: rt.admin() as u8,
            weight: rt.weight.load(std::sync::atomic::Ordering::Relaxed),
        });
    }
    if fds.len() > sys::MAX_FDS_PER_MESSAGE {
        return Err(format!("{} listening sockets: more than one message carries", fds.len()));
    }
    let mut w = Writer::default();
    w.hello(&hello);
    send_frame(link, Kind::Hello, &w.0, &fds).map_err(|e| format!("sending the listeners: {e}"))?;
    // The new process reads its conf, starts, and answers; a crash closes its end.
    let started = Instant::now();
    link.set_read_timeout(Some(READY_TIMEOUT)).map_err(|e| e.to_string())?;
    match recv_frame(link) {
        Ok(Some((Kind::Ready, _, _))) => Ok(hello.binds.len()),
        Ok(Some((Kind::Failed, payload, _))) => {
            Err(Reader::new(&payload).text().unwrap_or_else(|e| format!("unreadable failure: {e}")))
        }
        Ok(Some((kind, _, _))) => Err(format!("unexpected {kind:?} frame")),
        Ok(None) => {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            Err(format!("it exited ({status}) before it was ready"))
        }
        Err(e) if started.elapsed() >= READY_TIMEOUT => Err(format!("not ready within {READY_TIMEOUT:?} ({e})")),
        Err(e) => Err(e),
    }
}

/// The new process serves: stop accepting here, and send every session that can move.
fn move_sessions(sup: &Supervisor, link: &UnixStream) -> usize {
    let moving = sup.hand_over_sessions();
    sup.retire();
    // The new process holds the listening sockets now; this one's copies only kept them open.
    sup.listener_copies().clear();
    let mut moved = 0;
    for batch in moving.chunks(wire::SESSIONS_PER_FRAME) {
        let outs: Vec<SessionOut> = batch.iter().map(session_out).collect();
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        for m in batch {
            fds.push(m.client.as_fd());
            fds.push(m.backend.as_fd());
            for f in [&m.up, &m.down] {
                if let crate::relay::Held::Pipe { read, write, .. } = &f.held {
                    fds.push(read.as_fd());
                    fds.push(write.as_fd());
                }
            }
        }
        let mut w = Writer::default();
        w.sessions(&outs);
        match send_frame(link, Kind::Sessions, &w.0, &fds) {
            Ok(()) => moved += batch.len(),
            // The new process is gone: these sessions are lost with it (its copies are closed).
            Err(e) => log::error!("upgrade: {} session(s) could not be handed over: {e}", batch.len()),
        }
    }
    let _ = send_frame(link, Kind::Done, &[], &[]);
    moved
    // `moving` drops here: this process's descriptors close; the new one's stay open.
}

fn session_out(m: &Moving) -> SessionOut {
    SessionOut { meta: m.meta.clone(), up: FlowOut::of(&m.up), down: FlowOut::of(&m.down) }
}

// ------------------------------------------------------------------------------------------------
// The new process
// ------------------------------------------------------------------------------------------------

/// What the old process handed over before this one started.
pub struct Inherited {
    /// Each `bind` the old process had, with its sockets (one per old worker).
    pub binds: Vec<(BindOut, Vec<TcpListener>)>,
    pub admin: Option<TcpListener>,
    pub servers: Vec<ServerOut>,
    link: UnixStream,
}

/// Reads the `Hello` frame from the inherited socket.
pub fn receive(fd: OwnedFd) -> Result<Inherited, String> {
    let link = UnixStream::from(fd);
    link.set_read_timeout(Some(FRAME_TIMEOUT)).map_err(|e| e.to_string())?;
    let (kind, payload, fds) = recv_frame(&link)?.ok_or("the old process closed the hand-over socket")?;
    if kind != Kind::Hello {
        return Err(format!("expected the listeners, got a {kind:?} frame"));
    }
    let hello = Reader::new(&payload).hello(fds.len())?;
    let mut fds = fds.into_iter();
    let mut binds = Vec::new();
    for b in hello.binds {
        let sockets: Vec<TcpListener> = fds.by_ref().take(b.sockets).map(TcpListener::from).collect();
        for s in &sockets {
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
        }
        binds.push((b, sockets));
    }
    let admin = fds.next().map(TcpListener::from);
    Ok(Inherited { binds, admin, servers: hello.servers, link })
}

impl Inherited {
    /// The sockets the old process had for the `ordinal`-th bind spelled `conf`, and the
    /// address they are bound to.
    pub fn take_bind(
        &mut self,
        conf: crate::config::ListenAddr,
        ordinal: usize,
    ) -> Option<(SocketAddr, Vec<TcpListener>)> {
        let spelled = conf.to_string();
        let (b, sockets) = self.binds.iter_mut().filter(|(b, _)| b.conf == spelled).nth(ordinal)?;
        if sockets.is_empty() {
            return None;
        }
        Some((b.addr, std::mem::take(sockets)))
    }

    /// The old process's admin listener, if it listened on `addr`.
    pub fn take_admin(&mut self, addr: SocketAddr) -> Option<TcpListener> {
        let listener = self.admin.take()?;
        let bound = listener.local_addr().ok()?;
        // Port 0 in the conf: the old process's port is the one to keep.
        (bound == addr || (addr.port() == 0 && bound.ip() == addr.ip())).then_some(listener)
    }

    /// Starts the servers of `generation` from the health, admin state and weight the old
    /// process had for them (same service, name and address).
    pub fn apply_states(&self, generation: &crate::shared::Generation) {
        use std::sync::atomic::Ordering::Relaxed;
        for s in &self.servers {
            let Some(rt) = generation.server_named(&s.service, &s.name).filter(|rt| rt.addr == s.addr) else {
                continue;
            };
            rt.up.store(s.up, Relaxed);
            rt.set_admin(match s.admin {
                1 => crate::shared::AdminState::Drain,
                2 => crate::shared::AdminState::Disabled,
                _ => crate::shared::AdminState::Enabled,
            });
            rt.weight.store(s.weight, Relaxed);
        }
    }

    /// Tells the old process this one cannot take over (it keeps serving).
    pub fn failed(&self, why: &str) {
        let mut w = Writer::default();
        w.text(why);
        let _ = send_frame(&self.link, Kind::Failed, &w.0, &[]);
    }

    /// Tells the old process this one serves, then adopts the sessions it sends, on a thread
    /// of its own, spreading them over the workers.
    pub fn ready(self, sup: Arc<Supervisor>) -> io::Result<()> {
        send_frame(&self.link, Kind::Ready, &[], &[])?;
        let link = self.link;
        std::thread::Builder::new().name("shunt-adopt".into()).spawn(move || adopt_all(&link, &sup))?;
        Ok(())
    }
}

fn adopt_all(link: &UnixStream, sup: &Supervisor) {
    let mut total = 0;
    loop {
        match recv_frame(link) {
            Ok(Some((Kind::Sessions, payload, fds))) => match Reader::new(&payload).sessions(fds.len()) {
                Ok(outs) => {
                    total += outs.len();
                    sup.adopt(rebuild(outs, fds));
                }
                Err(e) => {
                    log::error!("upgrade: a batch of sessions could not be read ({e}): they are lost");
                }
            },
            Ok(Some((Kind::Done, _, _))) | Ok(None) => break,
            Ok(Some((kind, _, _))) => {
                log::error!("upgrade: unexpected {kind:?} frame from the old process");
                break;
            }
            Err(e) => {
                log::error!("upgrade: hand-over of sessions ended: {e}");
                break;
            }
        }
    }
    log::warn!("upgrade: {total} established session(s) adopted from the old process");
    let mut rest = Vec::new();
    let _ = (&*link).read_to_end(&mut rest);
}

/// Puts each session's descriptors back into its fields (the frame lists them in order).
fn rebuild(outs: Vec<SessionOut>, fds: Vec<OwnedFd>) -> Vec<Moving> {
    let mut fds = fds.into_iter();
    let mut next = || fds.next().expect("invariant: the descriptor count was checked");
    outs.into_iter()
        .map(|s| {
            let client = std::net::TcpStream::from(next());
            let backend = std::net::TcpStream::from(next());
            let mut flow = |f: FlowOut| crate::relay::FlowState {
                delivered: f.delivered,
                src_eof: f.src_eof,
                dst_shut: f.dst_shut,
                bulk: f.bulk,
                held: match f.held {
                    HeldOut::Nothing => crate::relay::Held::Nothing,
                    HeldOut::Pipe { pending } => {
                        crate::relay::Held::Pipe { read: next(), write: next(), pending: pending as usize }
                    }
                    HeldOut::Bytes(b) => crate::relay::Held::Bytes(b),
                },
            };
            let up = flow(s.up);
            let down = flow(s.down);
            Moving { client, backend, meta: s.meta, up, down }
        })
        .collect()
}
