//! A worker's view of the servers of each service: the last health verdict and admin state it
//! was told, the settings of the generation in force, and its own balancer rotation. Built from
//! a [`Generation`]; the runtime objects (gauges, counters) are shared with the other threads.

use crate::balance::{Balancer, Candidate};
use crate::shared::{AdminState, Generation, ServerId, ServerRuntime, ServiceRuntime};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// A server as this worker sees it.
pub(super) struct ServerView {
    pub(super) rt: Arc<ServerRuntime>,
    pub(super) weight: u32,
    pub(super) backup: bool,
    pub(super) maxconn: Option<u32>,
    /// Last verdict received from the health thread.
    pub(super) up: bool,
    /// How to speak TLS to it (`server ... tls`), from the generation in force.
    pub(super) tls: Option<Arc<crate::tls::BackendTls>>,
    pub(super) admin: AdminState,
}

impl Candidate for ServerView {
    fn weight(&self) -> u32 {
        self.weight
    }
    fn backup(&self) -> bool {
        self.backup
    }
    fn available(&self) -> bool {
        self.up && self.admin == AdminState::Enabled
    }
    fn has_room(&self) -> bool {
        self.maxconn.is_none_or(|m| self.rt.active.load(Relaxed) < u64::from(m))
    }
    fn active(&self) -> u64 {
        self.rt.active.load(Relaxed)
    }
}

/// One service's servers and balancer, in the generation's order.
pub(super) struct ServicePool {
    pub(super) rt: Arc<ServiceRuntime>,
    pub(super) balancer: Balancer,
    pub(super) servers: Vec<ServerView>,
}

impl ServicePool {
    /// The pool of every service of `generation`, each server starting from the health and
    /// admin state its runtime holds now (later changes arrive as messages).
    pub(super) fn all(generation: &Generation) -> Vec<ServicePool> {
        generation
            .config
            .services
            .iter()
            .zip(&generation.services)
            .zip(&generation.servers)
            .zip(&generation.server_tls)
            .map(|(((svc, rt), servers), tls)| ServicePool {
                rt: Arc::clone(rt),
                balancer: Balancer::for_servers(
                    svc.balance,
                    &svc.servers.iter().map(|s| (s.name.as_str(), s.weight)).collect::<Vec<_>>(),
                ),
                servers: svc
                    .servers
                    .iter()
                    .zip(servers)
                    .zip(tls)
                    .map(|((srv, rt), tls)| ServerView {
                        rt: Arc::clone(rt),
                        weight: rt.weight.load(Relaxed),
                        backup: srv.backup,
                        maxconn: srv.maxconn,
                        up: rt.up.load(Relaxed),
                        admin: rt.admin(),
                        tls: tls.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    /// Positions in `servers` of the ids in `tried` (servers a session already failed on).
    pub(super) fn positions(&self, tried: &[ServerId]) -> Vec<usize> {
        if tried.is_empty() {
            return Vec::new();
        }
        self.servers.iter().enumerate().filter(|(_, v)| tried.contains(&v.rt.id)).map(|(i, _)| i).collect()
    }
}
