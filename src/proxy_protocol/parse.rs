//! Reading the PROXY header a client of an `accept_proxy` bind sends first (v1 text or v2
//! binary): what the worker peeks off the socket until the header is whole, then consumes
//! exactly its length, so the bytes after it (a ClientHello, the client's data) stay for what
//! comes next.
//!
//! The bounds are the spec's: a v1 line is at most 107 bytes with its CRLF. A v2 header may be
//! up to 64 KiB by its length field; shunt takes [`MAX_HEADER`], ample for the TLVs load
//! balancers send (AWS, GCP and Azure add a few dozen bytes), and refuses longer ones rather
//! than buffer them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::V2_SIGNATURE;

/// The longest header accepted (either version), and the most bytes looked at.
pub const MAX_HEADER: usize = 1024;
/// The spec's bound on a v1 line, CRLF included.
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";

/// A whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length: the bytes to consume before the client's own.
    pub len: usize,
    /// The client and the address it connected to, as carried; `None` for v1 `UNKNOWN`, a v2
    /// `LOCAL` command (the sender's own health check) or an address family shunt does not
    /// route by (UNIX, unspecified): the connection's own addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Why the bytes are not a header shunt accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Neither signature: the client did not start with a PROXY header.
    NotProxy,
    /// A PROXY header, but broken (the message says where).
    Malformed(&'static str),
    /// Longer than the bound (a v1 line without its CRLF within 107 bytes; a v2 length over
    /// [`MAX_HEADER`]).
    TooLong,
}

impl HeaderError {
    /// The reason label in metrics (see `REASONS`).
    pub fn reason(self) -> &'static str {
        match self {
            HeaderError::NotProxy | HeaderError::Malformed(_) => "malformed",
            HeaderError::TooLong => "too_long",
        }
    }
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::NotProxy => write!(f, "no PROXY header"),
            HeaderError::Malformed(what) => write!(f, "malformed PROXY header: {what}"),
            HeaderError::TooLong => write!(f, "PROXY header longer than its bound"),
        }
    }
}

/// Why an `accept_proxy` connection was closed before its header was whole, as counted in
/// `shunt_proxy_header_failures_total{reason}`.
pub const REASONS: [&str; 4] = ["timeout", "truncated", "malformed", "too_long"];

/// The header at the start of `bytes`: `Ok(None)` while more bytes are needed. Looks at most
/// at [`MAX_HEADER`] bytes, and decides a prefix the way it decides the whole.
pub fn parse(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let bytes = &bytes[..bytes.len().min(MAX_HEADER)];
    let (signature, read): (&[u8], Reader) = match bytes.first() {
        None => return Ok(None),
        Some(b'P') => (V1_PREFIX, v1),
        Some(b'\r') => (&V2_SIGNATURE, v2),
        Some(_) => return Err(HeaderError::NotProxy),
    };
    let seen = bytes.len().min(signature.len());
    if bytes[..seen] != signature[..seen] {
        return Err(HeaderError::NotProxy);
    }
    if seen < signature.len() {
        return Ok(None);
    }
    read(bytes)
}

type Reader = fn(&[u8]) -> Result<Option<Header>, HeaderError>;

