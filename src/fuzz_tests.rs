//! Fuzz targets of the core (see `fuzz.rs`): configuration bytes to a plan, and request bytes
//! to a routing decision, through the same entries the filter uses (`Instance`).

use std::cell::Cell;
use std::rc::Rc;

use proptest::prop_assert;

use crate::config::RawConfig;
use crate::fuzz::{self, Corpus, TestCaseError};
use crate::host::FakeHost;
use crate::instance::{config_fingerprint, config_summary, Instance};
use crate::plan::{
    Condition, HashOn, HeaderTest, OnUnknownService, Plan, Service, ServiceFrom, Strategy,
};
use crate::request::{cookie_value, host_key, query_param};
use crate::route::Verdict;

thread_local! {
    /// The clock of the instance under test (Unix ms).
    static NOW_MS: Cell<u64> = const { Cell::new(CLOCK_MS) };
}

/// 2027-01-15T08:00:00Z.
const CLOCK_MS: u64 = 1_800_000_000_000;

fn clock() -> u64 {
    NOW_MS.with(Cell::get)
}

fn set_clock(ms: u64) {
    NOW_MS.with(|now| now.set(ms));
}

/// A fake host for one request, sharing shared data and metrics with `base`. Half the requests
/// (an odd number of headers) are read as proxy-wasm reads them: a read by name gives the first
/// copy only, every copy comes with the whole map; the others as the native build reads them.
/// Envoy holds a pseudo-header once (the request path relies on it in proxy-wasm mode), so a
/// request repeating one is read the native way.
fn request_host(base: &FakeHost, headers: &[(String, Vec<u8>)]) -> FakeHost {
    let raw: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let host = FakeHost {
        shared: Rc::clone(&base.shared),
        gauges: Rc::clone(&base.gauges),
        counters: Rc::clone(&base.counters),
        ..FakeHost::with_raw_headers(&raw)
    };
    let pseudo = headers.iter().filter(|(k, _)| k.starts_with(':'));
    let repeats_pseudo = pseudo
        .clone()
        .enumerate()
        .any(|(i, (k, _))| pseudo.clone().skip(i + 1).any(|(other, _)| other == k));
    host.first_only
        .set(headers.len() % 2 == 1 && !repeats_pseudo);
    host
}

fn values<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// The first value of a header, as the host answers.
fn first<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    values(headers, name).first().copied()
}

/// Every byte but letters and digits as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ---- (a) configuration bytes -> plan ------------------------------------------------------------

/// Plugin configs that use every feature, besides the shipped ones.
const FEATURE_CONFIGS: &[&str] = &[
    PLAN_HOST,
    PLAN_QUERY,
    PLAN_HEADER,
    r#"{"services": [{"name": "a", "upstreams": [{"name": "v1", "cluster": "c1", "weight": 1}]}]}"#,
    r#"{"services": [
      {"name": "r", "hosts": ["10.0.0.1:80", "::ffff:1.2.3.4", "x.y."],
       "upstreams": [{"name": "v1", "cluster": "c1", "weight": 1000000},
                     {"name": "v2", "cluster": "c2", "weight": 0}],
       "rollout": {"start": "1970-01-01T00:00:00Z", "interpolate": true, "steps": [
         {"at_s": 0, "weights": {"v1": 1000000}}, {"at_s": 18446744073709551615, "weights": {"v2": 1}}]}}]}"#,
    r#"{"services": [
      {"name": "g", "strategy": "least_request",
       "upstreams": [{"name": "a.b", "cluster": "c1", "weight": 1}, {"name": "a-b", "cluster": "c2", "weight": 1}],
       "guard": {"error_rate": 1e-9, "min_requests": 1, "window_s": 3600, "eject_s": 86400,
                 "max_ejected_percent": 100},
       "rollout": {"start": "9999-12-31T23:59:59.999Z", "steps": [{"at_s": 0, "weights": {"a.b": 1}}]}}]}"#,
];

fn config_corpus() -> Corpus {
    let shipped = fuzz::shipped_configs();
    let mut seeds: Vec<Vec<u8>> = shipped
        .iter()
        .flat_map(|file| fuzz::embedded_plugin_configs(file))
        .collect();
    seeds.extend(FEATURE_CONFIGS.iter().map(|c| c.as_bytes().to_vec()));
    Corpus {
        seeds,
        tokens: fuzz::config_tokens(),
        // The files themselves are no plugin configs, but pieces of them may end up in one.
        donors: shipped,
    }
}

