//! In-flight request counts of least-request upstreams, shared by every worker of an Envoy
//! through proxy-wasm shared data, updated with compare-and-swap so no update is lost.
//!
//! Counts are owned by the VM that took them, so a VM that is lost (a trap, then
//! `FAIL_RELOAD`) cannot leave its counts behind: an upstream's value is a list of 8-byte
//! entries, `owner` then `count` (both `u32`, little-endian), one per VM holding requests there;
//! its load is the sum. Each VM that can fail alone picks a random owner id and beats in the
//! owners list ([`OWNERS_KEY`]: `owner`, then Unix milliseconds as `u64`) on the housekeeping
//! tick; owners that have not beaten for [`OWNER_STALE_MS`] leave the list. On its beat a VM
//! drops the entries of owners missing from the list at this beat and at its previous one. The
//! native build's workers share one process, which cannot lose one of them alone: they all count
//! as [`PROCESS_OWNER`] and never beat nor prune.
//!
//! The upstream's gauge, which operators (and the tests) read in Envoy's stats, follows the
//! counts: +1 when a request's count is written, -1 when it is given back, and minus what a
//! prune drops, so it reads the upstream's load.

use crate::host::{create_shared, Host, SharedWrite};
use crate::plan::InFlight;

/// Retries of a compare-and-swap before giving up (another worker won every time).
const CAS_ATTEMPTS: usize = 64;

/// The owner of every count in a process whose workers cannot fail alone (the native build).
pub const PROCESS_OWNER: u32 = 0;

/// The owners list: who holds counts, and when each last beat.
pub const OWNERS_KEY: &str = "meshsplit/load/owners";
/// How often a VM beats (at most; it beats on its housekeeping tick).
pub const BEAT_EVERY_MS: u64 = 1_000;
/// An owner that has not beaten for this long is gone, and so are its counts.
pub const OWNER_STALE_MS: u64 = 5_000;

const ENTRY: usize = 8;
const OWNER_ENTRY: usize = 12;

/// An upstream's shared value as read: its load (every owner's count), and what a
/// compare-and-swap of this VM's entry needs.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub load: u64,
    value: Vec<u8>,
    /// `0` while the key does not exist yet.
    cas: u32,
}

/// The upstream's current value.
pub fn read<H: Host + ?Sized>(host: &H, slot: &InFlight) -> Seen {
    match host.shared_data(&slot.key) {
        Some((value, cas)) => Seen {
            load: load(&value),
            value,
            cas,
        },
        None => Seen::default(),
    }
}

/// The sum of every owner's count in an upstream's value.
pub fn load(value: &[u8]) -> u64 {
    entries(value).map(|(_, count)| u64::from(count)).sum()
}

fn entries(value: &[u8]) -> impl Iterator<Item = (u32, u32)> + '_ {
    value.chunks_exact(ENTRY).map(|entry| {
        let (owner, count) = entry.split_at(4);
        (le_u32(owner), le_u32(count))
    })
}

fn le_u32(bytes: &[u8]) -> u32 {
    bytes.try_into().map_or(0, u32::from_le_bytes)
}

/// Changes `owner`'s count in `value` by `delta` (+1 or -1), in place; an entry that reaches 0
/// is removed. Returns `false` when there is nothing to take back (no count of `owner`: it was
/// dropped as stale, or the key was recreated).
fn change(value: &mut Vec<u8>, owner: u32, delta: i64) -> bool {
    // Only whole entries count (as in `entries`): anything after them is dropped.
    value.truncate(value.len() - value.len() % ENTRY);
    let Some(index) = entries(value).position(|(who, _)| who == owner) else {
        if delta <= 0 {
            return false;
        }
        push_entry(value, owner, 1);
        return true;
    };
    let start = index * ENTRY;
    let Some(entry) = value.get_mut(start..start + ENTRY) else {
        return false;
    };
    let (_, count) = entry.split_at_mut(4);
    let Ok(next) = u32::try_from(i64::from(le_u32(count)).saturating_add(delta)) else {
        return false;
    };
    if next > 0 {
        count.copy_from_slice(&next.to_le_bytes());
    } else {
        value.drain(start..start + ENTRY);
    }
    true
}

