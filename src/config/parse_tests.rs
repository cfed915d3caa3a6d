//! Tests of the conf-file parser: one valid file parsed to the exact `Config`, one test per
//! error path (line number and message), multiple errors at once, and garbage bytes.

use super::*;
use crate::config::{CheckKind, ServerTls, SniPattern, StatusMatch, Verify};

/// One valid service (lines 1-3); each error case adds exactly one mistake to it. A macro, so
/// `concat!` can build the cases from it.
macro_rules! ok {
    () => {
        "service web\nbind *:0\nserver a 127.0.0.1:9001\n"
    };
    (+ $tail:literal) => {
        concat!(ok!(), $tail)
    };
    ($head:literal + $tail:literal) => {
        concat!($head, ok!(), $tail)
    };
    ($head:literal +) => {
        concat!($head, ok!())
    };
}
const OK: &str = ok!();

fn parse(src: &str) -> Result<Config, Vec<ConfigError>> {
    parse_bytes(src.as_bytes(), Path::new("t.conf"))
}

fn errors(src: &[u8]) -> Vec<(usize, String)> {
    match parse_bytes(src, Path::new("t.conf")) {
        Ok(_) => Vec::new(),
        Err(errs) => errs.into_iter().map(|e| (e.line, e.message)).collect(),
    }
}

fn srv(name: &str, addr: &str, line: usize) -> Server {
    let addr = addr.parse().unwrap();
    Server { name: name.into(), addr, weight: 1, backup: false, disabled: false, maxconn: None, tls: None, line }
}

fn svc(name: &str, line: usize, binds: &[(ListenAddr, usize)]) -> Service {
    let mut s = Block::new(name.into(), line).svc;
    s.binds = binds.iter().map(|&(addr, line)| Bind { addr, line, accept_proxy: false, defer_accept: false }).collect();
    s
}

fn addr(s: &str) -> ListenAddr {
    ListenAddr::Addr(s.parse().unwrap())
}

#[test]
fn design_example_plus_every_option_parses_exactly() {
    let src = r#"# ---- global ----
workers        1                  # event-loop threads, each with its own SO_REUSEPORT listeners
max_conns      100000             # proxied connections, all services together
admin          127.0.0.1:9090     # admin HTTP endpoint (metrics, status, control); absent = off
admin_token    /etc/shunt/token   # optional: a file whose content is the bearer token
drain_timeout  30s                # how long SIGTERM waits for live connections
log            info               # error | warn | info | debug | trace; RUST_LOG, when set, wins

# ---- a service: its listeners, its server pool, its policies ----
service web
  bind         *:8080                         # one or more
  balance      roundrobin                     # roundrobin | leastconn | first | source
  server       web-01 127.0.0.1:9001 weight 3
  server       web-02 127.0.0.1:9002          # weight 1 by default
  server       spare  127.0.0.1:9003 backup   # gets traffic only while no non-backup server is up
  check        tcp interval 2s timeout 1s rise 2 fall 3
  retries      2                              # on a failed connect, try the next server
  timeout      connect 2s
  timeout      idle 10m                       # no byte in either direction: close both sides
service cache.v2
  bind 127.0.0.1:6380
  bind [::1]:6380
  bind 0.0.0.0:0
  balance leastconn
  server r1 [::1]:6379 weight 0 disabled maxconn 50
  server r2 127.0.0.1:6379 maxconn 7 backup weight 256
  check send "PING\r\n" expect "+PONG\x00" port 6400 fall 10 rise 1 timeout 5s interval 250ms
  retries 0
  timeout idle 1h
  timeout connect 100ms
  timeout fin 2s
  timeout queue 0s
  max_conns 500
  splice off
service api_1
  bind [::]:80
  bind *:81
  balance first
  server a 10.0.0.1:80
  check http GET /health?x=1 expect 2xx
service s
  bind *:82
  balance source
  server b 10.0.0.2:1
  check http HEAD / expect 204 interval 5m
"#;
    let mut web = svc("web", 10, &[(ListenAddr::Any(8080), 11)]);
    web.servers = vec![
        Server { weight: 3, ..srv("web-01", "127.0.0.1:9001", 13) },
        srv("web-02", "127.0.0.1:9002", 14),
        Server { backup: true, ..srv("spare", "127.0.0.1:9003", 15) },
    ];
    web.check.kind = CheckKind::Tcp;
    web.check.line = 16;
    web.retries = 2;
    web.timeouts.connect = Duration::from_secs(2);
    let binds = [(addr("127.0.0.1:6380"), 21), (addr("[::1]:6380"), 22), (addr("0.0.0.0:0"), 23)];
    let mut cache = svc("cache.v2", 20, &binds);
    cache.balance = Balance::LeastConn;
    let r1 = srv("r1", "[::1]:6379", 25);
    let r2 = srv("r2", "127.0.0.1:6379", 26);
    cache.servers = vec![
        Server { weight: 0, disabled: true, maxconn: Some(50), ..r1 },
        Server { weight: 256, backup: true, maxconn: Some(7), ..r2 },
    ];
    let kind = CheckKind::Send { send: b"PING\r\n".to_vec(), expect: b"+PONG\0".to_vec() };
    let (interval, timeout) = (Duration::from_millis(250), Duration::from_secs(5));
    cache.check = Check { kind, interval, timeout, rise: 1, fall: 10, port: Some(6400), line: 27 };
    cache.retries = 0;
    cache.timeouts = Timeouts {
        connect: Duration::from_millis(100),
        idle: Duration::from_secs(3600),
        fin: Duration::from_secs(2),
        ..Timeouts::default()
    };
    cache.queue_timeout = Duration::ZERO;
    cache.max_conns = Some(500);
    cache.splice = Splice::Off;
    let mut api = svc("api_1", 35, &[(addr("[::]:80"), 36), (ListenAddr::Any(81), 37)]);
    api.balance = Balance::First;
    api.servers = vec![srv("a", "10.0.0.1:80", 39)];
    let (method, path, expect) = ("GET".into(), "/health?x=1".into(), StatusMatch::Class(2));
    api.check.kind = CheckKind::Http { method, path, expect };
    api.check.line = 40;
    let mut s = svc("s", 41, &[(ListenAddr::Any(82), 42)]);
    s.balance = Balance::Source;
    s.servers = vec![srv("b", "10.0.0.2:1", 44)];
    let (method, path, expect) = ("HEAD".into(), "/".into(), StatusMatch::Exact(204));
    s.check.kind = CheckKind::Http { method, path, expect };
    s.check.line = 45;
    s.check.interval = Duration::from_secs(300);
    let want = Config {
        path: PathBuf::from("t.conf"),
        workers: 1,
        max_conns: 100_000,
        admin: Some("127.0.0.1:9090".parse().unwrap()),
        admin_token: Some(PathBuf::from("/etc/shunt/token")),
        user: None,
        drain_timeout: Duration::from_secs(30),
        log_level: log::LevelFilter::Info,
        services: vec![web, cache, api, s],
        acl: crate::acl::Acl::default(),
        per_source: crate::limits::PerSource::default(),
    };
    assert_eq!(parse(src), Ok(want));
}

