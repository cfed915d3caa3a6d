//! The database checks' own words on a `check` line: `check redis [role master|replica]
//! [password FILE]`, before the options every check takes (`interval`, `timeout`, `rise`,
//! `fall`, `port`). Only the form is checked here; a password file is read when the
//! configuration is loaded (`super::secrets`), with errors on this same line.

use super::lexer::{show, Token};
use super::parse::{choice, text, Res};
use super::{CheckKind, RedisRole, Secret};
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

fn secret_file(t: &Token) -> Res<Secret> {
    if t.bytes.is_empty() {
        return Err("the password file name is empty".to_string());
    }
    Ok(Secret { path: PathBuf::from(OsStr::from_bytes(&t.bytes)), words: Vec::new() })
}
