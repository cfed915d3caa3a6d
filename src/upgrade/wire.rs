//! The hand-over protocol between an old and a new shunt during a binary upgrade, over a Unix
//! stream socket. Each frame is a 12-byte header (`SHUP`, kind, 3 zero bytes, payload length
//! as a little-endian u32) and its payload; the descriptors a frame carries are attached to its
//! first byte (`SCM_RIGHTS`) and listed in its payload in order.
//!
//! Decoding is a pure function of the payload and the number of descriptors received, bounded
//! in every length it reads, so a fuzzer can feed it anything (fuzz target `upgrade_frame`).

use crate::config::{Splice, Timeouts};
use crate::relay::{FlowState, Held};
use crate::session::{MovedMeta, Settings};
use std::net::SocketAddr;
use std::time::Duration;

const MAGIC: &[u8; 4] = b"SHUP";
pub const HEADER: usize = 12;
/// No frame is larger: a batch of sessions with their buffered bytes stays far below it.
pub const MAX_PAYLOAD: usize = 8 << 20;
const MAX_STR: usize = 4096;
/// Sessions per `Sessions` frame: each carries up to 6 descriptors (2 sockets, 2 pipes).
pub const SESSIONS_PER_FRAME: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Old to new: listeners (descriptors), the admin listener, server states.
    Hello = 1,
    /// New to old: serving; stop accepting and send the sessions.
    Ready = 2,
    /// New to old: cannot start; the old one keeps serving.
    Failed = 3,
    /// Old to new: a batch of established sessions (descriptors).
    Sessions = 4,
    /// Old to new: nothing more.
    Done = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::Failed,
            4 => Kind::Sessions,
            5 => Kind::Done,
            _ => return None,
        })
    }
}

pub fn header(kind: Kind, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(MAGIC);
    h[4] = kind as u8;
    h[8..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

/// The kind and payload length a header announces.
pub fn parse_header(h: &[u8; HEADER]) -> Result<(Kind, usize), String> {
    if &h[..4] != MAGIC || h[5..8] != [0, 0, 0] {
        return Err("not a hand-over frame".into());
    }
    let kind = Kind::from_u8(h[4]).ok_or_else(|| format!("unknown frame kind {}", h[4]))?;
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(format!("frame of {len} bytes is too large"));
    }
    Ok((kind, len))
}

/// One `bind` handed over: its spelling, the address bound, and how many sockets (one per old
/// worker) follow among the frame's descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindOut {
    pub conf: String,
    pub addr: SocketAddr,
    pub sockets: usize,
}

/// A server's state as the old process knew it, so the new one starts from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOut {
    pub service: String,
    pub name: String,
    pub addr: SocketAddr,
    pub up: bool,
    pub admin: u8,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub binds: Vec<BindOut>,
    /// The admin listener is the last descriptor.
    pub admin: bool,
    pub servers: Vec<ServerOut>,
}

impl Hello {
    /// Descriptors the frame carries.
    pub fn fds(&self) -> usize {
        self.binds.iter().map(|b| b.sockets).sum::<usize>() + usize::from(self.admin)
    }
}

/// A session's fields other than its descriptors (see `session::Moving`), whose order in the
/// frame is: client, backend, then each flow's pipe (read, write) if it has one (up first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOut {
    pub meta: MovedMeta,
    pub up: FlowOut,
    pub down: FlowOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowOut {
    pub delivered: u64,
    pub src_eof: bool,
    pub dst_shut: bool,
    pub bulk: bool,
    pub held: HeldOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeldOut {
    Nothing,
    /// Two descriptors follow; `pending` bytes are in the pipe.
    Pipe {
        pending: u64,
    },
    Bytes(Vec<u8>),
}

impl FlowOut {
    pub fn of(f: &FlowState) -> FlowOut {
        let held = match &f.held {
            Held::Nothing => HeldOut::Nothing,
            Held::Pipe { pending, .. } => HeldOut::Pipe { pending: *pending as u64 },
            Held::Bytes(b) => HeldOut::Bytes(b.clone()),
        };
        FlowOut { delivered: f.delivered, src_eof: f.src_eof, dst_shut: f.dst_shut, bulk: f.bulk, held }
    }

    fn fds(&self) -> usize {
        if matches!(self.held, HeldOut::Pipe { .. }) {
            2
        } else {
            0
        }
    }
}

impl SessionOut {
    pub fn fds(&self) -> usize {
        2 + self.up.fds() + self.down.fds()
    }
}

// ---- encoding ----

#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn ms(&mut self, d: Duration) {
        self.u64(d.as_millis().min(u128::from(u64::MAX)) as u64);
    }

    pub fn hello(&mut self, h: &Hello) {
        self.u32(h.binds.len() as u32);
        for b in &h.binds {
            self.str(&b.conf);
            self.str(&b.addr.to_string());
            self.u32(b.sockets as u32);
        }
        self.u8(u8::from(h.admin));
        self.u32(h.servers.len() as u32);
        for s in &h.servers {
            self.str(&s.service);
            self.str(&s.name);
            self.str(&s.addr.to_string());
            self.u8(u8::from(s.up));
            self.u8(s.admin);
            self.u32(s.weight);
        }
    }

    pub fn sessions(&mut self, list: &[SessionOut]) {
        self.u32(list.len() as u32);
        for SessionOut { meta: s, up, down } in list {
            self.str(&s.client_addr.to_string());
            self.str(&s.service);
            self.str(&s.server);
            self.str(&s.server_addr.to_string());
            self.ms(s.age);
            self.ms(s.idle);
            match s.connect_time {
                Some(d) => {
                    self.u8(1);
                    self.ms(d);
                }
                None => self.u8(0),
            }
            self.u8(match s.settings.splice {
                Splice::Auto => 0,
                Splice::Always => 1,
                Splice::Off => 2,
            });
            let t = s.settings.timeouts;
            for d in [t.connect, t.idle, t.fin] {
                self.ms(d);
            }
            self.u32(s.settings.retries);
            for f in [up, down] {
                self.u64(f.delivered);
                self.u8(u8::from(f.src_eof) | u8::from(f.dst_shut) << 1 | u8::from(f.bulk) << 2);
                match &f.held {
                    HeldOut::Nothing => self.u8(0),
                    HeldOut::Pipe { pending } => {
                        self.u8(1);
                        self.u64(*pending);
                    }
                    HeldOut::Bytes(b) => {
                        self.u8(2);
                        self.bytes(b);
                    }
                }
            }
        }
    }

    pub fn text(&mut self, s: &str) {
        self.str(s);
    }
}

