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
    on_request_headers(plan, &mut rng, host)
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
