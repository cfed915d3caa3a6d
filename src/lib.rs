//! shunt: a layer-4 TCP load balancer.
//!
//! The binary (`src/main.rs`) parses the command line and signals; everything else lives in
//! this library so integration tests can start a balancer in-process. Public: what `main`, the
//! tests and the fuzz targets use (the configuration, starting and steering a balancer, its
//! counters, the parsers the fuzzers feed); the data path stays private to the crate, so the
//! compiler finds what nothing uses.

pub mod acl;
pub mod admin;
mod balance;
pub mod bind;
pub mod config;
pub mod health;
pub mod limits;
mod logs;
pub mod logsink;
pub mod metrics;
mod net;
pub mod notify;
pub mod plan;
mod privileges;
pub mod proxy_protocol;
mod relay;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod snapshot;
pub mod supervisor;
mod sys;
mod timer;
pub mod tls;
mod token;
pub mod upgrade;
mod worker;

pub use bind::StartError;
pub use runtime::{start, Running};
pub use supervisor::Supervisor;
pub use sys::{inherited_fd, raise_fd_limit};