// ---- decoding ----

pub struct Reader<'a> {
    buf: &'a [u8],
}

type Res<T> = Result<T, String>;

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        if self.buf.len() < n {
            return Err(format!("truncated: {n} bytes wanted, {} left", self.buf.len()));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self, max: usize) -> Res<&'a [u8]> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(format!("a field of {n} bytes (at most {max})"));
        }
        self.take(n)
    }
    fn str(&mut self) -> Res<&'a str> {
        std::str::from_utf8(self.bytes(MAX_STR)?).map_err(|_| "a string is not UTF-8".to_string())
    }
    fn addr(&mut self) -> Res<SocketAddr> {
        let s = self.str()?;
        s.parse().map_err(|_| format!("bad address {s:?}"))
    }
    fn ms(&mut self) -> Res<Duration> {
        Ok(Duration::from_millis(self.u64()?))
    }
    /// A count of items each at least `min_size` bytes long: never more than the bytes left
    /// could hold, so a forged count cannot make us allocate.
    fn count(&mut self, min_size: usize) -> Res<usize> {
        let n = self.u32()? as usize;
        if n > self.buf.len() / min_size {
            return Err(format!("{n} items cannot fit in {} bytes", self.buf.len()));
        }
        Ok(n)
    }
    fn end(&self) -> Res<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!("{} stray bytes at the end", self.buf.len()))
        }
    }

    pub fn hello(mut self, fds: usize) -> Res<Hello> {
        let n = self.count(12)?;
        let mut binds = Vec::with_capacity(n);
        for _ in 0..n {
            let conf = self.str()?.to_string();
            let addr = self.addr()?;
            let sockets = self.u32()? as usize;
            if sockets == 0 || sockets > 1024 {
                return Err(format!("{sockets} sockets for one listener"));
            }
            binds.push(BindOut { conf, addr, sockets });
        }
        let admin = self.u8()? != 0;
        let n = self.count(18)?;
        let mut servers = Vec::with_capacity(n);
        for _ in 0..n {
            servers.push(ServerOut {
                service: self.str()?.to_string(),
                name: self.str()?.to_string(),
                addr: self.addr()?,
                up: self.u8()? != 0,
                admin: self.u8()?,
                weight: self.u32()?,
            });
        }
        self.end()?;
        let hello = Hello { binds, admin, servers };
        if hello.fds() != fds {
            return Err(format!("{fds} descriptors for {} listed", hello.fds()));
        }
        Ok(hello)
    }

    pub fn sessions(mut self, fds: usize) -> Res<Vec<SessionOut>> {
        let n = self.count(80)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let client_addr = self.addr()?;
            let service = self.str()?.to_string();
            let server = self.str()?.to_string();
            let server_addr = self.addr()?;
            let age = self.ms()?;
            let idle = self.ms()?;
            let connect_time = match self.u8()? {
                0 => None,
                1 => Some(self.ms()?),
                b => return Err(format!("bad connect-time tag {b}")),
            };
            let splice = match self.u8()? {
                0 => Splice::Auto,
                1 => Splice::Always,
                2 => Splice::Off,
                b => return Err(format!("bad splice mode {b}")),
            };
            // A moving session is past any handshake: its handshake timeout does not travel.
            let (t_connect, t_idle, t_fin) = (self.ms()?, self.ms()?, self.ms()?);
            let timeouts = Timeouts { connect: t_connect, idle: t_idle, fin: t_fin, ..Timeouts::default() };
            let settings = Settings { splice, timeouts, retries: self.u32()? };
            let mut flows = [None, None];
            for f in &mut flows {
                let delivered = self.u64()?;
                let bits = self.u8()?;
                let held = match self.u8()? {
                    0 => HeldOut::Nothing,
                    1 => HeldOut::Pipe { pending: self.u64()? },
                    2 => HeldOut::Bytes(self.bytes(crate::relay::BUF_SIZE)?.to_vec()),
                    b => return Err(format!("bad flow tag {b}")),
                };
                *f = Some(FlowOut {
                    delivered,
                    src_eof: bits & 1 != 0,
                    dst_shut: bits & 2 != 0,
                    bulk: bits & 4 != 0,
                    held,
                });
            }
            let [Some(up), Some(down)] = flows else { unreachable!("both flows were read") };
            let meta = MovedMeta { client_addr, service, server, server_addr, age, idle, connect_time, settings };
            out.push(SessionOut { meta, up, down });
        }
        self.end()?;
        let wanted: usize = out.iter().map(SessionOut::fds).sum();
        if wanted != fds {
            return Err(format!("{fds} descriptors for {wanted} listed"));
        }
        Ok(out)
    }

    pub fn text(mut self) -> Res<String> {
        let s = self.str()?.to_string();
        self.end()?;
        Ok(s)
    }
}

