//! The `check` line: its kind (`tcp`, `send … expect …`, `http …`, `redis`, `pgsql`) and the
//! options every check takes. The database checks' own words: `check redis [role master|replica]
//! [password FILE]` and `check pgsql user NAME [password FILE] [dbname NAME] [role
//! primary|standby]`, mixed in any order with the options every check takes (`interval`,
//! `timeout`, `rise`, `fall`, `port`), which go back to `check` to read. Only the form is
//! checked here; a password file is read when the configuration is loaded (`super::secrets`),
//! with errors on this same line.

use super::lexer::{duration, http_path, method, number, show, status, Token};
use super::parse::{arity, choice, options, text, value, Res};
use super::{Check, CheckKind, PgRole, RedisRole, Secret};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

const CHECK_OPTIONS: &[&str] = &["interval", "timeout", "rise", "fall", "port"];
const MAX_RISE_FALL: u64 = 1000;

pub(super) fn check(a: &[Token]) -> Res<Check> {
    let Some(kind) = a.first() else {
        return Err(arity("check tcp|send|http ... [interval D] [timeout D] [rise N] [fall N] [port N]"));
    };
    let is_expect = |t: &Token| t.bytes == b"expect";
    // A database check's generic options, once its own words are taken out.
    let db_opts: Vec<Token>;
    let (kind, opts) = match text(kind)? {
        "tcp" => (CheckKind::Tcp, &a[1..]),
        "redis" => {
            let (kind, rest) = redis(&a[1..])?;
            db_opts = rest;
            (kind, &db_opts[..])
        }
        "pgsql" => {
            let (kind, rest) = pgsql(&a[1..])?;
            db_opts = rest;
            (kind, &db_opts[..])
        }
        "send" => match a {
            [_, send, e, expect, rest @ ..] if is_expect(e) => {
                if expect.bytes.is_empty() {
                    let e = "the expect string is empty: give bytes the reply must contain";
                    return Err(format!("{e}, e.g. expect \"+PONG\""));
                }
                (CheckKind::Send { send: send.bytes.clone(), expect: expect.bytes.clone() }, rest)
            }
            _ => return Err(arity("check send \"BYTES\" expect \"BYTES\" [options]")),
        },
        "http" => match a {
            [_, m, p, e, st, rest @ ..] if is_expect(e) => {
                let kind = CheckKind::Http {
                    method: method(text(m)?)?,
                    path: http_path(text(p)?)?,
                    expect: status(text(st)?)?,
                };
                (kind, rest)
            }
            _ => return Err(arity("check http METHOD PATH expect STATUS [options]")),
        },
        k => return Err(choice("kind", k, &["tcp", "send", "http", "redis", "pgsql"])),
    };
    let mut c = Check { kind, ..Check::default() };
    options(opts, |opt, it| {
        match opt {
            "interval" => c.interval = duration("interval ", value(it, "interval 2s")?, false)?,
            "timeout" => c.timeout = duration("timeout ", value(it, "timeout 1s")?, false)?,
            "rise" => c.rise = number("rise ", value(it, "rise N")?, 1, MAX_RISE_FALL)? as u32,
            "fall" => c.fall = number("fall ", value(it, "fall N")?, 1, MAX_RISE_FALL)? as u32,
            "port" => c.port = Some(number("port ", value(it, "port N")?, 1, 65535)? as u16),
            _ => return Err(choice("option", opt, CHECK_OPTIONS)),
        }
        Ok(())
    })?;
    Ok(c)
}

/// `check redis ...` after the word `redis`: the check and the generic options.
pub(super) fn redis(a: &[Token]) -> Res<(CheckKind, Vec<Token>)> {
    let (own, rest) = split(a, &["role", "password"])?;
    let (mut role, mut password) = (None, None);
    for (word, value) in own {
        let twice = match word {
            "role" => role
                .replace(match text(value)? {
                    "master" => RedisRole::Master,
                    "replica" | "slave" => RedisRole::Replica,
                    other => return Err(choice("role", other, &["master", "replica"])),
                })
                .is_some(),
            _ => password.replace(secret_file(value)?).is_some(),
        };
        if twice {
            return Err(format!("{word} given twice: keep only one"));
        }
    }
    Ok((CheckKind::Redis { role, password }, rest))
}

/// `check pgsql ...` after the word `pgsql`: `user NAME` (required), `password FILE`, `dbname
/// NAME` (default: the user's name, as libpq does) and `role primary|standby`.
pub(super) fn pgsql(a: &[Token]) -> Res<(CheckKind, Vec<Token>)> {
    let (own, rest) = split(a, &["user", "password", "dbname", "role"])?;
    let (mut user, mut password, mut dbname, mut role) = (None, None, None, None);
    for (word, value) in own {
        let twice = match word {
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
    }
    let Some(user) = user else {
        return Err("check pgsql needs user NAME, e.g. check pgsql user shunt_check password /etc/shunt/pg-password"
            .to_string());
    };
    Ok((CheckKind::Pgsql { user, password, dbname, role }, rest))
}

/// Splits a database check's arguments, all `WORD VALUE` pairs: the check's own words (`ours`)
/// wherever they stand, and the rest, in order, for the generic option reader.
/// A check's own `WORD VALUE` pairs, and the arguments it leaves to the generic reader.
type Split<'t> = (Vec<(&'static str, &'t Token)>, Vec<Token>);

fn split<'t>(a: &'t [Token], ours: &[&'static str]) -> Res<Split<'t>> {
    let (mut own, mut rest) = (Vec::new(), Vec::new());
    let mut it = a.iter();
    while let Some(w) = it.next() {
        let Some(&word) = ours.iter().find(|o| o.as_bytes() == w.bytes.as_slice()) else {
            rest.push(w.clone());
            rest.extend(it.next().cloned());
            continue;
        };
        match it.next() {
            Some(value) => own.push((word, value)),
            None => return Err(format!("missing value after {}", show(word))),
        }
    }
    Ok((own, rest))
}

/// A role or database name sent in the StartupMessage: not empty, at most 63 bytes
/// (PostgreSQL's NAMEDATALEN - 1), no NUL.
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
