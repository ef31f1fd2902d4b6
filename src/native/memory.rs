//! The cluster specifier's memory of its latest selections, one per worker: which request it
//! decided (config id and Envoy's random value of the request), with a 64-bit hash of the request
//! headers the decision read, and the decision. Envoy asks again for the same request whenever a
//! filter clears the route cache; asked again with those headers unchanged, the answer is the
//! same decision, counted once; with one of them changed, the request is decided again and the
//! first decision is counted as superseded (`superseded_total`).
//!
//! The table is set-associative: [`SETS`] sets of [`WAYS`] slots, the set chosen by the low bits
//! of the random value (Envoy's stream id), the oldest slot of the set replaced: a request is
//! found again while fewer than about `SETS * WAYS / 2` other selections came between its first
//! and its refresh (an authorization call that lets other requests in). The random values of a
//! set are kept together, so a lookup compares them without touching the slots. No allocation
//! per request: a slot keeps its cluster buffer, and swaps it with the caller's scratch buffer
//! when it takes a new decision. Header names are kept once per worker ([`Names`]): a decision
//! records which names it read as bits, so a slot holds no strings of its own but the cluster's.
//!
//! A slot whose reads cannot be checked again (the decision read a name the worker could not
//! keep: more than [`MAX_NAMES`] distinct names over its configs) still counts right: a refresh
//! of it is decided again, and the first decision counted as superseded if the new one differs.
//! A request whose slot another request took in between is decided and counted again.
// Used by the native cluster specifier; without the `native` feature only the tests use it.
#![cfg_attr(not(feature = "native"), allow(dead_code))]

use crate::metrics::Counted;

/// Sets of the table (a power of two).
pub const SETS: usize = 64;
/// Slots per set.
pub const WAYS: usize = 16;
/// Distinct request header names a worker keeps (bits of [`Bits`]). When a decision reads one
/// more, the names start again (a new generation): slots of the old one can no longer be
/// checked, and are decided again when refreshed.
pub const MAX_NAMES: usize = 256;

/// A set of name indexes below [`MAX_NAMES`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Bits([u64; MAX_NAMES / 64]);

impl Bits {
    /// Sets bit `index`; returns whether it was set before.
    fn insert(&mut self, index: u32) -> bool {
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        match self.0.get_mut(word) {
            Some(w) => {
                let was = *w & bit != 0;
                *w |= bit;
                was
            }
            None => true,
        }
    }

    fn iter(self) -> impl Iterator<Item = u32> {
        self.0.into_iter().enumerate().flat_map(|(word, mut bits)| {
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                Some(word as u32 * 64 + bit)
            })
        })
    }
}

/// What a decision asks Envoy to do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No cluster (an unknown service with `pass`, or no decision).
    #[default]
    Pass,
    /// The cluster in the decision's buffer.
    Cluster,
    /// An unknown service with `reject`: the not-found status.
    Reject,
}

/// The request headers one decision read: as bits of [`Names`] indexes, whether it read only the
/// first copy or every copy of each, and one hash of what it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    first: Bits,
    all: Bits,
    hash: u64,
    /// The [`Names`] generation the bits refer to.
    generation: u32,
    /// False when a name could not be kept: the decision cannot be checked again.
    complete: bool,
}

impl Reads {
    pub fn new(names: &Names) -> Self {
        Self {
            first: Bits::default(),
            all: Bits::default(),
            hash: 0,
            generation: names.generation,
            complete: true,
        }
    }

    /// Reads that cannot be checked again (the worker's names were busy).
    pub fn incomplete() -> Self {
        Self {
            first: Bits::default(),
            all: Bits::default(),
            hash: 0,
            generation: 0,
            complete: false,
        }
    }

