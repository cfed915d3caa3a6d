//! shunt: a layer-4 TCP load balancer.
//!
//! The binary (`src/main.rs`) parses the command line and signals; everything else lives in
//! this library so integration tests can start a balancer in-process.

pub mod admin;
pub mod balance;
pub mod config;
pub mod health;
pub mod logs;
pub mod logsink;
pub mod metrics;
pub mod net;
pub mod relay;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod snapshot;
mod sys;
pub mod timer;
pub mod token;
pub mod worker;

pub use runtime::{start, Control, Running, StartError};
pub use sys::raise_fd_limit;