/// Hosts tried per service, and services per config, when checking that each routes.
const HOSTS_TRIED: usize = 4;
const SERVICES_TRIED: usize = 32;

/// Configures an instance with `bytes` as the filter does. It must not panic; a config it
/// accepts must route a request for each host of each service to an upstream of that service,
/// whenever the clock reads (before, during and after any rollout).
pub(crate) fn check_config(bytes: &[u8]) -> Result<(), TestCaseError> {
    set_clock(CLOCK_MS);
    let mut vm = Instance::new([7; 32]);
    vm.set_clock(clock);
    let base = FakeHost::default();
    let Ok(plan) = vm.configure(1, bytes, "fuzz.plugin", &base) else {
        return Ok(());
    };
    let _ = config_summary(&plan, &config_fingerprint(bytes), "fuzz.plugin");
    let _ = plan.check_cluster_specifier();
    let raw: RawConfig = serde_json::from_slice(bytes)
        .map_err(|e| TestCaseError::fail(format!("accepted, but not as RawConfig: {e}")))?;
    let mut times = vec![0, CLOCK_MS, u64::MAX / 2, u64::MAX];
    for service in &plan.services {
        if let Some(rollout) = &service.rollout {
            times.extend(
                rollout
                    .step_times_ms()
                    .flat_map(|t| [t, t.saturating_add(1)]),
            );
        }
    }
    times.truncate(12);
    let mut context = 10;
    for now in times {
        set_clock(now);
        vm.tick(1, &base);
        for (index, (service, raw_service)) in plan
            .services
            .iter()
            .zip(&raw.services)
            .enumerate()
            .take(SERVICES_TRIED)
        {
            let hosts = raw_service
                .hosts
                .clone()
                .unwrap_or_else(|| vec![raw_service.name.clone()]);
            for host in hosts.iter().take(HOSTS_TRIED) {
                context += 1;
                let headers = request_for(&plan, host);
                let request = request_host(&base, &headers);
                vm.stream_created(context, 1);
                let verdict = vm.request_headers(context, &request);
                prop_assert!(verdict == Verdict::Continue, "{host:?}: {verdict:?}");
                let cluster = request.header(plan.headers.cluster.as_deref().unwrap_or_default());
                prop_assert!(
                    service
                        .upstreams
                        .iter()
                        .any(|u| Some(&u.cluster) == cluster.as_ref()),
                    "services[{index}] host {host:?} at {now}: cluster {cluster:?} is none of \
                     the service's"
                );
                request.response.set((Some(200), None));
                vm.context_deleted(context, &request);
            }
        }
    }
    Ok(())
}

/// A request whose service key is `host`, wherever the plan reads the key.
fn request_for(plan: &Plan, host: &str) -> Vec<(String, Vec<u8>)> {
    let mut headers = vec![(":path".to_owned(), b"/".to_vec())];
    match &plan.service_from {
        ServiceFrom::Authority => headers.push((":authority".to_owned(), host.into())),
        ServiceFrom::Header(name) => headers.push((name.clone(), host.into())),
        ServiceFrom::Query(param) => {
            let path = format!("/?{}={}", percent_encode(param), percent_encode(host));
            headers = vec![(":path".to_owned(), path.into_bytes())];
        }
    }
    headers
}

#[test]
fn fuzz_config_to_plan() {
    fuzz::fuzz("config_to_plan", config_corpus(), check_config);
}

// ---- (b) request bytes -> decision --------------------------------------------------------------

