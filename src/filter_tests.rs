use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use std::rc::Rc;

use super::*;
use crate::host::FakeHost;
use crate::select::{rendezvous, sticky_hash};

const CONFIG: &str = r#"{
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
    on_request_headers(plan, &mut rng, host).verdict
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

// ---- per-VM state: plans by root context ----

fn configure(vm: &mut Vm, root: u32, bytes: &[u8]) -> Result<Rc<Plan>, ConfigError> {
    vm.configure(root, bytes, "meshsplit", &FakeHost::default())
}

fn single(cluster: &str) -> String {
    format!(
        r#"{{"services": [{{"name": "svc", "upstreams": [{{"name": "u", "cluster": "{cluster}", "weight": 1}}]}}]}}"#
    )
}

fn routed(vm: &mut Vm, context: u32, root: u32) -> Option<String> {
    vm.stream_created(context, root);
    let host = FakeHost::with_headers(&[(":authority", "svc")]);
    vm.request_headers(context, &host);
    host.header("x-meshsplit-cluster")
}

#[test]
fn unconfigured_vm_passes_requests_untouched_and_counts_them() {
    let mut vm = Vm::new([0; 32]);
    let host = FakeHost::with_headers(&[(":authority", "svc"), ("x-meshsplit-cluster", "x")]);
    assert_eq!(vm.request_headers(5, &host), Verdict::Continue);
    assert_eq!(
        *host.calls.borrow(),
        [
            format!("define counter {UNPLANNED_COUNTER}"),
            "counter 0 +1".to_owned()
        ]
    );
    assert_eq!(host.header("x-meshsplit-cluster").as_deref(), Some("x"));
    assert_eq!(host.counter(UNPLANNED_COUNTER), 1);
}

#[test]
fn each_root_context_routes_with_its_own_plan() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    configure(&mut vm, 2, single("two").as_bytes()).unwrap();
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("one"));
    assert_eq!(routed(&mut vm, 11, 2).as_deref(), Some("two"));
    assert_eq!(routed(&mut vm, 12, 1).as_deref(), Some("one"));
}

#[test]
fn stream_of_a_root_without_plan_is_never_routed_with_another_roots_plan() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    configure(&mut vm, 2, single("two").as_bytes()).unwrap();
    let host = FakeHost::with_headers(&[(":authority", "svc"), ("x-meshsplit-cluster", "x")]);
    vm.stream_created(10, 99);
    assert_eq!(vm.request_headers(10, &host), Verdict::Continue);
    // Untouched: not even the client's cluster header is removed, as without the filter.
    assert_eq!(host.header("x-meshsplit-cluster").as_deref(), Some("x"));
    assert_eq!(host.counter(UNPLANNED_COUNTER), 1);
    // A request whose context was not the last one created has no known root either.
    vm.stream_created(20, 1);
    let host = FakeHost::with_headers(&[(":authority", "svc")]);
    vm.request_headers(21, &host);
    assert_eq!(host.header("x-meshsplit-cluster"), None);
}

#[test]
fn reconfiguring_a_root_replaces_its_plan() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("old").as_bytes()).unwrap();
    configure(&mut vm, 1, single("new").as_bytes()).unwrap();
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("new"));
    assert_eq!(vm.plans(), 1);
}

#[test]
fn invalid_reconfiguration_keeps_the_previous_plan() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("good").as_bytes()).unwrap();
    let err = configure(&mut vm, 1, br#"{"services": []}"#).unwrap_err();
    assert_eq!(err.to_string(), "services: must list at least one service");
    assert!(configure(&mut vm, 2, b"{").is_err());
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("good"));
    // Root 2 was never configured: its streams are not routed with root 1's plan.
    assert_eq!(routed(&mut vm, 11, 2), None);
}

#[test]
fn many_roots_each_keep_their_plan_however_many_there_are() {
    let mut vm = Vm::new([0; 32]);
    for root in 1..=40u32 {
        configure(&mut vm, root, single(&format!("c{root}")).as_bytes()).unwrap();
    }
    // Interleaved traffic and reconfigurations of other roots never disturb a root's plan.
    for round in 0..3u32 {
        for root in 1..=40u32 {
            let context = 1000 + round * 100 + root;
            assert_eq!(
                routed(&mut vm, context, root).as_deref(),
                Some(format!("c{root}").as_str())
            );
        }
        configure(&mut vm, 40, single("c40").as_bytes()).unwrap();
    }
    assert_eq!(vm.plans(), 40);
}

