//! `check pgsql user NAME [password FILE] [dbname NAME] [role primary|standby]`: the probe speaks
//! the PostgreSQL protocol. A StartupMessage; whatever authentication the server asks for among
//! trust, cleartext, md5 and SCRAM-SHA-256 (the server's SCRAM signature is verified too); then
//! `SELECT pg_is_in_recovery()` with the simple query protocol, and Terminate. `false` is a
//! primary, `true` a standby.
//!
//! The wire format and SCRAM come from the `postgres-protocol` crate (the one under
//! tokio-postgres): no hand-made crypto. Messages are framed here first, with a bound on their
//! length, so a server that announces a huge message never makes the probe allocate for it.
//! The probe does not ask for TLS (libpq's `sslmode=disable`): a server that insists on it
//! refuses the login, and that refusal is the check's detail.

use super::probe::Verdict;
use crate::config::PgRole;
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

/// The longest server message a probe takes (a login and one tiny query need far less).
const MAX_MESSAGE: usize = 8 * 1024;
const QUERY: &str = "SELECT pg_is_in_recovery()";

/// What the probe does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More bytes are needed.
    Wait,
    /// Send these, then read on.
    Send(Vec<u8>),
    /// Decided: send these (Terminate, possibly empty) and finish with the verdict.
    Done(Vec<u8>, Verdict),
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Until AuthenticationOk.
    Login,
    /// Until the first ReadyForQuery.
    Starting,
    /// The query is sent; its row (and the ReadyForQuery after it) is awaited.
    Querying,
}

pub struct Dialog {
    user: String,
    password: Option<String>,
    role: Option<PgRole>,
    phase: Phase,
    scram: Option<ScramSha256>,
    in_recovery: Option<bool>,
}

/// The StartupMessage a probe opens with.
pub fn startup(user: &str, dbname: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let params = [("user", user), ("database", dbname), ("application_name", "shunt-health")];
    frontend::startup_message(params.iter().copied(), &mut buf).expect("no NUL in checked names");
    buf.to_vec()
}

impl Dialog {
    pub fn new(user: &str, password: Option<&str>, role: Option<PgRole>) -> Dialog {
        Dialog {
            user: user.to_string(),
            password: password.map(str::to_string),
            role,
            phase: Phase::Login,
            scram: None,
            in_recovery: None,
        }
    }

    /// Takes the whole messages at the start of `reply` off it and answers them.
    pub fn feed(&mut self, reply: &mut Vec<u8>) -> Step {
        loop {
            let Some(header) = reply.get(..5) else { return Step::Wait };
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if !(4..=MAX_MESSAGE).contains(&len) || !header[0].is_ascii_alphabetic() {
                return fail("the reply is not the PostgreSQL protocol");
            }
            if reply.len() < 1 + len {
                return Step::Wait;
            }
            let mut frame = BytesMut::from(&reply[..1 + len]);
            reply.drain(..1 + len);
            let message = match Message::parse(&mut frame) {
                Ok(Some(m)) => m,
                Ok(None) | Err(_) => return fail("a malformed PostgreSQL message"),
            };
            match self.answer(message) {
                Step::Wait => continue,
                step => return step,
            }
        }
    }

    /// The server closed the connection before the check was decided.
    pub fn closed(&self) -> Verdict {
        Verdict::Fail(match self.phase {
            Phase::Login => "the server closed the connection during the login".to_string(),
            _ => "the server closed the connection before answering the query".to_string(),
        })
    }

