//! The conf file's lexical layer: line numbers, comments, quoting and escapes, and the scalar
//! forms one token can take (numbers, durations, IP addresses, names, HTTP status/method/path).
//!
//! It knows no directive: which token is a duration, and what a line means, is `parse.rs`'s job.
//! `lex` never fails as a whole: a problem is attached to its line, so one bad line cannot hide
//! the errors on the lines after it. The scalar parsers return messages that say how to fix the
//! token; `parse.rs` adds the directive name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::{ListenAddr, StatusMatch};

type Res<T> = Result<T, String>;

/// One argument as written. Quoted tokens may hold any byte (`\xHH`), hence bytes, not a `String`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub bytes: Vec<u8>,
    /// Written inside `"..."`: a quoted `"service"` is data, never the keyword.
    pub quoted: bool,
}

impl Token {
    /// The token as text. Unquoted tokens always are text; quoted ones may not be.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Line {
    /// 1-based.
    pub number: usize,
    /// Not empty unless `error` is set.
    pub tokens: Vec<Token>,
    /// The first problem on the line; `tokens` then holds only the tokens before it (the last one
    /// maybe cut short), so the parser can still tell what the line was meant to be.
    pub error: Option<String>,
}

/// Every line that holds a directive or an error, in file order. Blank and comment lines are
/// dropped; a trailing `\r` is stripped so CRLF files read like LF files.
pub(super) fn lex(input: &[u8]) -> Vec<Line> {
    let mut lines = Vec::new();
    for (i, raw) in input.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let (tokens, error) = match std::str::from_utf8(raw) {
            Ok(text) => match tokenize(text) {
                Ok(tokens) => (tokens, None),
                Err((tokens, e)) => (tokens, Some(e)),
            },
            Err(e) => {
                let valid = e.valid_up_to();
                let prefix = std::str::from_utf8(&raw[..valid]).unwrap_or_default();
                let tokens = tokenize(prefix).unwrap_or_else(|(tokens, _)| tokens);
                (tokens, Some(not_utf8(raw, valid)))
            }
        };
        if !tokens.is_empty() || error.is_some() {
            lines.push(Line { number: i + 1, tokens, error });
        }
    }
    lines
}

fn not_utf8(raw: &[u8], valid: usize) -> String {
    let column = std::str::from_utf8(&raw[..valid]).map_or(valid, |s| s.chars().count()) + 1;
    format!(
        "line is not valid UTF-8 (byte 0x{:02x} at column {column}): save the file as UTF-8, \
         and write other bytes as \\xHH inside quotes",
        raw[valid]
    )
}

type Partial = (Vec<Token>, String);

fn tokenize(line: &str) -> Result<Vec<Token>, Partial> {
    let b = line.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i >= b.len() || b[i] == b'#' {
            return Ok(tokens);
        }
        let token = if b[i] == b'"' { quoted(line, &mut i) } else { bare(line, &mut i) };
        match token {
            Ok(t) => tokens.push(t),
            Err(e) => return Err((tokens, e)),
        }
    }
}

/// 1-based column in characters, for messages. `get` keeps a stray mid-character index harmless.
fn column(line: &str, i: usize) -> usize {
    line.get(..i).map_or(i, |s| s.chars().count()) + 1
}

/// Tab is the one control character a conf file may hold (as a separator or inside quotes).
fn is_control(c: u8) -> bool {
    (c < 0x20 && c != b'\t') || c == 0x7f
}

fn control(line: &str, i: usize, c: u8) -> String {
    format!(
        "control character 0x{c:02x} at column {}: remove it, \
         or write it as \\x{c:02x} inside quotes",
        column(line, i)
    )
}

fn bare(line: &str, i: &mut usize) -> Result<Token, String> {
    let b = line.as_bytes();
    let start = *i;
    while *i < b.len() && !matches!(b[*i], b' ' | b'\t' | b'#') {
        match b[*i] {
            b'"' => {
                return Err(format!(
                    "quote in the middle of a word at column {}: \
                     quote the whole argument, e.g. \"a b\"",
                    column(line, *i)
                ))
            }
            c if is_control(c) => return Err(control(line, *i, c)),
            _ => *i += 1,
        }
    }
    Ok(Token { bytes: b[start..*i].to_vec(), quoted: false })
}

