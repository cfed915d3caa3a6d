//! The balancer as a library in the test's own process (`shunt::start`): a `Config` built in code
//! around real backends on loopback, and the start and stop around a test. For tests that look
//! inside (`Running::stats`, `snapshot`, the control channels) rather than at a process.

use shunt::config::{Balance, Bind, Check, Config, ListenAddr, Server, Service, Splice, Timeouts};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Service `svc` on 127.0.0.1:0 over `servers` (name, address, weight), round robin, default
/// checks, 3 retries, the default 5 s queue timeout.
pub fn service(servers: Vec<(&str, SocketAddr, u32)>) -> Service {
    Service {
        name: "svc".into(),
        line: 1,
        binds: vec![Bind {
            addr: ListenAddr::Addr("127.0.0.1:0".parse().unwrap()),
            line: 2,
            accept_proxy: false,
            defer_accept: false,
        }],
        balance: Balance::RoundRobin,
        servers: servers
            .into_iter()
            .enumerate()
            .map(|(i, (name, addr, weight))| Server {
                name: name.into(),
                addr,
                weight,
                backup: false,
                disabled: false,
                maxconn: None,
                tls: None,
                line: 3 + i,
            })
            .collect(),
        check: Check::default(),
        retries: 3,
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            idle: Duration::from_secs(60),
            fin: Duration::from_secs(30),
            handshake: Duration::from_secs(5),
        },
        max_conns: None,
        queue_timeout: Duration::from_secs(5),
        splice: Splice::Auto,
        tls: None,
        routes: Vec::new(),
        acl: shunt::acl::Acl::default(),
        per_source: shunt::limits::PerSource::default(),
        proxy_protocol: None,
        on_down_close: false,
    }
}

/// A one-worker config of `services`, no admin endpoint.
pub fn config(services: Vec<Service>) -> Config {
    Config {
        path: PathBuf::from("test.conf"),
        workers: 1,
        max_conns: 10_000,
        admin: None,
        admin_token: None,
        user: None,
        drain_timeout: Duration::from_secs(5),
        log_level: log::LevelFilter::Info,
        services,
        acl: shunt::acl::Acl::default(),
        per_source: shunt::limits::PerSource::default(),
    }
}

/// Starts the balancer; returns it and its first service's bound address.
pub fn start(c: Config) -> (shunt::Running, SocketAddr) {
    let r = shunt::start(c).expect("start");
    let addr = r.listening[0].1;
    (r, addr)
}

/// Drains (5 s at most) and waits for every thread to end.
pub fn stop(r: shunt::Running) {
    r.supervisor.drain(Instant::now() + Duration::from_secs(5));
    r.wait().unwrap();
}
