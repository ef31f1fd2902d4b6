use super::*;

fn plan(json: &str) -> Plan {
    Plan::from_json(json.as_bytes()).unwrap()
}

fn error(json: &str) -> String {
    Plan::from_json(json.as_bytes()).unwrap_err().to_string()
}

/// A valid config with one service, with `patch` spliced into the service object.
fn one_service(extra: &str) -> String {
    format!(
        r#"{{"services": [{{"name": "reviews", {extra} "upstreams": [
            {{"name": "v1", "cluster": "reviews_v1", "weight": 90}},
            {{"name": "v2", "cluster": "reviews_v2", "weight": 10}}]}}]}}"#
    )
}

fn upstreams(list: &str) -> String {
    format!(r#"{{"services": [{{"name": "reviews", "upstreams": [{list}]}}]}}"#)
}

#[test]
fn minimal_config_gets_defaults() {
    let p = plan(&one_service(""));
    assert_eq!(p.headers.cluster.as_deref(), Some("x-meshsplit-cluster"));
    assert_eq!(p.headers.upstream, None);
    assert_eq!(p.service_from, ServiceFrom::Authority);
    assert_eq!(p.on_unknown_service, OnUnknownService::Pass);
    assert_eq!(p.services.len(), 1);
}

#[test]
fn sample_config_from_the_issue_parses() {
    let p = plan(
        r#"{
          "cluster_header": "x-meshsplit-cluster",
          "service_from": "authority",
          "on_unknown_service": "pass",
          "services": [{
              "name": "reviews",
              "hosts": ["reviews", "reviews.default.svc.cluster.local"],
              "upstreams": [
                {"name": "v1", "cluster": "reviews_v1", "authority": "reviews-v1.internal", "weight": 90},
                {"name": "v2", "cluster": "reviews_v2", "weight": 10}
              ]
          }]
        }"#,
    );
    let service = p.service_for("reviews.default.svc.cluster.local").unwrap();
    assert_eq!(
        service.upstreams[0].authority.as_deref(),
        Some("reviews-v1.internal")
    );
    assert_eq!(service.upstreams[1].authority, None);
    assert_eq!(service.upstreams[1].weight, 10);
}

#[test]
fn hosts_default_to_the_service_name() {
    let p = plan(&one_service(""));
    assert_eq!(p.service_for("reviews").unwrap().name, "reviews");
    assert!(p.service_for("ratings").is_none());
}

#[test]
fn hosts_are_normalized_for_matching() {
    let p = plan(&one_service(
        r#""hosts": ["Reviews.Default", "[0:0::1]", "Shop:9080"],"#,
    ));
    let found = |raw: &str| p.find(&mut raw.as_bytes().to_vec()).is_some();
    assert!(found("reviews.default"));
    assert!(
        found("REVIEWS.default.:9080"),
        "a host without a port matches every port"
    );
    assert!(found("::1") && found("[::1]") && found("[0::1]:80"));
    assert!(found("shop:9080"));
    assert!(
        !found("shop") && !found("shop:8080"),
        "a host with a port matches that port only"
    );
    assert!(!found("reviews"), "explicit hosts replace the default");
}

#[test]
fn malformed_request_hosts_are_unknown_services() {
    let p = plan(&one_service(r#""hosts": ["reviews"],"#));
    for malformed in [
        "[reviews]",
        "[reviews]junk",
        "[reviews",
        "reviews:abc",
        "reviews:",
    ] {
        assert!(
            p.find(&mut malformed.as_bytes().to_vec()).is_none(),
            "{malformed}"
        );
    }
    assert!(p.find(&mut b"reviews:8080".to_vec()).is_some());
}

#[test]
fn service_from_header_and_query() {
    let p = plan(&format!(
        r#"{{"service_from": {{"header": "x-service"}}, {}"#,
        &one_service("")[1..]
    ));
    assert_eq!(p.service_from, ServiceFrom::Header("x-service".into()));
    let p = plan(&format!(
        r#"{{"service_from": {{"query": "service"}}, {}"#,
        &one_service("")[1..]
    ));
    assert_eq!(p.service_from, ServiceFrom::Query("service".into()));
}

#[test]
fn on_unknown_service_reject() {
    let p = plan(&format!(
        r#"{{"on_unknown_service": "reject", {}"#,
        &one_service("")[1..]
    ));
    assert_eq!(p.on_unknown_service, OnUnknownService::Reject);
}

#[test]
fn explicit_weighted_strategy_is_accepted() {
    plan(&one_service(r#""strategy": "weighted","#));
}

#[test]
fn zero_weight_upstream_is_allowed_when_another_is_positive() {
    let p = plan(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": 0}, {"name": "v2", "cluster": "b", "weight": 1}"#,
    ));
    assert_eq!(p.services[0].upstreams[0].weight, 0);
}

#[test]
fn maximum_weight_is_accepted() {
    plan(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": 1000000}"#,
    ));
}

// ---- one test per error kind ----

#[test]
fn empty_configuration_is_an_error() {
    assert!(error("").contains("configuration is empty"));
    assert!(error("  \n").contains("configuration is empty"));
}

#[test]
fn malformed_json_is_an_error() {
    let e = error(r#"{"services": ["#);
    assert!(
        e.contains("invalid JSON: the document ends inside a list"),
        "{e}"
    );
}

#[test]
fn trailing_garbage_is_an_error() {
    let e = error(&(one_service("") + " x"));
    assert!(e.contains("trailing"), "{e}");
}

#[test]
fn missing_services_is_an_error() {
    assert_eq!(error("{}"), "missing field \"services\" at line 1 column 2");
}

#[test]
fn unknown_top_level_field_is_an_error_naming_it() {
    let e = error(r#"{"servics": []}"#);
    assert!(e.starts_with("servics: unknown field \"servics\""), "{e}");
}

#[test]
fn unknown_upstream_field_is_an_error_with_its_path() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": 1, "wieght": 2}"#,
    ));
    assert!(
        e.starts_with("services[0].upstreams[0].wieght: unknown field \"wieght\""),
        "{e}"
    );
}

#[test]
fn unknown_service_field_is_an_error_with_its_path() {
    let e = error(&one_service(r#""host": ["x"],"#));
    assert!(
        e.starts_with("services[0].host: unknown field \"host\""),
        "{e}"
    );
}

#[test]
fn wrong_type_is_an_error_with_its_path() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": "10"}"#,
    ));
    assert!(
        e.starts_with(
            "services[0].upstreams[0].weight: expected a whole number (0 or more), got the string \"10\""
        ),
        "{e}"
    );
}