fn push_entry(value: &mut Vec<u8>, owner: u32, count: u32) {
    value.extend_from_slice(&owner.to_le_bytes());
    value.extend_from_slice(&count.to_le_bytes());
}

/// A request takes a count on `slot` for `owner`. `seen` is the value already read, saving one
/// host call when nobody wrote in between. Returns whether it did; then [`release`] it when the
/// stream ends.
pub fn acquire<H: Host + ?Sized>(
    host: &H,
    slot: &InFlight,
    owner: u32,
    seen: Option<Seen>,
) -> bool {
    let taken = update(host, slot, owner, 1, seen);
    if taken {
        if let Some(id) = slot.gauge_id.get() {
            host.add_to_gauge(id, 1);
        }
    }
    taken
}

/// The stream holding a count of `owner` on `slot` ended. (Nothing to give back when the count
/// was dropped meanwhile: the prune took it off the gauge.)
pub fn release<H: Host + ?Sized>(host: &H, slot: &InFlight, owner: u32) {
    if update(host, slot, owner, -1, None) {
        if let Some(id) = slot.gauge_id.get() {
            host.add_to_gauge(id, -1);
        }
    }
}

/// Changes `owner`'s count by `delta` with compare-and-swap, never going below 0. Returns
/// whether the value was written.
fn update<H: Host + ?Sized>(
    host: &H,
    slot: &InFlight,
    owner: u32,
    delta: i64,
    seen: Option<Seen>,
) -> bool {
    let mut current = seen.unwrap_or_else(|| read(host, slot));
    for _ in 0..CAS_ATTEMPTS {
        if !change(&mut current.value, owner, delta) {
            return false; // nothing of ours to take back
        }
        match host.set_shared_data(&slot.key, &current.value, current.cas) {
            SharedWrite::Written => return true,
            SharedWrite::CasMismatch => current = read(host, slot),
            SharedWrite::Failed => return false,
        }
    }
    // Only sustained contention from every other worker gets here. A lost increment is one
    // uncounted request; a lost decrement leaves this VM's count one high while it lives.
    log::error!(
        "in-flight count {}: gave up after {CAS_ATTEMPTS} conflicting updates",
        slot.key
    );
    false
}

/// Creates the upstream's value, empty, if it does not exist yet, so that the updates of
/// concurrent workers all go through compare-and-swap (see [`create_shared`]).
pub fn ensure<H: Host + ?Sized>(host: &H, slot: &InFlight) {
    if !create_shared(host, &slot.key, &[]) {
        log::warn!("in-flight count {} could not be created", slot.key);
    }
}

/// An owner id for a VM that can fail alone: `random` (a fresh random number), unless 0 (the
/// process owner) or already in the owners list. Random rather than from a shared counter: a
/// counter would need a create-if-absent, which shared data lacks.
pub fn new_owner<H: Host + ?Sized>(host: &H, random: u32) -> u32 {
    let taken = host
        .shared_data(OWNERS_KEY)
        .map(|(value, _)| owners(&value).map(|(who, _)| who).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut owner = random.max(1);
    while taken.contains(&owner) {
        owner = owner.checked_add(1).unwrap_or(1);
    }
    owner
}

fn owners(value: &[u8]) -> impl Iterator<Item = (u32, u64)> + '_ {
    value.chunks_exact(OWNER_ENTRY).map(|entry| {
        let (who, then) = entry.split_at(4);
        (le_u32(who), then.try_into().map_or(0, u64::from_le_bytes))
    })
}