#[test]
fn globals_other_than_the_defaults() {
    let src = "workers 4\nmax_conns 5000\nadmin [::1]:9091\nadmin_token \"/run/a b\"\n\
               drain_timeout 0s\nlog trace\nuser shunt\n";
    let want = Config {
        path: PathBuf::from("t.conf"),
        workers: 4,
        max_conns: 5000,
        admin: Some("[::1]:9091".parse().unwrap()),
        admin_token: Some(PathBuf::from("/run/a b")),
        user: Some("shunt".to_string()),
        drain_timeout: Duration::ZERO,
        log_level: log::LevelFilter::Trace,
        services: Vec::new(),
        acl: crate::acl::Acl::default(),
        per_source: crate::limits::PerSource::default(),
    };
    let mut got = parse(&format!("{src}{OK}")).unwrap();
    got.services.clear();
    assert_eq!(got, want);
}

#[test]
fn defaults() {
    let web = Service {
        name: "web".into(),
        line: 1,
        binds: vec![Bind { addr: ListenAddr::Any(0), line: 2, accept_proxy: false, defer_accept: false }],
        balance: Balance::RoundRobin,
        servers: vec![srv("a", "127.0.0.1:9001", 3)],
        check: Check::default(),
        retries: 3,
        timeouts: Timeouts::default(),
        max_conns: None,
        queue_timeout: Duration::from_secs(5),
        splice: Splice::Auto,
        tls: None,
        routes: Vec::new(),
        acl: crate::acl::Acl::default(),
        per_source: crate::limits::PerSource::default(),
        proxy_protocol: None,
        on_down_close: false,
    };
    let want = Config {
        path: PathBuf::from("t.conf"),
        workers: 1,
        max_conns: 100_000,
        admin: None,
        admin_token: None,
        user: None,
        drain_timeout: Duration::from_secs(30),
        log_level: log::LevelFilter::Info,
        services: vec![web],
        acl: crate::acl::Acl::default(),
        per_source: crate::limits::PerSource::default(),
    };
    assert_eq!(parse(OK), Ok(want));
}

