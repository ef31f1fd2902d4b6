//! Properties of the core, checked on generated inputs (proptest): selection never picks what it
//! must not, sticky hashing is monotone, request parsing never panics and agrees with plain
//! reference implementations, and the guard and rollouts keep their promises.

use proptest::collection::vec;
use proptest::prelude::*;
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::guard::{Change, Ejection, Guard, Latency, Read, Seen};
use crate::request::{cookie_value, host_key, query_param};
use crate::rollout::{Phase, Rollout, Step};
use crate::select::{least_request, rendezvous, smooth_round_robin, sticky_hash, WeightedPicker};

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
    fn weighted_shares_converge_to_the_weights(weights in weights(), seed: u64) {
        // 40 000 picks: each share lies within 6 standard deviations of its weight's share
        // (a false failure about once in 10^8 upstreams).
        const PICKS: u32 = 40_000;
        let picker = WeightedPicker::new(&weights).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut seen = vec![0u32; weights.len()];
        for _ in 0..PICKS {
            seen[picker.pick(&mut rng)] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, (&w, &n)) in weights.iter().zip(&seen).enumerate() {
            let p = f64::from(w) / f64::from(total);
            let expected = p * f64::from(PICKS);
            let sigma = (f64::from(PICKS) * p * (1.0 - p)).sqrt();
            prop_assert!((f64::from(n) - expected).abs() <= 6.0 * sigma + 1.0,
                "upstream {i}: {n} picks, expected {expected:.0} ± {sigma:.0} ({weights:?})");
        }
    }

    #[test]
    fn round_robin_gives_each_upstream_exactly_its_weight_per_cycle(
        weights in vec(0u32..=50, 1..=8).prop_filter("some weight", |w| w.iter().any(|&w| w > 0)),
        cycles in 1usize..4,
    ) {
        let state: Vec<std::cell::Cell<i64>> = weights.iter().map(|_| Default::default()).collect();
        let total: u32 = weights.iter().sum();
        let mut seen = vec![0u32; weights.len()];
        for _ in 0..cycles * total as usize {
            seen[smooth_round_robin(&weights, &state).unwrap()] += 1;
        }
        let expected: Vec<u32> = weights.iter().map(|&w| w * cycles as u32).collect();
        prop_assert_eq!(seen, expected);
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

    /// "Never prefers a busier upstream": the pick is no busier (in flight relative to weight)
    /// than any other upstream would be with the request added, so an upstream a whole request
    /// busier than another is never picked. (The earlier statement compared
    /// `(in_flight + 1) / weight` on both sides, the load after adding the request: a rule
    /// sound by it sends nothing to a 10 % upstream of an idle service, because 1/10 > 1/90.
    /// This one keeps every upstream within one request of the least loaded a candidate, so
    /// low or equal loads follow the weights; the least loaded is always a candidate.)
    #[test]
    fn least_request_never_prefers_a_busier_upstream_relative_to_weight(
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
            // n_pick / w_pick <= (n_i + 1) / w_i
            let lhs = u128::from(loads[pick]) * u128::from(w);
            let rhs = u128::from(n + 1) * u128::from(weights[pick]);
            prop_assert!(lhs <= rhs, "picked {pick} over less loaded {i}");
        }
    }

    /// The other half: when every upstream is within one request of the least loaded (nothing
    /// in flight, or loads equal relative to weight), each is picked by its weight, exactly.
    #[test]
    fn least_request_picks_by_weight_among_equally_loaded_upstreams(
        weights in weights(), load in 0u64..50, seed: u64,
    ) {
        // Loads proportional to the weights: all equal relative to weight.
        let loads: Vec<u64> = weights.iter().map(|&w| u64::from(w) * load).collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut reference = Xoshiro256PlusPlus::seed_from_u64(seed);
        let picker = WeightedPicker::new(&weights).unwrap();
        for _ in 0..20 {
            prop_assert_eq!(
                least_request(&weights, &loads, &mut rng),
                Some(picker.pick(&mut reference))
            );
        }
    }

    #[test]
    fn host_key_reads_names_as_the_multi_pass_parser_did(
        raw in prop_oneof![
            vec(any::<u8>(), 0..24),
            "[a-zA-Z0-9._:-]{0,16}".prop_map(String::into_bytes),
            "[a-z.]{0,6}(:[0-9]{0,6})?".prop_map(String::into_bytes),
        ]
    ) {
        let mut fast = raw.clone();
        let got = host_key(&mut fast).map(|k| (k.bare.to_vec(), k.with_port.map(<[u8]>::to_vec)));
        prop_assert_eq!(got, host_key_multi_pass(raw));
    }

    #[test]
    fn a_key_found_as_sent_is_the_service_its_parsed_key_finds(
        raw in prop_oneof![
            prop::sample::select(vec![
                "reviews", "reviews:9080", "reviews.", "REVIEWS", "reviews:09080", "ratings:80",
                "ratings", "ratings:81", "10.0.0.1", "10.0.0.1:8080", "[::1]", "::1", "[::1]:80",
                "[0:0::1]:80", "api.example.com", "api.example.com.", "x_y", "",
            ]).prop_map(|s| s.as_bytes().to_vec()),
            "[a-zA-Z0-9.:\\[\\]_-]{0,16}".prop_map(String::into_bytes),
        ]
    ) {
        // Hosts with and without ports, an address, an IPv6 literal, a dotted name: a key the
        // request sends exactly as configured is looked up as sent (the request path's shortcut);
        // it must be the service the parsed key finds.
        let plan = crate::plan::Plan::from_json(br#"{"services": [
            {"name": "reviews", "hosts": ["reviews", "ratings:80"],
             "upstreams": [{"name": "a", "cluster": "a", "weight": 1}]},
            {"name": "ratings", "hosts": ["ratings", "10.0.0.1:8080", "[::1]:80"],
             "upstreams": [{"name": "b", "cluster": "b", "weight": 1}]},
            {"name": "api", "hosts": ["api.example.com.", "x_y", "::1"],
             "upstreams": [{"name": "c", "cluster": "c", "weight": 1}]}
        ]}"#).unwrap();
        if let Some((direct, _)) = plan.lookup(&raw) {
            let parsed = plan.find(&mut raw.clone()).map(|(index, _)| index);
            prop_assert_eq!(Some(direct), parsed, "{:?}", String::from_utf8_lossy(&raw));
        }
    }

    #[test]
    fn host_key_never_panics_and_is_idempotent(raw in vec(any::<u8>(), 0..64)) {
        let mut once = raw.clone();
        if let Some(key) = host_key(&mut once) {
            let (bare, with_port) = (key.bare.to_vec(), key.with_port.map(<[u8]>::to_vec));
            prop_assert!(bare.iter().all(|b| b.is_ascii() && !b.is_ascii_uppercase()));
            // A key parses to itself: the bare host, and the host with its port.
            let mut again = bare.clone();
            let reparsed = host_key(&mut again).map(|k| k.bare.to_vec());
            prop_assert_eq!(reparsed.as_deref(), Some(&bare[..]));
            if let Some(with_port) = with_port {
                let mut again = with_port.clone();
                let reparsed = host_key(&mut again).and_then(|k| k.with_port.map(<[u8]>::to_vec));
                prop_assert_eq!(reparsed.as_deref(), Some(&with_port[..]));
            }
        }
    }

    #[test]
    fn host_key_accepts_every_authority_of_a_name_an_address_and_a_port(
        labels in vec("[a-zA-Z0-9_-]{1,8}", 1..4), dot: bool, port in proptest::option::of(0u16..),
        v6: [u16; 8], v6_form in 0usize..3,
    ) {
        let name = labels.join(".");
        let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
        let written = format!("{name}{}{port_text}", if dot { "." } else { "" });
        let mut raw = written.clone().into_bytes();
        let key = host_key(&mut raw);
        prop_assert!(key.is_some(), "{written:?}");
        let key = key.unwrap();
        let lower = name.to_ascii_lowercase();
        prop_assert_eq!(key.bare, lower.as_bytes());
        let address = std::net::Ipv6Addr::from(v6);
        let spelled = match v6_form {
            0 => address.to_string(),
            1 => v6.iter().map(|g| format!("{g:x}")).collect::<Vec<_>>().join(":"),
            _ => v6.iter().map(|g| format!("{g:04X}")).collect::<Vec<_>>().join(":"),
        };
        let mut raw = format!("[{spelled}]{port_text}").into_bytes();
        let key = host_key(&mut raw).unwrap();
        let canonical = address.to_string();
        prop_assert_eq!(key.bare, canonical.as_bytes());
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
        value in vec(b'a'..=b'z', 1..10),
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
        // Both conditions: the slow requests are those that did not fail, so some upstreams
        // are ejected for errors and others for latency, under the one cap.
        let guard = Guard { error_rate: Some(0.5), min_requests: 1, window_s: 10, eject_s: 30, max_ejected_percent: cap, failure_codes: vec![500], relative_margin: None,
                            latency: Some(Latency { percentile_milli: 90_000, threshold_ms: 250 }),
                            abandoned_after_ms: 500, grpc_failure_codes: vec![14], latency_relative_margin: None };
        let now = 1_000_000;
        let seen: Vec<Seen> = upstreams.iter().zip(&ejected).map(|(&(weight, requests, failed), &out)| Seen {
            weight,
            requests,
            failures: failed.min(requests),
            slow: requests - failed.min(requests),
            read: Read { requests, failures: failed.min(requests), slow: requests - failed.min(requests) },
            ejection: if out { Ejection { since_ms: 990_000, until_ms: 1_010_000, times: 0, readmission_reported: false, since_wall_s: 0 } } else { Ejection::default() },
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

// ---- any accepted configuration round-trips through the plan ----

mod round_trip {
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    use serde_json::{json, Map, Value};

    use crate::plan::render::render;
    use crate::plan::Plan;

    fn text(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => select(pool).prop_map(str::to_owned),
            1 => "[a-zA-Z0-9.:_-]{1,10}",
        ]
    }

    fn upstream() -> impl Strategy<Value = Value> {
        (
            text(&["v1", "v2", "v3", "canary"]),
            text(&["c1", "c2", "reviews_v1"]),
            option::of(text(&["reviews.internal", "v2.example:8080"])),
            prop_oneof![4 => 0u64..=100, 1 => any::<u64>()],
        )
            .prop_map(|(name, cluster, authority, weight)| {
                let mut u = json!({"name": name, "cluster": cluster, "weight": weight});
                if let Some(a) = authority {
                    u["authority"] = json!(a);
                }
                u
            })
    }

    fn condition() -> impl Strategy<Value = Value> {
        (
            text(&["x-canary", "x-user", "session"]),
            text(&["1", "beta", ""]),
            0..3,
        )
            .prop_map(|(name, value, kind)| match kind {
                0 => json!({"name": name, "exact": value}),
                1 => json!({"name": name, "prefix": value}),
                _ => json!({"name": name, "present": true}),
            })
    }

    fn rule() -> impl Strategy<Value = Value> {
        (
            vec(condition(), 0..3),
            vec((text(&["user", "sid"]), text(&["a", "b"])), 0..2),
            vec((text(&["beta", "v"]), text(&["1", "x y"])), 0..2),
            text(&["v1", "v2", "v3"]),
        )
            .prop_map(|(headers, cookies, query, upstream)| {
                let pairs = |p: Vec<(String, String)>| -> Vec<Value> {
                    p.into_iter()
                        .map(|(n, v)| json!({"name": n, "exact": v}))
                        .collect()
                };
                json!({"match": {"headers": headers, "cookies": pairs(cookies),
                                 "query": pairs(query)}, "upstream": upstream})
            })
    }

    fn guard() -> impl Strategy<Value = Value> {
        (
            prop_oneof![select(&[0.05, 0.5, 1.0][..]), 0.0f64..1.5],
            option::of(0u64..2_000_000),
            option::of(0u64..4000),
            option::of(1u64..100),
            option::of(0u64..120),
        )
            .prop_map(|(rate, min, window, eject, percent)| {
                let mut g = Map::new();
                g.insert("error_rate".into(), json!(rate));
                for (key, value) in [
                    ("min_requests", min),
                    ("window_s", window),
                    ("eject_s", eject),
                    ("max_ejected_percent", percent),
                ] {
                    if let Some(v) = value {
                        g.insert(key.into(), json!(v));
                    }
                }
                Value::Object(g)
            })
    }

    fn rollout() -> impl Strategy<Value = Value> {
        (
            select(
                &[
                    "2026-12-01T10:00:00Z",
                    "2026-12-01T10:00:00.250Z",
                    "2030-01-01T00:00:00+00:00",
                    "tomorrow",
                ][..],
            ),
            any::<bool>(),
            vec(
                (
                    1u64..1000,
                    vec((text(&["v1", "v2", "v3"]), 0u64..200), 0..3),
                ),
                1..4,
            ),
        )
            .prop_map(|(start, interpolate, steps)| {
                let mut at = 0;
                let steps: Vec<Value> = steps
                    .into_iter()
                    .map(|(gap, weights)| {
                        at += gap;
                        let weights: Map<String, Value> =
                            weights.into_iter().map(|(n, w)| (n, json!(w))).collect();
                        json!({"at_s": at, "weights": weights})
                    })
                    .collect();
                json!({"start": start, "interpolate": interpolate, "steps": steps})
            })
    }

    fn service() -> impl Strategy<Value = Value> {
        (
            text(&["reviews", "ratings", "api.example.com"]),
            option::of(vec(
                text(&["Reviews", "reviews.default:9080", "10.1.2.3", "[::1]:80"]),
                1..3,
            )),
            option::of(select(
                &["weighted", "round_robin", "least_request", "sticky"][..],
            )),
            option::of((0usize..3, text(&["x-user", "sid"]))),
            vec(upstream(), 1..4),
            vec(rule(), 0..3),
            option::of(guard()),
            option::of(rollout()),
        )
            .prop_map(
                |(name, hosts, strategy, hash_on, upstreams, rules, guard, rollout)| {
                    let mut s = json!({"name": name, "upstreams": upstreams, "rules": rules});
                    if let Some(h) = hosts {
                        s["hosts"] = json!(h);
                    }
                    if let Some(st) = strategy {
                        s["strategy"] = json!(st);
                    }
                    if let Some((kind, key)) = hash_on {
                        let kind: &str = ["header", "cookie", "query"][kind];
                        s["hash_on"] = json!({ kind: key });
                    }
                    if let Some(g) = guard {
                        s["guard"] = g;
                    }
                    if let Some(r) = rollout {
                        s["rollout"] = r;
                    }
                    s
                },
            )
    }

    /// Makes most generated configurations valid, so that the round trip is exercised: unique
    /// service and upstream names, `hash_on` exactly for sticky services, rules and rollout
    /// steps that name upstreams of their service, guard fields in range.
    fn repair(services: &mut [Value]) {
        for (i, s) in services.iter_mut().enumerate() {
            s["name"] = json!(format!(
                "s{i}.{}",
                s["name"].as_str().unwrap().to_lowercase()
            ))
            .as_str()
            .filter(|n| {
                n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            })
            .map_or(json!(format!("s{i}")), |n| json!(n));
            if let Some(hosts) = s.get_mut("hosts") {
                *hosts = json!([format!("H{i}.example"), format!("10.0.{i}.1:8080")]);
            }
            let names: Vec<String> = s["upstreams"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .enumerate()
                .map(|(j, u)| {
                    let name = format!("{}{j}", u["name"].as_str().unwrap());
                    u["name"] = json!(name);
                    u["weight"] = json!(u["weight"].as_u64().unwrap() % 10 + 1);
                    name
                })
                .collect();
            let sticky = s.get("strategy").and_then(Value::as_str) == Some("sticky");
            let object = s.as_object_mut().unwrap();
            if sticky && !object.contains_key("hash_on") {
                object.insert("hash_on".into(), json!({"header": "x-user"}));
            } else if !sticky {
                object.remove("hash_on");
            }
            for (k, rule) in object["rules"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .enumerate()
            {
                rule["upstream"] = json!(names[k % names.len()]);
                let empty = ["headers", "cookies", "query"]
                    .iter()
                    .all(|part| rule["match"][part].as_array().unwrap().is_empty());
                if empty {
                    rule["match"]["headers"] = json!([{"name": "x-canary", "present": true}]);
                }
            }
            if let Some(guard) = object.get_mut("guard").and_then(Value::as_object_mut) {
                let rate = guard["error_rate"].as_f64().unwrap();
                guard.insert("error_rate".into(), json!(rate.clamp(0.01, 0.99)));
                guard.remove("min_requests");
                guard.remove("window_s");
                guard.remove("max_ejected_percent");
            }
            if let Some(rollout) = object.get_mut("rollout") {
                rollout["start"] = json!("2026-12-01T10:00:00.250Z");
                for step in rollout["steps"].as_array_mut().unwrap() {
                    let weights: Map<String, Value> = names
                        .iter()
                        .zip(
                            step["weights"]
                                .as_object()
                                .unwrap()
                                .values()
                                .chain(std::iter::repeat(&json!(1))),
                        )
                        .map(|(n, w)| (n.clone(), json!(w.as_u64().unwrap() % 50)))
                        .collect();
                    step["weights"] = Value::Object(weights);
                }
            }
        }
    }

    fn config() -> impl Strategy<Value = Value> {
        (
            option::of(text(&["x-meshsplit-cluster", "x-route-to"])),
            option::of(0..3),
            option::of(any::<bool>()),
            vec(service(), 1..4),
            prop_oneof![3 => Just(true), 1 => Just(false)],
        )
            .prop_map(|(header, from, reject, mut services, repaired)| {
                if repaired {
                    repair(&mut services);
                }
                let mut c = json!({ "services": services });
                if let Some(h) = header {
                    c["cluster_header"] = json!(h);
                }
                if let Some(from) = from {
                    c["service_from"] = match from {
                        0 => json!("authority"),
                        1 => json!({"header": "x-service"}),
                        _ => json!({"query": "service"}),
                    };
                }
                if let Some(reject) = reject {
                    c["on_unknown_service"] = json!(if reject { "reject" } else { "pass" });
                }
                c
            })
    }

    /// Whether `config` is accepted, after checking that its plan round-trips: rendered back
    /// to JSON, it compiles to the same plan (and renders the same again).
    fn round_trips(config: &Value) -> Result<bool, TestCaseError> {
        let bytes = serde_json::to_vec(config).unwrap();
        let plan = match Plan::from_json(&bytes) {
            Ok(plan) => plan,
            Err(_) => return Ok(false),
        };
        let rendered = render(&plan);
        let again = Plan::from_json(&serde_json::to_vec(&rendered).unwrap());
        let again = match again {
            Ok(again) => again,
            Err(err) => {
                return Err(TestCaseError::fail(format!(
                    "the rendered plan is refused: {err}\n{rendered:#}"
                )))
            }
        };
        prop_assert_eq!(format!("{plan:?}"), format!("{again:?}"));
        prop_assert_eq!(render(&again), rendered);
        Ok(true)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_accepted_config_round_trips_through_the_plan(config in config()) {
            round_trips(&config)?;
        }
    }

    /// The generator must reach the interesting part: a good share of its configurations are
    /// accepted, with every strategy, rules, guards and rollouts among them.
    #[test]
    fn the_round_trip_generator_makes_accepted_configs_of_every_kind() {
        let mut runner = TestRunner::new_with_rng(
            Config::with_cases(400),
            TestRng::deterministic_rng(RngAlgorithm::ChaCha),
        );
        let (mut accepted, mut kinds) = (0, std::collections::BTreeSet::new());
        for _ in 0..400 {
            let config = config().new_tree(&mut runner).unwrap().current();
            if round_trips(&config).unwrap() {
                accepted += 1;
                for s in config["services"].as_array().unwrap() {
                    kinds.insert(s["strategy"].as_str().unwrap_or("weighted").to_owned());
                    for part in ["guard", "rollout"] {
                        if s.get(part).is_some() {
                            kinds.insert(part.to_owned());
                        }
                    }
                    if !s["rules"].as_array().unwrap().is_empty() {
                        kinds.insert("rules".to_owned());
                    }
                }
            }
        }
        assert!(accepted >= 120, "only {accepted} of 400 accepted");
        println!("{accepted} of 400 generated configurations accepted");
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [
                "guard",
                "least_request",
                "rollout",
                "round_robin",
                "rules",
                "sticky",
                "weighted"
            ]
        );
    }
}

/// The authority parser before it read a name in one pass (`request::scan_name`): lowercase,
/// count the colons, find the first, check the labels, each in a pass of its own.
#[allow(clippy::type_complexity)]
fn host_key_multi_pass(mut raw: Vec<u8>) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    raw.make_ascii_lowercase();
    if raw.first() == Some(&b'[') || raw.iter().filter(|&&b| b == b':').count() >= 2 {
        return host_key(&mut raw).map(|k| (k.bare.to_vec(), k.with_port.map(<[u8]>::to_vec)));
    }
    let name_end = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
    let has_port = name_end < raw.len();
    if has_port {
        let digits = raw.get(name_end + 1..)?;
        let value: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
        if digits.is_empty()
            || digits.len() > 5
            || !digits.iter().all(u8::is_ascii_digit)
            || value > 65_535
        {
            return None;
        }
    }
    let dotted = raw.get(..name_end)?.ends_with(b".");
    let name_len = name_end - usize::from(dotted);
    if !crate::request::valid_name(raw.get(..name_len)?) {
        return None;
    }
    if dotted {
        raw.remove(name_len);
    }
    let bare = raw.get(..name_len)?.to_vec();
    Some((bare, has_port.then_some(raw)))
}
