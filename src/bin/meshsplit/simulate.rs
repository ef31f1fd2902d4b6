//! Requests routed outside Envoy by the filter's own decision code
//! (`meshsplit::route::on_request_headers`): a host that holds one request's headers, and the
//! arithmetic `preview` and `apply` print: shares, round-robin cycles, sticky key movement.

use std::cell::RefCell;
use std::collections::BTreeMap;

use meshsplit::host::{Host, SharedWrite};
use meshsplit::in_flight::PROCESS_OWNER;
use meshsplit::metrics::Counted;
use meshsplit::plan::{HashOn, Plan, ServiceFrom, Strategy};
use meshsplit::route::on_request_headers;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

/// The generator every simulation uses: seeded, so a preview is the same on every run.
pub fn generator(seed: u64) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed)
}

/// One request's headers, as Envoy would show them to the filter (lowercase names,
/// pseudo-headers included, `Host` as `:authority`, and the headers Envoy's HTTP connection
/// manager adds before any filter runs with the shipped configs: [`ENVOY_ADDED`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    headers: Vec<(String, Vec<u8>)>,
}

/// Headers Envoy's HTTP connection manager adds to a request that lacks them, before the
/// filters see it, with the shipped configs (`generate_request_id` on, `use_remote_address`
/// off): `x-request-id` (a random UUID; this value stands for any) and `x-forwarded-proto`
/// (the scheme of the downstream connection).
pub const ENVOY_ADDED: [(&str, &str); 2] = [
    ("x-request-id", "5f0c8e62-3f6b-4b1e-9a57-1c2d3e4f5a6b"),
    ("x-forwarded-proto", "http"),
];

/// The name Envoy knows header `name` by: `host` is `:authority` (HTTP/1.1's `Host` becomes
/// HTTP/2's `:authority`, and a filter asking for `host` gets it).
pub fn envoy_name(name: &str) -> &str {
    if name.eq_ignore_ascii_case("host") {
        ":authority"
    } else {
        name
    }
}

impl Request {
    /// `GET /` with the service key where `plan` reads it (and as `:authority` in any case),
    /// with the headers Envoy adds ([`ENVOY_ADDED`]).
    pub fn for_service(plan: &Plan, key: &str) -> Self {
        let mut request = Self::default();
        request.set(":method", "GET");
        request.set(":scheme", "http");
        request.set(":path", "/");
        request.set(":authority", key);
        for (name, value) in ENVOY_ADDED {
            request.set(name, value);
        }
        match &plan.service_from {
            ServiceFrom::Authority => {}
            ServiceFrom::Header(name) => request.set(name, key),
            ServiceFrom::Query(param) => request.add_query(param, key),
        }
        request
    }

    /// Adds a copy of header `name` after the others, as a client that sends it twice does
    /// (`host` is `:authority`).
    pub fn append(&mut self, name: &str, value: &str) {
        self.headers
            .push((envoy_name(name).to_owned(), value.as_bytes().to_vec()));
    }

    /// Replaces every copy of header `name` (`host` is `:authority`).
    pub fn set(&mut self, name: &str, value: &str) {
        let name = envoy_name(name);
        self.headers.retain(|(n, _)| n != name);
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let name = envoy_name(name);
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Adds `name=value` (percent-encoded) to the query string of `:path`.
    pub fn add_query(&mut self, name: &str, value: &str) {
        let path = self
            .header(":path")
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_else(|| "/".to_owned());
        let separator = if path.contains('?') { '&' } else { '?' };
        let encoded = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let path = format!("{path}{separator}{}={}", encoded(name), encoded(value));
        self.set(":path", &path);
    }

    /// Adds cookie `name=value` to the `cookie` header.
    pub fn add_cookie(&mut self, name: &str, value: &str) {
        let cookie = match self.header("cookie") {
            Some(old) => format!("{}; {name}={value}", String::from_utf8_lossy(old)),
            None => format!("{name}={value}"),
        };
        self.set("cookie", &cookie);
    }

    /// Puts a sticky key where `hash_on` looks for it.
    pub fn set_key(&mut self, hash_on: &HashOn, key: &str) {
        match hash_on {
            HashOn::Header(name) => self.set(name, key),
            HashOn::Cookie(name) => self.add_cookie(name, key),
            HashOn::Query(name) => self.add_query(name, key),
        }
    }
}

/// The host the filter sees: one request's headers; header writes recorded; shared data (the
/// least-request counts) in a map that outlives requests; no metrics.
#[derive(Debug, Default)]
pub struct SimHost {
    headers: RefCell<Vec<(String, Vec<u8>)>>,
    shared: RefCell<BTreeMap<String, (Vec<u8>, u32)>>,
    cas: RefCell<u32>,
}

/// What the filter did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub counted: Counted,
    /// The cluster header the filter wrote (`None`: removed, or a local reply).
    pub cluster: Option<String>,
    /// The visitor id assigned (`assign_cookie`, a request without the cookie).
    pub cookie: Option<meshsplit::cookie::CookieId>,
}

