//! `check redis [role master|replica] [password FILE]`: the probe speaks RESP. It sends `AUTH`
//! when a password is configured (`AUTH user pass` when the file's line holds both), then `INFO
//! replication`, and judges the replies as they arrive: the reported role must be the one asked
//! for. A loading server, a refused password and a replica whose link to its master is down
//! each fail with a detail of their own.
//!
//! The replies are parsed with a bounded, incremental RESP reader: a prefix decides nothing it
//! would decide differently once more bytes arrive (the probe judges after every read).

use super::probe::Verdict;
use crate::config::RedisRole as Role;

/// The commands a probe sends: `AUTH` with the password file's words (one: the password; two:
/// user and password), then `INFO replication`, as RESP arrays.
pub fn request(auth: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    if !auth.is_empty() {
        let mut args = vec!["AUTH"];
        args.extend(auth.iter().map(String::as_str));
        command(&mut out, &args);
    }
    command(&mut out, &["INFO", "replication"]);
    out
}

fn command(out: &mut Vec<u8>, args: &[&str]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// One RESP reply.
#[derive(Debug, PartialEq, Eq)]
enum Reply<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Bulk(&'a [u8]),
    /// An integer, a null or an array: not what these commands answer.
    Other,
}

/// The reply at the start of `bytes` and its length; `Ok(None)` while incomplete.
fn reply(bytes: &[u8]) -> Result<Option<(Reply<'_>, usize)>, &'static str> {
    let Some(&kind) = bytes.first() else {
        return Ok(None);
    };
    // The line ends at the first CRLF after the type byte (which may itself be a CR).
    let Some(eol) = bytes[1..].windows(2).position(|w| w == b"\r\n").map(|p| p + 1) else {
        return Ok(None);
    };
    let line = &bytes[1..eol];
    match kind {
        b'+' => Ok(Some((Reply::Simple(line), eol + 2))),
        b'-' => Ok(Some((Reply::Error(line), eol + 2))),
        b':' | b'_' | b'#' | b',' => Ok(Some((Reply::Other, eol + 2))),
        b'$' => {
            let len = std::str::from_utf8(line).ok().and_then(|s| s.parse::<i64>().ok()).ok_or("a bad bulk length")?;
            if len < 0 {
                return Ok(Some((Reply::Other, eol + 2)));
            }
            let (start, len) = (eol + 2, len as usize);
            let end = start.checked_add(len).and_then(|e| e.checked_add(2)).ok_or("a bad bulk length")?;
            match bytes.get(start..end) {
                None => Ok(None),
                Some(body) if body.ends_with(b"\r\n") => Ok(Some((Reply::Bulk(&body[..len]), end))),
                Some(_) => Err("a bulk string without its CRLF"),
            }
        }
        _ => Err("not a RESP reply"),
    }
}

/// Judges the replies so far to a probe that sent `AUTH` (when `authenticated`) and `INFO
/// replication`; `role` is what the server must report (`None`: any role, for a backup).
/// `None` while more bytes could still decide it.
pub fn judge(reply_bytes: &[u8], authenticated: bool, role: Option<Role>, eof: bool) -> Option<Verdict> {
    let fail = |s: String| Some(Verdict::Fail(s));
    let mut rest = reply_bytes;
    let mut next = || -> Result<Option<Reply<'_>>, &'static str> {
        Ok(reply(rest)?.map(|(r, n)| {
            rest = &rest[n..];
            r
        }))
    };
    let undecided = |eof: bool| match eof {
        true => fail("connection closed before a full reply".to_string()),
        false => None,
    };
    if authenticated {
        match next() {
            Err(e) => return fail(format!("reply: {e}")),
            Ok(None) => return undecided(eof),
            Ok(Some(Reply::Simple(b"OK"))) => {}
            Ok(Some(Reply::Error(e))) if e.starts_with(b"WRONGPASS") || e.starts_with(b"ERR invalid password") => {
                return fail(format!("AUTH refused: wrong password ({})", text(e)))
            }
            Ok(Some(Reply::Error(e))) => return fail(format!("AUTH refused: {}", text(e))),
            Ok(Some(other)) => return fail(format!("AUTH answered {other:?}")),
        }
    }
    let info = match next() {
        Err(e) => return fail(format!("reply: {e}")),
        Ok(None) => return undecided(eof),
        Ok(Some(Reply::Bulk(info))) => info,
        Ok(Some(Reply::Error(e))) if e.starts_with(b"NOAUTH") => {
            return fail(format!("the server needs a password: add password FILE to the check ({})", text(e)))
        }
        Ok(Some(Reply::Error(e))) if e.starts_with(b"LOADING") => {
            return fail(format!("loading its dataset ({})", text(e)))
        }
        Ok(Some(Reply::Error(e))) => return fail(format!("INFO refused: {}", text(e))),
        Ok(Some(other)) => return fail(format!("INFO answered {other:?}")),
    };
    let field = |name: &str| {
        info.split(|&b| b == b'\n').find_map(|l| l.strip_prefix(name.as_bytes())).map(|v| text(v.trim_ascii_end()))
    };
    let reported = match field("role:").as_deref() {
        Some("master") => Role::Master,
        Some("slave") | Some("replica") => Role::Replica,
        Some(other) => return fail(format!("INFO replication reports role {other:?}")),
        None => return fail("INFO replication has no role line".to_string()),
    };
    match role {
        Some(want) if want != reported => Some(Verdict::WrongRole(format!("role is {}", reported.name()))),
        Some(Role::Replica) if field("master_link_status:").as_deref() != Some("up") => fail(format!(
            "replica with its master link {}",
            field("master_link_status:").unwrap_or_else(|| "unknown".to_string())
        )),
        _ => Some(Verdict::Pass),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Vec<u8> {
        format!("${}\r\n{s}\r\n", s.len()).into_bytes()
    }

    const MASTER: &str =
        "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=7001,state=online\r\n";
    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_link_status:up\r\n";

    #[test]
    fn requests_are_resp_arrays() {
        assert_eq!(request(&[]), b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n");
        let with_user = request(&["app".into(), "s3cret".into()]);
        assert!(with_user.starts_with(b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$6\r\ns3cret\r\n*2\r\n"));
    }

    #[test]
    fn the_role_must_match() {
        let (m, r) = (bulk(MASTER), bulk(REPLICA));
        assert_eq!(judge(&m, false, Some(Role::Master), false), Some(Verdict::Pass));
        assert_eq!(judge(&r, false, Some(Role::Replica), false), Some(Verdict::Pass));
        assert_eq!(judge(&r, false, Some(Role::Master), false), Some(Verdict::WrongRole("role is replica".into())));
        assert_eq!(judge(&m, false, Some(Role::Replica), false), Some(Verdict::WrongRole("role is master".into())));
        // A backup passes in any role.
        assert_eq!(judge(&r, false, None, false), Some(Verdict::Pass));
        let down = bulk(&REPLICA.replace("link_status:up", "link_status:down"));
        assert_eq!(
            judge(&down, false, Some(Role::Replica), false),
            Some(Verdict::Fail("replica with its master link down".into()))
        );
    }

    #[test]
    fn auth_and_errors_have_their_own_details() {
        let mut ok = b"+OK\r\n".to_vec();
        ok.extend(bulk(MASTER));
        assert_eq!(judge(&ok, true, Some(Role::Master), false), Some(Verdict::Pass));
        let cases: [(&[u8], bool, &str); 6] = [
            (b"-WRONGPASS invalid username-password pair\r\n", true, "AUTH refused: wrong password"),
            (b"-NOAUTH Authentication required.\r\n", false, "the server needs a password"),
            (b"-LOADING Redis is loading the dataset in memory\r\n", false, "loading its dataset"),
            (b"HTTP/1.1 400\r\n", false, "reply: not a RESP reply"),
            (b"$5\r\nab", false, "connection closed before a full reply"),
            // A CRLF right at the start (found by the fuzzer: it once panicked here).
            (b"\r\nrole:master\r\n", false, "reply: not a RESP reply"),
        ];
        for (bytes, auth, want) in cases {
            match judge(bytes, auth, Some(Role::Master), true) {
                Some(Verdict::Fail(why)) => assert!(why.starts_with(want), "{why:?} for {bytes:?}"),
                other => panic!("{other:?} for {bytes:?}"),
            }
        }
    }

    #[test]
    fn every_prefix_waits_or_decides_as_the_whole() {
        let mut all = b"+OK\r\n".to_vec();
        all.extend(bulk(REPLICA));
        let whole = judge(&all, true, Some(Role::Replica), false);
        for cut in 0..all.len() {
            let early = judge(&all[..cut], true, Some(Role::Replica), false);
            assert!(early.is_none() || early == whole, "cut {cut}: {early:?}");
        }
    }
}