#[test]
fn deleting_a_root_drops_only_its_plan() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    configure(&mut vm, 2, single("two").as_bytes()).unwrap();
    assert!(vm.context_deleted(2, &FakeHost::default()));
    assert!(!vm.context_deleted(77, &FakeHost::default()));
    assert_eq!(vm.plans(), 1);
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("one"));
    assert_eq!(routed(&mut vm, 11, 2), None);
}

#[test]
fn a_live_update_routes_old_and_new_streams_with_their_own_roots() {
    // Envoy configures the new root before it deletes the old one; streams created under the
    // old root keep its plan until they end, and a static root beside it is never touched.
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("static").as_bytes()).unwrap();
    for version in 2..=12u32 {
        configure(&mut vm, version, single(&format!("v{version}")).as_bytes()).unwrap();
        assert_eq!(routed(&mut vm, 100 + version, 1).as_deref(), Some("static"));
        assert_eq!(
            routed(&mut vm, 200 + version, version).as_deref(),
            Some(format!("v{version}").as_str())
        );
    }
    assert_eq!(vm.plans(), 12);
    for version in 2..12u32 {
        vm.context_deleted(version, &FakeHost::default());
    }
    assert_eq!(vm.plans(), 2);
    assert_eq!(routed(&mut vm, 500, 1).as_deref(), Some("static"));
}

// ---- the accepted-configuration log line ----

#[test]
fn accepted_configuration_is_announced_once_per_envoy() {
    let main = FakeHost::default();
    let worker = main.sibling(&[]);
    let a = config_fingerprint(single("a").as_bytes());
    let b = config_fingerprint(single("b").as_bytes());
    assert_ne!(a, b);
    assert_eq!(a.len(), 8);
    // The main thread, then the workers, configure the same plugin moments apart.
    assert!(first_to_accept(&main, "meshsplit", &a, 1000));
    assert!(!first_to_accept(&worker, "meshsplit", &a, 1000));
    assert!(!first_to_accept(&main, "meshsplit", &a, 1001));
    // Two listeners with different configurations are each announced, even interleaved.
    assert!(first_to_accept(&main, "meshsplit", &b, 1001));
    assert!(!first_to_accept(&worker, "meshsplit", &a, 1002));
    assert!(!first_to_accept(&worker, "meshsplit", &b, 1002));
    // Another plugin name is announced on its own.
    assert!(first_to_accept(&worker, "other", &a, 1002));
    // The same configuration accepted again later (an update back to it) is a new acceptance.
    assert!(first_to_accept(
        &worker,
        "meshsplit",
        &a,
        1000 + ANNOUNCE_WINDOW_S
    ));
    assert!(!first_to_accept(
        &main,
        "meshsplit",
        &a,
        1000 + ANNOUNCE_WINDOW_S
    ));
}

#[test]
fn accepted_configuration_line_names_services_upstreams_and_fingerprint() {
    let plan = Plan::from_json(CONFIG.as_bytes()).unwrap();
    assert_eq!(
        config_summary(&plan, "0badc0de", "meshsplit"),
        "configuration 0badc0de accepted for meshsplit: 2 services, 4 upstreams: \
         reviews (weighted, v1=reviews_v1 1, v2=reviews_v2 0); \
         ratings (weighted, v1=ratings_v1 0, v2=ratings_v2 5)"
    );
    let many: Vec<String> = (0..10)
        .map(|i| {
            format!(
                r#"{{"name": "s{i}", "upstreams": [{{"name": "u", "cluster": "c", "weight": 1}}]}}"#
            )
        })
        .collect();
    let json = format!(r#"{{"services": [{}]}}"#, many.join(","));
    let line = config_summary(&Plan::from_json(json.as_bytes()).unwrap(), "x", "p");
    assert!(
        line.starts_with(
            "configuration x accepted for p: 10 services, 10 upstreams: s0 (weighted, u=c 1); "
        ),
        "{line}"
    );
    assert!(
        line.ends_with("s7 (weighted, u=c 1); and 2 more services"),
        "{line}"
    );
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
    on_request_headers(plan, rng, &host);
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
    on_request_headers(&plan, &mut Xoshiro256PlusPlus::seed_from_u64(1), &host);
    assert_eq!(
        *host.calls.borrow(),
        vec!["get :authority", "get cookie", "set x-meshsplit-cluster"]
    );
}

// ---- least request: counts shared by workers, given back when streams end ----

const LR: &str = r#"{"services": [{"name": "svc", "strategy": "least_request", "upstreams": [
    {"name": "a", "cluster": "c_a", "weight": 1}, {"name": "b", "cluster": "c_b", "weight": 1}]}]}"#;
