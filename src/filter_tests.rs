use rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::*;
use crate::host::FakeHost;

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

fn configure<'v>(vm: &'v mut Vm, root: u32, bytes: &[u8]) -> Result<&'v Plan, ConfigError> {
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
fn unconfigured_vm_passes_requests_untouched() {
    let mut vm = Vm::new([0; 32]);
    let host = FakeHost::with_headers(&[(":authority", "svc"), ("x-meshsplit-cluster", "x")]);
    assert_eq!(vm.request_headers(5, &host), Verdict::Continue);
    assert_eq!(host.call_count(), 0);
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
fn stream_of_unknown_root_uses_latest_plan() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("one").as_bytes()).unwrap();
    configure(&mut vm, 2, single("two").as_bytes()).unwrap();
    assert_eq!(routed(&mut vm, 10, 99).as_deref(), Some("two"));
    // A request whose context was not the last one created also falls back to the latest.
    vm.stream_created(20, 1);
    let host = FakeHost::with_headers(&[(":authority", "svc")]);
    vm.request_headers(21, &host);
    assert_eq!(host.header("x-meshsplit-cluster").as_deref(), Some("two"));
}

#[test]
fn reconfiguring_a_root_replaces_its_plan() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("old").as_bytes()).unwrap();
    configure(&mut vm, 1, single("new").as_bytes()).unwrap();
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("new"));
}

#[test]
fn invalid_reconfiguration_keeps_the_previous_plan() {
    let mut vm = Vm::new([0; 32]);
    configure(&mut vm, 1, single("good").as_bytes()).unwrap();
    let err = configure(&mut vm, 1, br#"{"services": []}"#).unwrap_err();
    assert_eq!(err.to_string(), "services: must list at least one service");
    assert!(configure(&mut vm, 2, b"{").is_err());
    assert_eq!(routed(&mut vm, 10, 1).as_deref(), Some("good"));
    assert_eq!(routed(&mut vm, 11, 2).as_deref(), Some("good"));
}

#[test]
fn least_recently_used_root_is_dropped_beyond_the_limit() {
    let mut vm = Vm::new([0; 32]);
    for root in 1..=MAX_ROOTS as u32 {
        configure(&mut vm, root, single(&format!("c{root}")).as_bytes()).unwrap();
    }
    // Root 1 keeps serving streams; root 2 does not.
    assert_eq!(routed(&mut vm, 100, 1).as_deref(), Some("c1"));
    configure(&mut vm, 50, single("c50").as_bytes()).unwrap();
    assert_eq!(routed(&mut vm, 101, 1).as_deref(), Some("c1"));
    assert_eq!(routed(&mut vm, 102, 50).as_deref(), Some("c50"));
    // Root 2's plan is gone: its streams use the latest plan.
    assert_eq!(routed(&mut vm, 103, 2).as_deref(), Some("c50"));
}
