//! In-flight request counts of least-request upstreams, shared by every worker of an Envoy
//! through proxy-wasm shared data, updated with compare-and-swap so no update is lost.
//!
//! A count is an 8-byte little-endian integer under the upstream's key. The upstream's gauge,
//! which operators (and the tests) read in Envoy's stats, follows the requests themselves: +1
//! when a request takes a count, -1 when its stream ends.

use crate::host::{Host, SharedWrite};
use crate::plan::InFlight;

/// Retries of a compare-and-swap before giving up (another worker won every time).
const CAS_ATTEMPTS: usize = 64;

/// The current count and its CAS token (`0` while the key does not exist yet).
pub fn read<H: Host + ?Sized>(host: &H, slot: &InFlight) -> (u64, u32) {
    match host.shared_data(&slot.key) {
        Some((bytes, cas)) => (decode(&bytes), cas),
        None => (0, 0),
    }
}

fn decode(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_le_bytes)
}

/// A request takes a count on `slot`. `seen` is a value and CAS token already read, saving one
/// host call when nobody wrote in between. Returns whether it did; then [`release`] it when the
/// stream ends.
pub fn acquire<H: Host + ?Sized>(host: &H, slot: &InFlight, seen: Option<(u64, u32)>) -> bool {
    let taken = add(host, slot, 1, seen);
    if taken {
        if let Some(id) = slot.gauge_id.get() {
            host.add_to_gauge(id, 1);
        }
    }
    taken
}

/// The stream holding a count on `slot` ended.
pub fn release<H: Host + ?Sized>(host: &H, slot: &InFlight) {
    add(host, slot, -1, None);
    if let Some(id) = slot.gauge_id.get() {
        host.add_to_gauge(id, -1);
    }
}

/// Adds `delta` (+1 or -1) to the count with compare-and-swap, never going below 0. Returns
/// whether the count was written.
fn add<H: Host + ?Sized>(host: &H, slot: &InFlight, delta: i64, seen: Option<(u64, u32)>) -> bool {
    let mut current = seen.unwrap_or_else(|| read(host, slot));
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = current;
        let next = value.saturating_add_signed(delta);
        if next == value {
            return false; // decrementing 0: the key was recreated under us; nothing to undo
        }
        match host.set_shared_data(&slot.key, &next.to_le_bytes(), cas) {
            SharedWrite::Written => return true,
            SharedWrite::CasMismatch => current = read(host, slot),
            SharedWrite::Failed => return false,
        }
    }
    // Only sustained contention from every other worker gets here. A lost increment is one
    // uncounted request; a lost decrement leaves the count one high until Envoy restarts.
    log::error!(
        "in-flight count {}: gave up after {CAS_ATTEMPTS} conflicting updates",
        slot.key
    );
    false
}

/// Creates the key with a count of 0 if it does not exist yet, so that the increments of
/// concurrent workers all go through compare-and-swap. (Shared data has no create-if-absent:
/// two workers configuring at the same moment may both write 0, before any request is counted.)
pub fn ensure<H: Host + ?Sized>(host: &H, slot: &InFlight) {
    if host.shared_data(&slot.key).is_none() {
        host.set_shared_data(&slot.key, &0u64.to_le_bytes(), 0);
    }
}
