use super::*;

/// `/stats` text of a wasm filter `meshsplit` with a guarded service.
const TEXT: &str = "\
http.meshsplit.no_cluster: 2
wasmcustom.meshsplit.meshsplit.reviews.v1.requests_total: 700
wasmcustom.meshsplit.meshsplit.reviews.v1.weight: 90
wasmcustom.meshsplit.meshsplit.reviews.v1.ejected: 0
wasmcustom.meshsplit.meshsplit.reviews.v1.ejections_total: 0
wasmcustom.meshsplit.meshsplit.reviews.v2.requests_total: 300
wasmcustom.meshsplit.meshsplit.reviews.v2.weight: 0
wasmcustom.meshsplit.meshsplit.reviews.v2.ejected: 1
wasmcustom.meshsplit.meshsplit.reviews.v2.ejections_total: 1
wasmcustom.meshsplit.meshsplit.reviews.rules.0.hits_total: 50
wasmcustom.meshsplit.meshsplit.reviews.rollout_paused: 1
wasmcustom.meshsplit.meshsplit.unknown_service_total: 10
wasmcustom.meshsplit.meshsplit.rejected_total: 4
wasmcustom.meshsplit.meshsplit.config_failures_total: 1
wasmcustom.meshsplit.meshsplit.config_refused: 1
wasmcustom.meshsplit.requests_without_plan: 0
wasmcustom.meshsplit.vm_memory_bytes: 1048576
cluster.v1.upstream_rq_total: 5
";

fn reviews(snapshot: &Snapshot) -> &ServiceStats {
    &snapshot.plugins["meshsplit"].services["reviews"]
}

#[test]
fn envoy_stats_text_is_read_per_plugin_service_and_upstream() {
    let s = parse_stats(TEXT);
    assert!(s.found);
    assert_eq!(s.no_cluster, 2);
    let plugin = &s.plugins["meshsplit"];
    assert_eq!(
        (
            plugin.unknown_service,
            plugin.rejected,
            plugin.config_failures
        ),
        (10, 4, 1)
    );
    let service = reviews(&s);
    assert_eq!(service.rollout_paused, Some(1));
    assert_eq!(service.rule_hits, BTreeMap::from([(0, 50)]));
    assert_eq!(
        service.upstreams["v2"],
        UpstreamStats {
            requests: 300,
            weight: Some(0),
            in_flight: None,
            ejected: Some(1),
            ejections: Some(1),
            ..UpstreamStats::default()
        }
    );
    assert_eq!(service.upstreams["v1"].weight, Some(90));
}

