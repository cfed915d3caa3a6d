//! The one HTTP client of the tests (HTTP/1.0 with `Connection: close`, read to EOF, so no
//! framing to decode), and readers for what shunt's admin endpoint answers: `/status` JSON and
//! `/metrics` samples.

use super::clients::{read_all, IO_TIMEOUT};
use super::wait::resolve;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

/// `GET path` over a fresh connection: (status, body). Panics on any I/O or parse error.
pub fn http_get(addr: impl ToSocketAddrs, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], b"").unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// `POST path` with `body` (and an optional bearer token): (status, body).
pub fn http_post(addr: impl ToSocketAddrs, path: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
    http_request(addr, "POST", path, &headers, body).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// A minimal HTTP/1.0-style request with `Connection: close`: the answer is read to EOF, so no
/// Content-Length or chunked decoding is needed (a server must not send chunked to HTTP/1.0).
pub fn http_request(
    addr: impl ToSocketAddrs,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, String)> {
    let addr = resolve(addr);
    let mut req =
        format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    parse_http_response(&http_exchange(addr, &raw)?)
}

/// Sends `request` exactly as given (malformed ones included) and reads the answer to EOF:
/// (status, body), or (0, "") when the server closed or reset without an HTTP answer.
pub fn http_raw(addr: impl ToSocketAddrs, request: &[u8]) -> (u16, String) {
    match http_exchange(resolve(addr), request) {
        Ok(resp) if resp.is_empty() => (0, String::new()),
        Ok(resp) => parse_http_response(&resp).unwrap_or_else(|e| panic!("answer to a raw request: {e}")),
        Err(_) => (0, String::new()),
    }
}

/// Sends `GET / HTTP/1.0` and returns the whole answer as text, for backends that reply with
/// raw bytes rather than HTTP (the harness's name and health servers).
pub fn fetch(addr: impl ToSocketAddrs) -> String {
    let addr = resolve(addr);
    let mut c = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    String::from_utf8_lossy(&read_all(&mut c)).into_owned()
}

/// `GET path` with `limit` on the connect and on each read and write: (status, body), or the
/// error (a refused or reset connection, a timeout, an answer that is not HTTP).
pub fn http_get_timeout(
    addr: std::net::SocketAddr,
    path: &str,
    limit: std::time::Duration,
) -> io::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    parse_http_response(&http_exchange_within(addr, req.as_bytes(), limit)?)
}

fn http_exchange(addr: std::net::SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
    http_exchange_within(addr, request, IO_TIMEOUT)
}

fn http_exchange_within(addr: std::net::SocketAddr, request: &[u8], limit: std::time::Duration) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    s.write_all(request)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    Ok(resp)
}

fn parse_http_response(resp: &[u8]) -> io::Result<(u16, String)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers in response"))?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("bad status line in {head:?}")))?;
    let body = String::from_utf8_lossy(&resp[split + 4..]).into_owned();
    Ok((status, body))
}

// ------------------------------------------------------------------------------------------------
// The admin endpoint's answers
// ------------------------------------------------------------------------------------------------

/// `GET /status` from the admin endpoint at `admin`, parsed; panics unless it is 200 and JSON.
pub fn status_json(admin: impl ToSocketAddrs) -> serde_json::Value {
    let (code, body) = http_get(admin, "/status");
    assert_eq!(code, 200, "/status: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
}

/// The value of the sample `key` (`name{labels}` exactly as printed) in a /metrics document.
pub fn metric_in(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(key).filter(|r| r.starts_with(' ')).and_then(|r| r.trim().parse().ok()))
}

/// [`metric_in`], panicking with the document when the sample is missing.
pub fn metric(text: &str, key: &str) -> f64 {
    metric_in(text, key).unwrap_or_else(|| panic!("no sample {key} in:\n{text}"))
}
