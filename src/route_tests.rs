use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::*;
use crate::host::FakeHost;
use crate::in_flight::PROCESS_OWNER;
use crate::select::{rendezvous, sticky_hash};

pub(crate) const CONFIG: &str = r#"{
  "services": [
    {"name": "reviews", "hosts": ["reviews", "reviews.default.svc.cluster.local"], "upstreams": [
      {"name": "v1", "cluster": "reviews_v1", "authority": "reviews-v1.internal", "weight": 1},
      {"name": "v2", "cluster": "reviews_v2", "weight": 0}]},
    {"name": "ratings", "upstreams": [
      {"name": "v1", "cluster": "ratings_v1", "weight": 0},
      {"name": "v2", "cluster": "ratings_v2", "weight": 5}]}
  ]}"#;

fn plan_with(prefix: &str) -> Plan {
    let json = format!("{{{prefix}{}", &CONFIG[1..]);
    Plan::from_json(json.as_bytes()).unwrap()
}

fn run(plan: &Plan, host: &FakeHost) -> Verdict {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    on_request_headers(plan, &mut rng, host, PROCESS_OWNER).verdict
}

#[test]
fn known_service_gets_cluster_and_authority() {
    let host = FakeHost::with_headers(&[(":authority", "Reviews:9080")]);
    assert_eq!(run(&plan_with(""), &host), Verdict::Continue);
    assert_eq!(
        host.header("x-meshsplit-cluster").as_deref(),
        Some("reviews_v1")
    );
    assert_eq!(
        host.header(":authority").as_deref(),
        Some("reviews-v1.internal")
    );
}

#[test]
fn weighted_path_makes_at_most_three_host_calls() {
    let host = FakeHost::with_headers(&[(":authority", "reviews")]);
    run(&plan_with(""), &host);
    assert_eq!(
        *host.calls.borrow(),
        vec![
            "get :authority",
            "set x-meshsplit-cluster",
            "set :authority"
        ]
    );
}

#[test]
fn upstream_without_authority_leaves_authority_alone() {
    let host = FakeHost::with_headers(&[(":authority", "ratings")]);
    run(&plan_with(""), &host);
    assert_eq!(
        host.header("x-meshsplit-cluster").as_deref(),
        Some("ratings_v2")
    );
    assert_eq!(host.header(":authority").as_deref(), Some("ratings"));
    assert_eq!(host.call_count(), 2);
}

#[test]
fn client_sent_cluster_header_is_overwritten_for_known_service() {
    let host =
        FakeHost::with_headers(&[(":authority", "ratings"), ("x-meshsplit-cluster", "secret")]);
    run(&plan_with(""), &host);
    assert_eq!(
        host.header("x-meshsplit-cluster").as_deref(),
        Some("ratings_v2")
    );
}

#[test]
fn unknown_service_with_pass_removes_cluster_header() {
    let host =
        FakeHost::with_headers(&[(":authority", "other"), ("x-meshsplit-cluster", "secret")]);
    assert_eq!(run(&plan_with(""), &host), Verdict::Continue);
    assert_eq!(host.header("x-meshsplit-cluster"), None);
    assert_eq!(host.header(":authority").as_deref(), Some("other"));
}

#[test]
fn missing_service_key_is_treated_as_unknown() {
    let host = FakeHost::with_headers(&[("x-meshsplit-cluster", "secret")]);
    assert_eq!(run(&plan_with(""), &host), Verdict::Continue);
    assert_eq!(host.header("x-meshsplit-cluster"), None);
}

#[test]
fn unknown_service_with_reject_answers_404_json() {
    let host = FakeHost::with_headers(&[(":authority", "Other:80")]);
    let plan = plan_with(r#""on_unknown_service": "reject","#);
    assert_eq!(run(&plan, &host), Verdict::Replied);
    let (status, headers, body) = host.reply.borrow().clone().unwrap();
    assert_eq!(status, 404);
    assert_eq!(
        headers,
        vec![("content-type".to_owned(), "application/json".to_owned())]
    );
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"error": "unknown service", "service": "other"})
    );
}

