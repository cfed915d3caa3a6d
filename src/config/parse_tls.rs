//! The `tls` lines of a service: `tls cert FILE key FILE` (repeatable), `tls versions`, `tls alpn`,
//! `tls client_ca FILE`, and `route sni PATTERN SERVICE`. Only their form is checked here; the
//! files are read, and their contents checked, when the configuration is loaded (`crate::tls`),
//! with errors on these same lines; route targets are resolved once the whole file is read.

use super::lexer::{check_name, is_hostname, show, Token};
use super::parse::{arity, choice, once, text, Res, Seen};
use super::{CertKey, Route, SniPattern, Tls, TlsVersion};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const KINDS: &[&str] = &["cert", "versions", "alpn", "client_ca"];

/// Applies one `tls ...` line (its arguments after `tls`) to the service's TLS settings.
pub(super) fn tls_line(tls: &mut Option<Tls>, seen: &mut Seen, a: &[Token], n: usize) -> Res<()> {
    let Some((kind, rest)) = a.split_first() else {
        return Err(arity("tls cert FILE key FILE | versions 1.2 1.3 | alpn PROTO... | client_ca FILE"));
    };
    let t = tls.get_or_insert_with(|| Tls {
        certs: Vec::new(),
        versions: vec![TlsVersion::V1_2, TlsVersion::V1_3],
        alpn: Vec::new(),
        client_ca: None,
        line: n,
    });
    match text(kind)? {
        "cert" => match rest {
            [cert, k, key] if k.bytes == b"key" => {
                t.certs.push(CertKey { cert: path(cert)?, key: path(key)?, line: n })
            }
            _ => return Err(arity("tls cert FILE key FILE")),
        },
        "versions" => {
            once(seen, "tls versions", n)?;
            if rest.is_empty() {
                return Err(arity("tls versions 1.2 1.3"));
            }
            let mut versions = Vec::new();
            for v in rest {
                let v = match text(v)? {
                    "1.2" => TlsVersion::V1_2,
                    "1.3" => TlsVersion::V1_3,
                    old @ ("1.0" | "1.1" | "ssl3") => {
                        return Err(format!("version {old} is insecure and not supported: use 1.2 and 1.3"))
                    }
                    v => return Err(choice("version", v, &["1.2", "1.3"])),
                };
                if !versions.contains(&v) {
                    versions.push(v);
                }
            }
            versions.sort();
            t.versions = versions;
        }
        "alpn" => {
            once(seen, "tls alpn", n)?;
            if rest.is_empty() {
                return Err(arity("tls alpn PROTOCOL..., e.g. tls alpn h2 http/1.1"));
            }
            t.alpn = Vec::new();
            for p in rest {
                let p = text(p)?;
                if p.is_empty() || p.len() > 255 {
                    return Err(format!("ALPN protocol {} must be 1 to 255 bytes long", show(p)));
                }
                t.alpn.push(p.to_string());
            }
        }
        "client_ca" => {
            once(seen, "tls client_ca", n)?;
            let [file] = rest else {
                return Err(arity("tls client_ca FILE"));
            };
            t.client_ca = Some((path(file)?, n));
        }
        k => return Err(choice("kind", k, KINDS)),
    }
    Ok(())
}

/// One `route sni PATTERN SERVICE` line (its arguments after `route`).
pub(super) fn route_line(routes: &mut Vec<Route>, a: &[Token], n: usize) -> Res<()> {
    let [kind, pattern, service] = a else {
        return Err(arity("route sni PATTERN SERVICE, e.g. route sni api.example.com api"));
    };
    match text(kind)? {
        "sni" => {}
        k => return Err(choice("route kind", k, &["sni"])),
    }
    let pattern = sni_pattern(text(pattern)?)?;
    let service = text(service)?;
    check_name("service name", service)?;
    if let Some(first) = routes.iter().find(|r| r.pattern == pattern) {
        return Err(format!("pattern {pattern} is already routed on line {}: the first match wins", first.line));
    }
    routes.push(Route { pattern, service: service.to_string(), target: usize::MAX, line: n });
    Ok(())
}

/// `name.example.com` or `*.example.com`, lower-cased.
fn sni_pattern(p: &str) -> Res<SniPattern> {
    let lower = p.to_ascii_lowercase();
    let (under, name) = match lower.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, lower.as_str()),
    };
    if !is_hostname(name) || name.ends_with('.') {
        return Err(format!(
            "server name pattern {} is not a host name or *.host name (e.g. api.example.com, *.example.com)",
            show(p)
        ));
    }
    Ok(match under {
        true => SniPattern::Under(format!(".{name}")),
        false => SniPattern::Exact(name.to_string()),
    })
}

/// The settings are whole: other `tls` lines without a certificate mean nothing.
pub(super) fn check(tls: &Tls) -> Res<()> {
    if tls.certs.is_empty() {
        return Err("tls: no certificate: add \"tls cert FILE key FILE\" (the other tls lines need one)".into());
    }
    Ok(())
}

fn path(t: &Token) -> Res<PathBuf> {
    if t.bytes.is_empty() {
        return Err("the file name is empty".to_string());
    }
    Ok(PathBuf::from(OsStr::from_bytes(&t.bytes)))
}