fn quoted(line: &str, i: &mut usize) -> Result<Token, String> {
    let b = line.as_bytes();
    let open = *i;
    *i += 1;
    let mut out = Vec::new();
    loop {
        let Some(&c) = b.get(*i) else {
            return Err(format!("unterminated quote starting at column {}: add the closing \"", column(line, open)));
        };
        match c {
            b'"' => break,
            b'\\' => out.push(escape(line, i, open)?),
            c if is_control(c) => return Err(control(line, *i, c)),
            c => {
                out.push(c);
                *i += 1;
            }
        }
    }
    *i += 1;
    if let Some(&c) = b.get(*i) {
        if !matches!(c, b' ' | b'\t' | b'#') {
            return Err(format!(
                "text right after the closing quote at column {}: separate arguments with a space",
                column(line, *i)
            ));
        }
    }
    Ok(Token { bytes: out, quoted: true })
}

/// Decodes the escape whose backslash is at `*i` and moves `*i` past it.
fn escape(line: &str, i: &mut usize, open: usize) -> Result<u8, String> {
    let b = line.as_bytes();
    let at = *i;
    let Some(&c) = b.get(at + 1) else {
        return Err(format!(
            "unterminated quote starting at column {}: the line ends inside it, after a backslash",
            column(line, open)
        ));
    };
    *i = at + 2;
    Ok(match c {
        b'r' => b'\r',
        b'n' => b'\n',
        b't' => b'\t',
        b'\\' => b'\\',
        b'"' => b'"',
        b'x' => {
            let hex = |k: usize| b.get(k).and_then(|&h| (h as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(at + 2), hex(at + 3)) else {
                return Err(format!("bad escape at column {}: \\x needs two hex digits, e.g. \\x0d", column(line, at)));
            };
            *i = at + 4;
            (hi * 16 + lo) as u8
        }
        _ => {
            let ch = line.get(at + 1..).and_then(|s| s.chars().next()).unwrap_or('?');
            return Err(format!(
                "unknown escape \"\\{}\" at column {}: use \\r \\n \\t \\\\ \\\" or \\xHH",
                ch.escape_debug(),
                column(line, at)
            ));
        }
    })
}

// ---- scalar forms inside one token ----

/// Longer is a typo, and `Instant + Duration` panics on overflow in the event loop.
const MAX_DURATION_HOURS: u64 = 24 * 365;

/// RFC 9110 `token`: the method goes verbatim into the request line.
pub(super) fn method(s: &str) -> Res<String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !s.is_empty() && s.bytes().all(tchar) {
        Ok(s.to_string())
    } else {
        Err(format!("method {} is not an HTTP method, e.g. GET or HEAD", show(s)))
    }
}

/// The path goes verbatim into the request line, so a space or CR/LF would forge the request.
pub(super) fn http_path(s: &str) -> Res<String> {
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        Err(format!("path {} must start with / and hold only printable ASCII without spaces, e.g. /health", show(s)))
    }
}

/// `200` (exact, 100-599) or `2xx` (a class; `X` works too).
pub(super) fn status(s: &str) -> Res<StatusMatch> {
    match s.as_bytes() {
        [d @ b'1'..=b'5', x, y] if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') => {
            Ok(StatusMatch::Class(u16::from(d - b'0')))
        }
        b if !b.is_empty() && b.iter().all(u8::is_ascii_digit) => {
            Ok(StatusMatch::Exact(number("status ", s, 100, 599)? as u16))
        }
        _ => Err(format!("status {}: expected a code such as 200 or a class such as 2xx", show(s))),
    }
}

/// `*:PORT` is the dual-stack wildcard; every other form is a concrete IP, `0.0.0.0` and `[::]`
/// included. No host names: a listener must not depend on a resolver.
pub(super) fn listen_addr(s: &str) -> Res<ListenAddr> {
    let hint = "expected *:PORT, IP:PORT or [IPv6]:PORT, e.g. *:8080 or 127.0.0.1:8080";
    let Some((host, port)) = s.rsplit_once(':') else {
        if is_digits(s) {
            return Err(format!("address {s} has no host: write *:{s} to listen on every address", s = clip(s)));
        }
        return Err(format!("address {} has no port: {hint}", show(s)));
    };
    let port = number("port ", port, 0, 65535)? as u16;
    if host == "*" {
        return Ok(ListenAddr::Any(port));
    }
    match parse_ip(host) {
        Some(ip) => Ok(ListenAddr::Addr(SocketAddr::new(ip, port))),
        None => Err(not_ip(s, host, hint)),
    }
}

