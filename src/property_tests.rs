//! Properties of the core, checked on generated inputs (proptest): selection never picks what it
//! must not, sticky hashing is monotone, request parsing never panics and agrees with plain
//! reference implementations, and the guard and rollouts keep their promises.

use proptest::collection::vec;
use proptest::prelude::*;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::guard::{Change, Ejection, Guard, Seen};
use crate::request::{cookie_value, host_key, query_param};
use crate::rollout::{Phase, Rollout, Step};
use crate::select::{least_request, rendezvous, sticky_hash, WeightedPicker};

fn weights() -> impl proptest::strategy::Strategy<Value = Vec<u32>> {
    vec(0u32..=1000, 1..=8).prop_filter("some weight above 0", |w| w.iter().any(|&w| w > 0))
}

fn owner(key: &[u8], weights: &[u32]) -> Option<usize> {
    let ids: Vec<u64> = (0..weights.len())
        .map(|i| sticky_hash(format!("u{i}").as_bytes()))
        .collect();
    rendezvous(key, ids.iter().copied().zip(weights.iter().copied()))
}

/// `application/x-www-form-urlencoded` decoding written the plain way, as the reference.
fn reference_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < input.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn reference_query(path: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let start = path.iter().position(|&b| b == b'?')? + 1;
    let query = &path[start..];
    let query = &query[..query.iter().position(|&b| b == b'#').unwrap_or(query.len())];
    for pair in query.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        if reference_decode(key) == name {
            return Some(reference_decode(value));
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_weighted_pick_is_always_an_upstream_with_weight(weights in weights(), seed: u64) {
        let picker = WeightedPicker::new(&weights).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        for _ in 0..64 {
            let i = picker.pick(&mut rng);
            prop_assert!(i < weights.len() && weights[i] > 0, "picked {i} of {weights:?}");
        }
    }

    #[test]
    fn sticky_is_deterministic_and_never_picks_weight_zero(weights in weights(), key in vec(any::<u8>(), 0..40)) {
        let first = owner(&key, &weights).unwrap();
        prop_assert_eq!(Some(first), owner(&key, &weights));
        prop_assert!(weights[first] > 0);
    }

    #[test]
    fn sticky_moves_keys_only_into_a_raised_or_out_of_a_lowered_upstream(
        weights in weights(), which in 0usize..8, new_weight in 0u32..=1000, seed: u64,
    ) {
        let which = which % weights.len();
        let mut changed = weights.clone();
        changed[which] = new_weight;
        prop_assume!(changed.iter().any(|&w| w > 0));
        for k in 0..64u64 {
            let key = (seed ^ k.wrapping_mul(0x9e37_79b9)).to_le_bytes();
            let (before, after) = (owner(&key, &weights).unwrap(), owner(&key, &changed).unwrap());
            if before == after {
                continue;
            }
            if new_weight > weights[which] {
                prop_assert_eq!(after, which, "raised {} moved a key {} -> {}", which, before, after);
            } else {
                prop_assert_eq!(before, which, "lowered {} moved a key {} -> {}", which, before, after);
            }
        }
    }

    #[test]
    fn least_request_never_picks_a_more_loaded_upstream_relative_to_weight(
        weights in weights(), loads in vec(0u64..50, 8), seed: u64,
    ) {
        let loads = &loads[..weights.len()];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let pick = least_request(&weights, loads, &mut rng).unwrap();
        prop_assert!(weights[pick] > 0);
        for (i, (&w, &n)) in weights.iter().zip(loads).enumerate() {
            if w == 0 {
                continue;
            }
            // (n_pick + 1) / w_pick <= (n_i + 1) / w_i
            let lhs = u128::from(loads[pick] + 1) * u128::from(w);
            let rhs = u128::from(n + 1) * u128::from(weights[pick]);
            prop_assert!(lhs <= rhs, "picked {pick} over less loaded {i}");
        }
    }

    #[test]
    fn host_key_never_panics_and_is_idempotent(raw in vec(any::<u8>(), 0..64)) {
        let mut once = raw.clone();
        let key = host_key(&mut once).to_vec();
        prop_assert!(key.iter().all(|b| !b.is_ascii_uppercase()));
        // A normalized name without colons or brackets normalizes to itself.
        if !key.contains(&b':') && !key.contains(&b'[') && !key.ends_with(b".") {
            let mut again = key.clone();
            prop_assert_eq!(host_key(&mut again), &key[..]);
        }
    }

    #[test]
    fn query_param_agrees_with_the_reference(
        path in vec(prop_oneof![Just(b'?'), Just(b'&'), Just(b'='), Just(b'%'), Just(b'+'), Just(b'#'),
                                Just(b'a'), Just(b'b'), Just(b'F'), Just(b'0'), any::<u8>()], 0..48),
        name in prop_oneof![Just(b"a".to_vec()), Just(b"ab".to_vec()), Just(b"a b".to_vec())],
    ) {
        let ours = query_param(&path, &name).map(|v| v.into_owned());
        prop_assert_eq!(ours, reference_query(&path, &name));
    }

    #[test]
    fn cookie_value_never_panics_and_finds_what_was_set(
        noise in vec(prop_oneof![Just(b';'), Just(b'='), Just(b' '), Just(b'"'), any::<u8>()], 0..40),
        value in vec(b'a'..=b'z', 0..10),
    ) {
        let _ = cookie_value(&noise, b"k");
        let mut header = b"k=".to_vec();
        header.extend_from_slice(&value);
        header.extend_from_slice(b"; ");
        header.extend_from_slice(&noise);
        prop_assert_eq!(cookie_value(&header, b"k"), Some(&value[..]));
    }

    #[test]
    fn the_guard_never_ejects_beyond_its_cap_nor_the_last_upstream(
        upstreams in vec((0u32..=100, 0u64..100, 0u64..100), 1..=6),
        cap in 0u64..=100,
        ejected in vec(any::<bool>(), 6),
    ) {
        let guard = Guard { error_rate: 0.5, min_requests: 1, window_s: 10, eject_s: 30, max_ejected_percent: cap };
        let now = 1_000;
        let seen: Vec<Seen> = upstreams.iter().zip(&ejected).map(|(&(weight, requests, failed), &out)| Seen {
            weight,
            requests,
            failures: failed.min(requests),
            ejection: if out { Ejection { since_s: 990, until_s: 1010, times: 0, readmission_reported: false } } else { Ejection::default() },
        }).collect();
        let total: u64 = seen.iter().map(|s| u64::from(s.weight)).sum();
        let before: u64 = seen.iter().filter(|s| s.ejection.is_ejected(now)).map(|s| u64::from(s.weight)).sum();
        let mut after = before;
        let mut admitted = seen.iter().filter(|s| s.weight > 0 && !s.ejection.is_ejected(now)).count();
        for change in guard.decide(now, &seen) {
            if let Change::Eject { upstream, .. } = change {
                prop_assert!(!seen[upstream].ejection.is_ejected(now));
                after += u64::from(seen[upstream].weight);
                if seen[upstream].weight > 0 {
                    admitted -= 1;
                }
            }
        }
        // New ejections keep within the cap; and never the last upstream with weight.
        prop_assert!(after == before || after * 100 <= cap * total);
        let had_admitted = seen.iter().any(|s| s.weight > 0 && !s.ejection.is_ejected(now));
        prop_assert!(!had_admitted || admitted >= 1);
    }

    #[test]
    fn rollout_weights_at_any_instant_are_the_step_in_force(
        gaps in vec(1u64..100, 1..5), offset in 0u64..1_000_000,
    ) {
        let mut at = 0;
        let steps: Vec<Step> = gaps.iter().enumerate().map(|(i, &gap)| {
            let step = Step { at_s: at, weights: vec![u32::try_from(i).unwrap() + 1, 1].into() };
            at += gap;
            step
        }).collect();
        let rollout = Rollout { start_ms: 5_000, interpolate: false, steps: steps.clone().into() };
        let now = 5_000 + offset;
        let expected = steps.iter().rev().find(|s| s.at_s * 1000 <= offset).map(|s| s.weights.to_vec());
        match rollout.at(now) {
            Phase::Weights(w) => prop_assert_eq!(Some(w.into_owned()), expected),
            Phase::NotStarted => prop_assert_eq!(None, expected),
        }
    }
}
