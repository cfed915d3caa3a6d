//! mio tokens of a worker: reserved tokens by name, and session tokens that encode
//! (slab slot, side) so one slab entry serves both of a session's sockets.

use mio::Token;

/// Wakes the worker when a message is waiting on its channel.
pub const WAKER: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE + i`; session tokens stay far below it.
const LISTENER_BASE: usize = 1 << 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Waker,
    Listener(usize),
    Session(usize, Side),
}

pub fn listener(index: usize) -> Token {
    Token(LISTENER_BASE + index)
}

pub fn session(slot: usize, side: Side) -> Token {
    debug_assert!(slot < LISTENER_BASE / 2);
    Token(slot << 1 | (side == Side::Backend) as usize)
}

pub fn decode(token: Token) -> Kind {
    match token.0 {
        n if token == WAKER => {
            debug_assert_eq!(n, usize::MAX);
            Kind::Waker
        }
        n if n >= LISTENER_BASE => Kind::Listener(n - LISTENER_BASE),
        n => Kind::Session(n >> 1, if n & 1 == 1 { Side::Backend } else { Side::Client }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for slot in [0, 1, 7, 100_000] {
            for side in [Side::Client, Side::Backend] {
                assert_eq!(decode(session(slot, side)), Kind::Session(slot, side));
            }
        }
        assert_eq!(decode(listener(0)), Kind::Listener(0));
        assert_eq!(decode(listener(5)), Kind::Listener(5));
        assert_eq!(decode(WAKER), Kind::Waker);
    }
}