#[test]
fn negative_weight_is_an_error() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": -1}"#,
    ));
    assert!(
        e.starts_with(
            "services[0].upstreams[0].weight: expected a whole number (0 or more), got the number -1"
        ),
        "{e}"
    );
}

#[test]
fn fractional_weight_is_an_error() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": 1.5}"#,
    ));
    assert!(
        e.starts_with(
            "services[0].upstreams[0].weight: expected a whole number (0 or more), got the number 1.5"
        ),
        "{e}"
    );
}

#[test]
fn weight_above_maximum_is_an_error() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": 1}, {"name": "v2", "cluster": "b", "weight": 5000000}"#,
    ));
    assert_eq!(
        e,
        "services[0].upstreams[1].weight: must be at most 1000000, got 5000000"
    );
}

#[test]
fn huge_weight_is_an_error_not_a_wraparound() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": 4294967297}"#,
    ));
    assert_eq!(
        e,
        "services[0].upstreams[0].weight: must be at most 1000000, got 4294967297"
    );
}

#[test]
fn all_zero_weights_is_an_error() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": 0}, {"name": "v2", "cluster": "b", "weight": 0}"#,
    ));
    assert_eq!(
        e,
        "services[0].upstreams: weights sum to 0; at least one upstream needs a weight above 0"
    );
}

#[test]
fn no_upstreams_is_an_error() {
    assert_eq!(
        error(&upstreams("")),
        "services[0].upstreams: must list at least one upstream"
    );
}