const KEY_A: &str = "meshsplit/in_flight/9:meshsplit/3:svc/1:a";
const KEY_B: &str = "meshsplit/in_flight/9:meshsplit/3:svc/1:b";

fn lr_vm(host: &FakeHost) -> Vm {
    let mut vm = Vm::new([7; 32]);
    vm.configure(1, LR.as_bytes(), "meshsplit", host).unwrap();
    vm
}

fn lr_request(vm: &mut Vm, context: u32, host: &FakeHost) -> String {
    vm.stream_created(context, 1);
    vm.request_headers(context, host);
    host.header("x-meshsplit-cluster").unwrap()
}

fn svc_host(worker: &FakeHost) -> FakeHost {
    worker.sibling(&[(":authority", "svc")])
}

#[test]
fn least_request_counts_start_at_zero_with_gauges() {
    let host = FakeHost::default();
    lr_vm(&host);
    assert_eq!(host.shared_u64(KEY_A), Some(0));
    assert_eq!(host.gauge("meshsplit.meshsplit.svc.a.in_flight"), 0);
}

#[test]
fn least_request_picks_the_idle_upstream_and_counts_until_the_stream_ends() {
    let worker = FakeHost::default();
    let mut vm = lr_vm(&worker);
    let first = lr_request(&mut vm, 10, &svc_host(&worker));
    let second = lr_request(&mut vm, 11, &svc_host(&worker));
    assert_ne!(
        first, second,
        "the second request goes to the idle upstream"
    );
    assert_eq!(
        (worker.shared_u64(KEY_A), worker.shared_u64(KEY_B)),
        (Some(1), Some(1))
    );
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.a.in_flight"), 1);
    vm.context_deleted(10, &worker);
    vm.context_deleted(11, &worker);
    vm.context_deleted(11, &worker); // a second delete of the same stream changes nothing
    assert_eq!(
        (worker.shared_u64(KEY_A), worker.shared_u64(KEY_B)),
        (Some(0), Some(0))
    );
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.a.in_flight"), 0);
    assert_eq!(worker.gauge("meshsplit.meshsplit.svc.b.in_flight"), 0);
}

#[test]
fn least_request_sees_other_workers_load() {
    let first = FakeHost::default();
    let second = first.sibling(&[]);
    let (mut vm1, mut vm2) = (lr_vm(&first), lr_vm(&second));
    // Worker 1 holds a request on whichever it picked; worker 2 must pick the other one.
    let busy = lr_request(&mut vm1, 10, &svc_host(&first));
    let other = lr_request(&mut vm2, 20, &svc_host(&second));
    assert_ne!(busy, other);
    vm1.context_deleted(10, &first);
    vm2.context_deleted(20, &second);
    assert_eq!(
        (first.shared_u64(KEY_A), first.shared_u64(KEY_B)),
        (Some(0), Some(0))
    );
}

#[test]
fn least_request_retries_on_cas_conflict_without_losing_updates() {
    let worker = FakeHost::default();
    let mut vm = lr_vm(&worker);
    let host = svc_host(&worker);
    host.cas_conflicts.set(3);
    lr_request(&mut vm, 10, &host);
    let total = worker.shared_u64(KEY_A).unwrap() + worker.shared_u64(KEY_B).unwrap();
    assert_eq!(total, 1);
}

#[test]
fn least_request_counts_never_go_negative() {
    let worker = FakeHost::default();
    let mut vm = lr_vm(&worker);
    lr_request(&mut vm, 10, &svc_host(&worker));
    // Someone reset the counters (e.g. an operator restarting another worker's view).
    worker.set_shared_data(KEY_A, &0u64.to_le_bytes(), 0);
    worker.set_shared_data(KEY_B, &0u64.to_le_bytes(), 0);
    vm.context_deleted(10, &worker);
    assert_eq!(
        (worker.shared_u64(KEY_A), worker.shared_u64(KEY_B)),
        (Some(0), Some(0))
    );
}