    /// Records a read of `name`: its first copy (`all` false) or every copy.
    pub fn record<'v>(
        &mut self,
        names: &mut Names,
        name: &str,
        all: bool,
        values: impl IntoIterator<Item = &'v [u8]>,
    ) {
        if !self.complete {
            return;
        }
        let Some(index) = names.index(name) else {
            self.complete = false;
            return;
        };
        if names.generation != self.generation {
            self.complete = false;
            return;
        }
        let seen = if all { &mut self.all } else { &mut self.first };
        if seen.insert(index) {
            // Read before in this decision: the same values (nothing changes them in between).
            return;
        }
        self.hash ^= values_hash(index, all, values);
    }

    fn checkable(&self, names: &Names) -> bool {
        self.complete && self.generation == names.generation
    }
}

/// The request header names a worker's decisions read, each kept once (index = bit).
#[derive(Debug, Default)]
pub struct Names {
    names: Vec<String>,
    generation: u32,
}

impl Names {
    pub const fn new() -> Self {
        Self {
            names: Vec::new(),
            generation: 0,
        }
    }

    /// The index of `name`, kept now if new; `None` when the table was full (it is then emptied,
    /// so that later decisions can be checked again, and its generation moves on).
    fn index(&mut self, name: &str) -> Option<u32> {
        if let Some(index) = self.names.iter().position(|n| n == name) {
            return u32::try_from(index).ok();
        }
        if self.names.len() >= MAX_NAMES {
            self.names.clear();
            self.generation = self.generation.wrapping_add(1);
            return None;
        }
        self.names.push(name.to_owned());
        u32::try_from(self.names.len() - 1).ok()
    }

    fn name(&self, index: u32) -> Option<&str> {
        self.names
            .get(usize::try_from(index).ok()?)
            .map(String::as_str)
    }
}

