//! In-flight request counts of least-request upstreams, shared by every worker of an Envoy
//! through proxy-wasm shared data, updated with compare-and-swap so no update is lost.
//!
//! A count is an 8-byte little-endian integer under the upstream's key. Every successful change
//! is mirrored on the upstream's gauge, which operators (and the tests) read in Envoy's stats.

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

/// Adds `delta` (+1 or -1) to the count, never going below 0. `seen` is a value and CAS token
/// already read, saving one host call when nobody wrote in between. Returns whether the
/// count changed.
pub fn add<H: Host + ?Sized>(
    host: &H,
    slot: &InFlight,
    delta: i64,
    seen: Option<(u64, u32)>,
) -> bool {
    let mut current = seen.unwrap_or_else(|| read(host, slot));
    for _ in 0..CAS_ATTEMPTS {
        let (value, cas) = current;
        let next = value.saturating_add_signed(delta);
        if next == value {
            return false; // decrementing 0: the count was reset under us; nothing to undo
        }
        match host.set_shared_data(&slot.key, &next.to_le_bytes(), cas) {
            SharedWrite::Written => {
                if let Some(id) = slot.gauge_id.get() {
                    host.add_to_gauge(id, delta);
                }
                return true;
            }
            SharedWrite::CasMismatch => current = read(host, slot),
            SharedWrite::Failed => return false,
        }
    }
    log::warn!(
        "in-flight count {}: gave up after {CAS_ATTEMPTS} conflicting updates",
        slot.key
    );
    false
}

/// Creates the key with a count of 0 if it does not exist yet, so that the first increments of
/// concurrent workers all go through compare-and-swap.
pub fn ensure<H: Host + ?Sized>(host: &H, slot: &InFlight) {
    if host.shared_data(&slot.key).is_none() {
        host.set_shared_data(&slot.key, &0u64.to_le_bytes(), 0);
    }
}