#[test]
fn json_and_prometheus_output_read_the_same_as_text() {
    let json = r#"{"stats": [
        {"name": "dynamicmodulescustom.meshsplit.f.svc.v1.requests_total", "value": 7},
        {"name": "dynamicmodulescustom.meshsplit.f.svc.v1.weight", "value": 3},
        {"name": "dynamicmodulescustom.meshsplit.f.svc.v1.in_flight", "value": 2},
        {"name": "http.ingress.no_cluster", "value": 1},
        {"histograms": {}}]}"#;
    let prometheus = "\
# TYPE meshsplit_requests_total counter
meshsplit_requests_total{plugin=\"f\",service=\"svc\",upstream=\"v1\"} 7
meshsplit_weight{plugin=\"f\",service=\"svc\",upstream=\"v1\"} 3
meshsplit_in_flight{plugin=\"f\",service=\"svc\",upstream=\"v1\"} 2
envoy_http_no_cluster{envoy_http_conn_manager_prefix=\"ingress\"} 1
";
    let from_json = parse_stats(json);
    assert!(from_json.found);
    assert_eq!(
        from_json.plugins["f"].services["svc"].upstreams["v1"],
        UpstreamStats {
            requests: 7,
            weight: Some(3),
            in_flight: Some(2),
            ..UpstreamStats::default()
        }
    );
    assert_eq!(from_json.no_cluster, 1);
    assert_eq!(parse_stats(prometheus), from_json);
    let rules = parse_stats(
        "meshsplit_rules_hits_total{plugin=\"f\",service=\"svc\",rule=\"2\"} 9\n\
         meshsplit_unknown_service_total{plugin=\"f\"} 4\n",
    );
    assert_eq!(
        rules.plugins["f"].services["svc"].rule_hits,
        BTreeMap::from([(2, 9)])
    );
    assert_eq!(rules.plugins["f"].unknown_service, 4);
}

#[test]
fn superseded_decisions_are_taken_out_of_the_requests_in_every_format() {
    let text = "dynamicmodulescustom.meshsplit.f.svc.v1.requests_total: 606\n\
                dynamicmodulescustom.meshsplit.f.svc.v1.superseded_total: 206\n\
                dynamicmodulescustom.meshsplit.f.svc.v2.requests_total: 194\n\
                dynamicmodulescustom.meshsplit.f.svc.v2.superseded_total: 194\n";
    let json = r#"{"stats": [
        {"name": "dynamicmodulescustom.meshsplit.f.svc.v1.superseded_total", "value": 206},
        {"name": "dynamicmodulescustom.meshsplit.f.svc.v1.requests_total", "value": 606},
        {"name": "dynamicmodulescustom.meshsplit.f.svc.v2.requests_total", "value": 194},
        {"name": "dynamicmodulescustom.meshsplit.f.svc.v2.superseded_total", "value": 194}]}"#;
    let prometheus = "\
meshsplit_superseded_total{plugin=\"f\",service=\"svc\",upstream=\"v1\"} 206
meshsplit_requests_total{plugin=\"f\",service=\"svc\",upstream=\"v1\"} 606
meshsplit_requests_total{plugin=\"f\",service=\"svc\",upstream=\"v2\"} 194
meshsplit_superseded_total{plugin=\"f\",service=\"svc\",upstream=\"v2\"} 194
";
    for input in [text, json, prometheus] {
        let s = parse_stats(input);
        let svc = &s.plugins["f"].services["svc"];
        assert_eq!(
            (svc.upstreams["v1"].sent(), svc.upstreams["v2"].sent()),
            (400, 0),
            "{input}"
        );
    }
}

#[test]
fn a_decision_superseded_after_the_first_read_is_no_restart_and_no_negative_interval() {
    let then = parse_stats(
        "dynamicmodulescustom.meshsplit.f.svc.v1.requests_total: 100\n\
         dynamicmodulescustom.meshsplit.f.svc.v2.requests_total: 50\n",
    );
    // Between the reads: one of v1's decisions, counted before the first read, superseded by a
    // decision for v2. v1's net count went down by one: no restart, and no negative interval.
    let now = parse_stats(
        "dynamicmodulescustom.meshsplit.f.svc.v1.requests_total: 100\n\
         dynamicmodulescustom.meshsplit.f.svc.v1.superseded_total: 1\n\
         dynamicmodulescustom.meshsplit.f.svc.v2.requests_total: 51\n",
    );
    let report = report(&now, Some(&then), 5.0, &BTreeMap::new(), None, 0);
    let upstreams = &report["plugins"][0]["services"][0]["upstreams"];
    let interval: Vec<u64> = (0..2)
        .map(|i| {
            upstreams[i]["requests_in_interval"]
                .as_u64()
                .unwrap_or(u64::MAX)
        })
        .collect();
    assert_eq!(interval, [0, 1], "{report:#}");
    assert_eq!(upstreams[0]["requests"], 99);
}

#[test]
fn istio_plugin_names_are_plugins_like_any_other() {
    let s = parse_stats(
        "wasmcustom.meshsplit.default_meshsplit_istio-translated-wasmplugin.reviews.v1.weight: 5\n",
    );
    assert_eq!(
        s.plugins["default_meshsplit_istio-translated-wasmplugin"].services["reviews"].upstreams
            ["v1"]
            .weight,
        Some(5)
    );
}

#[test]
fn stats_without_meshsplit_are_not_found() {
    assert!(!parse_stats("cluster.v1.upstream_rq_total: 5\nhttp.x.no_cluster: 0\n").found);
    assert!(!parse_stats("").found);
}

#[test]
fn observed_shares_are_counter_deltas_over_the_interval() {
    let before = parse_stats(TEXT);
    let now = parse_stats(
        &TEXT
            .replace("v1.requests_total: 700", "v1.requests_total: 790")
            .replace("v2.requests_total: 300", "v2.requests_total: 310"),
    );
    let report = report(&now, Some(&before), 1.0, &BTreeMap::new(), None, 0);
    let ups = &report["plugins"][0]["services"][0]["upstreams"];
    assert_eq!(ups[0]["upstream"], "v1");
    assert_eq!(ups[0]["requests_in_interval"], 90);
    assert_eq!(ups[0]["observed_share"], 0.9);
    assert_eq!(ups[0]["requests"], 790);
    assert_eq!(ups[0]["weight_share"], 1.0);
    assert_eq!(ups[1]["observed_share"], 0.1);
    assert_eq!(ups[1]["source"], "ejected by the guard");
    assert_eq!(ups[1]["ejected"], true);
    assert_eq!(report["interval_s"], 1.0);
    assert_eq!(report["no_cluster"], 2);
    assert_eq!(report["plugins"][0]["config_failures"], 1);
    // Without an earlier read: shares of everything counted.
    let report = super::report(&now, None, 0.0, &BTreeMap::new(), None, 0);
    let ups = &report["plugins"][0]["services"][0]["upstreams"];
    assert_eq!(ups[0]["observed_share"], 790.0 / 1100.0);
    assert_eq!(report["interval_s"], Value::Null);
}

#[test]
fn one_service_is_shown_when_asked() {
    let text = format!("{TEXT}wasmcustom.meshsplit.meshsplit.ratings.v1.requests_total: 1\n");
    let s = parse_stats(&text);
    let all = report(&s, None, 0.0, &BTreeMap::new(), None, 0);
    assert_eq!(all["plugins"][0]["services"].as_array().unwrap().len(), 2);
    let one = report(&s, None, 0.0, &BTreeMap::new(), Some("ratings"), 0);
    let services = one["plugins"][0]["services"].as_array().unwrap();
    assert_eq!(services.len(), 1);
    assert_eq!(services[0]["service"], "ratings");
}

const ROLLOUT: &str = r#"{"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "c1", "weight": 100},
    {"name": "v2", "cluster": "c2", "weight": 0}],
  "rollout": {"start": "2030-01-01T00:00:00Z", "steps": [
    {"at_s": 0, "weights": {"v1": 90, "v2": 10}},
    {"at_s": 600, "weights": {"v1": 50, "v2": 50}}]}},
  {"name": "plain", "upstreams": [{"name": "v1", "cluster": "c1", "weight": 1}]}]}"#;