/// Host routing, rules of every kind, a dark upstream, an authority rewrite, sticky on a
/// header, round robin, IP literals; unknown services rejected.
pub(crate) const PLAN_HOST: &str = r#"{
  "on_unknown_service": "reject",
  "services": [
    {"name": "reviews", "hosts": ["reviews", "reviews.default.svc.cluster.local:9080", "10.0.0.1", "[::1]:8080"],
     "strategy": "sticky", "hash_on": {"header": "x-user-id"},
     "upstreams": [
       {"name": "v1", "cluster": "reviews_v1", "authority": "reviews-v1.internal:9080", "weight": 90},
       {"name": "v2", "cluster": "reviews_v2", "weight": 10},
       {"name": "dark", "cluster": "reviews_dark", "weight": 0}],
     "rules": [
       {"match": {"headers": [{"name": "x-canary", "exact": "true"}, {"name": ":path", "prefix": "/beta"}]}, "upstream": "dark"},
       {"match": {"cookies": [{"name": "beta", "exact": "1"}], "query": [{"name": "version", "exact": "v 2"}]}, "upstream": "v2"},
       {"match": {"headers": [{"name": "x-debug", "present": true}]}, "upstream": "dark"}]},
    {"name": "ratings", "strategy": "round_robin", "upstreams": [
       {"name": "a", "cluster": "ratings_a", "weight": 5},
       {"name": "b", "cluster": "ratings_b", "weight": 1},
       {"name": "c", "cluster": "ratings_c", "authority": "c.ratings", "weight": 1}]}
  ]}"#;

/// The service from `?service=`, weighted with rules, sticky on a cookie; unknown services pass.
pub(crate) const PLAN_QUERY: &str = r#"{
  "service_from": {"query": "service"},
  "services": [
    {"name": "reviews", "upstreams": [
       {"name": "v1", "cluster": "reviews_v1", "weight": 3},
       {"name": "v2", "cluster": "reviews_v2", "weight": 1},
       {"name": "off", "cluster": "reviews_off", "weight": 0}],
     "rules": [
       {"match": {"query": [{"name": "v", "exact": "off"}]}, "upstream": "off"},
       {"match": {"cookies": [{"name": "pin", "exact": "v2"}]}, "upstream": "v2"}]},
    {"name": "details", "hosts": ["details", "details.svc"], "strategy": "sticky", "hash_on": {"cookie": "session"},
     "upstreams": [
       {"name": "v1", "cluster": "details_v1", "weight": 1},
       {"name": "v2", "cluster": "details_v2", "weight": 1}]}
  ]}"#;

/// The service from a header, into a cluster header of its own; sticky on a query parameter,
/// least request with a guard, a rollout in progress.
pub(crate) const PLAN_HEADER: &str = r#"{
  "cluster_header": "x-route-to",
  "service_from": {"header": "x-service"},
  "on_unknown_service": "reject",
  "services": [
    {"name": "reviews", "strategy": "sticky", "hash_on": {"query": "user"}, "upstreams": [
       {"name": "v1", "cluster": "reviews_v1", "weight": 1},
       {"name": "v2", "cluster": "reviews_v2", "weight": 2}],
     "rules": [{"match": {"headers": [{"name": "x-route-to", "present": true}]}, "upstream": "v2"}]},
    {"name": "details", "strategy": "least_request", "upstreams": [
       {"name": "v1", "cluster": "details_v1", "weight": 1},
       {"name": "v2", "cluster": "details_v2", "weight": 3}],
     "guard": {"error_rate": 0.5, "min_requests": 1, "window_s": 10, "eject_s": 30,
               "max_ejected_percent": 50}},
    {"name": "ratings", "upstreams": [
       {"name": "a", "cluster": "ratings_a", "weight": 1},
       {"name": "b", "cluster": "ratings_b", "weight": 0}],
     "rollout": {"start": "2027-01-15T07:50:00Z", "interpolate": true, "steps": [
       {"at_s": 0, "weights": {"a": 99, "b": 1}}, {"at_s": 1200, "weights": {"b": 1}}]}}
  ]}"#;

const REQUEST_PLANS: &[&str] = &[PLAN_HOST, PLAN_QUERY, PLAN_HEADER];

