//! Reading the server name a client asks for out of its ClientHello, without terminating TLS:
//! what SNI passthrough routing needs. The bytes are only looked at (the worker peeks them off
//! the socket), so they reach the server untouched.
//!
//! A ClientHello may span several TCP segments and several TLS records (a big one, with
//! post-quantum key shares, does not fit one segment; a client may also fragment on purpose),
//! so the records are reassembled first. What this accepts is bounded by [`MAX_HELLO`]: a
//! client that needs more is refused, never buffered without end.

/// The most bytes a client may send before its ClientHello is complete (records and their
/// headers). 16 KiB: a full TLS record; real ClientHellos take 200 bytes to 2 KiB.
pub const MAX_HELLO: usize = 16 * 1024;

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// Why the bytes are not a ClientHello shunt can route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloError {
    /// Not a TLS handshake at all (plain HTTP, SSLv2, garbage).
    NotTls,
    /// A TLS record, but a broken ClientHello (the message says what is wrong).
    Malformed(&'static str),
    /// The ClientHello does not end within [`MAX_HELLO`] bytes.
    TooLarge,
}

impl std::fmt::Display for HelloError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HelloError::NotTls => write!(f, "not a TLS ClientHello"),
            HelloError::Malformed(what) => write!(f, "malformed ClientHello: {what}"),
            HelloError::TooLarge => write!(f, "ClientHello longer than {MAX_HELLO} bytes"),
        }
    }
}

/// The server name in the ClientHello that starts `bytes`: `Ok(None)` while more bytes are
/// needed, `Ok(Some(None))` for a complete ClientHello without one, `Ok(Some(Some(name)))`
/// with the name in lower case. Looks at most at [`MAX_HELLO`] bytes.
pub fn server_name(bytes: &[u8]) -> Result<Option<Option<String>>, HelloError> {
    let bytes = &bytes[..bytes.len().min(MAX_HELLO)];
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        // The handshake message is complete: parse it (bytes after it are not our business).
        if message.len() >= 4 {
            let len = u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if 4 + len > MAX_HELLO {
                return Err(HelloError::TooLarge);
            }
            if message.len() >= 4 + len {
                return client_hello_sni(&message[4..4 + len]).map(Some);
            }
        }
        let Some(header) = rest.get(..5) else {
            return incomplete(bytes);
        };
        if header[0] != RECORD_HANDSHAKE || header[1] != 3 {
            return Err(HelloError::NotTls);
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > 16 * 1024 {
            return Err(HelloError::Malformed("record length"));
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return incomplete(bytes);
        };
        message.extend_from_slice(fragment);
        if message[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(HelloError::Malformed("the first handshake message is not a ClientHello"));
        }
        rest = &rest[5 + len..];
    }
}

/// More bytes are needed: fine below the bound, refused at it.
fn incomplete(bytes: &[u8]) -> Result<Option<Option<String>>, HelloError> {
    match bytes.len() >= MAX_HELLO {
        true => Err(HelloError::TooLarge),
        false => Ok(None),
    }
}

/// A cursor over a ClientHello's body; every read checks its bounds.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u8(what)?;
        self.take(usize::from(n), what)
    }
    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], HelloError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

/// The host name in a ClientHello body (RFC 8446 4.1.2, RFC 6066 3).
fn client_hello_sni(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(body);
    r.take(2, "version")?;
    r.take(32, "random")?;
    if r.vec8("session id")?.len() > 32 {
        return Err(HelloError::Malformed("session id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher suites"));
    }
    if r.vec8("compression methods")?.is_empty() {
        return Err(HelloError::Malformed("compression methods"));
    }
    if r.0.is_empty() {
        return Ok(None); // no extensions at all (an old client)
    }
    let mut extensions = Reader(r.vec16("extensions")?);
    let mut name = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16("extension type")?;
        let data = extensions.vec16("extension")?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        if name.is_some() {
            return Err(HelloError::Malformed("two server_name extensions"));
        }
        name = server_name_list(data)?;
    }
    Ok(name)
}

/// The host name of a `server_name` extension; other name types are skipped.
fn server_name_list(data: &[u8]) -> Result<Option<String>, HelloError> {
    let mut ext = Reader(data);
    let mut list = Reader(ext.vec16("server name list")?);
    if !ext.0.is_empty() {
        return Err(HelloError::Malformed("bytes after the server name list"));
    }
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8("server name type")?;
        let name = list.vec16("server name")?;
        if kind != NAME_TYPE_HOST {
            continue;
        }
        if host.is_some() {
            return Err(HelloError::Malformed("two host names"));
        }
        host = Some(host_name(name)?);
    }
    Ok(host)
}

/// A DNS host name as routing compares it: ASCII letters, digits, `-`, `_` and dots, 1 to 255
/// bytes, lower-cased; a trailing dot is dropped. Anything else is refused, so a log line or a
/// route never sees control bytes.
fn host_name(name: &[u8]) -> Result<String, HelloError> {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let valid = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > 255 || !name.iter().all(valid) {
        return Err(HelloError::Malformed("server name is not a host name"));
    }
    Ok(String::from_utf8_lossy(name).to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
