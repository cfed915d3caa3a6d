//! The ACL matcher against a plain first-match scan, on hand-picked and on generated rules.

use super::*;

fn rule(allow: bool, net: &str, line: usize) -> Rule {
    Rule { allow, net: Cidr::parse(net).unwrap(), line }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// What the rules mean, written the slow and obvious way.
fn scan(rules: &[Rule], ip: IpAddr) -> Verdict {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    for r in rules {
        let width = if r.net.addr.is_ipv4() { 32 } else { 128 };
        if r.net.addr.is_ipv4() == ip.is_ipv4() && bits(ip) & mask(r.net.len, width) == bits(r.net.addr) {
            return if r.allow { Verdict::Allowed } else { Verdict::Denied(Some(*r)) };
        }
    }
    if rules.iter().any(|r| r.allow) {
        Verdict::Denied(None)
    } else {
        Verdict::Allowed
    }
}

#[test]
fn the_first_matching_rule_decides() {
    let rules = vec![rule(false, "10.1.0.0/16", 1), rule(true, "10.0.0.0/8", 2), rule(false, "0.0.0.0/0", 3)];
    let acl = Acl::new(rules.clone());
    assert_eq!(acl.check(ip("10.1.2.3")), Verdict::Denied(Some(rules[0])));
    assert_eq!(acl.check(ip("10.2.2.3")), Verdict::Allowed);
    assert_eq!(acl.check(ip("192.168.1.1")), Verdict::Denied(Some(rules[2])));
    // A broader rule first shadows a narrower one after it.
    let acl = Acl::new(vec![rule(true, "10.0.0.0/8", 1), rule(false, "10.1.0.0/16", 2)]);
    assert_eq!(acl.check(ip("10.1.2.3")), Verdict::Allowed);
}

#[test]
fn no_match_is_allowed_unless_an_allow_rule_exists() {
    assert_eq!(Acl::new(vec![rule(false, "10.0.0.0/8", 1)]).check(ip("192.0.2.1")), Verdict::Allowed);
    assert_eq!(Acl::new(vec![rule(true, "10.0.0.0/8", 1)]).check(ip("192.0.2.1")), Verdict::Denied(None));
    assert_eq!(Acl::default().check(ip("192.0.2.1")), Verdict::Allowed);
}

#[test]
fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_rules() {
    let acl = Acl::new(vec![rule(true, "127.0.0.2", 1), rule(false, "::/0", 2)]);
    assert_eq!(acl.check(ip("::ffff:127.0.0.2")), Verdict::Allowed);
    assert_eq!(acl.check(ip("::ffff:127.0.0.3")), Verdict::Denied(None));
    assert!(matches!(acl.check(ip("::1")), Verdict::Denied(Some(_))));
}

#[test]
fn ipv6_prefixes_match_at_any_length() {
    let acl = Acl::new(vec![rule(true, "2001:db8::/32", 1), rule(true, "::1", 2), rule(false, "::/0", 3)]);
    assert_eq!(acl.check(ip("2001:db8:ffff::1")), Verdict::Allowed);
    assert_eq!(acl.check(ip("::1")), Verdict::Allowed);
    assert!(matches!(acl.check(ip("2001:db9::1")), Verdict::Denied(Some(r)) if r.line == 3));
}

#[test]
fn prefixes_are_parsed_strictly() {
    assert_eq!(Cidr::parse("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
    assert_eq!(Cidr::parse("192.0.2.7").unwrap().len, 32);
    assert_eq!(Cidr::parse("::").unwrap().len, 128);
    assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().len, 0);
    assert_eq!(Cidr::parse("10.0.0.1/8").unwrap_err(), "10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?");
    assert!(Cidr::parse("2001:db8::1/32").unwrap_err().contains("did you mean 2001:db8::/32?"));
    assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
    assert!(Cidr::parse("10.0.0/8").is_err() && Cidr::parse("x").is_err() && Cidr::parse("1.2.3.4/").is_err());
}

#[test]
fn the_trie_agrees_with_a_first_match_scan_on_thousands_of_random_rules() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Addresses from a small space so rules overlap and shadow each other often.
    let v4 = |n: u64| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | (n as u32 & 0x0000_ffff)));
    let v6 = |n: u64| IpAddr::V6(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | u128::from(n as u16) << 80));
    let mut rules = Vec::new();
    for line in 0..4000 {
        let n = next();
        let (addr, width) = if n % 3 == 0 { (v6(next()), 128u8) } else { (v4(next()), 32u8) };
        let len = if width == 32 { 8 + (next() % 25) as u8 } else { 16 + (next() % 113) as u8 };
        let net = Cidr { addr: from_bits(bits(addr) & mask(len, width), width == 32), len };
        rules.push(Rule { allow: n % 2 == 0, net, line });
    }
    let acl = Acl::new(rules.clone());
    for _ in 0..20_000 {
        let n = next();
        let addr = if n % 3 == 0 { v6(next()) } else { v4(next()) };
        assert_eq!(acl.check(addr), scan(&rules, addr), "{addr}");
    }
}
