//! What each admin request gets: a function from (method, path, query, authorization) to a
//! response, over the supervisor, which reads counters and makes every change.

use super::{json, page, prometheus};
use crate::shared::AdminState;
use crate::snapshot;
use crate::supervisor::{ReloadError, Supervisor};
use std::sync::Arc;

/// Everything the routes need.
pub struct Context {
    pub supervisor: Arc<Supervisor>,
}

/// A parsed request, as far as routing cares.
pub struct Request<'a> {
    pub method: &'a str,
    /// The path without its query string.
    pub path: &'a str,
    /// What follows the `?` (empty without one).
    pub query: &'a str,
    pub authorization: Option<&'a [u8]>,
}

impl Request<'_> {
    /// The value of `key` in the query string (`a=1&b=2`), if present.
    fn param(&self, key: &str) -> Option<&str> {
        self.query.split('&').find_map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == key => Some(v),
            None if kv == key => Some(""),
            _ => None,
        })
    }
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
    let stats = ctx.supervisor.stats();
    match req.path {
        "/metrics" | "/status" | "/" | "/healthz" | "/config" if !read => method_not_allowed("GET, HEAD"),
        "/metrics" => {
            let snap = snapshot::take(stats);
            let reloads = prometheus::ReloadFacts::read(&ctx.supervisor);
            let body = prometheus::render(&snap, prometheus::ProcessFacts::read(), reloads);
            Response::new(200, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        "/status" => Response::json(200, json::status(&snapshot::take(stats))),
        "/" => Response::new(200, "text/html; charset=utf-8", page::HTML),
        "/healthz" => healthz(ctx, req.param("service")),
        "/config" => Response::text(200, crate::config::render(&stats.current().config)),
        "/reload" | "/upgrade" if req.method != "POST" => method_not_allowed("POST"),
        "/reload" => match authorize(ctx, req) {
            Err(r) => r,
            Ok(()) if req.param("dry_run").is_some_and(|v| v != "0") => dry_run(ctx),
            Ok(()) => reload(ctx),
        },
        "/upgrade" => match authorize(ctx, req) {
            Err(r) => r,
            Ok(()) => upgrade(ctx),
        },
        path => match path.strip_prefix("/servers/").map(|rest| rest.split('/').collect::<Vec<_>>()) {
            Some(parts) if parts.len() == 3 || (parts.len() == 4 && parts[2] == "weight") => {
                if req.method != "POST" {
                    return method_not_allowed("POST");
                }
                if let Err(r) = authorize(ctx, req) {
                    return r;
                }
                match parts[..] {
                    [service, server, "weight", n] => set_weight(ctx, service, server, n),
                    [service, server, action] => set_server_state(ctx, service, server, action),
                    _ => unreachable!("matched above"),
                }
            }
            _ => Response::text(404, "not found; try /, /status, /metrics, /healthz, /config"),
        },
    }
}

/// `POST /reload`: the same as SIGHUP.
fn reload(ctx: &Context) -> Response {
    match ctx.supervisor.reload() {
        Ok(done) => {
            let mut body = format!("reloaded: configuration generation {}\n", done.generation);
            for line in &done.restart_needed {
                body.push_str(&format!("not applied: {line}\n"));
            }
            Response::text(200, body)
        }
        Err(e @ ReloadError::Config(_)) => Response::text(400, format!("{e}\nthe running configuration stays")),
        Err(e @ ReloadError::Start(_)) => Response::text(500, format!("{e}\nthe running configuration stays")),
    }
}

/// `POST /upgrade`: the same as SIGUSR2. The upgrade runs on a thread of its own (it stops
/// this endpoint when it hands it over); this request waits for its outcome.
fn upgrade(ctx: &Context) -> Response {
    let supervisor = Arc::clone(&ctx.supervisor);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new().name("shunt-upgrade".into()).spawn(move || {
        let _ = tx.send(supervisor.upgrade());
    });
    if let Err(e) = spawned {
        return Response::text(500, format!("cannot start the upgrade: {e}"));
    }
    match rx.recv() {
        Ok(Ok(u)) => Response::text(
            200,
            format!(
                "upgraded: pid {} took over {} listener(s) and {} established session(s)",
                u.pid, u.listeners, u.sessions_moved
            ),
        ),
        Ok(Err(why)) => Response::text(500, format!("upgrade failed, this process keeps serving: {why}")),
        Err(_) => Response::text(500, "the upgrade thread ended without an outcome"),
    }
}

/// `POST /reload?dry_run=1`: what a reload of the running file would change, as JSON.
fn dry_run(ctx: &Context) -> Response {
    match ctx.supervisor.plan() {
        Ok(plan) => Response::json(200, plan.to_json()),
        Err(e) => Response::text(400, format!("{e}\nnothing would change")),
    }
}

fn method_not_allowed(allow: &str) -> Response {
    let mut r = Response::text(405, format!("method not allowed; use {allow}"));
    r.headers.push(format!("Allow: {allow}"));
    r
}

/// `GET /healthz[?service=a,b]`: every service (or the named ones) has a server that can take
/// traffic. A keepalived track script asks for the services its virtual address carries.
fn healthz(ctx: &Context, only: Option<&str>) -> Response {
    let snap = snapshot::take(ctx.supervisor.stats());
    let wanted: Option<Vec<&str>> = only.map(|list| list.split(',').filter(|n| !n.is_empty()).collect());
    if let Some(names) = &wanted {
        let unknown: Vec<&str> =
            names.iter().copied().filter(|n| !snap.services.iter().any(|s| s.name == *n)).collect();
        if !unknown.is_empty() {
            return Response::text(404, format!("no service named {}", unknown.join(", ")));
        }
    }
    let asked = |name: &str| wanted.as_ref().is_none_or(|names| names.contains(&name));
    let empty: Vec<&str> = snap
        .services
        .iter()
        .filter(|s| asked(&s.name) && !s.servers.iter().any(|v| v.usable()))
        .map(|s| s.name.as_str())
        .collect();
    if empty.is_empty() {
        Response::text(200, "ok")
    } else {
        Response::text(503, format!("no server can take traffic in service(s): {}", empty.join(", ")))
    }
}

/// Checks `Authorization: Bearer TOKEN` when a token is configured, in constant time.
fn authorize(ctx: &Context, req: &Request<'_>) -> Result<(), Response> {
    let Some(token) = ctx.supervisor.token() else { return Ok(()) };
    let given = req.authorization.and_then(|h| h.strip_prefix(b"Bearer ")).unwrap_or(b"");
    if constant_time_eq(given, &token) {
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
    let before = match ctx.supervisor.set_admin(service, server, state) {
        Ok(before) => before,
        Err(why) => return Response::text(404, why),
    };
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

/// `POST /servers/S/V/weight/N`: until the next reload.
fn set_weight(ctx: &Context, service: &str, server: &str, n: &str) -> Response {
    let Some(weight) = n.parse::<u32>().ok().filter(|w| *w <= crate::config::MAX_WEIGHT) else {
        return Response::text(400, format!("weight {n:?}: expected a number from 0 to {}", crate::config::MAX_WEIGHT));
    };
    match ctx.supervisor.set_weight(service, server, weight) {
        Ok(before) => {
            log::warn!("admin: server {service}/{server} weight set to {weight} (was {before}) until the next reload");
            Response::json(
                200,
                format!(
                    "{{\"service\":{},\"server\":{},\"weight\":{weight},\"previous\":{before}}}",
                    json::string(service),
                    json::string(server)
                ),
            )
        }
        Err(why) => Response::text(404, why),
    }
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