/// Decodes a payload of any kind (the fuzz target's entry point). What decodes, encodes back
/// to bytes that decode to the same value.
pub fn check(kind: u8, payload: &[u8], fds: usize) -> Res<()> {
    let r = Reader::new(payload);
    match Kind::from_u8(kind).ok_or("unknown kind")? {
        Kind::Hello => {
            let h = r.hello(fds)?;
            let mut w = Writer::default();
            w.hello(&h);
            assert_eq!(Reader::new(&w.0).hello(fds).as_ref(), Ok(&h), "hello round trip");
        }
        Kind::Sessions => {
            let list = r.sessions(fds)?;
            let mut w = Writer::default();
            w.sessions(&list);
            assert_eq!(Reader::new(&w.0).sessions(fds).as_ref(), Ok(&list), "sessions round trip");
        }
        Kind::Failed => {
            r.text()?;
        }
        Kind::Ready | Kind::Done => r.end()?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(held: HeldOut) -> FlowOut {
        FlowOut { delivered: 7, src_eof: true, dst_shut: false, bulk: true, held }
    }

    #[test]
    fn frames_round_trip() {
        let hello = Hello {
            binds: vec![BindOut { conf: "*:80".into(), addr: "[::]:80".parse().unwrap(), sockets: 2 }],
            admin: true,
            servers: vec![ServerOut {
                service: "web".into(),
                name: "a".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                up: false,
                admin: 1,
                weight: 3,
            }],
        };
        let mut w = Writer::default();
        w.hello(&hello);
        assert_eq!(Reader::new(&w.0).hello(3), Ok(hello));
        assert!(Reader::new(&w.0).hello(2).is_err(), "descriptor count checked");

        let meta = MovedMeta {
            client_addr: "127.0.0.1:5".parse().unwrap(),
            service: "web".into(),
            server: "a".into(),
            server_addr: "127.0.0.1:1".parse().unwrap(),
            age: Duration::from_millis(1234),
            idle: Duration::from_millis(5),
            connect_time: Some(Duration::from_millis(2)),
            settings: Settings { splice: Splice::Off, timeouts: Timeouts::default(), retries: 2 },
        };
        let s =
            SessionOut { meta, up: flow(HeldOut::Pipe { pending: 99 }), down: flow(HeldOut::Bytes(b"abc".to_vec())) };
        let mut w = Writer::default();
        w.sessions(std::slice::from_ref(&s));
        let len = w.0.len();
        let back = Reader::new(&w.0).sessions(4).unwrap();
        assert_eq!(back, vec![s]);
        assert_eq!(parse_header(&header(Kind::Sessions, len)), Ok((Kind::Sessions, len)));
    }

    #[test]
    fn the_fuzz_seeds_are_valid_frames() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/upgrade_frame");
        for seed in ["hello", "sessions", "failed", "ready"] {
            let data = std::fs::read(dir.join(seed)).unwrap();
            assert_eq!(check(data[0], &data[2..], usize::from(data[1])), Ok(()), "seed {seed}");
        }
    }

    #[test]
    fn garbage_never_panics_and_counts_cannot_allocate() {
        assert!(check(4, &[0xff, 0xff, 0xff, 0xff], 0).is_err(), "4 billion sessions in 0 bytes");
        let mut seed = 42u64;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 56) as u8
                })
                .collect();
            for kind in 0..7 {
                let _ = check(kind, &bytes, len % 5);
            }
        }
    }
}
