//! An admin request's bytes → what routing needs, or the status to refuse it with. A pure
//! function of the buffer read so far, so a fuzzer can reach it without a server.

/// A request (headers and body) larger than this is refused.
pub const MAX_REQUEST: usize = 8 * 1024;
pub const MAX_HEADERS: usize = 32;

/// A whole request, as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    /// What follows the `?`, if anything (empty otherwise).
    pub query: &'a str,
    pub authorization: Option<&'a [u8]>,
    /// Bytes of the request line and headers, blank line included.
    pub head_len: usize,
    /// The body's length (`Content-Length`); its bytes are in the buffer, after the head.
    pub body_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedHead<'a> {
    /// More bytes could still make a request: read on.
    Incomplete,
    /// Answer with this status and plain-text message, then close.
    Refuse(u16, String),
    /// Head and body are whole, and within `MAX_REQUEST` together.
    Request(Head<'a>),
}

/// Parses the bytes received so far. `Incomplete` only while `buf` is shorter than
/// `MAX_REQUEST`; never a `Request` whose head and body together exceed it.
pub fn parse_head(buf: &[u8]) -> ParsedHead<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_REQUEST {
                ParsedHead::Refuse(431, "request headers too large".to_string())
            } else {
                ParsedHead::Incomplete
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return ParsedHead::Refuse(431, format!("more than {MAX_HEADERS} headers"))
        }
        Err(e) => return ParsedHead::Refuse(400, format!("malformed request: {e}")),
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return ParsedHead::Refuse(400, "malformed request line".to_string());
    };
    let content_length = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok()));
    let body_len = match content_length {
        None => 0,
        Some(Some(n)) => n,
        Some(None) => return ParsedHead::Refuse(400, "bad Content-Length".to_string()),
    };
    if req.headers.iter().any(|h| h.name.eq_ignore_ascii_case("transfer-encoding")) {
        return ParsedHead::Refuse(400, "chunked request bodies are not accepted".to_string());
    }
    if head_len.saturating_add(body_len) > MAX_REQUEST {
        return ParsedHead::Refuse(413, "request body too large".to_string());
    }
    // Wait for the body (unused) so closing does not reset the client before it reads us.
    if buf.len() < head_len + body_len {
        return ParsedHead::Incomplete;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let authorization = req.headers.iter().find(|h| h.name.eq_ignore_ascii_case("authorization")).map(|h| h.value);
    ParsedHead::Request(Head { method, path, query, authorization, head_len, body_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(buf: &[u8]) -> Option<u16> {
        match parse_head(buf) {
            ParsedHead::Refuse(s, _) => Some(s),
            _ => None,
        }
    }

    #[test]
    fn a_whole_request_with_query_token_and_body() {
        let buf = b"POST /servers/web/a/drain?x=1 HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 3\r\n\r\nabc";
        let ParsedHead::Request(h) = parse_head(buf) else { panic!("{:?}", parse_head(buf)) };
        assert_eq!((h.method, h.path, h.authorization), ("POST", "/servers/web/a/drain", Some(&b"Bearer t"[..])));
        assert_eq!(h.query, "x=1");
        assert_eq!((h.head_len + h.body_len, h.body_len), (buf.len(), 3));
    }

    #[test]
    fn waits_for_the_head_and_then_the_body() {
        assert_eq!(parse_head(b"GET /sta"), ParsedHead::Incomplete);
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab"), ParsedHead::Incomplete);
    }

    #[test]
    fn refusals() {
        assert_eq!(status(b"\x16\x03\x01\x02\x00garbage\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET\r\n\r\n"), Some(400));
        assert_eq!(status(&[b'a'; MAX_REQUEST]), Some(431), "8 KiB without a whole request line");
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST));
        assert_eq!(status(big.as_bytes()), Some(431), "partial head of 8 KiB");
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_REQUEST));
        assert_eq!(status(long.as_bytes()), Some(413), "a whole head over 8 KiB is never accepted");
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), Some(431));
        assert_eq!(status(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Some(400));
        assert_eq!(status(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Some(400));
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n"), Some(413));
    }
}
