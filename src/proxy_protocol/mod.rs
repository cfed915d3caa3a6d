//! The PROXY protocol header shunt sends a server before a session's first byte
//! (`proxy_protocol v1|v2`), so the server sees the client's address and port rather than
//! shunt's; and the header of health probes, which carry no client (`PROXY UNKNOWN` in v1, a
//! `LOCAL` command in v2); and, in [`parse`], the header clients of an `accept_proxy` bind send
//! shunt. Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.

use std::net::{IpAddr, SocketAddr};

pub mod parse;

/// `proxy_protocol v1|v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// v2's fixed first twelve bytes.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a session from `client` that reached shunt at `local` (IPv4-mapped addresses
/// are sent as the IPv4 addresses they are).
pub fn header(version: Version, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = (unmapped(client), unmapped(local));
    match version {
        Version::V1 => match (client.ip(), local.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => format!("PROXY TCP4 {s} {d} {} {}\r\n", client.port(), local.port()),
            (IpAddr::V6(s), IpAddr::V6(d)) => format!("PROXY TCP6 {s} {d} {} {}\r\n", client.port(), local.port()),
            // Families that differ cannot be written as one line: the spec's answer is UNKNOWN.
            _ => "PROXY UNKNOWN\r\n".to_string(),
        }
        .into_bytes(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            match (client.ip(), local.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out.extend_from_slice(&[0x21, 0x11, 0, 12]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    out.extend_from_slice(&[0x21, 0x21, 0, 36]);
                    out.extend_from_slice(&s.octets());
                    out.extend_from_slice(&d.octets());
                }
                _ => {
                    out.extend_from_slice(&[0x21, 0x00, 0, 0]);
                    return out;
                }
            }
            out.extend_from_slice(&client.port().to_be_bytes());
            out.extend_from_slice(&local.port().to_be_bytes());
            out
        }
    }
}

/// The header of a health probe: no client to speak for.
pub fn local_header(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            out
        }
    }
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, |v4| SocketAddr::new(IpAddr::V4(v4), a.port())),
        IpAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines_for_each_family() {
        let h = header(Version::V1, addr("192.0.2.7:51000"), addr("10.0.0.1:443"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n");
        let h = header(Version::V1, addr("[2001:db8::7]:51000"), addr("[2001:db8::1]:443"));
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n");
        // A dual-stack listener's IPv4 client, local address mapped too.
        let h = header(Version::V1, addr("[::ffff:192.0.2.7]:5"), addr("[::ffff:10.0.0.1]:80"));
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 10.0.0.1 5 80\r\n");
        assert_eq!(header(Version::V1, addr("192.0.2.7:5"), addr("[::1]:80")), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_binary_headers() {
        let h = header(Version::V2, addr("192.0.2.7:51000"), addr("10.0.0.1:443"));
        assert_eq!(&h[..12], &V2_SIGNATURE);
        assert_eq!(&h[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&h[16..], &[192, 0, 2, 7, 10, 0, 0, 1, 0xc7, 0x38, 0x01, 0xbb]);
        let h = header(Version::V2, addr("[2001:db8::7]:1"), addr("[::1]:2"));
        assert_eq!((h.len(), &h[12..16]), (16 + 36, &[0x21, 0x21, 0, 36][..]));
        assert_eq!(&h[h.len() - 4..], &[0, 1, 0, 2]);
    }

    #[test]
    fn probes_send_local_or_unknown() {
        assert_eq!(local_header(Version::V1), b"PROXY UNKNOWN\r\n");
        let h = local_header(Version::V2);
        assert_eq!((&h[..12], &h[12..]), (&V2_SIGNATURE[..], &[0x20, 0, 0, 0][..]));
    }
}