#[test]
fn no_services_is_an_error() {
    assert_eq!(
        error(r#"{"services": []}"#),
        "services: must list at least one service"
    );
}

#[test]
fn duplicate_service_name_is_an_error() {
    let e = error(
        r#"{"services": [
            {"name": "a", "hosts": ["a"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]},
            {"name": "a", "hosts": ["b"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
    );
    assert_eq!(
        e,
        r#"services[1].name: duplicate service name "a" (first at services[0])"#
    );
}

#[test]
fn host_shared_by_two_services_is_an_error() {
    let e = error(
        r#"{"services": [
            {"name": "a", "hosts": ["shop", "a"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]},
            {"name": "b", "hosts": ["b", "SHOP."], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
    );
    assert_eq!(
        e,
        r#"services[1].hosts[1]: host "shop" is already matched by services[0] ("a")"#
    );
    let e = error(
        r#"{"services": [
            {"name": "a", "hosts": ["shop:8080"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]},
            {"name": "b", "hosts": ["SHOP.:8080"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
    );
    assert_eq!(
        e,
        r#"services[1].hosts[0]: host "shop:8080" is already matched by services[0] ("a")"#
    );
}

#[test]
fn a_host_with_a_port_takes_that_port_from_the_host_without() {
    let p = plan(
        r#"{"services": [
            {"name": "a", "hosts": ["shop"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]},
            {"name": "b", "hosts": ["shop:8080"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
    );
    let name = |raw: &str| {
        p.find(&mut raw.as_bytes().to_vec())
            .map(|(_, s)| s.name.clone())
    };
    assert_eq!(name("shop").as_deref(), Some("a"));
    assert_eq!(name("shop:80").as_deref(), Some("a"));
    assert_eq!(name("SHOP.:8080").as_deref(), Some("b"));
    assert_eq!(
        name("shop:08080").as_deref(),
        Some("a"),
        "ports compare as written"
    );
}

#[test]
fn default_host_colliding_with_explicit_host_is_an_error() {
    let e = error(
        r#"{"services": [
            {"name": "a", "hosts": ["b"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]},
            {"name": "b", "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
    );
    assert_eq!(
        e,
        r#"services[1].name: host "b" is already matched by services[0] ("a")"#
    );
}

#[test]
fn host_listed_twice_in_one_service_is_an_error() {
    let e = error(&one_service(r#""hosts": ["a", "A."],"#));
    assert_eq!(
        e,
        r#"services[0].hosts[1]: host "A." is listed twice (first at services[0].hosts[0])"#
    );
    let e = error(&one_service(r#""hosts": ["[0:0::1]:80", "[::1]:80"],"#));
    assert_eq!(
        e,
        r#"services[0].hosts[1]: host "[::1]:80" is listed twice (first at services[0].hosts[0])"#
    );
}

#[test]
fn empty_hosts_list_is_an_error() {
    let e = error(&one_service(r#""hosts": [],"#));
    assert!(
        e.starts_with("services[0].hosts: must list at least one host"),
        "{e}"
    );
}

#[test]
fn invalid_host_is_an_error() {
    let e = error(&one_service(r#""hosts": ["a b"],"#));
    assert_eq!(
        e,
        r#"services[0].hosts[0]: not a valid host: "a b" (bad character ' ')"#
    );
    let e = error(&one_service(r#""hosts": [":80"],"#));
    assert_eq!(
        e,
        r#"services[0].hosts[0]: not a valid host: ":80" (empty name)"#
    );
}

#[test]
fn empty_service_name_is_an_error() {
    let e = error(
        r#"{"services": [{"name": "", "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
    );
    assert_eq!(e, "services[0].name: must not be empty");
}

#[test]
fn duplicate_upstream_name_is_an_error() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "weight": 1}, {"name": "v1", "cluster": "b", "weight": 1}"#,
    ));
    assert_eq!(
        e,
        r#"services[0].upstreams[1].name: duplicate upstream name "v1" (first at services[0].upstreams[0])"#
    );
}

#[test]
fn empty_cluster_is_an_error() {
    let e = error(&upstreams(r#"{"name": "v1", "cluster": "", "weight": 1}"#));
    assert_eq!(e, "services[0].upstreams[0].cluster: must not be empty");
}

#[test]
fn cluster_with_control_character_is_an_error() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a\r\nx-evil: 1", "weight": 1}"#,
    ));
    assert!(
        e.starts_with("services[0].upstreams[0].cluster:") && e.contains("control character"),
        "{e}"
    );
}

#[test]
fn cluster_with_surrounding_space_is_an_error() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": " a", "weight": 1}"#,
    ));
    assert!(e.contains("leading or trailing white space"), "{e}");
}

#[test]
fn invalid_authority_is_an_error() {
    let e = error(&upstreams(
        r#"{"name": "v1", "cluster": "a", "authority": "a/b", "weight": 1}"#,
    ));
    assert_eq!(
        e,
        r#"services[0].upstreams[0].authority: "a/b" is not a valid authority (bad character '/')"#
    );
}

#[test]
fn unsupported_strategy_is_an_error() {
    let e = error(&one_service(r#""strategy": "random","#));
    assert!(
        e.starts_with(
            r#"services[0].strategy: expected one of "weighted", "round_robin", "least_request", "sticky", got the string "random""#
        ),
        "{e}"
    );
}

#[test]
fn uppercase_cluster_header_is_an_error() {
    let e = error(&format!(
        r#"{{"cluster_header": "X-Cluster", {}"#,
        &one_service("")[1..]
    ));
    assert_eq!(
        e,
        r#"cluster_header: "X-Cluster" is not a valid lowercase header name (bad character 'X')"#
    );
}

#[test]
fn pseudo_header_as_cluster_header_is_an_error() {
    let e = error(&format!(
        r#"{{"cluster_header": ":authority", {}"#,
        &one_service("")[1..]
    ));
    assert!(
        e.starts_with("cluster_header: \":authority\" is a pseudo-header"),
        "{e}"
    );
}

#[test]
fn host_as_cluster_header_is_an_error() {
    let e = error(&format!(
        r#"{{"cluster_header": "host", {}"#,
        &one_service("")[1..]
    ));
    assert!(e.starts_with("cluster_header: must not be \"host\""), "{e}");
}

#[test]
fn empty_cluster_header_is_an_error() {
    let e = error(&format!(
        r#"{{"cluster_header": "", {}"#,
        &one_service("")[1..]
    ));
    assert_eq!(e, "cluster_header: must not be empty");
}

#[test]
fn unknown_service_from_is_an_error() {
    let e = error(&format!(
        r#"{{"service_from": "path", {}"#,
        &one_service("")[1..]
    ));
    assert!(
        e.starts_with(
            r#"service_from: expected "authority" or {"header": NAME} or {"query": NAME}, got the string "path""#
        ),
        "{e}"
    );
    let e = error(&format!(
        r#"{{"service_from": {{"cookie": "x"}}, {}"#,
        &one_service("")[1..]
    ));
    assert!(e.starts_with("service_from: unknown key \"cookie\""), "{e}");
}

#[test]
fn service_from_header_must_be_valid() {
    let e = error(&format!(
        r#"{{"service_from": {{"header": "X Svc"}}, {}"#,
        &one_service("")[1..]
    ));
    assert!(
        e.starts_with("service_from.header: \"X Svc\" is not a valid lowercase header name"),
        "{e}"
    );
    let e = error(&format!(
        r#"{{"service_from": {{"header": 7}}, {}"#,
        &one_service("")[1..]
    ));
    assert!(
        e.starts_with("service_from.header: expected a string, got the number 7"),
        "{e}"
    );
}

#[test]
fn empty_service_from_query_is_an_error() {
    let e = error(&format!(
        r#"{{"service_from": {{"query": ""}}, {}"#,
        &one_service("")[1..]
    ));
    assert_eq!(e, "service_from.query: must not be empty");
}

#[test]
fn unknown_on_unknown_service_is_an_error() {
    let e = error(&format!(
        r#"{{"on_unknown_service": "drop", {}"#,
        &one_service("")[1..]
    ));
    assert!(
        e.starts_with(r#"on_unknown_service: expected "pass" or "reject", got the string "drop""#),
        "{e}"
    );
}

#[test]
fn earliest_repeated_service_name_is_reported() {
    let svc = |name: &str, host: &str| {
        format!(
            r#"{{"name": "{name}", "hosts": ["{host}"], "upstreams": [{{"name": "v1", "cluster": "c", "weight": 1}}]}}"#
        )
    };
    let e = error(&format!(
        r#"{{"services": [{}, {}, {}, {}]}}"#,
        svc("a", "h1"),
        svc("b", "h2"),
        svc("b", "h3"),
        svc("a", "h4")
    ));
    assert_eq!(
        e,
        r#"services[2].name: duplicate service name "b" (first at services[1])"#
    );
}

#[test]
fn many_services_are_all_found() {
    let services: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"name": "s{i}", "upstreams": [{{"name": "v", "cluster": "c{i}", "weight": 1}}]}}"#))
        .collect();
    let p = plan(&format!(r#"{{"services": [{}]}}"#, services.join(",")));
    for i in 0..500 {
        let service = p.service_for(&format!("s{i}")).unwrap();
        assert_eq!(service.upstreams[0].cluster, format!("c{i}"));
    }
    assert!(p.service_for("s500").is_none());
    assert!(p.service_for("").is_none());
}

// ---- strategies and rules ----

fn with_service_fields(fields: &str) -> String {
    format!(
        r#"{{"services": [{{"name": "reviews", {fields} "upstreams": [
            {{"name": "v1", "cluster": "reviews_v1", "weight": 90}},
            {{"name": "v2", "cluster": "reviews_v2", "weight": 0}}]}}]}}"#
    )
}

#[test]
fn issue_example_with_sticky_and_rules_parses() {
    let p = plan(&with_service_fields(
        r#""strategy": "sticky", "hash_on": {"header": "x-user-id"},
           "rules": [
             {"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "v2"},
             {"match": {"cookies": [{"name": "beta", "exact": "1"}], "query": [{"name": "version", "exact": "v1"}]}, "upstream": "v1"}
           ],"#,
    ));
    let s = &p.services[0];
    assert!(
        matches!(&s.strategy, Strategy::Sticky { hash_on: HashOn::Header(h), .. } if h == "x-user-id")
    );
    assert_eq!(s.rules.len(), 2);
    assert_eq!(
        s.rules[0].upstream, 1,
        "a rule may target a weight-0 upstream"
    );
    assert_eq!(
        s.rules[1].conditions,
        vec![
            Condition::Cookie {
                name: "beta".into(),
                value: "1".into()
            },
            Condition::Query {
                name: "version".into(),
                value: "v1".into()
            },
        ]
    );
}

#[test]
fn each_strategy_parses() {
    for (strategy, extra) in [
        ("weighted", ""),
        ("round_robin", ""),
        ("least_request", ""),
        ("sticky", r#""hash_on": {"cookie": "session"},"#),
        ("sticky", r#""hash_on": {"query": "user"},"#),
    ] {
        plan(&with_service_fields(&format!(
            r#""strategy": "{strategy}", {extra}"#
        )));
    }
}

#[test]
fn least_request_counters_are_namespaced_by_plugin_service_and_upstream() {
    let p = Plan::from_json_named(
        with_service_fields(r#""strategy": "least_request","#).as_bytes(),
        "edge",
    )
    .unwrap();
    let Strategy::LeastRequest(slots) = &p.services[0].strategy else {
        panic!()
    };
    assert_eq!(slots[1].key, "meshsplit/load/4:edge/7:reviews/2:v2");
    assert_eq!(slots[1].gauge, "meshsplit.edge.reviews.v2.in_flight");
}

#[test]
fn sticky_without_hash_on_is_an_error() {
    let e = error(&with_service_fields(r#""strategy": "sticky","#));
    assert!(
        e.starts_with(r#"services[0].hash_on: required with strategy "sticky""#),
        "{e}"
    );
}

#[test]
fn hash_on_without_sticky_is_an_error() {
    for fields in [
        r#""hash_on": {"header": "x-user"},"#,
        r#""strategy": "round_robin", "hash_on": {"header": "x-user"},"#,
    ] {
        let e = error(&with_service_fields(fields));
        assert_eq!(
            e,
            r#"services[0].hash_on: only allowed with strategy "sticky""#
        );
    }
}

#[test]
fn hash_on_with_bad_header_name_is_an_error() {
    let e = error(&with_service_fields(
        r#""strategy": "sticky", "hash_on": {"header": "X-User"},"#,
    ));
    assert!(
        e.starts_with(
            r#"services[0].hash_on.header: "X-User" is not a valid lowercase header name"#
        ),
        "{e}"
    );
}

#[test]
fn hash_on_with_unknown_source_is_an_error() {
    let e = error(&with_service_fields(
        r#""strategy": "sticky", "hash_on": {"path": "x"},"#,
    ));
    assert!(
        e.starts_with("services[0].hash_on: unknown key \"path\""),
        "{e}"
    );
}

#[test]
fn rule_naming_unknown_upstream_is_an_error() {
    let e = error(&with_service_fields(
        r#""rules": [{"match": {"headers": [{"name": "x", "present": true}]}, "upstream": "v9"}],"#,
    ));
    assert_eq!(
        e,
        r#"services[0].rules[0].upstream: no upstream named "v9" in this service (upstreams: v1, v2)"#
    );
}

#[test]
fn rule_with_empty_match_is_an_error() {
    let e = error(&with_service_fields(
        r#""rules": [{"match": {}, "upstream": "v1"}],"#,
    ));
    assert_eq!(
        e,
        "services[0].rules[0].match: must list at least one condition (headers, cookies or query)"
    );
}

#[test]
fn rule_with_bad_header_name_is_an_error() {
    let e = error(&with_service_fields(
        r#""rules": [{"match": {"headers": [{"name": "X Canary", "exact": "1"}]}, "upstream": "v1"}],"#,
    ));
    assert!(
        e.starts_with(r#"services[0].rules[0].match.headers[0].name: "X Canary" is not a valid"#),
        "{e}"
    );
}

#[test]
fn rule_header_needs_exactly_one_test() {
    for test in [
        r#""exact": "1", "prefix": "1""#,
        r#""exact": "1", "present": true"#,
        r#""ignored_case": true"#,
    ] {
        let e = error(&with_service_fields(&format!(
            r#""rules": [{{"match": {{"headers": [{{"name": "x", {test}}}]}}, "upstream": "v1"}}],"#
        )));
        assert!(
            e.starts_with("services[0].rules[0].match.headers[0]"),
            "{e}"
        );
    }
    let e = error(&with_service_fields(
        r#""rules": [{"match": {"headers": [{"name": "x"}]}, "upstream": "v1"}],"#,
    ));
    assert_eq!(
        e,
        r#"services[0].rules[0].match.headers[0]: needs exactly one of "exact", "prefix" or "present": true"#
    );
}

#[test]
fn rule_header_present_false_is_an_error() {
    let e = error(&with_service_fields(
        r#""rules": [{"match": {"headers": [{"name": "x", "present": false}]}, "upstream": "v1"}],"#,
    ));
    assert!(
        e.starts_with("services[0].rules[0].match.headers[0].present: only true is supported"),
        "{e}"
    );
}

#[test]
fn rule_with_unknown_match_field_is_an_error() {
    let e = error(&with_service_fields(
        r#""rules": [{"match": {"cookie": [{"name": "b", "exact": "1"}]}, "upstream": "v1"}],"#,
    ));
    assert!(
        e.starts_with("services[0].rules[0].match.cookie: unknown field \"cookie\""),
        "{e}"
    );
}

#[test]
fn rule_without_upstream_is_an_error() {
    let e = error(&with_service_fields(
        r#""rules": [{"match": {"query": [{"name": "v", "exact": "1"}]}}],"#,
    ));
    assert!(
        e.starts_with("services[0].rules[0]: missing field \"upstream\""),
        "{e}"
    );
}

#[test]
fn rule_may_match_pseudo_headers() {
    let p = plan(&with_service_fields(
        r#""rules": [{"match": {"headers": [{"name": ":path", "prefix": "/beta/"}]}, "upstream": "v2"}],"#,
    ));
    assert_eq!(
        p.services[0].rules[0].conditions,
        vec![Condition::Header {
            name: ":path".into(),
            test: HeaderTest::Prefix("/beta/".into())
        }]
    );
}

#[test]
fn least_request_counter_keys_cannot_collide() {
    let p = plan(
        r#"{"services": [
        {"name": "a/b", "hosts": ["h1"], "strategy": "least_request", "upstreams": [{"name": "c", "cluster": "x", "weight": 1}]},
        {"name": "a", "hosts": ["h2"], "strategy": "least_request", "upstreams": [{"name": "b/c", "cluster": "x", "weight": 1}]}]}"#,
    );
    let key = |i: usize| match &p.services[i].strategy {
        Strategy::LeastRequest(slots) => slots[0].key.clone(),
        _ => unreachable!(),
    };
    assert_ne!(key(0), key(1));
}

#[test]
fn upstream_stat_name_collision_is_an_error_for_every_strategy() {
    for strategy in ["weighted", "round_robin", "least_request"] {
        let e = error(&format!(
            r#"{{"services": [{{"name": "svc", "strategy": "{strategy}", "upstreams": [
            {{"name": "v1.0", "cluster": "a", "weight": 1}}, {{"name": "v1_0", "cluster": "b", "weight": 1}}]}}]}}"#
        ));
        assert!(
            e.starts_with(
                r#"services[0].upstreams[1].name: "v1_0" has the stat name "v1_0", the same as services[0].upstreams[0].name ("v1.0"), so their metrics would be summed together"#
            ),
            "{strategy}: {e}"
        );
    }
    let e = error(
        r#"{"services": [{"name": "svc", "strategy": "sticky", "hash_on": {"header": "x-u"}, "upstreams": [
        {"name": "a b", "cluster": "a", "weight": 1}, {"name": "a:b", "cluster": "b", "weight": 1}]}]}"#,
    );
    assert!(
        e.starts_with("services[0].upstreams[1].name: \"a:b\" has the stat name \"a_b\""),
        "{e}"
    );
}

#[test]
fn service_stat_name_collision_is_an_error() {
    let e = error(
        r#"{"services": [
        {"name": "a.b", "upstreams": [{"name": "v1", "cluster": "a", "weight": 1}]},
        {"name": "a_b", "upstreams": [{"name": "v1", "cluster": "b", "weight": 1}]}]}"#,
    );
    assert!(
        e.starts_with(
            r#"services[1].name: "a_b" has the stat name "a_b", the same as services[0].name ("a.b")"#
        ),
        "{e}"
    );
}

#[test]
fn a_cookie_value_with_a_semicolon_is_an_error() {
    let e = error(&one_service(
        r#""rules": [{"match": {"cookies": [{"name": "beta", "exact": "a;b"}]}, "upstream": "v1"}],"#,
    ));
    assert_eq!(
        e,
        r#"services[0].rules[0].match.cookies[0].exact: "a;b" holds a ';', which ends a cookie's value: no cookie could match it"#
    );
    // A query value may hold one.
    assert!(crate::plan::Plan::from_json(
        one_service(
            r#""rules": [{"match": {"query": [{"name": "q", "exact": "a;b"}]}, "upstream": "v1"}],"#
        )
        .as_bytes()
    )
    .is_ok());
}

#[test]
fn cookie_names_with_equals_or_semicolon_are_errors() {
    for (name, bad) in [("a=b", "'='"), ("a;b", "';'")] {
        let e = error(&one_service(&format!(
            r#""rules": [{{"match": {{"cookies": [{{"name": "{name}", "exact": "1"}}]}}, "upstream": "v1"}}],"#
        )));
        assert_eq!(
            e,
            format!(
                "services[0].rules[0].match.cookies[0].name: {name:?} is not a valid cookie name (bad character {bad}): no cookie could match it"
            )
        );
        let e = error(&one_service(&format!(
            r#""strategy": "sticky", "hash_on": {{"cookie": "{name}"}},"#
        )));
        assert!(
            e.starts_with("services[0].hash_on.cookie: ") && e.contains("not a valid cookie name"),
            "{e}"
        );
    }
}

// ---- what a host and the cluster header may be ----

fn with_hosts(hosts: &str) -> Result<Plan, ConfigError> {
    Plan::from_json(one_service(&format!(r#""hosts": [{hosts}],"#)).as_bytes())
}

#[test]
fn host_names_and_ip_literals_are_accepted_in_every_documented_form() {
    for host in [
        "reviews",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local.",
        "Reviews.Default:9080",
        "_grpc._tcp.reviews",
        "reviews-v1",
        "10.0.0.1",
        "10.0.0.1:80",
        "[::1]",
        "[::1]:80",
        "::1",
        "2001:db8::8:1",
        "[2001:db8::8:1]:443",
    ] {
        assert!(
            with_hosts(&format!("{host:?}")).is_ok(),
            "{host:?} was refused"
        );
    }
}

#[test]
fn malformed_hosts_are_an_error_saying_why() {
    for (host, why) in [
        ("[::1", "'[' without a closing ']'"),
        ("[::1]x", "only a :port may follow ']'"),
        ("[reviews]", "\"reviews\" is not a valid IPv6 address"),
        ("a:b:c", "more than one ':' and not a valid IPv6 address"),
        (
            "reviews:80:1",
            "more than one ':' and not a valid IPv6 address",
        ),
        ("reviews:", "port \"\" is not a number from 0 to 65535"),
        (
            "reviews:http",
            "port \"http\" is not a number from 0 to 65535",
        ),
        (
            "reviews:65536",
            "port \"65536\" is not a number from 0 to 65535",
        ),
        (
            "reviews:+80",
            "port \"+80\" is not a number from 0 to 65535",
        ),
        ("a..b", "empty label"),
        (".reviews", "empty label"),
        ("reviews..", "empty label"),
        ("a b", "bad character ' '"),
        ("a/b", "bad character '/'"),
        ("revi\u{e9}ws", "bad character '\u{e9}'"),
        ("-reviews", "label \"-reviews\" starts or ends with '-'"),
        ("10.0.0.256", "not a valid IPv4 address"),
        ("10.1", "not a valid IPv4 address"),
    ] {
        let e = with_hosts(&format!("\"a\", {host:?}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("services[0].hosts[1]: not a valid host: {host:?} ({why})")
        );
    }
}

#[test]
fn overlong_host_labels_and_names_are_an_error() {
    let label = "a".repeat(64);
    let e = with_hosts(&format!("{label:?}")).unwrap_err();
    assert!(e.message.contains("is longer than 63 characters"), "{e}");
    let name = vec!["a".repeat(60); 5].join(".");
    let e = with_hosts(&format!("{name:?}")).unwrap_err();
    assert!(e.message.ends_with("(longer than 253 characters)"), "{e}");
}

#[test]
fn wildcard_hosts_are_an_error_asking_for_explicit_hosts() {
    for host in ["*", "*.example.com", "reviews.*"] {
        let e = with_hosts(&format!("{host:?}")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "services[0].hosts[0]: {host:?}: wildcards are not supported; list each host explicitly"
            )
        );
    }
}

#[test]
fn service_name_must_be_a_valid_host_when_hosts_is_absent() {
    let e = error(
        r#"{"services": [{"name": "reviews:80:1", "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
    );
    assert!(
        e.starts_with(r#"services[0].name: not a valid host: "reviews:80:1""#),
        "{e}"
    );
}

#[test]
fn service_name_need_not_be_a_host_when_hosts_are_listed() {
    let p = plan(
        r#"{"services": [{"name": "reviews/v2 canary", "hosts": ["reviews"], "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#,
    );
    assert_eq!(p.services[0].name, "reviews/v2 canary");
}

fn with_cluster_header(name: &str) -> Result<Plan, ConfigError> {
    Plan::from_json(
        format!(r#"{{"cluster_header": {name:?}, {}"#, &one_service("")[1..]).as_bytes(),
    )
}

#[test]
fn headers_with_request_semantics_cannot_be_the_cluster_header() {
    for name in [
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "te",
        "trailer",
        "connection",
        "keep-alive",
        "upgrade",
        "proxy-connection",
        "expect",
        "http2-settings",
        "cookie",
        "authorization",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
        "forwarded",
        "via",
        "x-request-id",
    ] {
        let e = with_cluster_header(name).unwrap_err();
        assert_eq!(e.path, "cluster_header");
        assert!(
            e.message.starts_with(&format!("must not be {name:?}: it "))
                && e.message.ends_with(
                    "and the filter overwrites the cluster header on every request; \
                     use a header of its own, such as \"x-meshsplit-cluster\""
                ),
            "{e}"
        );
    }
}

#[test]
fn envoy_headers_cannot_be_the_cluster_header() {
    for name in ["x-envoy-original-dst-host", "x-envoy-cluster"] {
        let e = with_cluster_header(name).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                r#"cluster_header: must not be {name:?}: headers starting with "x-envoy-" are Envoy's own"#
            )),
            "{e}"
        );
    }
}

#[test]
fn a_header_of_its_own_can_be_the_cluster_header() {
    for name in ["x-route-to", "x-envoyish", "x-cluster"] {
        assert_eq!(
            with_cluster_header(name)
                .unwrap()
                .headers
                .cluster
                .as_deref(),
            Some(name)
        );
    }
}

// ---- limits ----

fn services_json(n: usize) -> String {
    let services: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"name": "s{i}", "upstreams": [{{"name": "u", "cluster": "c", "weight": 1}}]}}"#
            )
        })
        .collect();
    format!(r#"{{"services": [{}]}}"#, services.join(","))
}

