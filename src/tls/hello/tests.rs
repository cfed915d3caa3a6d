//! The ClientHello reader on real ClientHellos (made by rustls' client) and on their broken,
//! cut and re-fragmented forms.

use super::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::sync::Arc;

/// The first flight of a rustls client asking for `name` (one record holding the ClientHello).
fn hello(name: &str) -> Vec<u8> {
    let config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = ClientConnection::new(Arc::new(config), ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// The same handshake message in records of at most `size` bytes each.
fn refragment(record: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in record[5..].chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[test]
fn a_real_client_hello_yields_its_name_in_lower_case() {
    assert_eq!(server_name(&hello("API.Example.com")), Ok(Some(Some("api.example.com".into()))));
}

#[test]
fn every_prefix_asks_for_more_and_bytes_after_it_are_ignored() {
    let h = hello("a.test");
    for cut in 0..h.len() {
        assert_eq!(server_name(&h[..cut]), Ok(None), "cut at {cut}");
    }
    let mut more = h.clone();
    more.extend_from_slice(b"\x17\x03\x03\x00\x05hello and application data");
    assert_eq!(server_name(&more), Ok(Some(Some("a.test".into()))));
}

#[test]
fn a_client_hello_spread_over_many_records_is_reassembled() {
    let h = hello("split.example.com");
    for size in [1, 7, 100, 512] {
        let split = refragment(&h, size);
        assert_eq!(server_name(&split), Ok(Some(Some("split.example.com".into()))), "records of {size}");
        assert_eq!(server_name(&split[..split.len() - 1]), Ok(None), "records of {size}, one byte short");
    }
}

#[test]
fn an_address_is_no_server_name() {
    // RFC 6066: clients send no SNI for IP literals.
    assert_eq!(server_name(&hello("127.0.0.1")), Ok(Some(None)));
}

#[test]
fn bytes_that_are_not_tls_are_refused_at_once() {
    assert_eq!(server_name(b"GET / HTTP/1.1\r\n"), Err(HelloError::NotTls));
    assert_eq!(server_name(b"\x80\x2e\x01\x03\x01"), Err(HelloError::NotTls), "an SSLv2 hello");
    // Application data before any handshake.
    assert_eq!(server_name(b"\x17\x03\x03\x00\x01x"), Err(HelloError::NotTls));
    // A handshake record that holds another message first (a ServerHello).
    assert!(matches!(server_name(b"\x16\x03\x03\x00\x04\x02\x00\x00\x00"), Err(HelloError::Malformed(_))));
}

#[test]
fn what_does_not_end_within_the_bound_is_refused() {
    // A ClientHello that says it is longer than the bound.
    assert_eq!(server_name(b"\x16\x03\x01\x00\x04\x01\x01\x00\x00"), Err(HelloError::TooLarge));
    // Records that never complete the message, up to the bound.
    let mut h = hello("a.test");
    h.truncate(h.len() - 1);
    let mut long = refragment(&h, 1);
    assert!(long.len() < MAX_HELLO);
    assert_eq!(server_name(&long), Ok(None));
    long.resize(MAX_HELLO, 0);
    assert!(server_name(&long).is_err());
}

#[test]
fn a_server_name_with_bytes_no_host_name_has_is_refused() {
    let h = hello("aaaa.test");
    let at = h.windows(9).position(|w| w == b"aaaa.test").unwrap();
    for bad in [b'\n', 0, b' ', 0xc3] {
        let mut h = h.clone();
        h[at + 1] = bad;
        assert_eq!(server_name(&h), Err(HelloError::Malformed("server name is not a host name")), "byte {bad:#x}");
    }
}

#[test]
fn broken_lengths_inside_the_hello_are_errors_not_panics() {
    let h = hello("b.test");
    // Every byte of the body set to every extreme: a length may point anywhere.
    for i in 9..h.len() {
        for v in [0u8, 1, 0x7f, 0xff] {
            let mut h = h.clone();
            h[i] = v;
            let _ = server_name(&h);
        }
    }
}
