//! Sync groups (keepalived `vrrp_sync_group`): instances that change state together, so that
//! e.g. the LAN and WAN addresses of a router move as one.
//!
//! The IO layer calls [`propagate`] with the instances of a group whenever one of them reports
//! a [`super::Action::StateChange`]; the others are forced to follow with reason
//! [`super::Reason::SyncGroup`] and their actions are queued as usual.

use std::time::Instant;

use super::{Instance, State};

/// Makes every instance of `members` (indexes into `instances`) other than `changed` follow the
/// state `changed` entered: Master ⇒ Master, Backup ⇒ Backup, Fault ⇒ Fault; leaving Fault
/// returns the others to Backup.
pub fn propagate(now: Instant, instances: &mut [Instance], members: &[usize], changed: usize) {
    let Some(to) = instances.get(changed).map(Instance::state) else {
        return;
    };
    if to == State::Initialize {
        return;
    }
    for &m in members {
        if m != changed {
            if let Some(i) = instances.get_mut(m) {
                i.sync_to(now, to);
            }
        }
    }
}