#[test]
fn the_weight_source_names_the_rollout_step_and_the_next_ones_time() {
    let dump = json!({"configs": [{"@type": "listeners", "dynamic_listeners": [{"filters": [{
        "typed_config": {"config": {
            "name": "meshsplit",
            "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                              "value": ROLLOUT}}}}]}]}]});
    let plans = plans_in_dump(&dump);
    assert_eq!(plans.keys().collect::<Vec<_>>(), ["meshsplit"]);
    let start = plans["meshsplit"].services[0]
        .rollout
        .as_ref()
        .unwrap()
        .start_ms;
    let s = parse_stats(
        "wasmcustom.meshsplit.meshsplit.svc.v1.weight: 90\n\
         wasmcustom.meshsplit.meshsplit.svc.v2.weight: 10\n\
         wasmcustom.meshsplit.meshsplit.plain.v1.weight: 1\n",
    );
    let source = |at: u64, service: usize| {
        let r = report(&s, None, 0.0, &plans, None, at);
        let services = r["plugins"][0]["services"].as_array().unwrap().clone();
        let order: Vec<&str> = services
            .iter()
            .map(|s| s["service"].as_str().unwrap())
            .collect();
        assert_eq!(order, ["plain", "svc"]);
        services[service]["upstreams"][0]["source"].clone()
    };
    assert_eq!(
        source(start + 1000, 1),
        "rollout step 1 of 2, next 2030-01-01T00:10:00Z"
    );
    assert_eq!(source(start + 700_000, 1), "rollout step 2 of 2");
    assert_eq!(
        source(start - 1, 1),
        "config (rollout starts 2030-01-01T00:00:00Z)"
    );
    assert_eq!(source(start, 0), "config");
}

#[test]
fn native_filter_and_specifier_configs_are_found_in_a_config_dump() {
    let plain = r#"{"services": [{"name": "a", "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}"#;
    let dump = json!({"configs": [
        {"filter_name": "my.filter", "filter_config": {"value": plain}},
        {"specifier_config": {"value": plain}},
        {"name": "broken", "configuration": {"value": "{\"services\": 5}"}}]});
    let plans = plans_in_dump(&dump);
    assert_eq!(plans.keys().collect::<Vec<_>>(), ["meshsplit", "my_filter"]);
}

#[test]
fn the_table_names_every_problem_at_a_glance() {
    let s = parse_stats(TEXT);
    let text = render(
        &report(&s, None, 0.0, &BTreeMap::new(), None, 0),
        "http://127.0.0.1:9901",
    );
    assert!(
        text.starts_with(
            "meshsplit status of http://127.0.0.1:9901 (observed since Envoy started)\n"
        ),
        "{text}"
    );
    assert!(text.contains(
        "plugin meshsplit: 1 refused configuration, 10 unknown-service requests (4 answered 404)  << REFUSED CONFIG (the latest; the previous one serves)"
    ), "{text}");
    assert!(
        text.contains("  reviews  (rollout paused by the guard)"),
        "{text}"
    );
    assert!(
        text.contains(
            "    v2                     0    0.0%     30.0%        300       300         -         1  ejected by the guard"
        ),
        "{text}"
    );
    assert!(text.contains("    rule hits: #0 50"), "{text}");
    assert!(
        text.contains(
            "2 requests to a cluster Envoy does not have (http.*.no_cluster)  << CHECK CLUSTERS"
        ),
        "{text}"
    );
}

#[test]
fn an_admin_endpoint_that_is_not_there_is_a_clear_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = http_get(&format!("http://127.0.0.1:{port}"), "/stats").unwrap_err();
    assert!(
        err.starts_with(&format!(
            "cannot reach Envoy's admin endpoint at http://127.0.0.1:{port}: "
        )),
        "{err}"
    );
    assert!(err.ends_with("(is Envoy running, and is --admin its admin address?)"));
    let err = http_get("https://127.0.0.1:9901", "/stats").unwrap_err();
    assert!(err.contains("https is not supported"), "{err}");
    let err = http_get("127.0.0.1:9901", "/stats").unwrap_err();
    assert!(err.contains("expected http://HOST:PORT"), "{err}");
}

#[test]
fn a_chunked_body_is_put_back_together() {
    assert_eq!(
        dechunk("5\r\nhello\r\n7;x=y\r\n, world\r\n0\r\n\r\n"),
        "hello, world"
    );
}

#[test]
fn a_served_stats_page_is_read_over_http() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        // The whole request head, however many writes it came in, before answering: a server
        // that answers and closes after a partial read makes the client's next write fail.
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let request = String::from_utf8_lossy(&head).into_owned();
        let body = "wasmcustom.meshsplit.p.s.u.weight: 4\n";
        write!(
            conn,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        )
        .unwrap();
        request
    });
    let body = http_get(&format!("http://127.0.0.1:{port}/"), "/stats?filter=x").unwrap();
    assert_eq!(body, "wasmcustom.meshsplit.p.s.u.weight: 4\n");
    assert!(server
        .join()
        .unwrap()
        .starts_with("GET /stats?filter=x HTTP/1.1\r\n"));
}

#[test]
fn a_filter_from_extension_config_discovery_wins_over_its_default_config() {
    let one = |weight: u32| {
        format!(
            r#"{{"services": [{{"name": "a", "upstreams": [{{"name": "v1", "cluster": "c", "weight": {weight}}}]}}]}}"#
        )
    };
    let dump = json!({"configs": [
        {"ecds_filters": [{"ecds_filter": {"typed_config": {"config": {
            "name": "meshsplit", "configuration": {"value": one(7)}}}}}]},
        {"dynamic_listeners": [{"default_config": {"config": {
            "name": "meshsplit", "configuration": {"value": one(3)}}}}]}]});
    let plans = plans_in_dump(&dump);
    assert_eq!(plans["meshsplit"].services[0].upstreams[0].weight, 7);
}

#[test]
fn a_refusal_a_later_configuration_replaced_is_not_flagged() {
    let text = TEXT.replace(
        "wasmcustom.meshsplit.meshsplit.config_refused: 1",
        "wasmcustom.meshsplit.meshsplit.config_refused: 0",
    );
    let s = parse_stats(&text);
    let out = render(&report(&s, None, 0.0, &BTreeMap::new(), None, 0), "x");
    assert!(
        out.contains("plugin meshsplit: 1 refused configuration, "),
        "{out}"
    );
    assert!(!out.contains("REFUSED CONFIG"), "{out}");
}

#[test]
fn counters_that_started_again_count_from_zero() {
    // An Envoy restarted between two reads: its counters are below the earlier read.
    let before = parse_stats(TEXT);
    let after = parse_stats(
        "wasmcustom.meshsplit.meshsplit.reviews.v1.requests_total: 60\n\
         wasmcustom.meshsplit.meshsplit.reviews.v2.requests_total: 20\n\
         http.ingress.no_cluster: 0\n",
    );
    let r = report(&after, Some(&before), 1.0, &BTreeMap::new(), None, 0);
    let ups = &r["plugins"][0]["services"][0]["upstreams"];
    assert_eq!(ups[0]["requests_in_interval"], json!(60));
    assert_eq!(ups[0]["observed_share"], json!(0.75));
    assert_eq!(r["no_cluster_in_interval"], json!(0));
    let out = render(&r, "x");
    assert!(!out.contains("CHECK CLUSTERS"), "{out}");
}

#[test]
fn no_cluster_is_flagged_for_requests_in_the_interval_only() {
    let before = parse_stats(TEXT);
    let r = report(&before, Some(&before), 1.0, &BTreeMap::new(), None, 0);
    assert!(r["no_cluster"].as_u64().unwrap() > 0);
    assert!(!render(&r, "x").contains("CHECK CLUSTERS"));
    let r = report(&before, None, 0.0, &BTreeMap::new(), None, 0);
    assert!(render(&r, "x").contains("CHECK CLUSTERS"));
}

#[test]
fn a_restart_is_seen_even_where_a_counter_already_passed_its_old_value() {
    let before = parse_stats(
        "wasmcustom.meshsplit.meshsplit.reviews.v1.requests_total: 1000\n\
         wasmcustom.meshsplit.meshsplit.reviews.v2.requests_total: 5\n",
    );
    let after = parse_stats(
        "wasmcustom.meshsplit.meshsplit.reviews.v1.requests_total: 90\n\
         wasmcustom.meshsplit.meshsplit.reviews.v2.requests_total: 10\n",
    );
    let r = report(&after, Some(&before), 1.0, &BTreeMap::new(), None, 0);
    let ups = &r["plugins"][0]["services"][0]["upstreams"];
    assert_eq!(ups[0]["requests_in_interval"], json!(90));
    assert_eq!(ups[1]["requests_in_interval"], json!(10));
    assert_eq!(ups[1]["observed_share"], json!(0.1));
}
