//! The database checks' own words on a `check` line: `check redis [role master|replica]
//! [password FILE]`, before the options every check takes (`interval`, `timeout`, `rise`,
//! `fall`, `port`). Only the form is checked here; a password file is read when the
//! configuration is loaded (`super::secrets`), with errors on this same line.

use super::lexer::{show, Token};
use super::parse::{choice, text, Res};
use super::{CheckKind, PgRole, RedisRole, Secret};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// `check redis ...` after the word `redis`: the check and the generic options that follow.
pub(super) fn redis(a: &[Token]) -> Res<(CheckKind, &[Token])> {
    let (mut role, mut password) = (None, None);
    let mut rest = a;
    loop {
        match rest {
            [w, value, more @ ..] if w.bytes == b"role" => {
                if role.is_some() {
                    return Err("role given twice: keep only one".to_string());
                }
                role = Some(match text(value)? {
                    "master" => RedisRole::Master,
                    "replica" | "slave" => RedisRole::Replica,
                    other => return Err(choice("role", other, &["master", "replica"])),
                });
                rest = more;
            }
            [w, file, more @ ..] if w.bytes == b"password" => {
                if password.is_some() {
                    return Err("password given twice: keep only one".to_string());
                }
                password = Some(secret_file(file)?);
                rest = more;
            }
            [w] if w.bytes == b"role" || w.bytes == b"password" => {
                let what = String::from_utf8_lossy(&w.bytes).into_owned();
                return Err(format!(
                    "missing value after {}: e.g. role master, password /etc/shunt/redis-password",
                    show(&what)
                ));
            }
            _ => break,
        }
    }
    Ok((CheckKind::Redis { role, password }, rest))
}

/// `check pgsql ...` after the word `pgsql`: `user NAME` (required), `password FILE`, `dbname
/// NAME` (default: the user's name, as libpq does) and `role primary|standby`, in any order.
pub(super) fn pgsql(a: &[Token]) -> Res<(CheckKind, &[Token])> {
    let (mut user, mut password, mut dbname, mut role) = (None, None, None, None);
    let mut rest = a;
    while let [w, value, more @ ..] = rest {
        let word = match w.bytes.as_slice() {
            b"user" | b"password" | b"dbname" | b"role" => String::from_utf8_lossy(&w.bytes).into_owned(),
            _ => break,
        };
        let twice = match word.as_str() {
            "user" => user.replace(pg_name("user", text(value)?)?).is_some(),
            "dbname" => dbname.replace(pg_name("dbname", text(value)?)?).is_some(),
            "password" => password.replace(secret_file(value)?).is_some(),
            _ => role
                .replace(match text(value)? {
                    "primary" => PgRole::Primary,
                    "standby" => PgRole::Standby,
                    other => return Err(choice("role", other, &["primary", "standby"])),
                })
                .is_some(),
        };
        if twice {
            return Err(format!("{word} given twice: keep only one"));
        }
        rest = more;
    }
    if let [w] = rest {
        if [&b"user"[..], b"password", b"dbname", b"role"].contains(&w.bytes.as_slice()) {
            return Err(format!("missing value after {}", show(&String::from_utf8_lossy(&w.bytes))));
        }
    }
    let Some(user) = user else {
        return Err("check pgsql needs user NAME, e.g. check pgsql user shunt_check password /etc/shunt/pg-password"
            .to_string());
    };
    Ok((CheckKind::Pgsql { user, password, dbname, role }, rest))
}

/// A role or database name sent in the StartupMessage: no NUL, not empty, at most 63 bytes
/// (PostgreSQL's NAMEDATALEN - 1).
fn pg_name(what: &str, s: &str) -> Res<String> {
    if s.is_empty() || s.len() > 63 || s.contains('\0') {
        return Err(format!("{what} {}: 1 to 63 bytes, no NUL", show(s)));
    }
    Ok(s.to_string())
}

fn secret_file(t: &Token) -> Res<Secret> {
    if t.bytes.is_empty() {
        return Err("the password file name is empty".to_string());
    }
    Ok(Secret { path: PathBuf::from(OsStr::from_bytes(&t.bytes)), value: String::new() })
}