/// Request heads, one header a line (`name: value`; names may start with `:`).
pub(crate) const REQUEST_SEEDS: &[&[u8]] = &[
    b":authority: reviews\n:path: /\n",
    b":authority: reviews:9080\n:path: /api/v1/products?id=1\n:method: GET\nuser-agent: curl/8\n",
    b":authority: Reviews.Default.SVC.cluster.local.:9080\n:path: /beta/x\nx-canary: true\n",
    b":authority: reviews\n:path: /p?version=v+2&x=1\ncookie: a=1; beta=1; c=\"q\"\n",
    b":authority: reviews\nx-user-id: alice\nx-meshsplit-cluster: evil\n",
    b":authority: reviews\nx-user-id: \n",
    b":authority: reviews\nx-user-id: \xff\xfe\x00\n",
    b":authority: reviews\nx-debug: \nx-debug: 1\n",
    b":authority: ratings\n:path: /\n",
    b":authority: [::1]:8080\n",
    b":authority: ::1\n",
    b":authority: 10.0.0.1:80\n",
    b":authority: nowhere\nx-meshsplit-cluster: reviews_v1\n",
    b":authority: \"quoted\\\\\x01\xff\n",
    b":authority: \n",
    b":path: /?service=reviews\n:authority: x\n",
    b":path: /?service=ReViews.&v=off\n",
    b":path: /?ser%76ice=%72eviews&v=o%66f\n",
    b":path: /?&&service=details&\ncookie: session=abc123\n",
    b":path: /?service=details.svc#frag\ncookie: session=\"abc\"; session=x\n",
    b":path: /?service=reviews\ncookie: pin=v2\n",
    b":path: /?service=%FF%00\n",
    b":path: /?service\n",
    b"x-service: reviews\n:path: /?user=bob\n",
    b"x-service: reviews\n:path: /?user=%E2%82%AC+x\nx-route-to: ratings_a\n",
    b"x-service: details\nx-route-to: details_v1\n",
    b"x-service: ratings\n",
    b"x-service: DETAILS:80\n",
    b"x-service: \n",
    b"x-service: unknown\"\\\n",
];

fn request_tokens() -> Vec<Vec<u8>> {
    let words: &[&str] = &[
        ":authority: ",
        ":path: ",
        ":method: ",
        "cookie: ",
        "x-user-id: ",
        "x-service: ",
        "x-canary: ",
        "x-debug: ",
        "x-route-to: ",
        "x-meshsplit-cluster: ",
        "\n:authority: ",
        "\ncookie: ",
        "\nx-service: ",
        "\nx-user-id: ",
        "reviews",
        "ratings",
        "details",
        "details.svc",
        "reviews.default.svc.cluster.local",
        "10.0.0.1",
        "true",
        "alice",
        "session=",
        "beta=1",
        "pin=v2",
        "; ",
        "?service=",
        "&service=",
        "?user=",
        "&user=",
        "?v=off",
        "version=v+2",
        "/beta",
        "%20",
        "%2",
        "%G0",
        "=",
        "==",
        ";;",
        "\"",
        ":9080",
        ":",
        "[",
        "]",
        "]:",
        "::",
        "[::1]",
        ".",
        "..",
        "REVIEWS",
    ];
    let mut tokens: Vec<Vec<u8>> = words.iter().map(|w| w.as_bytes().to_vec()).collect();
    tokens.extend(fuzz::common_tokens());
    tokens
}

/// Header lines of a request head: `name: value`, the name up to the first `:` after its first
/// byte (so pseudo-headers keep theirs); lines without one are skipped.
pub(crate) fn parse_head(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().skip(1).position(|&b| b == b':')? + 1;
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            Some((
                String::from_utf8_lossy(&line[..colon]).into_owned(),
                value.to_vec(),
            ))
        })
        .collect()
}

/// The service key as the plan defines it, read from the request as the host would give it.
pub(crate) fn expected_key(plan: &Plan, headers: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    match &plan.service_from {
        ServiceFrom::Authority => first(headers, ":authority").map(<[u8]>::to_vec),
        ServiceFrom::Header(name) => first(headers, name).map(<[u8]>::to_vec),
        ServiceFrom::Query(param) => first(headers, ":path")
            .and_then(|path| query_param(path, param.as_bytes()))
            .map(|v| v.into_owned()),
    }
}