/// `owner` beats at Unix time `now_ms`: its entry in the owners list is renewed, and owners
/// stale for [`OWNER_STALE_MS`] leave it. Returns the owners in the list, or `None` if it could
/// not be written (then nothing may be pruned).
pub fn beat<H: Host + ?Sized>(host: &H, owner: u32, now_ms: u64) -> Option<Vec<u32>> {
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = host.shared_data(OWNERS_KEY).unwrap_or_default();
        let mut next = Vec::with_capacity(value.len() + OWNER_ENTRY);
        let mut alive = Vec::with_capacity(value.len() / OWNER_ENTRY + 1);
        for (who, then) in owners(&value) {
            if who != owner && now_ms.saturating_sub(then) < OWNER_STALE_MS {
                next.extend_from_slice(&who.to_le_bytes());
                next.extend_from_slice(&then.to_le_bytes());
                alive.push(who);
            }
        }
        next.extend_from_slice(&owner.to_le_bytes());
        next.extend_from_slice(&now_ms.to_le_bytes());
        alive.push(owner);
        match host.set_shared_data(OWNERS_KEY, &next, cas) {
            SharedWrite::Written => return Some(alive),
            SharedWrite::CasMismatch => continue,
            SharedWrite::Failed => return None,
        }
    }
    None
}

/// Drops from `slot` the counts of owners that are in neither `alive` nor `before` (the owners
/// lists of this beat and of the previous one: an owner missing from one list only, say after
/// two VMs created the list at once, keeps its counts). Returns how many requests' counts were
/// dropped, and takes them off the gauge.
pub fn prune<H: Host + ?Sized>(host: &H, slot: &InFlight, alive: &[u32], before: &[u32]) -> u64 {
    let gone_owner =
        |who: u32| who != PROCESS_OWNER && !alive.contains(&who) && !before.contains(&who);
    for _ in 0..CAS_ATTEMPTS {
        let Some((value, cas)) = host.shared_data(&slot.key) else {
            return 0;
        };
        if !entries(&value).any(|(who, _)| gone_owner(who)) {
            return 0;
        }
        let mut next = Vec::with_capacity(value.len());
        let (mut gone, mut owners_gone) = (0u64, 0usize);
        for (who, count) in entries(&value) {
            if gone_owner(who) {
                gone += u64::from(count);
                owners_gone += 1;
            } else {
                push_entry(&mut next, who, count);
            }
        }
        match host.set_shared_data(&slot.key, &next, cas) {
            SharedWrite::Written => {
                if let Some(id) = slot.gauge_id.get() {
                    host.add_to_gauge(id, -i64::try_from(gone).unwrap_or(i64::MAX));
                }
                log::warn!(
                    "in-flight count {}: dropped {gone} left by {owners_gone} VM(s) that stopped \
                     beating",
                    slot.key
                );
                return gone;
            }
            SharedWrite::CasMismatch => continue,
            SharedWrite::Failed => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(entries: &[(u32, u32)]) -> Vec<u8> {
        let mut value = Vec::new();
        for &(owner, count) in entries {
            push_entry(&mut value, owner, count);
        }
        value
    }

    #[test]
    fn a_change_touches_only_its_owners_entry() {
        let mut v = value(&[(7, 2), (9, 1)]);
        assert!(change(&mut v, 9, 1));
        assert_eq!(v, value(&[(7, 2), (9, 2)]));
        assert!(change(&mut v, 3, 1));
        assert_eq!(v, value(&[(7, 2), (9, 2), (3, 1)]));
        assert!(change(&mut v, 7, -1) && change(&mut v, 7, -1));
        assert_eq!(v, value(&[(9, 2), (3, 1)]), "an entry at 0 goes");
        assert_eq!(load(&v), 3);
    }

    #[test]
    fn nothing_is_taken_back_from_an_owner_without_a_count() {
        let mut v = value(&[(7, 2)]);
        assert!(!change(&mut v, 9, -1));
        assert_eq!(v, value(&[(7, 2)]));
        let mut empty = Vec::new();
        assert!(!change(&mut empty, 9, -1));
    }

    #[test]
    fn bytes_after_the_last_whole_entry_are_dropped() {
        let mut v = value(&[(7, 2)]);
        v.extend_from_slice(&[1, 2, 3]);
        assert_eq!(load(&v), 2);
        assert!(change(&mut v, 8, 1));
        assert_eq!(v, value(&[(7, 2), (8, 1)]));
    }
}