#[test]
fn routes_need_no_servers_in_front_nor_binds_behind() {
    let c = parse(
        "service front\nbind *:0\nroute sni API.example.com api\nroute sni *.example.com api\n\
         service api\nserver a 127.0.0.1:1\n",
    )
    .unwrap();
    let routes = &c.services[0].routes;
    assert_eq!(routes.len(), 2);
    assert_eq!((routes[0].pattern.clone(), routes[0].target), (SniPattern::Exact("api.example.com".into()), 1));
    assert_eq!(routes[1].pattern, SniPattern::Under(".example.com".into()));
    assert!(c.services[0].servers.is_empty() && c.services[1].binds.is_empty());
    let rendered = crate::config::render(&c);
    assert!(rendered.contains("  route sni api.example.com api\n  route sni *.example.com api\n"), "{rendered}");
    // A service nothing routes to still needs a bind.
    let errs = errors(b"service front\nbind *:0\nroute sni a.test api\nservice api\nserver a 127.0.0.1:1\nservice lone\nserver b 127.0.0.1:2\n");
    assert!(errs.len() == 1 && errs[0].1.contains("service \"lone\" has no bind line"), "{errs:?}");
}

#[test]
fn server_tls_options_and_the_name_to_verify() {
    let c = parse(
        "service web\nbind *:0\nserver a localhost:443 tls\nserver b 127.0.0.1:443 tls ca /etc/ca.pem sni API.internal\n\
         server c 127.0.0.1:444 tls verify none weight 2\nserver d 127.0.0.1:80\n",
    )
    .unwrap();
    let tls: Vec<Option<ServerTls>> = c.services[0].servers.iter().map(|s| s.tls.clone()).collect();
    assert_eq!(tls[0], Some(ServerTls { verify: Verify::SystemRoots, name: Some("localhost".into()) }));
    assert_eq!(tls[1], Some(ServerTls { verify: Verify::Ca("/etc/ca.pem".into()), name: Some("api.internal".into()) }));
    assert_eq!(tls[2], Some(ServerTls { verify: Verify::Nothing, name: None }), "an address: no name");
    assert_eq!(tls[3], None);
    // The rendered text parses back to the same settings (the host name became an address and
    // the name it stood for an explicit sni).
    let again = parse(&crate::config::render(&c)).unwrap();
    let tls_again: Vec<Option<ServerTls>> = again.services[0].servers.iter().map(|s| s.tls.clone()).collect();
    assert_eq!(tls_again, tls);
}

#[test]
fn allow_and_deny_lines_global_and_per_service_keep_their_order() {
    let c =
        parse("deny 192.0.2.0/24\nservice web\nbind *:0\nallow 10.0.0.0/8 ::1\ndeny 0.0.0.0/0\nserver a 127.0.0.1:1\n")
            .unwrap();
    let rules =
        |acl: &crate::acl::Acl| acl.rules().iter().map(|r| (r.allow, r.net.to_string(), r.line)).collect::<Vec<_>>();
    assert_eq!(rules(&c.acl), [(false, "192.0.2.0/24".to_string(), 1)]);
    assert_eq!(
        rules(&c.services[0].acl),
        [(true, "10.0.0.0/8".into(), 4), (true, "::1/128".into(), 4), (false, "0.0.0.0/0".into(), 5)]
    );
    let again = parse(&crate::config::render(&c)).unwrap();
    assert_eq!(rules(&again.services[0].acl).len(), 3);
    assert_eq!(again.acl.rules()[0].net, c.acl.rules()[0].net);
}

#[test]
fn per_source_limits_global_and_per_service() {
    let c =
        parse("max_conns_per_ip 20\nrate_per_ip 50/s\nservice web\nbind *:0\nrate_per_ip 3/m\nserver a 127.0.0.1:1\n")
            .unwrap();
    let second = std::time::Duration::from_secs(1);
    assert_eq!(c.per_source.max_conns, Some(20));
    assert_eq!(c.per_source.rate, Some(crate::limits::Rate { count: 50, per: second }));
    assert_eq!(c.services[0].per_source.rate, Some(crate::limits::Rate { count: 3, per: 60 * second }));
    assert_eq!(c.services[0].per_source.max_conns, None);
    let again = parse(&crate::config::render(&c)).unwrap();
    assert_eq!((again.per_source, again.services[0].per_source), (c.per_source, c.services[0].per_source));
}