/// Every copy of header `name`, in order.
fn copies<'h>(headers: &'h [(String, Vec<u8>)], name: &'h str) -> impl Iterator<Item = &'h [u8]> {
    headers
        .iter()
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn holds(condition: &Condition, headers: &[(String, Vec<u8>)]) -> bool {
    match condition {
        Condition::Header { name, test } => copies(headers, name).any(|v| match test {
            HeaderTest::Exact(e) => v == e.as_bytes(),
            HeaderTest::Prefix(p) => v.starts_with(p.as_bytes()),
            HeaderTest::Present => true,
        }),
        Condition::Cookie { name, value } => copies(headers, "cookie").any(|c| {
            crate::request::cookie_pairs(c)
                .any(|(n, v)| n == name.as_bytes() && v == value.as_bytes())
        }),
        Condition::Query { name, value } => first(headers, ":path").is_some_and(|p| {
            query_all(p, name.as_bytes())
                .iter()
                .any(|v| v == value.as_bytes())
        }),
    }
}

/// Every percent-decoded value of query parameter `name`, one pair at a time.
fn query_all(path: &[u8], name: &[u8]) -> Vec<Vec<u8>> {
    let Some(q) = path.iter().position(|&b| b == b'?') else {
        return Vec::new();
    };
    let query = path[q + 1..].split(|&b| b == b'#').next().unwrap_or(&[]);
    query
        .split(|&b| b == b'&')
        .filter_map(|pair| query_param(&[b"/?", pair].concat(), name).map(|v| v.into_owned()))
        .collect()
}

/// The non-empty sticky key of a request, if the service is sticky.
fn sticky_key(service: &Service, headers: &[(String, Vec<u8>)]) -> Option<Vec<u8>> {
    let Strategy::Sticky { hash_on, .. } = &service.strategy else {
        return None;
    };
    let key = match hash_on {
        HashOn::Header(name) => first(headers, name).map(<[u8]>::to_vec),
        HashOn::Cookie(name) => headers
            .iter()
            .filter(|(k, _)| k == "cookie")
            // The first non-empty cookie of that name, in any `cookie` header.
            .find_map(|(_, c)| cookie_value(c, name.as_bytes()))
            .map(<[u8]>::to_vec),
        HashOn::Query(name) => first(headers, ":path")
            .and_then(|p| query_param(p, name.as_bytes()))
            .map(|v| v.into_owned()),
    };
    key.filter(|k| !k.is_empty())
}

/// What routing one request did, checked against the plan: the upstream's cluster (or `None`).
fn check_routed(
    plan: &Plan,
    before: &[(String, Vec<u8>)],
    host: &FakeHost,
    verdict: Verdict,
) -> Result<Option<Vec<u8>>, TestCaseError> {
    let after = host.headers.borrow().clone();
    let clusters = values(&after, plan.headers.cluster.as_deref().unwrap_or_default());
    let mut key = expected_key(plan, before);
    // What a 404 names: the bare host, or a malformed key as sent, lowercased.
    let shown: Option<String> = key.as_mut().map(|raw| {
        let mut copy = raw.clone();
        let text = match host_key(&mut copy) {
            Some(parsed) => parsed.bare.to_vec(),
            None => raw.to_ascii_lowercase(),
        };
        String::from_utf8_lossy(&text).into_owned()
    });
    let Some((_, service)) = key.as_mut().and_then(|raw| plan.find(raw)) else {
        // Unknown: no cluster header survives, or a 404 when rejecting.
        if plan.on_unknown_service == OnUnknownService::Reject {
            prop_assert!(verdict == Verdict::Replied, "unknown service: {verdict:?}");
            let reply = host.reply.borrow().clone();
            let Some((status, reply_headers, body)) = reply else {
                return Err(TestCaseError::fail("rejected without a reply"));
            };
            prop_assert!(status == 404);
            prop_assert!(reply_headers == [("content-type".into(), "application/json".into())]);
            let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                TestCaseError::fail(format!(
                    "404 body is not JSON ({e}): {}",
                    fuzz::literal(&body)
                ))
            })?;
            prop_assert!(json["error"] == "unknown service");
            prop_assert!(
                json["service"] == serde_json::json!(shown),
                "body {json} for key {shown:?}"
            );
        } else {
            prop_assert!(verdict == Verdict::Continue);
            prop_assert!(clusters.is_empty(), "unknown service kept {clusters:?}");
        }
        return Ok(None);
    };
    prop_assert!(verdict == Verdict::Continue);
    prop_assert!(
        clusters.len() == 1,
        "{} cluster headers for {}",
        clusters.len(),
        service.name
    );
    let cluster = clusters[0];
    let weights = service.weights();
    let ruled = service
        .rules
        .iter()
        .find(|rule| rule.conditions.iter().all(|c| holds(c, before)))
        .map(|rule| rule.upstream);
    // The upstreams the request may have gone to: the matching rule's, else any with weight.
    let allowed: Vec<usize> = match ruled {
        Some(upstream) => vec![upstream],
        None => (0..service.upstreams.len())
            .filter(|&u| weights.get(u).is_some_and(|&w| w > 0))
            .collect(),
    };
    let authorities = values(&after, ":authority");
    let fits = allowed.iter().any(|&u| {
        let upstream = &service.upstreams[u];
        upstream.cluster.as_bytes() == cluster
            && match &upstream.authority {
                Some(a) => authorities == [a.as_bytes()],
                None => authorities == values(before, ":authority"),
            }
    });
    prop_assert!(
        fits,
        "{}: cluster {} (:authority {authorities:?}) is not an upstream it may pick (rule {ruled:?}, \
         weights {:?})",
        service.name,
        fuzz::literal(cluster),
        &*weights
    );
    Ok(Some(cluster.to_vec()))
}

