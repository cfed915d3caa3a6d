//! Binding what shunt listens on, at start-up and at reloads: each `bind` address gets one
//! `SO_REUSEPORT` socket per worker (worker 0's resolves port 0; the others bind the address it
//! got), so every worker has its own accept queue on one port. Failures name their owner and
//! say what to do about the usual causes.

use crate::config::ListenAddr;
use crate::net;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};

/// Why binding (or another start-up step) failed (exit code 2 at start; a rejected reload later).
#[derive(Debug)]
pub enum StartError {
    /// `owner` names who wanted the address: `service web`, `the admin endpoint`.
    Bind {
        owner: String,
        addr: ListenAddr,
        error: io::Error,
    },
    Io {
        what: &'static str,
        error: io::Error,
    },
    /// The configuration cannot be used as it is (a TLS certificate or key that does not load):
    /// every error, as `FILE:LINE: message`.
    Config(Vec<crate::config::ConfigError>),
    /// `user NAME` could not be applied (no such user, not root, a switch that did not hold).
    Privileges(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { owner, addr, error } => {
                write!(f, "{owner}: cannot listen on {addr}: {error}")?;
                match error.kind() {
                    io::ErrorKind::AddrInUse => {
                        write!(f, " (another process holds this port; find it with `ss -ltnp`)")
                    }
                    io::ErrorKind::PermissionDenied => {
                        write!(f, " (ports below 1024 need root or CAP_NET_BIND_SERVICE)")
                    }
                    io::ErrorKind::AddrNotAvailable => {
                        write!(f, " (no local interface has this address)")
                    }
                    _ => Ok(()),
                }
            }
            StartError::Io { what, error } => write!(f, "{what}: {error}"),
            StartError::Privileges(why) => write!(f, "{why}"),
            StartError::Config(errors) => {
                let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
                write!(f, "{}", lines.join("\n"))
            }
        }
    }
}

impl std::error::Error for StartError {}

/// Binds `addr` for `service` once per worker: the bound address (port 0 resolved) and the
/// sockets, worker 0's first.
pub fn bind_for_workers(
    service: &str,
    addr: ListenAddr,
    workers: usize,
) -> Result<(SocketAddr, Vec<TcpListener>), StartError> {
    let bind_err = |addr: ListenAddr, error| StartError::Bind { owner: format!("service {service}"), addr, error };
    let first = net::bind_listener(&addr, true).map_err(|e| bind_err(addr, e))?;
    let bound = first.local_addr().map_err(|e| bind_err(addr, e))?;
    let resolved = match addr {
        ListenAddr::Any(_) => ListenAddr::Any(bound.port()),
        ListenAddr::Addr(_) => ListenAddr::Addr(bound),
    };
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(net::bind_listener(&resolved, true).map_err(|e| bind_err(resolved, e))?);
    }
    Ok((bound, sockets))
}

/// The admin token: the file's content without surrounding white space; never logged.
pub fn read_token(path: &std::path::Path) -> Result<Vec<u8>, StartError> {
    let what = "admin_token";
    let raw = std::fs::read(path).map_err(|error| StartError::Io { what, error })?;
    let token = raw.trim_ascii().to_vec();
    if token.is_empty() {
        return Err(StartError::Io { what, error: io::Error::other(format!("{} is empty", path.display())) });
    }
    Ok(token)
}