impl SimHost {
    /// Routes `request` with `plan`, as the filter in Envoy would.
    pub fn route<R: rand_core::Rng + ?Sized>(
        &self,
        plan: &Plan,
        rng: &mut R,
        request: &Request,
    ) -> Outcome {
        self.headers.replace(request.headers.clone());
        let routed = on_request_headers(plan, rng, self, PROCESS_OWNER);
        let cluster = match (&plan.headers.cluster, routed.counted) {
            (Some(header), _) => self
                .request_header(header)
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
            // Only an upstream header: the cluster its route sends the upstream's name to.
            (
                None,
                Counted::Upstream {
                    service, upstream, ..
                },
            ) => plan
                .services
                .get(service)
                .and_then(|s| s.upstreams.get(upstream))
                .map(|u| u.cluster.clone()),
            (None, _) => None,
        };
        Outcome {
            counted: routed.counted,
            cluster,
            cookie: routed.cookie,
        }
    }
}

impl Host for SimHost {
    /// Every copy, in order, as Envoy holds a header sent several times.
    fn request_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        let name = envoy_name(name);
        self.headers
            .borrow()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        // As in Envoy, `host` reads `:authority`.
        let name = envoy_name(name);
        self.headers
            .borrow()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let name = envoy_name(name);
        let mut headers = self.headers.borrow_mut();
        headers.retain(|(n, _)| n != name);
        if let Some(value) = value {
            headers.push((name.to_owned(), value.as_bytes().to_vec()));
        }
    }

    fn send_local_reply(&self, _status: u32, _headers: &[(&str, &str)], _body: &[u8]) -> bool {
        true
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.shared.borrow().get(key).cloned()
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        let mut shared = self.shared.borrow_mut();
        if let Some((_, token)) = shared.get(key) {
            if cas != 0 && cas != *token {
                return SharedWrite::CasMismatch;
            }
        }
        let mut next = self.cas.borrow_mut();
        *next = next.wrapping_add(1).max(1);
        shared.insert(key.to_owned(), (value.to_vec(), *next));
        SharedWrite::Written
    }
}

/// The synthetic sticky key number `i`.
pub fn key(i: u64) -> String {
    format!("user-{i}")
}

/// What `requests` simulated requests of service `service` did: per upstream, how many it got,
/// and the first upstream indexes in order (at most `keep_order`). Sticky services get a new
/// key per request (`user-0`, `user-1`, ...); least-request upstreams keep every request in
/// flight, as if all took equally long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Simulated {
    pub counts: Vec<u64>,
    /// Requests a rule claimed, per rule.
    pub rule_hits: Vec<u64>,
    pub order: Vec<usize>,
}

pub fn simulate(
    plan: &Plan,
    service: usize,
    key_of_service: &str,
    requests: u64,
    keep_order: usize,
    seed: u64,
) -> Simulated {
    let upstreams = plan.services.get(service).map_or(0, |s| s.upstreams.len());
    let rules = plan.services.get(service).map_or(0, |s| s.rules.len());
    // A service that assigns its cookie: each simulated request is a new visitor without it,
    // routed by the id the filter assigns, as in Envoy.
    let hash_on = match plan.services.get(service) {
        Some(s) if s.assign_cookie.is_some() => None,
        Some(s) => match &s.strategy {
            Strategy::Sticky { hash_on, .. } => Some(hash_on),
            _ => None,
        },
        None => None,
    };
    let mut rng = generator(seed);
    let host = SimHost::default();
    let base = Request::for_service(plan, key_of_service);
    let mut result = Simulated {
        counts: vec![0; upstreams],
        rule_hits: vec![0; rules],
        order: Vec::new(),
    };
    for i in 0..requests {
        let outcome = match hash_on {
            Some(hash_on) => {
                let mut request = base.clone();
                request.set_key(hash_on, &key(i));
                host.route(plan, &mut rng, &request)
            }
            None => host.route(plan, &mut rng, &base),
        };
        if let Counted::Upstream {
            service: s,
            upstream,
            rule,
        } = outcome.counted
        {
            if s != service {
                continue;
            }
            if let Some(count) = result.counts.get_mut(upstream) {
                *count += 1;
            }
            if let Some(hits) = rule.and_then(|r| result.rule_hits.get_mut(r)) {
                *hits += 1;
            }
            if result.order.len() < keep_order {
                result.order.push(upstream);
            }
        }
    }
    result
}