#[test]
fn weighted_streams_leave_no_lease_and_cost_no_extra_calls() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    let host = FakeHost::with_headers(&[(":authority", "svc")]);
    vm.stream_created(10, 1);
    vm.request_headers(10, &host);
    let before = host.call_count();
    vm.context_deleted(10, &host);
    assert_eq!(host.call_count(), before);
}

// ---- keys and match values are bytes ----

fn route_raw(plan: &Plan, headers: &[(&str, &[u8])]) -> String {
    let mut all: Vec<(&str, &[u8])> = vec![(":authority", b"svc")];
    all.extend_from_slice(headers);
    let host = FakeHost::with_raw_headers(&all);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    on_request_headers(plan, &mut rng, &host);
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

// ---- counters: counted in VM memory, flushed on the housekeeping tick ----

const COUNTED: &str = r#"{"on_unknown_service": "reject", "services": [
  {"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "c1", "weight": 1},
    {"name": "v2", "cluster": "c2", "weight": 0}],
   "rules": [{"match": {"headers": [{"name": "x-beta", "present": true}]}, "upstream": "v2"}]}]}"#;

fn send_counted(vm: &mut Vm, context: u32, headers: &[(&str, &str)]) -> FakeHost {
    vm.stream_created(context, 1);
    let host = FakeHost::with_headers(headers);
    vm.request_headers(context, &host);
    host
}

#[test]
fn requests_make_no_metric_calls_and_the_tick_flushes_exact_counts() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, COUNTED.as_bytes()).unwrap();
    for i in 0..5 {
        let host = send_counted(&mut vm, 10 + i, &[(":authority", "svc")]);
        assert_eq!(
            *host.calls.borrow(),
            ["get :authority", "get x-beta", "set x-meshsplit-cluster"]
        );
    }
    for i in 0..2 {
        send_counted(&mut vm, 20 + i, &[(":authority", "svc"), ("x-beta", "1")]);
    }
    for i in 0..3 {
        send_counted(&mut vm, 30 + i, &[(":authority", "nope")]);
    }
    let host = FakeHost::default();
    vm.tick(1, &host);
    assert_eq!(
        *host.calls.borrow(),
        [
            "define counter meshsplit.meshsplit.svc.v1.requests_total",
            "counter 0 +5",
            "define counter meshsplit.meshsplit.svc.v2.requests_total",
            "counter 1 +2",
            "define counter meshsplit.meshsplit.svc.rules.0.hits_total",
            "counter 2 +2",
            "define counter meshsplit.meshsplit.unknown_service_total",
            "counter 3 +3",
            "define counter meshsplit.meshsplit.rejected_total",
            "counter 4 +3",
        ]
    );
    // Nothing new: the next tick makes no host call; then only what changed, without defining.
    host.calls.borrow_mut().clear();
    vm.tick(1, &host);
    assert!(host.calls.borrow().is_empty());
    send_counted(&mut vm, 40, &[(":authority", "svc")]);
    vm.tick(1, &host);
    assert_eq!(*host.calls.borrow(), ["counter 0 +1"]);
    assert_eq!(host.counter("meshsplit.meshsplit.svc.v1.requests_total"), 6);
}

#[test]
fn a_deleted_or_reconfigured_root_flushes_what_it_counted() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, COUNTED.as_bytes()).unwrap();
    send_counted(&mut vm, 10, &[(":authority", "svc")]);
    let host = FakeHost::default();
    vm.configure(1, COUNTED.as_bytes(), "meshsplit", &host)
        .unwrap();
    assert_eq!(host.counter("meshsplit.meshsplit.svc.v1.requests_total"), 1);
    send_counted(&mut vm, 11, &[(":authority", "svc")]);
    vm.context_deleted(1, &host);
    assert_eq!(host.counter("meshsplit.meshsplit.svc.v1.requests_total"), 2);
}

#[test]
fn a_tick_of_another_root_flushes_only_that_root() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, COUNTED.as_bytes()).unwrap();
    configure(&mut vm, 2, COUNTED.as_bytes()).unwrap();
    send_counted(&mut vm, 10, &[(":authority", "svc")]);
    let host = FakeHost::default();
    vm.tick(2, &host);
    vm.tick(99, &host);
    assert!(host.calls.borrow().is_empty());
    vm.tick(1, &host);
    assert_eq!(host.counter("meshsplit.meshsplit.svc.v1.requests_total"), 1);
}
