//! Global `user NAME`: shunt binds every listener (ports below 1024 need root), reads its
//! certificates and token, and then gives root up for good, before any worker, probe or admin
//! thread serves a byte. What it does later (pipes, sockets to servers and probes, the admin
//! endpoint, a reload re-reading a conf the user can read, an upgrade re-executing the binary)
//! needs no privilege.

use crate::sys;
use log::{info, warn};

/// Switches to `user` (its uid, its primary group, no other group) and checks that root cannot
/// be regained; `None` only warns when running as root. An error says what went wrong: shunt
/// must not serve as root when told not to.
pub fn drop_to(user: Option<&str>) -> Result<(), String> {
    let ([uid, euid, _], _) = sys::identity();
    let Some(name) = user else {
        if euid == 0 {
            warn!("running as root: add \"user NAME\" to the conf (or User= to the systemd unit) to drop privileges after binding");
        }
        return Ok(());
    };
    let (want_uid, want_gid) = match sys::user_ids(name) {
        Ok(Some(ids)) => ids,
        Ok(None) => return Err(format!("user {name}: no such user")),
        Err(e) => return Err(format!("user {name}: looking it up: {e}")),
    };
    if euid != 0 {
        // Already unprivileged: an upgrade's new process, or a unit with User= set.
        if uid == want_uid && euid == want_uid {
            return Ok(());
        }
        return Err(format!("user {name}: shunt runs as uid {euid}, not root, and cannot become uid {want_uid}"));
    }
    sys::set_identity(want_uid, want_gid).map_err(|e| format!("user {name}: dropping privileges: {e}"))?;
    let (uids, gids) = sys::identity();
    if uids != [want_uid; 3] || gids != [want_gid; 3] || sys::can_regain_root() {
        return Err(format!("user {name}: after the switch the ids are {uids:?}/{gids:?}; refusing to run"));
    }
    info!("running as user {name} (uid {want_uid}, gid {want_gid})");
    Ok(())
}