/// Routes the request head `bytes` with each request plan, three times each, through an
/// instance as the filter does, then ends the streams (with a status taken from the input).
/// Never panics; the cluster is always one the plan allows for the service; a sticky key
/// always reaches the same upstream; least-request counts return to 0.
pub(crate) fn check_request(bytes: &[u8]) -> Result<(), TestCaseError> {
    let before = parse_head(bytes);
    let status = 100 + bytes.iter().map(|&b| u64::from(b)).sum::<u64>() % 500;
    for config in REQUEST_PLANS {
        set_clock(CLOCK_MS);
        let mut vm = Instance::new([3; 32]);
        vm.set_clock(clock);
        let base = FakeHost::default();
        let plan = vm
            .configure(1, config.as_bytes(), "meshsplit", &base)
            .map_err(|e| TestCaseError::fail(format!("request plan refused: {e}")))?;
        let mut sticky: Option<Vec<u8>> = None;
        let mut hosts = Vec::new();
        for context in 10..13 {
            let host = request_host(&base, &before);
            vm.stream_created(context, 1);
            let verdict = vm.request_headers(context, &host);
            let cluster = check_routed(&plan, &before, &host, verdict)?;
            let mut key = expected_key(&plan, &before);
            let service = key.as_mut().and_then(|k| plan.find(k)).map(|(_, s)| s);
            let ruled = service.is_some_and(|s| {
                s.rules
                    .iter()
                    .any(|r| r.conditions.iter().all(|c| holds(c, &before)))
            });
            if !ruled && service.and_then(|s| sticky_key(s, &before)).is_some() {
                let first = sticky.get_or_insert_with(|| cluster.clone().unwrap_or_default());
                prop_assert!(
                    Some(&*first) == cluster.as_ref(),
                    "a sticky key moved between upstreams"
                );
            }
            hosts.push((context, host));
        }
        for (context, host) in &hosts {
            host.response.set((Some(status), Some(status & 0x3f)));
            vm.context_deleted(*context, host);
        }
        vm.tick(1, &base);
        for (name, value) in base.gauges.borrow().iter() {
            if name.ends_with(".in_flight") {
                prop_assert!(*value == 0, "{name} is {value} after every stream ended");
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_request_decision() {
    let corpus = Corpus {
        seeds: REQUEST_SEEDS.iter().map(|s| s.to_vec()).collect(),
        tokens: request_tokens(),
        donors: Vec::new(),
    };
    fuzz::fuzz("request_decision", corpus, check_request);
}

#[test]
fn request_plans_are_valid_and_request_seeds_route() {
    for config in REQUEST_PLANS {
        Plan::from_json(config.as_bytes()).unwrap();
    }
    for seed in REQUEST_SEEDS {
        check_request(seed).unwrap();
    }
}

#[test]
fn feature_and_shipped_configs_are_accepted_and_every_service_routes() {
    let corpus = config_corpus();
    for config in FEATURE_CONFIGS {
        Plan::from_json(config.as_bytes()).unwrap();
    }
    // The shipped files embed the sample config.
    assert!(corpus.seeds.len() > FEATURE_CONFIGS.len());
    for seed in corpus.seeds.iter().chain(&corpus.donors) {
        check_config(seed).unwrap();
    }
}