    fn answer(&mut self, message: Message) -> Step {
        let mut out = BytesMut::new();
        match message {
            Message::AuthenticationOk => self.phase = Phase::Starting,
            Message::AuthenticationCleartextPassword => {
                let Some(pw) = &self.password else { return no_password() };
                frontend::password_message(pw.as_bytes(), &mut out).expect("a password without NUL");
            }
            Message::AuthenticationMd5Password(body) => {
                let Some(pw) = &self.password else { return no_password() };
                let hash = md5_hash(self.user.as_bytes(), pw.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut out).expect("a hash without NUL");
            }
            Message::AuthenticationSasl(body) => {
                let Some(pw) = &self.password else { return no_password() };
                let mut mechanisms = body.mechanisms();
                let mut scram = false;
                while let Ok(Some(m)) = mechanisms.next() {
                    scram |= m == SCRAM_SHA_256;
                }
                if !scram {
                    return fail("the server offers no SASL mechanism shunt speaks (SCRAM-SHA-256)");
                }
                let exchange = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, exchange.message(), &mut out)
                    .expect("a bounded message");
                self.scram = Some(exchange);
            }
            Message::AuthenticationSaslContinue(body) => {
                let Some(exchange) = self.scram.as_mut() else { return fail("a SCRAM step out of order") };
                if exchange.update(body.data()).is_err() {
                    return fail("a malformed SCRAM challenge");
                }
                frontend::sasl_response(exchange.message(), &mut out).expect("a bounded message");
            }
            Message::AuthenticationSaslFinal(body) => {
                let Some(exchange) = self.scram.as_mut() else { return fail("a SCRAM step out of order") };
                if exchange.finish(body.data()).is_err() {
                    return fail("the server's SCRAM signature does not verify: not the server the password is for");
                }
            }
            Message::AuthenticationGss
            | Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => {
                return fail("the server asks for an authentication method shunt does not speak (GSS, SSPI, Kerberos)")
            }
            Message::ErrorResponse(body) => {
                let (mut text, mut code) = (String::new(), String::new());
                let mut fields = body.fields();
                while let Ok(Some(f)) = fields.next() {
                    match f.type_() {
                        b'M' => text = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                        b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
                        _ => {}
                    }
                }
                return fail(&format!("{text} ({code})"));
            }
            Message::ReadyForQuery(_) if self.phase == Phase::Starting => {
                frontend::query(QUERY, &mut out).expect("a query without NUL");
                self.phase = Phase::Querying;
            }
            Message::DataRow(row) if self.phase == Phase::Querying => {
                let mut ranges = row.ranges();
                if let Ok(Some(Some(r))) = ranges.next() {
                    self.in_recovery = match row.buffer().get(r) {
                        Some(b"t") => Some(true),
                        Some(b"f") => Some(false),
                        _ => return fail("pg_is_in_recovery() answered neither t nor f"),
                    };
                }
            }
            Message::ReadyForQuery(_) if self.phase == Phase::Querying => return self.verdict(),
            // Parameter statuses, the backend key, notices, the row description, the command tag.
            _ => {}
        }
        if out.is_empty() {
            Step::Wait
        } else {
            Step::Send(out.to_vec())
        }
    }

    fn verdict(&self) -> Step {
        let mut bye = BytesMut::new();
        frontend::terminate(&mut bye);
        let Some(recovering) = self.in_recovery else {
            return Step::Done(bye.to_vec(), Verdict::Fail("no answer to pg_is_in_recovery()".to_string()));
        };
        let is = if recovering { PgRole::Standby } else { PgRole::Primary };
        let verdict = match self.role {
            Some(want) if want != is => Verdict::WrongRole(format!("role is {}", is.name())),
            _ => Verdict::Pass,
        };
        Step::Done(bye.to_vec(), verdict)
    }
}

fn fail(why: &str) -> Step {
    Step::Done(Vec::new(), Verdict::Fail(why.to_string()))
}

fn no_password() -> Step {
    fail("the server asks for a password: add password FILE to the check")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend message: tag, length, body.
    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn ready() -> Vec<u8> {
        msg(b'Z', b"I")
    }

    fn row(value: &[u8]) -> Vec<u8> {
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&(value.len() as u32).to_be_bytes());
        body.extend_from_slice(value);
        msg(b'D', &body)
    }

    /// Runs a whole exchange: every server message, in order, against a dialog.
    fn run(dialog: &mut Dialog, server: &[Vec<u8>]) -> Step {
        let mut reply = Vec::new();
        for m in server {
            reply.extend_from_slice(m);
            match dialog.feed(&mut reply) {
                Step::Wait | Step::Send(_) => {}
                done => return done,
            }
        }
        Step::Wait
    }

    #[test]
    fn trust_login_then_the_role() {
        let ok = msg(b'R', &0u32.to_be_bytes());
        for (value, role, want) in [
            (b"f", PgRole::Primary, Verdict::Pass),
            (b"t", PgRole::Standby, Verdict::Pass),
            (b"t", PgRole::Primary, Verdict::WrongRole("role is standby".into())),
        ] {
            let mut d = Dialog::new("app", None, Some(role));
            let server = [
                ok.clone(),
                msg(b'S', b"a\0b\0"),
                ready(),
                msg(b'T', b"\0\0"),
                row(value),
                msg(b'C', b"SELECT 1\0"),
                ready(),
            ];
            match run(&mut d, &server) {
                Step::Done(bye, v) => assert_eq!((bye, v), (vec![b'X', 0, 0, 0, 4], want)),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn md5_answers_with_the_salted_hash() {
        let mut d = Dialog::new("app", Some("pw"), None);
        let mut reply = msg(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]);
        let Step::Send(sent) = d.feed(&mut reply) else { panic!() };
        assert_eq!(sent[0], b'p');
        assert!(sent.windows(3).any(|w| w == b"md5"), "{sent:?}");
        assert!(reply.is_empty(), "the message was taken off the buffer");
    }

    #[test]
    fn errors_and_garbage_say_what_they_are() {
        let mut d = Dialog::new("app", Some("pw"), None);
        let mut e = msg(b'E', b"SFATAL\0C28P01\0Mpassword authentication failed for user \"app\"\0\0");
        assert_eq!(
            d.feed(&mut e),
            Step::Done(Vec::new(), Verdict::Fail("password authentication failed for user \"app\" (28P01)".into()))
        );
        let mut http = b"HTTP/1.1 400 Bad Request\r\n".to_vec();
        assert_eq!(d.feed(&mut http), fail("the reply is not the PostgreSQL protocol"));
        let mut huge = msg(b'R', &[]);
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(d.feed(&mut huge), fail("the reply is not the PostgreSQL protocol"));
        let mut cleartext = msg(b'R', &3u32.to_be_bytes());
        assert_eq!(Dialog::new("app", None, None).feed(&mut cleartext), no_password());
    }
}