/// `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or `PROXY UNKNOWN…\r\n`. Each byte is judged as
/// it comes (printable ASCII until the CRLF), so a prefix is decided the way the whole is.
fn v1(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let mut end = None;
    for (i, &b) in window.iter().enumerate() {
        match b {
            b'\r' if window.get(i + 1) == Some(&b'\n') => {
                end = Some(i);
                break;
            }
            b'\r' if i + 1 == window.len() => break,
            0x20..=0x7e => {}
            _ => return Err(HeaderError::Malformed("a byte that is not printable ASCII before the CRLF")),
        }
    }
    let Some(end) = end else {
        return if window.len() >= V1_MAX { Err(HeaderError::TooLong) } else { Ok(None) };
    };
    let line = std::str::from_utf8(&window[V1_PREFIX.len()..end]).expect("checked: printable ASCII");
    let len = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    let addresses = match fields.as_slice() {
        ["UNKNOWN", ..] => None,
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v6 = *family == "TCP6";
            let ip = |s: &str| -> Result<IpAddr, HeaderError> {
                let ip = match v6 {
                    false => s.parse::<Ipv4Addr>().map(IpAddr::V4),
                    true => s.parse::<Ipv6Addr>().map(IpAddr::V6),
                };
                ip.map_err(|_| HeaderError::Malformed("an address does not match its family"))
            };
            Some((SocketAddr::new(ip(src)?, port(sport)?), SocketAddr::new(ip(dst)?, port(dport)?)))
        }
        ["TCP4" | "TCP6", ..] => return Err(HeaderError::Malformed("a TCP line needs two addresses and two ports")),
        _ => return Err(HeaderError::Malformed("unknown protocol family")),
    };
    Ok(Some(Header { len, addresses }))
}

/// A decimal port as the spec writes it: digits only, no sign, no leading zero.
fn port(s: &str) -> Result<u16, HeaderError> {
    let plain =
        !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    plain.then(|| s.parse().ok()).flatten().ok_or(HeaderError::Malformed("a port is not a number from 0 to 65535"))
}