#[test]
#[cfg_attr(
    target_arch = "wasm32",
    ignore = "tens of MB of configuration: the WASI runner's teardown crashes; tests/test_limits.py covers it through Envoy"
)]
fn a_configuration_over_the_byte_limit_is_refused_before_parsing() {
    let big = format!("{}{}", " ".repeat(MAX_CONFIG_BYTES), services_json(1));
    assert_eq!(
        error(&big),
        format!(
            "configuration is {} bytes; at most {MAX_CONFIG_BYTES} bytes are accepted",
            big.len()
        )
    );
}

#[test]
#[cfg_attr(
    target_arch = "wasm32",
    ignore = "tens of MB of configuration: the WASI runner's teardown crashes; tests/test_limits.py covers it through Envoy"
)]
fn too_many_services_are_refused_and_the_limit_itself_is_accepted() {
    assert_eq!(
        plan(&services_json(MAX_SERVICES)).services.len(),
        MAX_SERVICES
    );
    assert_eq!(
        error(&services_json(MAX_SERVICES + 1)),
        format!(
            "services: at most {MAX_SERVICES} services, got {}",
            MAX_SERVICES + 1
        )
    );
}

#[test]
fn per_service_limits_name_their_list() {
    let ups: Vec<String> = (0..=MAX_UPSTREAMS_PER_SERVICE)
        .map(|i| format!(r#"{{"name": "u{i}", "cluster": "c", "weight": 1}}"#))
        .collect();
    let json = format!(
        r#"{{"services": [{{"name": "s", "upstreams": [{}]}}]}}"#,
        ups.join(",")
    );
    assert!(error(&json).starts_with("services[0].upstreams: at most 256 upstreams per service"));
    let hosts: Vec<String> = (0..=MAX_HOSTS_PER_SERVICE)
        .map(|i| format!(r#""h{i}""#))
        .collect();
    let json = format!(
        r#"{{"services": [{{"name": "s", "hosts": [{}], "upstreams": [{{"name": "u", "cluster": "c", "weight": 1}}]}}]}}"#,
        hosts.join(",")
    );
    assert!(error(&json).starts_with("services[0].hosts: at most 1000 hosts per service"));
}

#[test]
fn guards_cover_at_most_the_guarded_upstream_limit_in_all() {
    let service = |i: usize, n: usize| {
        let ups: Vec<String> = (0..n)
            .map(|u| format!(r#"{{"name": "u{u}", "cluster": "c{u}", "weight": 1}}"#))
            .collect();
        format!(
            r#"{{"name": "s{i}", "guard": {{"error_rate": 0.5}}, "upstreams": [{}]}}"#,
            ups.join(",")
        )
    };
    let config = |services: &[String]| format!(r#"{{"services": [{}]}}"#, services.join(","));
    let full: Vec<String> = (0..4).map(|i| service(i, 256)).collect();
    assert_eq!(plan(&config(&full)).services.len(), 4);
    let mut over = full.clone();
    over.push(service(4, 1));
    assert_eq!(
        error(&config(&over)),
        "services[4].guard: guards cover at most 1024 upstreams in all, and this one brings them \
         to 1025 (each tick reads every guarded upstream's window)"
    );
}

#[test]
fn a_header_named_host_is_read_as_the_authority_as_envoy_keeps_it() {
    let p = plan(
        r#"{"service_from": {"header": "host"}, "services": [{"name": "s", "strategy": "sticky",
            "hash_on": {"header": "host"},
            "upstreams": [{"name": "a", "cluster": "a", "weight": 1}],
            "rules": [{"match": {"headers": [{"name": "host", "prefix": "x"}]}, "upstream": "a"}]}]}"#,
    );
    assert!(matches!(&p.service_from, ServiceFrom::Header(n) if n == ":authority"));
    let service = &p.services[0];
    assert!(
        matches!(&service.strategy, Strategy::Sticky { hash_on: HashOn::Header(n), .. } if n == ":authority")
    );
    assert!(
        matches!(&service.rules[0].conditions[0], Condition::Header { name, .. } if name == ":authority")
    );
}

#[test]
fn a_cluster_specifier_refuses_a_latency_only_guard_as_any_guard() {
    let p = plan(
        r#"{"services": [{"name": "s", "upstreams": [{"name": "a", "cluster": "a", "weight": 1}],
            "guard": {"latency": {"percentile": 95, "threshold_ms": 250}}}]}"#,
    );
    let err = p.check_cluster_specifier().unwrap_err();
    assert_eq!(err.path, "services[0].guard");
    assert!(err.message.contains("needs to see each response"), "{err}");
}

fn with_headers(fields: &str) -> Result<Plan, ConfigError> {
    Plan::from_json(format!(r#"{{{fields}, {}"#, &one_service("")[1..]).as_bytes())
}

#[test]
fn an_upstream_header_alone_replaces_the_cluster_header() {
    let p = with_headers(r#""upstream_header": "x-meshsplit-upstream""#).unwrap();
    assert_eq!(p.headers.cluster, None);
    assert_eq!(p.headers.upstream.as_deref(), Some("x-meshsplit-upstream"));
    let p = with_headers(r#""upstream_header": "x-v", "cluster_header": "x-c""#).unwrap();
    assert_eq!(p.headers.cluster.as_deref(), Some("x-c"));
    assert_eq!(p.headers.upstream.as_deref(), Some("x-v"));
}

#[test]
fn the_upstream_header_follows_the_cluster_headers_rules() {
    let e = with_headers(r#""upstream_header": "cookie""#).unwrap_err();
    assert_eq!(e.path, "upstream_header");
    assert!(e.message.contains("overwrites the upstream header"), "{e}");
    let e = with_headers(r#""upstream_header": "x-envoy-upstream""#).unwrap_err();
    assert_eq!(e.path, "upstream_header");
    let e = with_headers(r#""upstream_header": "X-V""#).unwrap_err();
    assert_eq!(e.path, "upstream_header");
    let e = with_headers(r#""upstream_header": "x-same", "cluster_header": "x-same""#).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"upstream_header: must differ from cluster_header (both are "x-same")"#
    );
}

#[test]
fn with_an_upstream_header_names_must_be_header_values() {
    let json = r#"{"upstream_header": "x-v", "services": [{"name": "reviews", "upstreams": [
        {"name": "v1\u007f", "cluster": "c", "weight": 1}]}]}"#;
    let e = Plan::from_json(json.as_bytes()).unwrap_err();
    assert_eq!(e.path, "services[0].upstreams[0].name");
}

#[test]
fn a_cluster_specifier_refuses_an_upstream_header() {
    let p = with_headers(r#""upstream_header": "x-meshsplit-upstream""#).unwrap();
    let e = p.check_cluster_specifier().unwrap_err();
    assert_eq!(e.path, "upstream_header");
}

#[test]
fn objects_written_as_lists_are_refused_with_their_path() {
    let cases = [
        (
            r#"{"services": [{"name": "s", "upstreams": [{"name": "a", "cluster": "c", "weight": 1}],
                "guard": [0.1, 20, 10, 30]}]}"#,
            "services[0].guard",
        ),
        (
            r#"{"services": [{"name": "s", "upstreams": [["a", "c", null, 1]]}]}"#,
            "services[0].upstreams[0]",
        ),
        (r#"{"services": [["s", null]]}"#, "services[0]"),
        (r#"[null, null, null, [{"name": "s"}]]"#, ""),
        (
            r#"{"services": [{"name": "s", "upstreams": [{"name": "a", "cluster": "c", "weight": 1}],
                "rules": [{"match": [[], [], []], "upstream": "a"}]}]}"#,
            "services[0].rules[0].match",
        ),
        (
            r#"{"services": [{"name": "s", "upstreams": [{"name": "a", "cluster": "c", "weight": 1}],
                "rollout": {"start": "2026-01-01T00:00:00Z", "steps": [[0, {"a": 1}]]}}]}"#,
            "services[0].rollout.steps[0]",
        ),
    ];
    for (json, path) in cases {
        let e = Plan::from_json(json.as_bytes()).unwrap_err();
        assert_eq!(e.path, path, "{json}: {e}");
        assert!(e.message.contains("got a list"), "{e}");
    }
}
