//! A worker's side of a binary upgrade: giving up its sessions that can move (the old process)
//! and adopting the ones that moved in (the new process). See `crate::upgrade`.

use super::Worker;
use crate::logs;
use crate::session::{Moving, Session};
use crate::shared::{ServerRuntime, ServiceRuntime};
use crate::token::{self, Side};
use mio::Interest;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

impl Worker {
    /// Stops accepting (as a drain until `deadline`) and takes every streaming session out of
    /// this worker without closing anything: its sockets leave the poll, its slots are given
    /// back, its timer goes.
    pub(super) fn hand_over(&mut self, deadline: Instant, now: Instant) -> Vec<Moving> {
        self.start_drain(deadline, now);
        let movable: Vec<usize> = self.sessions.iter().filter(|(_, s)| s.can_move()).map(|(k, _)| k).collect();
        let mut out = Vec::with_capacity(movable.len());
        for slot in movable {
            let mut session = self.sessions.remove(slot);
            let _ = self.poll.registry().deregister(&mut session.client);
            if let Some(b) = session.backend.as_mut() {
                let _ = self.poll.registry().deregister(b);
            }
            self.timers.cancel(slot);
            if let Some(server) = &session.server {
                server.release();
            }
            self.stats.release_admission(&session.service);
            out.push(session.export(now, &mut self.relay));
        }
        out
    }

    /// Sessions that moved in: each goes on under its service and server of this process (by
    /// name and address), or under detached ones when this configuration no longer has them
    /// (they finish, unseen by the metrics). Slots are taken whatever the caps: these clients
    /// are already connected.
    pub(super) fn adopt(&mut self, sessions: Vec<Moving>, now: Instant) {
        for m in sessions {
            let meta = &m.meta;
            let pool = self.pools.iter().position(|p| p.rt.name == meta.service);
            let service = match pool {
                Some(p) => Arc::clone(&self.pools[p].rt),
                None => Arc::new(ServiceRuntime::new(&meta.service, self.stats.workers.len())),
            };
            let known = pool.and_then(|p| {
                self.pools[p].servers.iter().find(|v| v.rt.name == meta.server && v.rt.addr == meta.server_addr)
            });
            let server = match known {
                Some(v) => Arc::clone(&v.rt),
                None => Arc::new(ServerRuntime::detached(&meta.server, meta.server_addr, self.stats.workers.len())),
            };
            let id = self.next_id;
            self.next_id += 1;
            let (client, peer) = (meta.client_addr, format!("{}/{}", meta.service, meta.server));
            let session = match Session::import(m, id, Arc::clone(&service), Arc::clone(&server), now, &mut self.relay)
            {
                Ok(s) => s,
                Err(e) => {
                    logs::limited_warn("adopt", format_args!("upgrade: session {client} {peer} lost: {e}"));
                    continue;
                }
            };
            self.stats.active_total.fetch_add(1, Relaxed);
            service.active.fetch_add(1, Relaxed);
            server.active.fetch_add(1, Relaxed);
            let entry = self.sessions.vacant_entry();
            let slot = entry.key();
            let session = entry.insert(session);
            let registry = self.poll.registry();
            let both = Interest::READABLE | Interest::WRITABLE;
            let registered =
                registry.register(&mut session.client, token::session(slot, Side::Client), both).and_then(|()| {
                    let b = session.backend.as_mut().expect("invariant: adopted sessions stream");
                    registry.register(b, token::session(slot, Side::Backend), both)
                });
            if let Err(e) = registered {
                logs::limited_warn("register", format_args!("upgrade: register an adopted session: {e}"));
                self.close(slot, logs::Cause::Resource, now);
                continue;
            }
            self.arm_timer(slot);
            self.pump(slot, now);
        }
        self.publish_load();
    }
}
