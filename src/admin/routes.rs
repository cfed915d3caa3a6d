//! What each admin request gets: a pure function from (method, path, authorization) to a
//! response, over a context that can read counters and steer the workers.

use super::{json, page, prometheus};
use crate::runtime::Control;
use crate::shared::{AdminState, HealthMsg, Stats, WorkerMsg};
use crate::snapshot;
use std::net::SocketAddr;
use std::sync::Arc;

/// Everything the routes need.
pub struct Context {
    pub stats: Arc<Stats>,
    pub listening: Vec<(String, SocketAddr)>,
    pub control: Control,
    /// The bearer token admin POSTs need; `None` = POSTs are open.
    pub token: Option<Vec<u8>>,
}

/// A parsed request, as far as routing cares.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    pub authorization: Option<&'a [u8]>,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines, each without CRLF.
    pub headers: Vec<String>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response { status, content_type, body: body.into(), headers: Vec::new() }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        let mut body = body.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    fn json(status: u16, body: String) -> Response {
        Response::new(status, "application/json", body)
    }

    /// The whole HTTP/1.1 message. Every response closes the connection: the admin endpoint
    /// serves scrapes and a few clicks, not a stream of requests.
    pub fn serialize(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        for h in &self.headers {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

pub fn route(ctx: &Context, req: &Request<'_>) -> Response {
    let read = matches!(req.method, "GET" | "HEAD");
    match req.path {
        "/metrics" | "/status" | "/" | "/healthz" if !read => method_not_allowed("GET, HEAD"),
        "/metrics" => {
            let snap = snapshot::take(&ctx.stats, &ctx.listening);
            let body = prometheus::render(&snap, prometheus::ProcessFacts::read());
            Response::new(200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        "/status" => Response::json(200, json::status(&snapshot::take(&ctx.stats, &ctx.listening))),
        "/" => Response::new(200, "text/html; charset=utf-8", page::HTML),
        "/healthz" => healthz(ctx),
        "/reload" if req.method != "POST" => method_not_allowed("POST"),
        "/reload" => match authorize(ctx, req) {
            Err(r) => r,
            Ok(()) => Response::text(501, "reload is not implemented yet; the running configuration stays"),
        },
        path => match path.strip_prefix("/servers/").map(|rest| rest.split('/').collect::<Vec<_>>()) {
            Some(parts) if parts.len() == 3 => {
                if req.method != "POST" {
                    return method_not_allowed("POST");
                }
                if let Err(r) = authorize(ctx, req) {
                    return r;
                }
                set_server_state(ctx, parts[0], parts[1], parts[2])
            }
            _ => Response::text(404, "not found; try /, /status, /metrics, /healthz"),
        },
    }
}

fn method_not_allowed(allow: &str) -> Response {
    let mut r = Response::text(405, format!("method not allowed; use {allow}"));
    r.headers.push(format!("Allow: {allow}"));
    r
}

fn healthz(ctx: &Context) -> Response {
    let snap = snapshot::take(&ctx.stats, &ctx.listening);
    let empty: Vec<&str> =
        snap.services.iter().filter(|s| !s.servers.iter().any(|v| v.usable())).map(|s| s.name.as_str()).collect();
    if empty.is_empty() {
        Response::text(200, "ok")
    } else {
        Response::text(503, format!("no server can take traffic in service(s): {}", empty.join(", ")))
    }
}

/// Checks `Authorization: Bearer TOKEN` when a token is configured, in constant time.
fn authorize(ctx: &Context, req: &Request<'_>) -> Result<(), Response> {
    let Some(token) = &ctx.token else { return Ok(()) };
    let given = req.authorization.and_then(|h| h.strip_prefix(b"Bearer ")).unwrap_or(b"");
    if constant_time_eq(given, token) {
        Ok(())
    } else {
        let mut r = Response::text(401, "this needs Authorization: Bearer TOKEN (the content of admin_token)");
        r.headers.push("WWW-Authenticate: Bearer".to_string());
        Err(r)
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right. (The length can still show; tokens are expected to be long random strings.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn set_server_state(ctx: &Context, service: &str, server: &str, action: &str) -> Response {
    let state = match action {
        "drain" => AdminState::Drain,
        "disable" => AdminState::Disabled,
        "enable" => AdminState::Enabled,
        _ => return Response::text(404, format!("unknown action {action:?}; use drain, disable or enable")),
    };
    let generation = ctx.stats.current();
    if !generation.config.services.iter().any(|s| s.name == service) {
        return Response::text(404, format!("no service named {service:?}"));
    }
    let Some(shared) = generation.server_named(service, server) else {
        return Response::text(404, format!("service {service} has no server named {server:?}"));
    };
    let id = shared.id;
    let before = shared.admin();
    shared.set_admin(state);
    ctx.control.to_workers(WorkerMsg::Admin { id, state });
    ctx.control.to_health(HealthMsg::Admin { id, state });
    log::warn!("admin: server {service}/{server} set to {} (was {})", name(state), name(before));
    Response::json(
        200,
        format!(
            "{{\"service\":{},\"server\":{},\"admin_state\":{},\"previous\":{}}}",
            json::string(service),
            json::string(server),
            json::string(name(state)),
            json::string(name(before))
        ),
    )
}

fn name(state: AdminState) -> &'static str {
    match state {
        AdminState::Enabled => "enabled",
        AdminState::Drain => "drain",
        AdminState::Disabled => "disabled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_cases() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn serialize_has_length_and_close() {
        let r = Response::text(200, "ok");
        let s = String::from_utf8(r.serialize(false)).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 3\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\nok\n"));
        let head = String::from_utf8(r.serialize(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }
}