/// An IP literal: `Config::admin` has no form for `*`, and a name would need a resolver.
pub(super) fn admin_addr(s: &str) -> Res<SocketAddr> {
    let hint = "expected IP:PORT or [IPv6]:PORT, e.g. 127.0.0.1:9090";
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("address {} has no port: {hint}", show(s)));
    };
    let port = number("port ", port, 0, 65535)? as u16;
    parse_ip(host).map(|ip| SocketAddr::new(ip, port)).ok_or_else(|| not_ip(s, host, hint))
}

pub(super) fn parse_ip(host: &str) -> Option<IpAddr> {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        None => host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
    }
}

pub(super) fn not_ip(s: &str, host: &str, hint: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        return format!("address {}: IPv6 addresses need brackets, e.g. [::1]:8080", show(s));
    }
    format!("address {}: {} is not a valid address; {hint}", show(s), show(host))
}

/// Letters, digits and `-` per label. All-digit names are refused: getaddrinfo would read
/// `10.1` as the IPv4 address 10.0.0.1.
pub(super) fn is_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    h.len() <= 253 && h.split('.').all(label) && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Service and server names appear in logs, metrics labels and admin URLs: keep them plain.
pub(super) fn check_name(what: &str, s: &str) -> Res<()> {
    let ok = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if !s.is_empty() && s.bytes().all(ok) {
        Ok(())
    } else {
        Err(format!("{what} {} may only use letters, digits, '_', '.' and '-'", show(s)))
    }
}

/// A whole number in `min..=max`; `what` ("weight ") names it in the message.
pub(super) fn number(what: &str, s: &str, min: u64, max: u64) -> Res<u64> {
    if s.starts_with('-') && s.len() > 1 && is_digits(&s[1..]) {
        return Err(format!("{what}{} is negative: expected {min}-{max}", clip(s)));
    }
    if !is_digits(s) {
        return Err(format!("{what}{} is not a whole number: expected {min}-{max}", show(s)));
    }
    match s.parse::<u64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(format!("{what}{} is out of range {min}-{max}", clip(s))),
    }
}