#[test]
fn sni_patterns_match_names_and_subdomains_at_any_depth() {
    let exact = SniPattern::Exact("api.example.com".into());
    let under = SniPattern::Under(".example.com".into());
    assert!(exact.matches("api.example.com") && !exact.matches("x.api.example.com"));
    assert!(under.matches("a.example.com") && under.matches("a.b.example.com"));
    assert!(!under.matches("example.com") && !under.matches("badexample.com") && !under.matches(".example.com"));
}

#[test]
fn log_levels() {
    let levels = ["error", "warn", "info", "debug", "trace"];
    for (word, level) in levels.into_iter().zip(log::LevelFilter::iter().skip(1)) {
        assert_eq!(parse(&format!("log {word}\n{OK}")).unwrap().log_level, level);
    }
}

#[test]
fn host_names_resolve_at_parse_time() {
    let c = parse("service web\nbind *:0\nserver a localhost:9001\n").unwrap();
    let a = c.services[0].servers[0].addr;
    assert!(a.ip().is_loopback() && a.port() == 9001, "{a}");
}

#[test]
fn offline_parsing_checks_host_names_without_resolving_them() {
    let src = "service web\nbind *:0\nserver a no-such-host.invalid:9001 weight 2\n";
    let c = parse_bytes_offline(src.as_bytes(), Path::new("t.conf")).unwrap();
    assert_eq!(c.services[0].servers[0].addr, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(c.services[0].servers[0].weight, 2);
    let bad = parse_bytes_offline(b"service web\nbind *:0\nserver a bad_name:1\n", Path::new("t.conf"));
    assert!(bad.unwrap_err()[0].message.contains("is not a valid address"));
    assert_eq!(parse_bytes_offline(OK.as_bytes(), Path::new("t.conf")), parse(OK));
}

#[test]
fn bind_options_in_any_order() {
    let c = parse(
        "service web\nbind 127.0.0.1:1 defer_accept accept_proxy\nbind 127.0.0.1:2 accept_proxy\n\
         bind 127.0.0.1:3 defer_accept\nserver a 127.0.0.1:9\n",
    )
    .unwrap();
    let flags: Vec<(bool, bool)> = c.services[0].binds.iter().map(|b| (b.accept_proxy, b.defer_accept)).collect();
    assert_eq!(flags, [(true, true), (true, false), (false, true)]);
}

#[test]
fn binds_that_do_not_overlap_are_fine() {
    let src = "service a\nbind *:0\nbind *:0\nbind 127.0.0.1:0\nbind [::]:80\nbind 0.0.0.0:80\n\
               bind 127.0.0.1:81\nbind 127.0.0.2:81\nbind [::1]:82\nbind 0.0.0.0:82\n\
               server s 10.0.0.1:1\n";
    assert_eq!(errors(src.as_bytes()), vec![]);
}

#[test]
fn crlf_files_and_send_checks_with_empty_send_parse() {
    let c = parse("service web\r\nbind *:0\r\nserver a 127.0.0.1:1\r\ncheck send \"\" expect \"220\"\r\n");
    let want = CheckKind::Send { send: Vec::new(), expect: b"220".to_vec() };
    assert_eq!(c.unwrap().services[0].check.kind, want);
}

#[test]
fn the_project_conf_files_parse() {
    for src in [include_str!("../../conf/example.conf"), include_str!("../../conf/shunt.conf")] {
        assert_eq!(errors(src.as_bytes()), vec![]);
    }
}

#[test]
fn every_error_is_reported_in_line_order() {
    let src = "workers 0\nbind *:80\nservice web\nbind *:99999\nbalance fast\n\
               server a 127.0.0.1:0\nserver a 127.0.0.1:3\nsever b 127.0.0.1:1\n\
               check http GET / expect 999\nservice api\nbind *:1\n";
    let errs = errors(src.as_bytes());
    let lines: Vec<usize> = errs.iter().map(|e| e.0).collect();
    assert_eq!(lines, vec![1, 2, 4, 5, 6, 7, 8, 9, 10], "{errs:?}");
    assert!(errs[5].1.contains("duplicate server name"), "{errs:?}");
}

#[test]
fn errors_display_as_file_line_message() {
    let errs = parse(&format!("{OK}retries x\n")).unwrap_err();
    assert_eq!(errs[0].to_string(), r#"t.conf:4: retries: "x" is not a whole number: expected 0-100"#);
    assert_eq!(parse("").unwrap_err()[0].to_string(), format!("t.conf: {}", errors(b"")[0].1));
}

#[test]
fn unknown_directive_without_a_close_match_suggests_nothing() {
    let errs = errors(format!("{OK}frobnicate 1\n").as_bytes());
    assert_eq!(errs, vec![(4, r#"unknown directive "frobnicate" in service "web""#.to_string())]);
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let missing = load(Path::new("/nonexistent/shunt.conf")).unwrap_err();
    assert_eq!((missing.len(), missing[0].line), (1, 0));
    assert!(missing[0].message.contains("cannot read the conf file"), "{missing:?}");
    let path = std::env::temp_dir().join(format!("shunt-parse-test-{}.conf", std::process::id()));
    std::fs::write(&path, OK).unwrap();
    let c = load(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(c.unwrap().path, path);
}

#[test]
fn garbage_never_panics() {
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    };
    // why: whole words reach deeper than random bytes, which rarely get past the lexer.
    let words: Vec<&str> = "service bind server check workers timeout max_conns log web *:80 \
         127.0.0.1:0 [::1]:9 weight 300 -1 0s 5x 99999999999999999999h expect http send \
         \"\\x41 \"a\" # tcp 2xx accept_proxy \t \n \n"
        .split(' ')
        .collect();
    for round in 0..400 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            (0..next() % 200).map(|_| next() as u8).collect()
        } else {
            let n = next() % 60;
            let picked: Vec<&str> = (0..n).map(|_| words[next() as usize % words.len()]).collect();
            picked.join(" ").into_bytes()
        };
        let _ = parse_bytes(&bytes, Path::new("g.conf"));
    }
    let errs = errors(b"\xff\xfe\x00service");
    assert_eq!(errs.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 1]);
}

macro_rules! error_cases {
    ($($name:ident: $src:expr => $line:expr, $frag:expr;)*) => {$(
        #[test]
        fn $name() {
            let errs = errors(AsRef::<[u8]>::as_ref($src));
            let hit = errs.len() == 1 && errs[0].0 == $line && errs[0].1.contains($frag);
            assert!(hit, "want one error on line {} with {:?}, got {errs:?}", $line, $frag);
        }
    )*};
}

error_cases! {
    unknown_service_directive: ok!(+ "sever b 127.0.0.1:1\n")
        => 4, r#"unknown directive "sever" in service "web" (did you mean "server"?)"#;
    unknown_global_directive: ok!("Workers 2\n" +)
        => 1, r#"unknown directive "Workers" (did you mean "workers"?)"#;
    route_to_nowhere: ok!(+ "route sni a.example.com api\n") => 4, r#"route: no service named "api" in this file"#;
    route_to_itself: ok!(+ "route sni a.example.com web\n") => 4, "route: a service cannot route to itself";
    route_kind: ok!(+ "route host a.example.com web\n") => 4, r#"unknown route kind "host""#;
    route_pattern: ok!(+ "route sni a.*.com web\n") => 4, r#"server name pattern "a.*.com" is not a host name"#;
    route_pattern_twice: concat!(ok!(+ "route sni A.test api\nroute sni a.test api\n"), "service api\nserver b 127.0.0.1:2\n")
        => 5, "pattern a.test is already routed on line 4";
    route_two_hops: concat!(ok!(+ "route sni a.test api\n"), "service api\nroute sni b.test other\nservice other\nserver b 127.0.0.1:2\n")
        => 4, r#"route: service "api" has routes of its own"#;
    server_ca_without_tls: ok!(+ "server b 127.0.0.1:2 ca a.pem\n") => 4, "ca, verify and sni are options of tls";
    server_ca_and_verify_none: ok!(+ "server b 127.0.0.1:2 tls ca a.pem verify none\n") => 4, "not both";
    server_verify_value: ok!(+ "server b 127.0.0.1:2 tls verify some\n") => 4, r#"unknown verify value "some""#;
    server_sni_not_a_name: ok!(+ "server b 127.0.0.1:2 tls sni a..b\n") => 4, r#"sni "a..b" is not a host name"#;
    acl_host_bits: ok!(+ "allow 10.0.0.1/8\n") => 4, "allow: 10.0.0.1/8 has host bits set: did you mean 10.0.0.0/8?";
    acl_no_prefix: ok!(+ "deny\n") => 4, "deny: wrong number of arguments, expected: deny CIDR...";
    acl_global_garbage: ok!("allow 10.0.0.0/8 nonsense\n" +) => 1, r#"allow: "nonsense" is not an address"#;
    rate_without_unit: ok!(+ "rate_per_ip 50\n") => 4, r#"rate_per_ip: "50" is not a rate: give N/s or N/m"#;
    rate_zero: ok!(+ "rate_per_ip 0/s\n") => 4, "rate_per_ip:";
    per_ip_twice: ok!("max_conns_per_ip 2\nmax_conns_per_ip 3\n" +) => 2, "duplicate \"max_conns_per_ip\"";
    route_arity: ok!(+ "route sni a.test\n") => 4, "expected: route sni PATTERN SERVICE";
    tls_without_cert: ok!(+ "tls alpn h2\n") => 4, "tls: no certificate: add \"tls cert FILE key FILE\"";
    tls_cert_without_key: ok!(+ "tls cert a.pem\n") => 4, "expected: tls cert FILE key FILE";
    tls_old_version: ok!(+ "tls cert a key b\ntls versions 1.1 1.2\n") => 5, "version 1.1 is insecure";
    tls_unknown_kind: ok!(+ "tls certs a key b\n") => 4, r#"unknown kind "certs""#;
    tls_alpn_twice: ok!(+ "tls cert a key b\ntls alpn h2\ntls alpn h2\n") => 6, "duplicate \"tls alpn\"";
    handshake_timeout_zero: ok!(+ "timeout handshake 0s\n") => 4, "handshake duration 0s must be greater than zero";
    proxy_protocol_version: ok!(+ "proxy_protocol v3
") => 4, r#"unknown version "v3": expected one of v1, v2"#;
    unknown_bind_option: "service web\nbind *:0 accept-proxy\nserver a 127.0.0.1:1\n"
        => 2, r#"bind: unknown option "accept-proxy": expected accept_proxy or defer_accept"#;
    bind_option_twice: "service web\nbind *:0 defer_accept defer_accept\nserver a 127.0.0.1:1\n"
        => 2, "bind: defer_accept given twice";
    user_name_with_a_slash: "user ../root\nservice web\nbind *:0\nserver a 127.0.0.1:1\n"
        => 1, r#"user: "../root" is not a user name (letters, digits, _ - ., at most 32)"#;
    redis_role_unknown: ok!(+ "check redis role leader\n")
        => 4, r#"unknown role "leader": expected one of master, replica"#;
    redis_password_without_file: ok!(+ "check redis role master password\n")
        => 4, r#"missing value after "password""#;
    redis_role_twice: ok!(+ "check redis role master role replica\n") => 4, "role given twice";
    pgsql_without_user: ok!(+ "check pgsql role primary\n") => 4, "check pgsql needs user NAME";
    pgsql_role_unknown: ok!(+ "check pgsql user a role leader\n")
        => 4, r#"unknown role "leader": expected one of primary, standby"#;
    on_down_value: ok!(+ "on_down drop\n") => 4, r#"on_down: unknown value "drop": expected one of keep, close"#;
    global_inside_a_service: ok!(+ "workers 2\n")
        => 4, "is a global directive: it must come before the first service (line 1)";
    service_directive_before_any_service: ok!("balance first\n" +)
        => 1, r#""balance" belongs to a service: add a "service NAME" line before it"#;
    duplicate_global: ok!("workers 1\nworkers 2\n" +)
        => 2, r#"workers: duplicate "workers" (first given on line 1)"#;
    duplicate_balance: ok!(+ "balance first\nbalance source\n")
        => 5, r#"duplicate "balance" (first given on line 4)"#;
    duplicate_check: ok!(+ "check tcp\ncheck tcp\n") => 5, r#"duplicate "check""#;
    duplicate_timeout: ok!(+ "timeout idle 1s\ntimeout connect 1s\ntimeout idle 2s\n")
        => 6, r#"duplicate "timeout idle" (first given on line 4)"#;
    duplicate_server_option: ok!(+ "server b 127.0.0.1:2 backup backup\n")
        => 4, "option backup given twice";
    duplicate_check_option: ok!(+ "check tcp rise 2 rise 3\n") => 4, "option rise given twice";
    arity_workers: ok!("workers\n" +)
        => 1, "workers: wrong number of arguments, expected: workers N";
    arity_log: ok!("log info debug\n" +) => 1, "expected: log error|warn|info|debug|trace";
    arity_server: ok!(+ "server b\n")
        => 4, "expected: server NAME ADDR [weight N] [backup] [disabled] [maxconn N]";
    arity_bind: "service web\nbind\nserver a 127.0.0.1:1\n" => 2, "expected: bind ADDR";
    arity_service: "service\nbind *:0\nserver a 127.0.0.1:1\n"
        => 1, "service: wrong number of arguments, expected: service NAME";
    arity_check: ok!(+ "check\n") => 4, "check: wrong number of arguments";
    arity_check_send: ok!(+ "check send \"x\" \"y\"\n")
        => 4, r#"expected: check send "BYTES" expect "BYTES" [options]"#;
    arity_check_http: ok!(+ "check http GET / 200\n")
        => 4, "check http METHOD PATH expect STATUS";
    arity_timeout: ok!(+ "timeout connect\n") => 4, "expected: timeout connect|idle|fin|handshake|queue DURATION";
    duplicate_timeout_queue: ok!(+ "timeout queue 1s\ntimeout queue 2s\n")
        => 5, r#"duplicate "timeout queue" (first given on line 4)"#;
    queue_timeout_negative: ok!(+ "timeout queue -1s\n")
        => 4, r#"queue duration "-1s" is negative"#;
    number_zero: ok!("workers 0\n" +) => 1, "workers: 0 is out of range 1-256";
    weight_out_of_range: ok!(+ "server b 127.0.0.1:2 weight 300\n")
        => 4, "weight 300 is out of range 0-256";
    maxconn_zero: ok!(+ "server b 127.0.0.1:2 maxconn 0\n")
        => 4, "maxconn 0 is out of range 1-";
    retries_too_many: ok!(+ "retries 101\n") => 4, "retries: 101 is out of range 0-100";
    service_max_conns_zero: ok!(+ "max_conns 0\n") => 4, "max_conns: 0 is out of range 1-";
    check_rise_zero: ok!(+ "check tcp rise 0\n") => 4, "rise 0 is out of range 1-1000";
    check_port_zero: ok!(+ "check tcp port 0\n") => 4, "port 0 is out of range 1-65535";
    duration_bad_unit: ok!("drain_timeout 5x\n" +)
        => 1, r#"duration "5x": expected a number followed by ms, s, m or h, e.g. 250ms"#;
    check_interval_zero: ok!(+ "check tcp interval 0s\n")
        => 4, "check: interval duration 0s must be greater than zero";
    check_timeout_zero: ok!(+ "check tcp timeout 0ms\n")
        => 4, "timeout duration 0ms must be greater than zero";
    connect_timeout_zero: ok!(+ "timeout connect 0ms\n")
        => 4, "connect duration 0ms must be greater than zero";
    idle_timeout_zero: ok!(+ "timeout idle 0h\n")
        => 4, "idle duration 0h must be greater than zero";
    fin_timeout_zero: ok!(+ "timeout fin 0s\n")
        => 4, "fin duration 0s must be greater than zero";
    fin_timeout_twice: ok!(+ "timeout fin 1s\ntimeout fin 2s\n")
        => 5, "timeout fin";
    log_unknown_level: ok!("log inf\n" +)
        => 1, r#"unknown level "inf": expected one of error, warn, info, debug, trace (did"#;
    balance_unknown: ok!(+ "balance leastconns\n") => 4, r#"did you mean "leastconn"?"#;
    splice_unknown: ok!(+ "splice yes\n") => 4, "expected one of on, off, always";
    timeout_unknown_kind: ok!(+ "timeout read 1s\n")
        => 4, r#"unknown kind "read": expected one of connect, idle, fin, handshake, queue"#;
    check_unknown_kind: ok!(+ "check tpc\n") => 4, r#"(did you mean "tcp"?)"#;
    check_unknown_option: ok!(+ "check tcp intervall 2s\n")
        => 4, r#"one of interval, timeout, rise, fall, port (did you mean "interval"?)"#;
    check_missing_value: ok!(+ "check tcp rise\n") => 4, r#"missing value: expected "rise N""#;
    check_send_empty_expect: ok!(+ "check send \"x\" expect \"\"\n")
        => 4, "the expect string is empty";
    server_unknown_option: ok!(+ "server b 127.0.0.1:2 wieght 3\n")
        => 4, r#"(did you mean "weight"?)"#;
    server_missing_value: ok!(+ "server b 127.0.0.1:2 weight\n")
        => 4, r#"missing value: expected "weight N""#;
    admin_token_empty: ok!("admin_token \"\"\n" +) => 1, "admin_token: the file name is empty";
    server_port_zero: ok!(+ "server b 127.0.0.1:0\n") => 4, "port 0 is out of range 1-65535";
    server_no_port: ok!(+ "server b 127.0.0.1\n") => 4, r#"address "127.0.0.1" has no port"#;
    server_wildcard: ok!(+ "server b *:80\n") => 4, "a server needs a concrete address";
    server_bad_host: ok!(+ "server b bad_host:80\n")
        => 4, r#""bad_host" is not a valid address"#;
    server_numeric_host: ok!(+ "server b 10.1:80\n") => 4, r#""10.1" is not a valid address"#;
    service_bad_name: "service we/b\nbind *:0\nserver a 127.0.0.1:1\n"
        => 1, r#"service: service name "we/b" may only use letters, digits, '_', '.' and '-'"#;
    duplicate_service: ok!(+ "service web\nbind *:0\nserver a 127.0.0.1:2\n")
        => 4, r#"duplicate service name "web" (first on line 1)"#;
    duplicate_server: ok!(+ "server a 127.0.0.1:2\n")
        => 4, r#"duplicate server name "a" (first on line 3)"#;
    service_without_bind: "service web\nserver a 127.0.0.1:1\n"
        => 1, r#"service "web" has no bind line: add one, e.g. "bind *:8080""#;
    service_without_server: "service web\nbind *:0\n"
        => 1, r#"service "web" has no server line"#;
    no_service_empty_file: "" => 0, "no service defined";
    no_service_globals_only: "workers 2\n# only a comment\n" => 0, "no service defined";
    conflict_across_services:
        ok!("service a\nbind *:80\nserver s 10.0.0.1:1\n" + "bind 127.0.0.1:80")
        => 7, r#"bind: 127.0.0.1:80 conflicts with bind *:80 on line 2 (service "a")"#;
    bind_conflict_same_address: ok!(+ "bind [::1]:80\nbind [::1]:80\n")
        => 5, "[::1]:80 conflicts with bind [::1]:80 on line 4";
    bind_conflict_ipv4_wildcard: ok!(+ "bind 127.0.0.1:80\nbind 0.0.0.0:80\n")
        => 5, "0.0.0.0:80 conflicts with bind 127.0.0.1:80 on line 4";
    bind_conflict_with_admin: ok!("admin 127.0.0.1:9090\n" + "bind *:9090\n")
        => 5, "*:9090 conflicts with admin 127.0.0.1:9090 on line 1";
    lexer_error_surfaces: ok!(+ "check send \"PING\n")
        => 4, "unterminated quote starting at column 12";
    invalid_utf8_line: b"service web\nbind *:0\nserver a 127.0.0.1:1\nbalance \xff\n"
        => 4, "line is not valid UTF-8";
    non_utf8_quoted_argument: ok!(+ "balance \"\\xff\"\n")
        => 4, "balance: argument is not valid UTF-8 text";
    broken_bind_line_counts_as_a_bind: b"service web\nbind *:0\xff\nserver a 127.0.0.1:1\n"
        => 2, "line is not valid UTF-8 (byte 0xff at column 9)";
    broken_server_line_counts_as_a_server: "service web\nbind *:0\nserver a \"127.0.0.1:1\n"
        => 3, "unterminated quote";
    broken_service_line_opens_a_service: ok!(+ "balance first\nservice \"api\nbalance first\n")
        => 5, "unterminated quote";
}

#[test]
fn redis_checks_take_a_role_a_password_file_and_the_usual_options() {
    let c = parse(ok!(+ "check redis password /etc/shunt/pw interval 1s role master port 6390\n")).unwrap();
    let check = &c.services[0].check;
    let password = Some(crate::config::Secret { path: PathBuf::from("/etc/shunt/pw"), value: String::new() });
    assert_eq!(check.kind, CheckKind::Redis { role: Some(crate::config::RedisRole::Master), password });
    assert_eq!((check.interval, check.port, check.line), (Duration::from_secs(1), Some(6390), 4));
    let any = parse(ok!(+ "check redis\n")).unwrap();
    assert_eq!(any.services[0].check.kind, CheckKind::Redis { role: None, password: None });
}

#[test]
fn loading_reads_password_files_and_names_the_check_line_when_it_cannot() {
    let dir = std::env::temp_dir().join(format!("shunt-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pw, conf) = (dir.join("pw"), dir.join("shunt.conf"));
    std::fs::write(&pw, "app s3cret\r\nignored second line\n").unwrap();
    std::fs::write(&conf, format!("{}check redis password {}\n", ok!(), pw.display())).unwrap();
    let c = super::load(&conf).unwrap();
    let CheckKind::Redis { password: Some(secret), .. } = &c.services[0].check.kind else { panic!() };
    assert_eq!(secret.value, "app s3cret", "the first line, without its line ending");
    std::fs::write(&pw, "\n").unwrap();
    let e = super::load(&conf).unwrap_err();
    assert_eq!((e[0].line, e[0].message.ends_with("its first line is empty")), (4, true), "{e:?}");
    std::fs::remove_file(&pw).unwrap();
    let e = super::load(&conf).unwrap_err();
    assert!(e[0].to_string().contains("shunt.conf:4: check: password file"), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