#[test]
fn failed_reject_reply_lets_the_request_pass_without_cluster_header() {
    let host = FakeHost::with_headers(&[(":authority", "other"), ("x-meshsplit-cluster", "x")]);
    host.refuse_replies.set(true);
    let plan = plan_with(r#""on_unknown_service": "reject","#);
    assert_eq!(run(&plan, &host), Verdict::Continue);
    assert_eq!(host.header("x-meshsplit-cluster"), None);
}

#[test]
fn reject_without_any_service_key_names_null() {
    let host = FakeHost::default();
    let plan = plan_with(r#""on_unknown_service": "reject","#);
    assert_eq!(run(&plan, &host), Verdict::Replied);
    let body = host.reply.borrow().clone().unwrap().2;
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"error":"unknown service","service":null}"#
    );
}

#[test]
fn service_from_header_reads_only_that_header() {
    let host = FakeHost::with_headers(&[(":authority", "reviews"), ("x-service", "ratings")]);
    run(
        &plan_with(r#""service_from": {"header": "x-service"},"#),
        &host,
    );
    assert_eq!(
        host.header("x-meshsplit-cluster").as_deref(),
        Some("ratings_v2")
    );
    assert_eq!(host.calls.borrow()[0], "get x-service");
}

#[test]
fn service_from_query_decodes_the_parameter() {
    let host =
        FakeHost::with_headers(&[(":authority", "x"), (":path", "/p?a=1&service=R%61tings")]);
    run(
        &plan_with(r#""service_from": {"query": "service"},"#),
        &host,
    );
    assert_eq!(
        host.header("x-meshsplit-cluster").as_deref(),
        Some("ratings_v2")
    );
    assert_eq!(host.calls.borrow()[0], "get :path");
}

#[test]
fn service_from_query_without_parameter_is_unknown() {
    let host = FakeHost::with_headers(&[(":path", "/p"), ("x-meshsplit-cluster", "x")]);
    run(
        &plan_with(r#""service_from": {"query": "service"},"#),
        &host,
    );
    assert_eq!(host.header("x-meshsplit-cluster"), None);
}

#[test]
fn custom_cluster_header_is_written_and_removed() {
    let plan = plan_with(r#""cluster_header": "x-route-to","#);
    let host = FakeHost::with_headers(&[(":authority", "ratings")]);
    run(&plan, &host);
    assert_eq!(host.header("x-route-to").as_deref(), Some("ratings_v2"));
    let host = FakeHost::with_headers(&[(":authority", "nope"), ("x-route-to", "x")]);
    run(&plan, &host);
    assert_eq!(host.header("x-route-to"), None);
}

// ---- strategies and rules through the request path ----

fn service_plan(fields: &str, upstreams: &[(&str, u32)]) -> Plan {
    let ups: Vec<String> = upstreams
        .iter()
        .map(|(n, w)| format!(r#"{{"name": "{n}", "cluster": "c_{n}", "weight": {w}}}"#))
        .collect();
    let json = format!(
        r#"{{"services": [{{"name": "svc", {fields} "upstreams": [{}]}}]}}"#,
        ups.join(",")
    );
    Plan::from_json(json.as_bytes()).unwrap()
}

fn route_with(plan: &Plan, rng: &mut Xoshiro256PlusPlus, headers: &[(&str, &str)]) -> String {
    let mut all = vec![(":authority", "svc")];
    all.extend_from_slice(headers);
    let host = FakeHost::with_headers(&all);
    on_request_headers(plan, rng, &host, PROCESS_OWNER);
    host.header("x-meshsplit-cluster").unwrap()
}

#[test]
fn round_robin_interleaves_through_the_request_path() {
    let plan = service_plan(
        r#""strategy": "round_robin","#,
        &[("a", 5), ("b", 1), ("c", 1)],
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let seq: Vec<String> = (0..7).map(|_| route_with(&plan, &mut rng, &[])).collect();
    assert_eq!(seq, ["c_a", "c_a", "c_b", "c_a", "c_c", "c_a", "c_a"]);
}

/// The README's bound for two upstreams: within half a request of the share either way,
/// counted from the last change of the weights.
#[test]
fn round_robin_pays_no_burst_back_when_the_weights_in_force_change() {
    let plan = service_plan(
        r#""strategy": "round_robin","#,
        &[("a", 1_000_000), ("b", 1)],
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let service = &plan.services[0];
    // Scores built up under 1 000 000/1: b's score nears 1 000 000 before its one pick.
    for _ in 0..300_000 {
        route_with(&plan, &mut rng, &[]);
    }
    for (weights, name) in [
        ([1, 1], "step"),
        ([0, 1], "ejection"),
        ([1, 1], "readmission"),
    ] {
        assert!(service.set_weights(&weights), "{name}");
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut counts = [0i64; 2];
        for n in 1..=3000i64 {
            match route_with(&plan, &mut rng, &[]).as_str() {
                "c_a" => counts[0] += 1,
                _ => counts[1] += 1,
            }
            for (count, &w) in counts.iter().zip(&weights) {
                // |count - n·w/W| <= k - 1 = 1 pick, counted from the change, scaled by W.
                let off = count * total - n * i64::from(w);
                assert!(off.abs() <= total, "{name}: {counts:?} after {n}");
            }
        }
    }
}

#[test]
fn sticky_sends_a_key_to_the_same_upstream_and_spreads_keys() {
    let plan = service_plan(
        r#""strategy": "sticky", "hash_on": {"header": "x-user"},"#,
        &[("a", 1), ("b", 1), ("c", 1)],
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..50 {
        let id = format!("user-{user}");
        let first = route_with(&plan, &mut rng, &[("x-user", &id)]);
        for _ in 0..5 {
            assert_eq!(route_with(&plan, &mut rng, &[("x-user", &id)]), first);
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn sticky_on_cookie_and_query() {
    let by_cookie = service_plan(
        r#""strategy": "sticky", "hash_on": {"cookie": "sid"},"#,
        &[("a", 1), ("b", 1)],
    );
    let by_query = service_plan(
        r#""strategy": "sticky", "hash_on": {"query": "user"},"#,
        &[("a", 1), ("b", 1)],
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    for user in 0..20 {
        let cookie = format!("x=1; sid=u{user}");
        let path = format!("/p?user=u{user}");
        let a = route_with(&by_cookie, &mut rng, &[("cookie", &cookie)]);
        let b = route_with(&by_query, &mut rng, &[(":path", &path)]);
        // The same key hashes the same wherever it came from.
        assert_eq!(a, b);
    }
}

#[test]
fn sticky_without_key_falls_back_to_weighted() {
    let plan = service_plan(
        r#""strategy": "sticky", "hash_on": {"header": "x-user"},"#,
        &[("a", 1), ("b", 1)],
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let picks: std::collections::BTreeSet<String> = (0..50)
        .map(|_| route_with(&plan, &mut rng, &[("x-user", "")]))
        .collect();
    assert_eq!(picks.len(), 2, "empty or missing keys are spread by weight");
}

#[test]
fn rules_come_first_and_first_match_wins() {
    let plan = service_plan(
        r#""rules": [
            {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "dark"},
            {"match": {"headers": [{"name": "x-canary", "present": true}]}, "upstream": "b"},
            {"match": {"cookies": [{"name": "beta", "exact": "1"}], "query": [{"name": "version", "exact": "v1"}]}, "upstream": "a"},
            {"match": {"headers": [{"name": ":path", "prefix": "/b/"}]}, "upstream": "b"}
        ],"#,
        &[("a", 1), ("b", 1), ("dark", 0)],
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    for _ in 0..20 {
        assert_eq!(
            route_with(&plan, &mut rng, &[("x-canary", "true")]),
            "c_dark"
        );
        assert_eq!(route_with(&plan, &mut rng, &[("x-canary", "no")]), "c_b");
        assert_eq!(
            route_with(
                &plan,
                &mut rng,
                &[("cookie", "beta=1"), (":path", "/x?version=v1")]
            ),
            "c_a"
        );
        assert_eq!(route_with(&plan, &mut rng, &[(":path", "/b/x")]), "c_b");
    }
    // All conditions of a rule must hold; otherwise the strategy decides (never the dark one).
    let picks: std::collections::BTreeSet<String> = (0..50)
        .map(|_| route_with(&plan, &mut rng, &[("cookie", "beta=1"), (":path", "/x")]))
        .collect();
    assert_eq!(picks, ["c_a".to_owned(), "c_b".to_owned()].into());
}

#[test]
fn rules_read_each_header_once() {
    let plan = service_plan(
        r#""rules": [
            {"match": {"cookies": [{"name": "a", "exact": "1"}]}, "upstream": "a"},
            {"match": {"cookies": [{"name": "b", "exact": "1"}]}, "upstream": "b"}
        ],"#,
        &[("a", 1), ("b", 1)],
    );
    let host = FakeHost::with_headers(&[(":authority", "svc"), ("cookie", "b=1")]);
    run(&plan, &host);
    assert_eq!(
        *host.calls.borrow(),
        vec![
            "get :authority",
            "get all cookie",
            "set x-meshsplit-cluster"
        ]
    );
}

/// Routes one request with `headers` (copies in order) through a two-upstream service with
/// `rules` (JSON) sending matches to "b" (weight 0), so "c_b" means a rule matched.
fn ruled(rules: &str, headers: &[(&str, &str)]) -> String {
    let plan = service_plan(&format!(r#""rules": [{rules}],"#), &[("a", 1), ("b", 0)]);
    route_with(&plan, &mut Xoshiro256PlusPlus::seed_from_u64(1), headers)
}

#[test]
fn a_header_condition_holds_when_any_copy_satisfies_it() {
    let exact =
        r#"{"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "b"}"#;
    assert_eq!(
        ruled(exact, &[("x-canary", "false"), ("x-canary", "true")]),
        "c_b"
    );
    assert_eq!(
        ruled(exact, &[("x-canary", "true"), ("x-canary", "false")]),
        "c_b"
    );
    assert_eq!(
        ruled(exact, &[("x-canary", "false"), ("x-canary", "no")]),
        "c_a"
    );
    let prefix = r#"{"match": {"headers": [{"name": "x-v", "prefix": "be"}]}, "upstream": "b"}"#;
    assert_eq!(
        ruled(
            prefix,
            &[("x-v", "alpha"), ("x-v", "beta"), ("x-v", "zeta")]
        ),
        "c_b"
    );
    assert_eq!(ruled(prefix, &[("x-v", "b"), ("x-v", "bf")]), "c_a");
}

#[test]
fn a_cookie_condition_holds_for_any_cookie_of_its_name_in_any_cookie_header() {
    let rule = r#"{"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "b"}"#;
    assert_eq!(ruled(rule, &[("cookie", "beta=0; beta=1")]), "c_b");
    assert_eq!(ruled(rule, &[("cookie", "beta=1; beta=0")]), "c_b");
    assert_eq!(
        ruled(rule, &[("cookie", "a=2"), ("cookie", "beta=1")]),
        "c_b"
    );
    assert_eq!(ruled(rule, &[("cookie", "beta=0; beta=2")]), "c_a");
}

#[test]
fn a_cookie_header_is_split_on_every_semicolon_first_as_browsers_and_envoy_do() {
    let rule = r#"{"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "b"}"#;
    // An unrelated cookie whose value starts with an unmatched quote hides nothing after it.
    assert_eq!(ruled(rule, &[("cookie", r#"a="x; beta=1; c="y""#)]), "c_b");
    assert_eq!(ruled(rule, &[("cookie", r#"a="x"; beta=1"#)]), "c_b");
    let quoted = r#"{"match": {"cookies": [{"name": "a", "exact": "x"}]}, "upstream": "b"}"#;
    assert_eq!(ruled(quoted, &[("cookie", r#"a="x"; beta=1"#)]), "c_b");
}

#[test]
fn a_query_condition_holds_for_any_parameter_of_its_name() {
    let rule = r#"{"match": {"query": [{"name": "v", "exact": "b"}]}, "upstream": "b"}"#;
    assert_eq!(ruled(rule, &[(":path", "/?v=a&v=b")]), "c_b");
    assert_eq!(ruled(rule, &[(":path", "/?v=b&v=a")]), "c_b");
    assert_eq!(ruled(rule, &[(":path", "/?v=a&v=c")]), "c_a");
}

#[test]
fn many_query_and_cookie_rules_parse_path_and_cookies_once() {
    let mut rules: Vec<String> = (0..128)
        .map(|i| {
            format!(
                r#"{{"match": {{"query": [{{"name": "q{i}", "exact": "no"}}]}}, "upstream": "b"}}"#
            )
        })
        .collect();
    rules.extend((0..128).map(|i| {
        format!(
            r#"{{"match": {{"cookies": [{{"name": "c{i}", "exact": "no"}}]}}, "upstream": "b"}}"#
        )
    }));
    let plan = service_plan(
        &format!(r#""rules": [{}],"#, rules.join(",")),
        &[("a", 1), ("b", 0)],
    );
    let path: String = format!(
        "/?{}",
        (0..6000)
            .map(|i| format!("q{}=v", i % 200))
            .collect::<Vec<_>>()
            .join("&")
    );
    let cookies: String = (0..1000)
        .map(|i| format!("c{}=v", i % 200))
        .collect::<Vec<_>>()
        .join("; ");
    let host = FakeHost::with_headers(&[
        (":authority", "svc"),
        (":path", &path),
        ("cookie", &cookies),
    ]);
    run(&plan, &host);
    assert_eq!(
        *host.calls.borrow(),
        vec![
            "get :authority",
            "get :path",
            "get all cookie",
            "set x-meshsplit-cluster"
        ]
    );
    assert_eq!(host.header("x-meshsplit-cluster").as_deref(), Some("c_a"));
}

// ---- keys and match values are bytes ----

fn route_raw(plan: &Plan, headers: &[(&str, &[u8])]) -> String {
    let mut all: Vec<(&str, &[u8])> = vec![(":authority", b"svc")];
    all.extend_from_slice(headers);
    let host = FakeHost::with_raw_headers(&all);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    on_request_headers(plan, &mut rng, &host, PROCESS_OWNER);
    host.header("x-meshsplit-cluster").unwrap()
}

fn expected_owner(key: &[u8], names: &[&str], weights: &[u32]) -> String {
    let ids: Vec<u64> = names.iter().map(|n| sticky_hash(n.as_bytes())).collect();
    let index = rendezvous(key, ids.iter().copied().zip(weights.iter().copied())).unwrap();
    format!("c_{}", names[index])
}

#[test]
fn sticky_header_keys_that_are_not_utf8_hash_their_raw_bytes() {
    let names = ["a", "b", "c", "d"];
    let plan = service_plan(
        r#""strategy": "sticky", "hash_on": {"header": "x-user"},"#,
        &[("a", 1), ("b", 1), ("c", 1), ("d", 1)],
    );
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..40u8 {
        let key = [0xff, n, 0xfe];
        let got = route_raw(&plan, &[("x-user", &key)]);
        assert_eq!(
            got,
            expected_owner(&key, &names, &[1, 1, 1, 1]),
            "key {key:?}"
        );
        seen.insert(got);
    }
    // 40 distinct keys over 4 equal upstreams: all four are used (a lossy conversion would
    // have sent every one of them to the same upstream).
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn sticky_query_keys_hash_their_percent_decoded_bytes() {
    let names = ["a", "b", "c", "d"];
    let plan = service_plan(
        r#""strategy": "sticky", "hash_on": {"query": "user"},"#,
        &[("a", 1), ("b", 1), ("c", 1), ("d", 1)],
    );
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..40u8 {
        let path = format!("/p?user=%FF%{n:02X}");
        let got = route_raw(&plan, &[(":path", path.as_bytes())]);
        assert_eq!(
            got,
            expected_owner(&[0xff, n], &names, &[1, 1, 1, 1]),
            "{path}"
        );
        seen.insert(got);
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
}

#[test]
fn sticky_ascii_keys_hash_as_documented() {
    let names = ["a", "b"];
    let plan = service_plan(
        r#""strategy": "sticky", "hash_on": {"cookie": "session"},"#,
        &[("a", 9), ("b", 1)],
    );
    for k in 0..200 {
        let key = format!("user-{k}");
        let cookie = format!("x=1; session={key}");
        assert_eq!(
            route_raw(&plan, &[("cookie", cookie.as_bytes())]),
            expected_owner(key.as_bytes(), &names, &[9, 1])
        );
    }
}

#[test]
fn rules_compare_bytes_not_lossy_text() {
    let json = r#"{"services": [{"name": "svc", "upstreams": [
        {"name": "main", "cluster": "c_main", "weight": 1},
        {"name": "beta", "cluster": "c_beta", "weight": 0}],
      "rules": [{"match": {"headers": [{"name": "x-tag", "exact": "\ufffd"}]}, "upstream": "beta"},
                {"match": {"headers": [{"name": "x-pre", "prefix": "\u00ff"}]}, "upstream": "beta"},
                {"match": {"query": [{"name": "q", "exact": "\u00ff"}]}, "upstream": "beta"},
                {"match": {"cookies": [{"name": "k", "exact": "\u00ff"}]}, "upstream": "beta"}]}]}"#;
    let plan = Plan::from_json(json.as_bytes()).unwrap();
    // A raw 0xff byte is not U+FFFD, nor the UTF-8 spelling of ÿ.
    assert_eq!(route_raw(&plan, &[("x-tag", b"\xff")]), "c_main");
    assert_eq!(route_raw(&plan, &[("x-pre", b"\xffz")]), "c_main");
    assert_eq!(route_raw(&plan, &[(":path", b"/?q=%FF")]), "c_main");
    assert_eq!(route_raw(&plan, &[("cookie", b"k=\xff")]), "c_main");
    // The exact bytes of the configured text match.
    assert_eq!(
        route_raw(&plan, &[("x-tag", "\u{fffd}".as_bytes())]),
        "c_beta"
    );
    assert_eq!(
        route_raw(&plan, &[("x-pre", "\u{ff}z".as_bytes())]),
        "c_beta"
    );
    assert_eq!(route_raw(&plan, &[(":path", b"/?q=%C3%BF")]), "c_beta");
    assert_eq!(
        route_raw(&plan, &[("cookie", "k=\u{ff}".as_bytes())]),
        "c_beta"
    );
}

// ---- the upstream header (routes that match a version label) ----

#[test]
fn upstream_header_alone_writes_the_name_and_no_cluster_header() {
    let plan = plan_with(r#""upstream_header": "x-meshsplit-upstream","#);
    let host = FakeHost::with_headers(&[
        (":authority", "ratings"),
        ("x-meshsplit-upstream", "v1"),
        ("x-meshsplit-cluster", "sent"),
    ]);
    assert_eq!(run(&plan, &host), Verdict::Continue);
    // The client's value is overwritten; the cluster header is none of the filter's business.
    assert_eq!(host.header("x-meshsplit-upstream").as_deref(), Some("v2"));
    assert_eq!(host.header("x-meshsplit-cluster").as_deref(), Some("sent"));
    assert_eq!(
        *host.calls.borrow(),
        vec!["get :authority", "set x-meshsplit-upstream"]
    );
}

#[test]
fn upstream_header_beside_the_cluster_header_writes_both() {
    let plan = plan_with(
        r#""cluster_header": "x-meshsplit-cluster", "upstream_header": "x-meshsplit-upstream","#,
    );
    let host = FakeHost::with_headers(&[(":authority", "ratings")]);
    run(&plan, &host);
    assert_eq!(host.header("x-meshsplit-upstream").as_deref(), Some("v2"));
    assert_eq!(
        host.header("x-meshsplit-cluster").as_deref(),
        Some("ratings_v2")
    );
}

#[test]
fn unknown_service_removes_the_upstream_header() {
    let plan = plan_with(r#""upstream_header": "x-meshsplit-upstream","#);
    let host = FakeHost::with_headers(&[(":authority", "other"), ("x-meshsplit-upstream", "v2")]);
    assert_eq!(run(&plan, &host), Verdict::Continue);
    assert_eq!(host.header("x-meshsplit-upstream"), None);
    assert_eq!(
        *host.calls.borrow(),
        vec!["get :authority", "set x-meshsplit-upstream"]
    );
}

/// An interpolating rollout changes the weights on almost every tick; a quiet service picks
/// about once per change. Round robin keeps its place across the changes, so the lighter
/// upstream gets its share over the ramp (reset at every change, it got nothing: the heavier one
/// wins every first pick).
#[test]
fn round_robin_gives_each_upstream_its_share_over_an_interpolating_ramp() {
    let plan = service_plan(
        r#""strategy": "round_robin","#,
        &[("a", 600_000), ("b", 400_000)],
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let service = &plan.services[0];
    for (picks_per_change, changes) in [(1u32, 3000u32), (2, 1500), (3, 1000)] {
        let mut b = 0u64;
        let mut expected = 0f64;
        for step in 0..changes {
            // 600 000/400 000 to 400 000/600 000 in even steps.
            let shift = 200_000 * step / changes;
            let weights = [600_000 - shift, 400_000 + shift];
            service.set_weights(&weights);
            for _ in 0..picks_per_change {
                expected += f64::from(weights[1]) / 1_000_000.0;
                if route_with(&plan, &mut rng, &[]) == "c_b" {
                    b += 1;
                }
            }
            // Within k - 1 = 1 pick of its share, all along the ramp.
            assert!(
                (b as f64 - expected).abs() <= 1.0 + 1e-9,
                "{picks_per_change} per change: b {b}, share {expected} after change {step}"
            );
        }
    }
}

/// [`ruled`] through a host whose reads by name answer the first copy only (proxy-wasm), with
/// the host calls it made.
fn ruled_first_only(rules: &str, headers: &[(&str, &str)]) -> (String, Vec<String>) {
    let plan = service_plan(&format!(r#""rules": [{rules}],"#), &[("a", 1), ("b", 0)]);
    let mut all = vec![(":authority", "svc")];
    all.extend_from_slice(headers);
    let host = FakeHost::with_headers(&all);
    host.first_only.set(true);
    run(&plan, &host);
    let cluster = host.header("x-meshsplit-cluster").unwrap_or_default();
    let calls = host.calls.borrow().clone();
    (cluster, calls)
}

#[test]
fn reading_the_first_copy_by_name_every_copy_still_counts() {
    let exact =
        r#"{"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "b"}"#;
    for (headers, expected) in [
        (&[("x-canary", "false"), ("x-canary", "true")][..], "c_b"),
        (&[("x-canary", "true"), ("x-canary", "false")][..], "c_b"),
        (&[("x-canary", "false"), ("x-canary", "no")][..], "c_a"),
    ] {
        assert_eq!(ruled_first_only(exact, headers).0, expected, "{headers:?}");
    }
    let cookie = r#"{"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "b"}"#;
    assert_eq!(
        ruled_first_only(cookie, &[("cookie", "a=2"), ("cookie", "beta=1")]).0,
        "c_b"
    );
    assert_eq!(
        ruled_first_only(cookie, &[("cookie", "beta=0"), ("cookie", "a=1")]).0,
        "c_a"
    );
}

const THREE_RULES: &str = r#"
    {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "b"},
    {"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "b"},
    {"match": {"query": [{"name": "version", "exact": "v2"}]}, "upstream": "b"}"#;

const TWO_RULES: &str = r#"
    {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "b"},
    {"match": {"cookies": [{"name": "beta", "exact": "1"}]}, "upstream": "b"}"#;

#[test]
fn reading_the_first_copy_by_name_absent_headers_are_one_read_each() {
    let (cluster, calls) = ruled_first_only(TWO_RULES, &[(":path", "/")]);
    assert_eq!(cluster, "c_a");
    assert_eq!(
        calls,
        vec![
            "get :authority",
            "get x-canary",
            "get cookie",
            "set x-meshsplit-cluster"
        ]
    );
}

#[test]
fn reading_the_first_copy_by_name_a_value_that_fails_reads_the_whole_map_once() {
    let headers = [("x-canary", "false"), ("cookie", "session=abc")];
    let (cluster, calls) = ruled_first_only(TWO_RULES, &headers);
    assert_eq!(cluster, "c_a");
    assert_eq!(
        calls,
        vec![
            "get :authority",
            "get x-canary",
            "get map",
            "set x-meshsplit-cluster"
        ]
    );
    // A value that decides the rule needs nothing more.
    let (cluster, calls) = ruled_first_only(TWO_RULES, &[("x-canary", "true")]);
    assert_eq!(cluster, "c_b");
    assert_eq!(
        calls,
        vec!["get :authority", "get x-canary", "set x-meshsplit-cluster"]
    );
}

#[test]
fn rules_naming_the_path_and_another_header_read_the_whole_map_once() {
    for headers in [
        &[(":path", "/")][..],
        &[("x-canary", "false"), (":path", "/?a=1")],
    ] {
        let (cluster, calls) = ruled_first_only(THREE_RULES, headers);
        assert_eq!(cluster, "c_a");
        // Every service of the plan reads the map: it holds the service key too.
        assert_eq!(calls, vec!["get map", "set x-meshsplit-cluster"]);
    }
    let (cluster, _) = ruled_first_only(THREE_RULES, &[(":path", "/?version=v2")]);
    assert_eq!(cluster, "c_b");
}