/// `250ms`, `2s`, `5m`, `1h`. `what` ("interval ") names it in the message.
pub(super) fn duration(what: &str, s: &str, zero_ok: bool) -> Res<Duration> {
    if s.starts_with('-') {
        return Err(format!("{what}duration {} is negative: write e.g. 250ms or 2s", show(s)));
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = s.split_at(digits);
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => 0,
    };
    if digits == 0 || unit_ms == 0 {
        return Err(format!("{what}duration {}: expected a number followed by ms, s, m or h, e.g. 250ms", show(s)));
    }
    let ms = num
        .parse::<u64>()
        .ok()
        .and_then(|v| v.checked_mul(unit_ms))
        .filter(|&ms| ms <= MAX_DURATION_HOURS * 3_600_000)
        .ok_or_else(|| format!("{what}duration {} is too long: at most {MAX_DURATION_HOURS}h", clip(s)))?;
    if ms == 0 && !zero_ok {
        return Err(format!("{what}duration {} must be greater than zero", clip(s)));
    }
    Ok(Duration::from_millis(ms))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A token quoted and escaped for a message, cut short: it may be garbage.
pub(super) fn show(s: &str) -> String {
    format!("{:?}", clip(s))
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare_tok(s: &str) -> Token {
        let bytes = s.as_bytes().to_vec();
        Token { bytes, quoted: false }
    }

    fn quoted_tok(bytes: &[u8]) -> Token {
        let bytes = bytes.to_vec();
        Token { bytes, quoted: true }
    }

    fn words(line: &Line) -> Vec<&[u8]> {
        line.tokens.iter().map(|t| t.bytes.as_slice()).collect()
    }

    fn only_error(input: &[u8]) -> (usize, String) {
        let lines = lex(input);
        assert_eq!(lines.len(), 1, "{lines:?}");
        (lines[0].number, lines[0].error.clone().expect("an error"))
    }

    #[test]
    fn splits_on_spaces_and_tabs_and_skips_blank_and_comment_lines() {
        let lines = lex(b"# comment\n\n   \n  server\ta  127.0.0.1:1 # trailing\nlog info#x\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].number, 4);
        assert_eq!(lines[0].tokens, vec![bare_tok("server"), bare_tok("a"), bare_tok("127.0.0.1:1")]);
        assert_eq!(lines[1].number, 5);
        assert_eq!(words(&lines[1]), vec![&b"log"[..], b"info"]);
        assert!(lines.iter().all(|l| l.error.is_none()));
    }

    #[test]
    fn crlf_line_endings_are_stripped() {
        let lines = lex(b"workers 2\r\nlog info\r\n");
        assert_eq!(words(&lines[0]), vec![&b"workers"[..], b"2"]);
        assert_eq!(words(&lines[1]), vec![&b"log"[..], b"info"]);
    }

    #[test]
    fn quoted_strings_take_escapes_and_may_be_empty_or_hold_hash() {
        let lines = lex(br##"check send "PING\r\n\t\\\"#" expect "" "\x00\xfF\x41" "a b""##);
        let t = &lines[0].tokens;
        assert_eq!(lines[0].error, None);
        assert_eq!(t[2], quoted_tok(b"PING\r\n\t\\\"#"));
        assert_eq!(t[4], quoted_tok(b""));
        assert_eq!(t[5].bytes, vec![0, 0xff, b'A']);
        assert_eq!(t[5].text(), None);
        assert_eq!(t[6].text(), Some("a b"));
    }

    #[test]
    fn non_ascii_text_passes_through() {
        let lines = lex("server café \"naïve\"\n".as_bytes());
        assert_eq!(lines[0].tokens[1].text(), Some("café"));
        assert_eq!(lines[0].tokens[2].text(), Some("naïve"));
    }

    #[test]
    fn unterminated_quote() {
        let (n, e) = only_error(b"\ncheck send \"PING");
        assert_eq!(n, 2);
        assert!(e.contains("unterminated quote starting at column 12"), "{e}");
        let (_, e) = only_error(b"check send \"PING\\");
        assert!(e.contains("unterminated quote"), "{e}");
    }

    #[test]
    fn unknown_escape() {
        let (_, e) = only_error(br#"x "a\qb""#);
        assert!(e.contains(r#"unknown escape "\q" at column 5"#), "{e}");
    }

    #[test]
    fn bad_hex_escape() {
        for input in [&br#"x "\xg0""#[..], br#"x "\x4""#, br#"x "\x+f""#] {
            let (_, e) = only_error(input);
            assert!(e.contains("\\x needs two hex digits"), "{e}");
        }
    }

    #[test]
    fn invalid_utf8_is_an_error_for_its_line_only() {
        let lines = lex(b"log info\nserver \xff\xfe x\nworkers 2\n");
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].tokens, vec![bare_tok("server")]);
        assert!(lines[1].error.as_deref().unwrap().contains("not valid UTF-8 (byte 0xff at column 8)"));
        assert!(lines[0].error.is_none() && lines[2].error.is_none());
    }

    #[test]
    fn control_characters_are_errors() {
        let (_, e) = only_error(b"work\x00ers 1");
        assert!(e.contains("control character 0x00 at column 5"), "{e}");
        let (_, e) = only_error(b"x \"a\x1bb\"");
        assert!(e.contains("control character 0x1b"), "{e}");
    }

    #[test]
    fn quotes_must_delimit_whole_words() {
        let (_, e) = only_error(b"x ab\"c\"");
        assert!(e.contains("quote in the middle of a word at column 5"), "{e}");
        let (_, e) = only_error(b"x \"ab\"c");
        assert!(e.contains("text right after the closing quote at column 7"), "{e}");
    }

    #[test]
    fn an_error_keeps_the_tokens_before_it() {
        let lines = lex(b"service \"web");
        assert_eq!(lines[0].tokens, vec![bare_tok("service")]);
        assert!(lines[0].error.is_some());
    }

    #[test]
    fn scalar_forms() {
        let ms = Duration::from_millis;
        for (s, want) in [("250ms", ms(250)), ("2s", ms(2_000)), ("5m", ms(300_000))] {
            assert_eq!(duration("", s, false), Ok(want));
        }
        assert_eq!(duration("", "1h", false), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("", "0s", true), Ok(Duration::ZERO));
        assert_eq!(number("", "007", 0, 10), Ok(7));
        assert_eq!(status("2xx"), Ok(StatusMatch::Class(2)));
        assert_eq!(status("5XX"), Ok(StatusMatch::Class(5)));
        assert_eq!(status("204"), Ok(StatusMatch::Exact(204)));
        assert_eq!(listen_addr("*:80"), Ok(ListenAddr::Any(80)));
        for s in ["127.0.0.1:0", "0.0.0.0:80", "[::1]:80", "[::]:65535"] {
            assert_eq!(listen_addr(s), Ok(ListenAddr::Addr(s.parse().unwrap())));
        }
        assert_eq!(admin_addr("[::1]:9090"), Ok("[::1]:9090".parse().unwrap()));
        assert!(is_hostname("db-1.example.com.") && !is_hostname("10.1") && !is_hostname("a_b"));
    }

    /// Each scalar error path, and the fragment of its message that says how to fix it.
    macro_rules! rejects {
        ($($name:ident: $got:expr => $want:expr;)*) => {$(
            #[test]
            fn $name() {
                let got = $got.map(drop).unwrap_err();
                assert!(got.contains($want), "{got:?} lacks {:?}", $want);
            }
        )*};
    }

    rejects! {
        negative_number: number("", "-1", 1, 9) => "-1 is negative: expected 1-9";
        garbage_number: number("", "4x", 1, 9) => r#""4x" is not a whole number: expected 1-9"#;
        plus_sign_number: number("", "+4", 1, 9) => r#""+4" is not a whole number"#;
        overflowing_number: number("n ", "99999999999999999999999", 1, 9)
            => "n 99999999999999999999999 is out of range 1-9";
        duration_bad_unit: duration("", "5x", true)
            => r#"duration "5x": expected a number followed by ms, s, m or h, e.g. 250ms"#;
        duration_no_unit: duration("", "5", true) => r#"duration "5": expected a number"#;
        duration_no_number: duration("", "s", true) => r#"duration "s": expected a number"#;
        duration_negative: duration("", "-1s", true) => r#"duration "-1s" is negative"#;
        duration_too_long: duration("idle ", "8761h", true)
            => "idle duration 8761h is too long: at most 8760h";
        duration_overflow: duration("", "99999999999999999999h", true) => "is too long";
        duration_zero: duration("x ", "0ms", false) => "x duration 0ms must be greater than zero";
        status_out_of_range: status("600") => "status 600 is out of range 100-599";
        status_bad_class: status("6xx") => "expected a code such as 200 or a class such as 2xx";
        method_not_a_token: method("G T") => r#"method "G T" is not an HTTP method, e.g. GET"#;
        path_not_absolute: http_path("health") => r#"path "health" must start with /"#;
        path_with_crlf: http_path("/a\r\nX: y") => "printable ASCII without spaces";
        bind_port_only: listen_addr("80") => "address 80 has no host: write *:80";
        bind_port_out_of_range: listen_addr("*:70000") => "port 70000 is out of range 0-65535";
        bind_host_name: listen_addr("example.com:80") => r#""example.com" is not a valid address"#;
        bind_ipv6_without_brackets: listen_addr("::1:80") => "IPv6 addresses need brackets";
        admin_host_name: admin_addr("localhost:9090") => r#""localhost" is not a valid address"#;
        admin_no_port: admin_addr("127.0.0.1") => r#"address "127.0.0.1" has no port"#;
        name_with_space: check_name("server name", "b c") => r#"server name "b c" may only use"#;
        empty_name: check_name("name", "") => r#"name "" may only use letters"#;
    }

    #[test]
    fn show_quotes_and_cuts_long_tokens() {
        assert_eq!(show("a\"b"), r#""a\"b""#);
        assert_eq!(show(&"x".repeat(50)), format!("\"{}...\"", "x".repeat(40)));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed: u64 = 0x5eed;
        for len in 0..300 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = lex(&bytes);
        }
        let _ = lex(b"\xff\xfe\x00service");
        let _ = lex(b"\"\\x");
        let _ = lex("\"\\é".as_bytes());
    }
}
