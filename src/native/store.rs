//! Process-wide shared data with compare-and-swap tokens: what proxy-wasm shared data gives the
//! wasm build, for the native build's workers (threads of one process). The core's least-request
//! counts (`in_flight`) speak this API, so they stay exact across workers unchanged.
//!
//! One `Mutex<HashMap>` for the whole process: a lock, a lookup and a copy of 8 bytes per access.
//! Least-request services touch it (twice when a request is routed, twice when it ends), and
//! the guard's tick.
//!
//! Unlike proxy-wasm shared data, the store can create a key only if it is missing ([`create`]),
//! under the same lock as the check: two workers creating the same key at once cannot wipe
//! each other's first write.
#![cfg_attr(not(feature = "native"), allow(dead_code))]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::host::SharedWrite;

/// Key to (value, CAS token). Tokens start at 1 and grow with every write, so `0` never names a
/// stored version and means "write unconditionally".
struct Store {
    entries: HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
}

fn store() -> &'static Mutex<Store> {
    static STORE: OnceLock<Mutex<Store>> = OnceLock::new();
    STORE.get_or_init(|| {
        Mutex::new(Store {
            entries: HashMap::new(),
            next_cas: 1,
        })
    })
}

/// The value under `key` and its CAS token.
pub fn get(key: &str) -> Option<(Vec<u8>, u32)> {
    // A poisoned lock means a panic while holding it; the map itself is always consistent
    // (every write is a single insert), so keep using it.
    let store = store().lock().unwrap_or_else(|e| e.into_inner());
    store.entries.get(key).cloned()
}

/// Writes `value` under `key` if its CAS token is still `cas` (`0`: unconditionally).
pub fn set(key: &str, value: &[u8], cas: u32) -> SharedWrite {
    let mut store = store().lock().unwrap_or_else(|e| e.into_inner());
    let token = store.next_cas;
    store.next_cas = store.next_cas.wrapping_add(1).max(1);
    match store.entries.get_mut(key) {
        Some(entry) if cas != 0 && cas != entry.1 => SharedWrite::CasMismatch,
        Some(entry) => {
            *entry = (value.to_vec(), token);
            SharedWrite::Written
        }
        None if cas != 0 => SharedWrite::CasMismatch,
        None => {
            store
                .entries
                .insert(key.to_owned(), (value.to_vec(), token));
            SharedWrite::Written
        }
    }
}

/// Creates `key` holding `initial` if it is missing, in one step under the lock; an existing
/// value (another worker's, perhaps already changed) is left as it is. Returns whether this
/// call created the key.
pub fn create(key: &str, initial: &[u8]) -> bool {
    let mut store = store().lock().unwrap_or_else(|e| e.into_inner());
    if store.entries.contains_key(key) {
        return false;
    }
    let token = store.next_cas;
    store.next_cas = store.next_cas.wrapping_add(1).max(1);
    store
        .entries
        .insert(key.to_owned(), (initial.to_vec(), token));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One trial per key: `threads` threads each create the key holding 0 (through `create`),
    /// then add 1 to it by compare-and-swap. Returns how many trials lost an increment.
    pub(crate) fn lost_increments(
        prefix: &str,
        trials: usize,
        threads: usize,
        create: fn(&str),
    ) -> usize {
        let prefix = prefix.to_owned();
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let prefix = prefix.clone();
                std::thread::spawn(move || {
                    for trial in 0..trials {
                        let key = format!("{prefix}/{trial}");
                        create(&key);
                        for _ in 0..1000 {
                            let (bytes, cas) = get(&key).unwrap_or_default();
                            let n = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
                            if set(&key, &(n + 1).to_le_bytes(), cas) == SharedWrite::Written {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().ok();
        }
        (0..trials)
            .filter(|trial| {
                let (bytes, _) = get(&format!("{prefix}/{trial}")).unwrap_or_default();
                u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])) != threads as u64
            })
            .count()
    }

    #[test]
    fn create_leaves_an_existing_value_alone() {
        let key = "test/create";
        assert!(create(key, b"first"));
        let (_, token) = get(key).unwrap_or_default();
        assert_eq!(set(key, b"changed", token), SharedWrite::Written);
        assert!(!create(key, b"first"));
        assert_eq!(get(key).map(|(v, _)| v), Some(b"changed".to_vec()));
    }

    #[test]
    fn eight_threads_racing_create_and_increments_lose_no_update() {
        let lost = lost_increments("test/race", 25_000, 8, |key| {
            create(key, &0u64.to_le_bytes());
        });
        assert_eq!(lost, 0, "trials that lost an increment");
    }

    #[test]
    fn a_write_with_a_stale_token_is_refused() {
        let key = "test/stale";
        assert_eq!(set(key, b"a", 0), SharedWrite::Written);
        let (_, first) = get(key).unwrap_or_default();
        assert_eq!(set(key, b"b", first), SharedWrite::Written);
        assert_eq!(set(key, b"c", first), SharedWrite::CasMismatch);
        assert_eq!(get(key).map(|(v, _)| v), Some(b"b".to_vec()));
    }

    #[test]
    fn concurrent_compare_and_swap_increments_lose_nothing() {
        let key = "test/increments";
        set(key, &0u64.to_le_bytes(), 0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        loop {
                            let (bytes, cas) = get(key).unwrap_or_default();
                            let n = u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
                            if set(key, &(n + 1).to_le_bytes(), cas) == SharedWrite::Written {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().ok();
        }
        let (bytes, _) = get(key).unwrap_or_default();
        assert_eq!(u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])), 8000);
    }
}