/// Each weight's share of the total (0 when the total is 0).
pub fn expected_shares(weights: &[u32]) -> Vec<f64> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    weights
        .iter()
        .map(|&w| {
            if total == 0 {
                0.0
            } else {
                f64::from(w) / total as f64
            }
        })
        .collect()
}

/// The length of one round-robin cycle: the sum of the weights over their greatest common
/// divisor (smooth weighted round robin repeats after that many picks).
pub fn cycle_length(weights: &[u32]) -> u64 {
    let gcd = weights
        .iter()
        .filter(|&&w| w > 0)
        .fold(0u64, |g, &w| gcd(g, u64::from(w)));
    if gcd == 0 {
        return 0;
    }
    weights.iter().map(|&w| u64::from(w)).sum::<u64>() / gcd
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Where sampled sticky keys go before and after an edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Movement {
    pub keys: u64,
    /// Whether the keys were visitor ids as `assign_cookie` assigns them (else `user-N`).
    pub assigned: bool,
    /// Keys whose cluster changed: their requests go somewhere else.
    pub moved: u64,
    /// `(from, to, keys)` by upstream name, most keys first, of the keys that moved.
    pub flows: Vec<(String, String, u64)>,
    /// Keys whose upstream has another name but the same cluster (an upstream renamed, or two
    /// upstreams sharing a cluster): nothing changes for them.
    pub renamed: u64,
    /// `(from, to, keys)` of those, most keys first.
    pub renames: Vec<(String, String, u64)>,
}

/// Sample visitor `i`'s id as `assign_cookie` would assign it: 128 bits from a generator seeded
/// with `i`, so every run shows the same ids. An assigned id is random, with no known keys to
/// replay, so a ramp's effect on assigned visitors is the share of random ids that move.
pub fn visitor_id(i: u64) -> String {
    meshsplit::cookie::CookieId::random(&mut generator(i))
        .as_str()
        .to_owned()
}

/// Routes keys `user-0..user-{keys-1}` of one service through the old and the new plan (each
/// with its own service key and `hash_on`) and counts the keys whose upstream changed. When
/// the new plan's service assigns its cookie (`assign_cookie`), the keys are sample visitor ids
/// ([`visitor_id`]) instead: what its visitors carry.
pub fn movement(old: (&Plan, usize, &str), new: (&Plan, usize, &str), keys: u64) -> Movement {
    let owner = |(plan, service, service_key): (&Plan, usize, &str), rng: &mut _, key: &str| {
        let host = SimHost::default();
        let svc = plan.services.get(service)?;
        let mut request = Request::for_service(plan, service_key);
        if let Strategy::Sticky { hash_on, .. } = &svc.strategy {
            request.set_key(hash_on, key);
        }
        match host.route(plan, rng, &request).counted {
            Counted::Upstream { upstream, .. } => svc
                .upstreams
                .get(upstream)
                .map(|u| (u.name.clone(), u.cluster.clone())),
            _ => None,
        }
    };
    let mut rng = generator(0);
    let mut flows: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut renames: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut moved = 0;
    let mut renamed = 0;
    let assigned = new
        .0
        .services
        .get(new.1)
        .is_some_and(|s| s.assign_cookie.is_some());
    for i in 0..keys {
        let key = if assigned { visitor_id(i) } else { key(i) };
        let before = owner(old, &mut rng, &key);
        let after = owner(new, &mut rng, &key);
        if before == after {
            continue;
        }
        let cluster = |o: &Option<(String, String)>| o.as_ref().map(|(_, c)| c.clone());
        let same_cluster = cluster(&before) == cluster(&after);
        let name = |o: Option<(String, String)>| o.map_or_else(|| "(none)".to_owned(), |(n, _)| n);
        let pair = (name(before), name(after));
        if same_cluster {
            renamed += 1;
            *renames.entry(pair).or_default() += 1;
        } else {
            moved += 1;
            *flows.entry(pair).or_default() += 1;
        }
    }
    let sorted = |flows: BTreeMap<(String, String), u64>| {
        let mut flows: Vec<(String, String, u64)> =
            flows.into_iter().map(|((f, t), n)| (f, t, n)).collect();
        flows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (&a.0, &a.1).cmp(&(&b.0, &b.1))));
        flows
    };
    Movement {
        keys,
        assigned,
        moved,
        flows: sorted(flows),
        renamed,
        renames: sorted(renames),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(config: serde_json::Value) -> Plan {
        Plan::from_json(config.to_string().as_bytes()).unwrap()
    }

    fn one_service(strategy: &str, weights: &[(&str, u32)]) -> Plan {
        let upstreams: Vec<_> = weights
            .iter()
            .map(|(n, w)| json!({"name": n, "cluster": format!("c_{n}"), "weight": w}))
            .collect();
        let mut service = json!({"name": "svc", "strategy": strategy, "upstreams": upstreams});
        if strategy == "sticky" {
            service["hash_on"] = json!({"header": "x-user-id"});
        }
        plan(json!({"services": [service]}))
    }

    #[test]
    fn a_service_assigning_its_cookie_is_simulated_as_new_visitors_split_by_weight() {
        let plan = plan(json!({"services": [{"name": "svc", "strategy": "sticky",
            "hash_on": {"cookie": "c"}, "assign_cookie": {},
            "upstreams": [{"name": "a", "cluster": "a", "weight": 3},
                          {"name": "b", "cluster": "b", "weight": 1}]}]}));
        let simulated = simulate(&plan, 0, "svc", 4_000, 0, 1);
        assert_eq!(simulated.counts.iter().sum::<u64>(), 4_000);
        // Binomial(4000, 1/4): 1000 ± 27; a fixed seed, so a fixed count.
        assert!((900..1100).contains(&simulated.counts[1]), "{simulated:?}");
    }

    #[test]
    fn sample_visitor_ids_look_assigned_and_are_the_same_every_run() {
        let id = visitor_id(7);
        assert_eq!(id.len(), meshsplit::cookie::ID_LEN);
        assert_eq!(id, visitor_id(7));
        assert_ne!(id, visitor_id(8));
    }

    #[test]
    fn expected_shares_are_weights_over_their_sum() {
        assert_eq!(expected_shares(&[90, 10, 0]), [0.9, 0.1, 0.0]);
        assert_eq!(expected_shares(&[0, 0]), [0.0, 0.0]);
    }

    #[test]
    fn round_robin_cycle_is_the_weight_sum_over_their_gcd() {
        assert_eq!(cycle_length(&[5, 1, 1]), 7);
        assert_eq!(cycle_length(&[50, 10, 0, 10]), 7);
        assert_eq!(cycle_length(&[0, 0]), 0);
    }

    #[test]
    fn round_robin_simulation_gives_the_filters_order() {
        let plan = one_service("round_robin", &[("a", 5), ("b", 1), ("c", 1)]);
        let sim = simulate(&plan, 0, "svc", 70, 7, 1);
        assert_eq!(sim.order, [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(sim.counts, [50, 10, 10]);
    }

    #[test]
    fn weighted_simulation_is_seeded_and_never_picks_a_drained_upstream() {
        let plan = one_service("weighted", &[("a", 90), ("b", 10), ("c", 0)]);
        let first = simulate(&plan, 0, "svc", 10_000, 0, 7);
        assert_eq!(first, simulate(&plan, 0, "svc", 10_000, 0, 7));
        assert_eq!(first.counts[2], 0);
        assert!((8_800..9_200).contains(&first.counts[0]), "{first:?}");
    }

    #[test]
    fn rules_are_counted_when_simulated_requests_match_them() {
        let plan = plan(json!({"services": [{"name": "svc",
            "upstreams": [{"name": "a", "cluster": "a", "weight": 1},
                          {"name": "b", "cluster": "b", "weight": 0}],
            "rules": [{"match": {"headers": [{"name": ":method", "exact": "GET"}]}, "upstream": "b"}]}]}));
        let sim = simulate(&plan, 0, "svc", 10, 0, 1);
        assert_eq!((sim.counts, sim.rule_hits), (vec![0, 10], vec![10]));
    }

    #[test]
    fn service_keys_go_where_the_plan_reads_them() {
        for (from, check) in [
            (json!({"header": "x-svc"}), ("x-svc", "svc")),
            (json!({"query": "s"}), (":path", "/?s=svc")),
        ] {
            let plan = plan(json!({"service_from": from, "services": [{"name": "svc",
                "upstreams": [{"name": "a", "cluster": "c_a", "weight": 1}]}]}));
            let request = Request::for_service(&plan, "svc");
            assert_eq!(request.header(check.0), Some(check.1.as_bytes()));
            let outcome = SimHost::default().route(&plan, &mut generator(1), &request);
            assert_eq!(outcome.cluster.as_deref(), Some("c_a"));
        }
    }

    #[test]
    fn least_request_keeps_requests_in_flight_so_shares_follow_weights() {
        let plan = one_service("least_request", &[("a", 3), ("b", 1)]);
        let sim = simulate(&plan, 0, "svc", 400, 0, 1);
        // Among upstreams within one request of the least loaded, the pick is random by weight:
        // the shares follow the weights, not exactly.
        assert_eq!(sim.counts.iter().sum::<u64>(), 400);
        assert!((280..=320).contains(&sim.counts[0]), "{:?}", sim.counts);
    }

    #[test]
    fn raising_one_sticky_upstream_moves_keys_only_into_it() {
        let old = one_service("sticky", &[("v1", 90), ("v2", 10), ("v3", 5)]);
        let new = one_service("sticky", &[("v1", 90), ("v2", 30), ("v3", 5)]);
        let m = movement((&old, 0, "svc"), (&new, 0, "svc"), 5_000);
        assert!(m.moved > 0);
        assert!(m.flows.iter().all(|(_, to, _)| to == "v2"), "{m:?}");
        assert_eq!(m.flows.iter().map(|f| f.2).sum::<u64>(), m.moved);
        // P(v2) goes from 10/105 to 30/125: about 14.5 % of keys move.
        let fraction = m.moved as f64 / 5_000.0;
        assert!((0.12..0.17).contains(&fraction), "{fraction}");
    }

    #[test]
    fn same_weights_move_no_key() {
        let plan = one_service("sticky", &[("v1", 1), ("v2", 1)]);
        let m = movement((&plan, 0, "svc"), (&plan, 0, "svc"), 1_000);
        assert!(!m.assigned);
        assert_eq!((m.moved, m.flows.len()), (0, 0));
    }

    #[test]
    fn keys_in_cookies_and_queries_are_found_by_the_filter() {
        let mut request = Request::default();
        request.set(":path", "/x?a=1");
        request.add_query("user", "a b");
        request.add_cookie("s", "1");
        request.add_cookie("t", "2");
        assert_eq!(request.header(":path"), Some(&b"/x?a=1&user=a%20b"[..]));
        assert_eq!(request.header("cookie"), Some(&b"s=1; t=2"[..]));
    }

    #[test]
    fn a_simulated_request_carries_what_envoy_adds_and_host_is_the_authority() {
        let plan = plan(json!({"services": [{"name": "s", "upstreams": [
            {"name": "a", "cluster": "a", "weight": 1}, {"name": "b", "cluster": "b", "weight": 0}],
            "rules": [{"match": {"headers": [{"name": "host", "exact": "s"}]}, "upstream": "b"}]}]}));
        let request = Request::for_service(&plan, "s");
        assert_eq!(request.header("host"), Some(&b"s"[..]));
        assert_eq!(request.header("x-forwarded-proto"), Some(&b"http"[..]));
        assert!(request.header("x-request-id").is_some());
        let host = SimHost::default();
        let routed = host.route(&plan, &mut generator(1), &request);
        assert_eq!(routed.cluster.as_deref(), Some("b"));
        // A client's own value stays.
        let mut own = request.clone();
        own.set("x-forwarded-proto", "https");
        own.set("Host", "t");
        assert_eq!(own.header("x-forwarded-proto"), Some(&b"https"[..]));
        assert_eq!(own.header(":authority"), Some(&b"t"[..]));
    }
}
