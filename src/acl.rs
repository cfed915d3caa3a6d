//! `allow` and `deny`: which client addresses a service takes, checked at accept before
//! anything else is spent on the connection (no TLS handshake, no ClientHello peek, no server
//! connect, no connection slot).
//!
//! Rules are checked in file order and the first that matches decides; an address no rule
//! matches is allowed unless the list has an `allow` rule. Lookups cost the same with ten rules
//! or ten thousand: the rules are compiled into a binary trie per address family, one node per
//! prefix bit, each node holding the first rule (in file order) whose prefix ends there; a
//! lookup walks the address's bits once and keeps the smallest rule number it passes.

use std::fmt;
use std::net::IpAddr;

/// One `allow`/`deny` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// `10.0.0.0/8`, `2001:db8::/32`, or an address alone (its full length). Host bits must be
    /// zero: `10.0.0.1/8` is more likely a typo than a wish.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an address or ADDRESS/LENGTH"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { addr, len };
        let bits = bits(addr);
        if bits & !mask(len, max) != 0 {
            let net = Cidr { addr: from_bits(bits & mask(len, max), addr.is_ipv4()), len };
            return Err(format!("{s} has host bits set: did you mean {net}?"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One rule: its verdict, prefix, and the line it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    pub net: Cidr,
    pub line: usize,
}

/// A compiled list of rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    rules: Vec<Rule>,
    v4: Trie,
    v6: Trie,
    any_allow: bool,
}

/// What the rules say of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused by this rule, or (`None`) by no rule matching in a list with `allow` rules.
    Denied(Option<Rule>),
}

impl Acl {
    pub fn new(rules: Vec<Rule>) -> Acl {
        let mut acl = Acl { any_allow: rules.iter().any(|r| r.allow), ..Acl::default() };
        for (i, r) in rules.iter().enumerate() {
            let (trie, width) = match r.net.addr {
                IpAddr::V4(_) => (&mut acl.v4, 32),
                IpAddr::V6(_) => (&mut acl.v6, 128),
            };
            trie.insert(bits(r.net.addr), width, r.net.len, i as u32);
        }
        acl.rules = rules;
        acl
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The verdict for `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn check(&self, ip: IpAddr) -> Verdict {
        if self.rules.is_empty() {
            return Verdict::Allowed;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let first = match ip {
            IpAddr::V4(_) => self.v4.first_match(bits(ip), 32),
            IpAddr::V6(_) => self.v6.first_match(bits(ip), 128),
        };
        match first.map(|i| self.rules[i as usize]) {
            Some(r) if r.allow => Verdict::Allowed,
            Some(r) => Verdict::Denied(Some(r)),
            None if self.any_allow => Verdict::Denied(None),
            None => Verdict::Allowed,
        }
    }
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Node {
    children: [u32; 2],
    /// The first rule (by number) whose prefix ends at this node.
    rule: u32,
}

/// A binary trie over address bits, most significant first; node 0 is the root (prefix /0).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trie {
    nodes: Vec<Node>,
}

impl Default for Trie {
    fn default() -> Trie {
        Trie { nodes: vec![Node { children: [NONE; 2], rule: NONE }] }
    }
}

impl Trie {
    fn insert(&mut self, bits: u128, width: u8, len: u8, rule: u32) {
        let mut at = 0usize;
        for depth in 0..len {
            let bit = ((bits >> (width - 1 - depth)) & 1) as usize;
            let next = self.nodes[at].children[bit];
            at = if next == NONE {
                self.nodes.push(Node { children: [NONE; 2], rule: NONE });
                let new = (self.nodes.len() - 1) as u32;
                self.nodes[at].children[bit] = new;
                new as usize
            } else {
                next as usize
            };
        }
        self.nodes[at].rule = self.nodes[at].rule.min(rule);
    }

    /// The smallest rule number among the prefixes of `bits`.
    fn first_match(&self, bits: u128, width: u8) -> Option<u32> {
        let mut best = self.nodes[0].rule;
        let mut at = 0usize;
        for depth in 0..width {
            let bit = ((bits >> (width - 1 - depth)) & 1) as usize;
            match self.nodes[at].children[bit] {
                NONE => break,
                next => {
                    at = next as usize;
                    best = best.min(self.nodes[at].rule);
                }
            }
        }
        (best != NONE).then_some(best)
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(bits: u128, v4: bool) -> IpAddr {
    match v4 {
        true => IpAddr::V4((bits as u32).into()),
        false => IpAddr::V6(bits.into()),
    }
}

/// The network mask of a `len`-bit prefix in a `width`-bit address.
fn mask(len: u8, width: u8) -> u128 {
    match len {
        0 => 0,
        _ => (u128::MAX >> (128 - u32::from(width))) & !((1u128 << (width - len)) - 1),
    }
}

#[cfg(test)]
mod tests;