fn v2(bytes: &[u8]) -> Result<Option<Header>, HeaderError> {
    let Some(fixed) = bytes.get(..16) else {
        return Ok(None);
    };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return Err(HeaderError::Malformed("v2 signature with another version"));
    }
    let len = 16 + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_HEADER {
        return Err(HeaderError::TooLong);
    }
    let local = match command {
        0 => true,
        1 => false,
        _ => return Err(HeaderError::Malformed("unknown v2 command")),
    };
    let Some(body) = bytes.get(16..len) else {
        return Ok(None);
    };
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    let address_len = match family {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(HeaderError::Malformed("unknown v2 address family")),
    };
    if transport > 2 || (transport == 2 && !local) {
        return Err(HeaderError::Malformed("not a stream connection"));
    }
    let (address, tlvs) =
        body.split_at_checked(address_len).ok_or(HeaderError::Malformed("addresses longer than the header"))?;
    skip_tlvs(tlvs)?;
    let addresses = match (local, family, transport) {
        (false, 1, 1) => {
            let ip =
                |at: usize| IpAddr::V4(Ipv4Addr::new(address[at], address[at + 1], address[at + 2], address[at + 3]));
            Some((SocketAddr::new(ip(0), be16(address, 8)), SocketAddr::new(ip(4), be16(address, 10))))
        }
        (false, 2, 1) => {
            let ip =
                |at: usize| IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&address[at..at + 16]).expect("16 bytes")));
            Some((SocketAddr::new(ip(0), be16(address, 32)), SocketAddr::new(ip(16), be16(address, 34))))
        }
        _ => None,
    };
    Ok(Some(Header { len, addresses }))
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The TLVs after the addresses carry nothing shunt uses (ALPN, authority, SSL details, a
/// cloud's endpoint id): each is only checked to fit, so a length cannot point past the header.
fn skip_tlvs(mut rest: &[u8]) -> Result<(), HeaderError> {
    while !rest.is_empty() {
        let [_kind, hi, lo, ..] = *rest else {
            return Err(HeaderError::Malformed("a TLV cut short"));
        };
        let len = 3 + usize::from(u16::from_be_bytes([hi, lo]));
        rest = rest.get(len..).ok_or(HeaderError::Malformed("a TLV longer than the header"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{header, local_header, Version};
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn reads_what_header_writes_in_both_versions() {
        for (client, local) in [("192.0.2.7:51000", "10.0.0.1:443"), ("[2001:db8::7]:1", "[::1]:65535")] {
            for version in [Version::V1, Version::V2] {
                let mut bytes = header(version, addr(client), addr(local));
                let len = bytes.len();
                bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
                let want = Header { len, addresses: Some((addr(client), addr(local))) };
                assert_eq!(parse(&bytes), Ok(Some(want)), "{version:?} {client}");
                // Every prefix is undecided: the worker waits for more.
                for cut in 0..len {
                    assert_eq!(parse(&bytes[..cut]), Ok(None), "{version:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn local_and_unknown_carry_no_address() {
        for version in [Version::V1, Version::V2] {
            let bytes = local_header(version);
            assert_eq!(parse(&bytes), Ok(Some(Header { len: bytes.len(), addresses: None })));
        }
        let line = b"PROXY UNKNOWN ffff:f...f:ffff 127.0.0.1 65535 80\r\n";
        assert_eq!(parse(line), Ok(Some(Header { len: line.len(), addresses: None })));
    }

    #[test]
    fn v2_tlvs_are_skipped_and_checked_to_fit() {
        let mut h = header(Version::V2, addr("192.0.2.7:5"), addr("10.0.0.1:80"));
        let tlvs = [0x01, 0, 2, b'h', b'2', 0x04, 0, 0]; // ALPN "h2", an empty NOOP
        h[15] += tlvs.len() as u8;
        h.extend_from_slice(&tlvs);
        assert_eq!(parse(&h).map(|r| r.map(|h| h.len)), Ok(Some(h.len())));
        // A TLV whose length runs past the header's end.
        let last = h.len() - 2;
        h[last] = 9;
        assert_eq!(parse(&h), Err(HeaderError::Malformed("a TLV longer than the header")));
    }

    #[test]
    fn refusals() {
        let bad: &[(&[u8], HeaderError)] = &[
            (b"GET / HTTP/1.1\r\n", HeaderError::NotProxy),
            (b"\x16\x03\x01\x02\x00", HeaderError::NotProxy),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                HeaderError::Malformed("a byte that is not printable ASCII before the CRLF"),
            ),
            (b"PROXY \0", HeaderError::Malformed("a byte that is not printable ASCII before the CRLF")),
            (b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", HeaderError::Malformed("an address does not match its family")),
            (b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", HeaderError::Malformed("an address does not match its family")),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", HeaderError::Malformed("a port is not a number from 0 to 65535")),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", HeaderError::Malformed("a port is not a number from 0 to 65535")),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
                HeaderError::Malformed("a port is not a number from 0 to 65535"),
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
                HeaderError::Malformed("a TCP line needs two addresses and two ports"),
            ),
            (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", HeaderError::Malformed("unknown protocol family")),
        ];
        for (bytes, want) in bad {
            assert_eq!(parse(bytes), Err(*want), "{:?}", String::from_utf8_lossy(bytes));
        }
        // A v1 line that never ends within 107 bytes.
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert_eq!(parse(&long[..106]), Ok(None));
        assert_eq!(parse(&long), Err(HeaderError::TooLong));
        // v2: a length past the bound is refused before the bytes arrive.
        let mut h = local_header(Version::V2);
        h[14..16].copy_from_slice(&(MAX_HEADER as u16).to_be_bytes());
        assert_eq!(parse(&h), Err(HeaderError::TooLong));
        let mut h = local_header(Version::V2);
        h[12] = 0x11;
        assert_eq!(parse(&h), Err(HeaderError::Malformed("v2 signature with another version")));
        h[12] = 0x22;
        assert_eq!(parse(&h), Err(HeaderError::Malformed("unknown v2 command")));
        // PROXY over UDP (DGRAM) is not a TCP client.
        let mut h = header(Version::V2, addr("192.0.2.7:5"), addr("10.0.0.1:80"));
        h[13] = 0x12;
        assert_eq!(parse(&h), Err(HeaderError::Malformed("not a stream connection")));
        // A family whose addresses do not fit the length.
        h[13] = 0x21;
        assert_eq!(parse(&h), Err(HeaderError::Malformed("addresses longer than the header")));
    }
}