/// FNV-1a over the name's index, the kind of read, and each value with its length, then a
/// 64-bit finalizer (as `select::sticky_hash`): a changed, added or removed copy changes it.
fn values_hash<'v>(index: u32, all: bool, values: impl IntoIterator<Item = &'v [u8]>) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ (u64::from(index) << 1 | u64::from(all));
    hash = hash.wrapping_mul(PRIME);
    for value in values {
        hash ^= value.len() as u64;
        hash = hash.wrapping_mul(PRIME);
        for &byte in value {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One remembered selection (its random value is in [`Memory::randoms`]).
#[derive(Debug, Default)]
struct Slot {
    config: u64,
    reads: Option<Reads>,
    counted: Option<Counted>,
    kind: Kind,
    cluster: String,
}

/// What the memory knows of a selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recall {
    /// Decided before with the same headers: `apply` was given the decision.
    Same(bool),
    /// Decided before, but a header the decision read changed (or cannot be checked): decide
    /// again; this was counted.
    Changed(Option<Counted>),
    /// Not remembered: decide and count.
    Unknown,
}

/// A worker's memory (see the module's documentation).
#[derive(Debug, Default)]
pub struct Memory {
    /// The random value of each slot, a set's together; 0 is an empty slot (Envoy gives 0 when
    /// it has no random value, and such selections are not remembered).
    randoms: Vec<u64>,
    slots: Vec<Slot>,
    /// Per set, the slot to replace next (the oldest).
    next: Vec<u8>,
}

impl Memory {
    pub const fn new() -> Self {
        Self {
            randoms: Vec::new(),
            slots: Vec::new(),
            next: Vec::new(),
        }
    }

    fn set(random: u64) -> usize {
        // The low bits of a random value; `SETS` is a power of two.
        (random as usize) & (SETS - 1)
    }

    fn ensure(&mut self) {
        if self.slots.is_empty() {
            self.randoms.resize(SETS * WAYS, 0);
            self.slots.resize_with(SETS * WAYS, Slot::default);
            self.next.resize(SETS, 0);
        }
    }

    /// The slot of `(config, random)`. One request can have slots under several configs (a
    /// refresh onto a route of another config), so every slot with its random value is looked at.
    fn find(&self, config: u64, random: u64) -> Option<usize> {
        let start = Self::set(random) * WAYS;
        let randoms = self.randoms.get(start..start + WAYS)?;
        randoms
            .iter()
            .enumerate()
            .filter(|&(_, &r)| r == random)
            .map(|(way, _)| start + way)
            .find(|&i| self.slots.get(i).is_some_and(|s| s.config == config))
    }

    /// Looks `(config, random)` up. If it was decided before, `read(name, all, index)` gives the
    /// hash of what the request's header `name` holds now (its first copy, or every copy when
    /// `all`), through [`hash_of`]; unchanged, `apply(kind, cluster)` is called with the decision.
    pub fn recall(
        &mut self,
        names: &Names,
        config: u64,
        random: u64,
        mut read: impl FnMut(&str, bool, u32) -> u64,
        apply: impl FnOnce(Kind, &str) -> bool,
    ) -> Recall {
        if random == 0 {
            return Recall::Unknown;
        }
        let Some(slot) = self.find(config, random).and_then(|i| self.slots.get(i)) else {
            return Recall::Unknown;
        };
        let Some(reads) = slot.reads.filter(|r| r.checkable(names)) else {
            // Remembered, but its reads cannot be checked: decided again, counted right.
            return Recall::Changed(slot.counted);
        };
        let mut hash = 0;
        for (bits, all) in [(reads.first, false), (reads.all, true)] {
            for index in bits.iter() {
                let Some(name) = names.name(index) else {
                    return Recall::Changed(slot.counted);
                };
                hash ^= read(name, all, index);
            }
        }
        if hash == reads.hash {
            return Recall::Same(apply(slot.kind, &slot.cluster));
        }
        Recall::Changed(slot.counted)
    }

    /// Remembers the decision of `(config, random)`: `kind`, with its cluster in `cluster`, which
    /// becomes the slot's buffer (the slot's old buffer is left in `cluster`, to be reused).
    /// Then `apply(kind, cluster)` is called with it. Reads that cannot be checked are kept too:
    /// a refresh then decides again, but knows what the first decision counted. `known`: whether
    /// [`Self::recall`] found the request (when it did not, its slot is not looked for again).
    #[allow(clippy::too_many_arguments)]
    pub fn remember(
        &mut self,
        known: bool,
        config: u64,
        random: u64,
        reads: Reads,
        counted: Counted,
        kind: Kind,
        cluster: &mut String,
        apply: impl FnOnce(Kind, &str) -> bool,
    ) -> bool {
        if random == 0 {
            return apply(kind, cluster);
        }
        self.ensure();
        let set = Self::set(random);
        let i = match self.find(config, random).filter(|_| known) {
            Some(i) => i,
            None => {
                let way = self.next.get(set).copied().unwrap_or(0);
                if let Some(next) = self.next.get_mut(set) {
                    *next = (way + 1) % WAYS as u8;
                }
                set * WAYS + usize::from(way)
            }
        };
        let (Some(key), Some(slot)) = (self.randoms.get_mut(i), self.slots.get_mut(i)) else {
            return apply(kind, cluster);
        };
        *key = random;
        slot.config = config;
        slot.reads = Some(reads);
        slot.counted = Some(counted);
        slot.kind = kind;
        std::mem::swap(&mut slot.cluster, cluster);
        apply(slot.kind, &slot.cluster)
    }
}

/// The hash [`Memory::recall`]'s `read` must give for the values of name `index`.
pub fn hash_of<'v>(index: u32, all: bool, values: impl IntoIterator<Item = &'v [u8]>) -> u64 {
    values_hash(index, all, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const CONFIG: u64 = 7;

    /// Remembers a decision for cluster `buffer` that counted an unknown service.
    fn keep(
        memory: &mut Memory,
        _names: &Names,
        random: u64,
        reads: Reads,
        buffer: &mut String,
        apply: impl FnOnce(Kind, &str) -> bool,
    ) -> bool {
        let counted = Counted::Unknown { rejected: false };
        memory.remember(
            true,
            CONFIG,
            random,
            reads,
            counted,
            Kind::Cluster,
            buffer,
            apply,
        )
    }

    /// A request's headers, read as the specifier reads them.
    fn read_all<'h>(
        headers: &'h HashMap<&'static str, Vec<&'static [u8]>>,
    ) -> impl FnMut(&str, bool, u32) -> u64 + 'h {
        move |name, all, index| {
            let values = headers.get(name).cloned().unwrap_or_default();
            if all {
                hash_of(index, true, values)
            } else {
                hash_of(index, false, values.into_iter().take(1))
            }
        }
    }

    fn decide(
        memory: &mut Memory,
        names: &mut Names,
        random: u64,
        headers: &HashMap<&'static str, Vec<&'static [u8]>>,
        cluster: &str,
    ) {
        let mut reads = Reads::new(names);
        for (name, values) in headers {
            reads.record(names, name, false, values.iter().copied().take(1));
        }
        let mut buffer = cluster.to_owned();
        let counted = Counted::Upstream {
            service: 0,
            upstream: usize::from(cluster == "b"),
            rule: None,
        };
        memory.remember(
            true,
            CONFIG,
            random,
            reads,
            counted,
            Kind::Cluster,
            &mut buffer,
            |_, _| true,
        );
    }

    fn recall(
        memory: &mut Memory,
        names: &Names,
        random: u64,
        headers: &HashMap<&'static str, Vec<&'static [u8]>>,
    ) -> (Recall, Option<String>) {
        let mut applied = None;
        let recalled = memory.recall(names, CONFIG, random, read_all(headers), |_, c| {
            applied = Some(c.to_owned());
            true
        });
        (recalled, applied)
    }

    #[test]
    fn a_refresh_with_the_same_headers_gets_the_same_decision() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let headers = HashMap::from([(":authority", vec![&b"svc"[..]])]);
        decide(&mut memory, &mut names, 42, &headers, "a");
        assert_eq!(
            recall(&mut memory, &names, 42, &headers),
            (Recall::Same(true), Some("a".into()))
        );
        // Another request, or another config, is not this one.
        assert_eq!(recall(&mut memory, &names, 43, &headers).0, Recall::Unknown);
        assert_eq!(
            memory.recall(&names, 8, 42, read_all(&headers), |_, _| true),
            Recall::Unknown
        );
    }

    #[test]
    fn a_changed_header_gives_the_first_decision_back_to_be_superseded() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let headers = HashMap::from([(":authority", vec![&b"svc"[..]]), ("x-user", vec![])]);
        decide(&mut memory, &mut names, 42, &headers, "a");
        let changed = HashMap::from([
            (":authority", vec![&b"svc"[..]]),
            ("x-user", vec![&b"7"[..]]),
        ]);
        let expected = Counted::Upstream {
            service: 0,
            upstream: 0,
            rule: None,
        };
        assert_eq!(
            recall(&mut memory, &names, 42, &changed),
            (Recall::Changed(Some(expected)), None)
        );
    }

    #[test]
    fn every_copy_read_is_checked() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let mut reads = Reads::new(&names);
        reads.record(&mut names, "x-canary", true, [&b"false"[..], b"true"]);
        let mut buffer = String::from("a");
        let counted = Counted::Unknown { rejected: false };
        keep(&mut memory, &names, 5, reads, &mut buffer, |_, _| true);
        let same = HashMap::from([("x-canary", vec![&b"false"[..], b"true"])]);
        let fewer = HashMap::from([("x-canary", vec![&b"false"[..]])]);
        assert_eq!(recall(&mut memory, &names, 5, &same).0, Recall::Same(true));
        assert_eq!(
            recall(&mut memory, &names, 5, &fewer).0,
            Recall::Changed(Some(counted))
        );
    }

    #[test]
    fn the_older_way_of_a_set_is_replaced() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let headers = HashMap::from([(":authority", vec![&b"svc"[..]])]);
        let step = SETS as u64;
        for k in 1..=WAYS as u64 + 1 {
            decide(&mut memory, &mut names, 3 + k * step, &headers, "a");
        }
        // The first of the set was pushed out; the later ones stay.
        assert_eq!(
            recall(&mut memory, &names, 3 + step, &headers).0,
            Recall::Unknown
        );
        for k in 2..=WAYS as u64 + 1 {
            assert_eq!(
                recall(&mut memory, &names, 3 + k * step, &headers).0,
                Recall::Same(true)
            );
        }
    }

    #[test]
    fn one_request_under_two_configs_has_a_slot_for_each() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let headers = HashMap::from([(":authority", vec![&b"svc"[..]])]);
        let mut reads = Reads::new(&names);
        reads.record(&mut names, ":authority", false, [&b"svc"[..]]);
        let mut other = String::from("x");
        let counted = Counted::Unknown { rejected: false };
        // The same request first under config 8, then under CONFIG.
        memory.remember(
            false,
            8,
            42,
            reads,
            counted,
            Kind::Cluster,
            &mut other,
            |_, _| true,
        );
        decide(&mut memory, &mut names, 42, &headers, "a");
        assert_eq!(
            recall(&mut memory, &names, 42, &headers),
            (Recall::Same(true), Some("a".into()))
        );
        let found = memory.recall(&names, 8, 42, read_all(&headers), |_, c| c == "x");
        assert_eq!(found, Recall::Same(true));
    }

    #[test]
    fn buffers_are_swapped_not_allocated() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let headers = HashMap::new();
        decide(&mut memory, &mut names, 1, &headers, "first-cluster");
        let mut scratch = String::with_capacity(64);
        let reads = Reads::new(&names);
        scratch.push_str("second");
        keep(&mut memory, &names, 1, reads, &mut scratch, |_, c| {
            assert_eq!(c, "second");
            true
        });
        // The slot's old buffer came back.
        assert_eq!(scratch, "first-cluster");
    }

    #[test]
    fn too_many_names_start_the_names_again_and_old_slots_are_decided_again() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let headers = HashMap::from([(":authority", vec![&b"svc"[..]])]);
        decide(&mut memory, &mut names, 9, &headers, "a");
        let mut reads = Reads::new(&names);
        let many: Vec<String> = (0..MAX_NAMES).map(|i| format!("x-{i}")).collect();
        for name in &many {
            reads.record(&mut names, name, false, [&b"1"[..]]);
        }
        assert!(!reads.complete, "{reads:?}");
        // The earlier slot's names are gone with the generation: decided again, and what it
        // counted is known (to count it as superseded if the new decision differs).
        let first = Counted::Upstream {
            service: 0,
            upstream: 0,
            rule: None,
        };
        assert_eq!(
            recall(&mut memory, &names, 9, &headers).0,
            Recall::Changed(Some(first))
        );
        // And the names start again: a new decision is checked again.
        decide(&mut memory, &mut names, 10, &headers, "a");
        assert_eq!(
            recall(&mut memory, &names, 10, &headers).0,
            Recall::Same(true)
        );
    }

    #[test]
    fn names_of_many_rules_are_all_kept() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let headers: HashMap<&'static str, Vec<&'static [u8]>> = (0..200)
            .map(|i| {
                (
                    &*Box::leak(format!("x-r-{i}").into_boxed_str()),
                    vec![&b"1"[..]],
                )
            })
            .collect();
        decide(&mut memory, &mut names, 12, &headers, "a");
        assert_eq!(
            recall(&mut memory, &names, 12, &headers).0,
            Recall::Same(true)
        );
    }

    #[test]
    fn an_unchecked_decision_is_remembered_to_be_superseded() {
        let (mut memory, mut names) = (Memory::default(), Names::default());
        let headers = HashMap::from([(":authority", vec![&b"svc"[..]])]);
        decide(&mut memory, &mut names, 11, &headers, "a");
        let mut reads = Reads::new(&names);
        reads.complete = false;
        let mut buffer = String::from("b");
        let applied = keep(&mut memory, &names, 11, reads, &mut buffer, |_, c| c == "b");
        assert!(applied);
        let unknown = Counted::Unknown { rejected: false };
        assert_eq!(
            recall(&mut memory, &names, 11, &headers).0,
            Recall::Changed(Some(unknown))
        );
    }
}
