//! Table of malformed configurations: each one must be rejected with the exact JSON path of
//! the offending field and a message that says what is wrong with it.

use super::*;

/// A valid configuration that uses every field. Each case below damages one spot of it.
/// `service_from` and `hash_on` come last in their objects on purpose: a variant written as a
/// plain string is only detected once the whole value has been read.
const BASE: &str = r#"{
  "cluster_header": "x-meshsplit-cluster",
  "on_unknown_service": "reject",
  "services": [
    {
      "name": "reviews",
      "hosts": ["reviews", "reviews.default.svc.cluster.local"],
      "strategy": "sticky",
      "upstreams": [
        {"name": "v1", "cluster": "reviews_v1", "authority": "reviews-v1.internal", "weight": 80},
        {"name": "v2", "cluster": "reviews_v2", "weight": 20}
      ],
      "rules": [
        {"match": {"headers": [{"name": "x-canary", "exact": "true"},
                               {"name": "x-beta", "prefix": "on"},
                               {"name": "x-debug", "present": true}],
                   "cookies": [{"name": "beta", "exact": "1"}],
                   "query": [{"name": "version", "exact": "v2"}]},
         "upstream": "v2"}
      ],
      "hash_on": {"cookie": "session"}
    },
    {"name": "ratings", "upstreams": [{"name": "r1", "cluster": "ratings_v1", "weight": 1}],
     "guard": {"error_rate": 0.5, "min_requests": 20, "window_s": 10, "eject_s": 30, "max_ejected_percent": 50,
               "latency": {"percentile": 95, "threshold_ms": 250}},
     "rollout": {"start": "2026-12-01T10:00:00Z", "interpolate": true,
                 "steps": [{"at_s": 0, "weights": {"r1": 99}}, {"at_s": 600, "weights": {"r1": 100}}]}}
  ],
  "service_from": {"header": "x-service"}
}"#;

/// `BASE` with its only occurrence of `find` replaced by `replace`.
fn patch(find: &str, replace: &str) -> String {
    assert_eq!(
        BASE.matches(find).count(),
        1,
        "{find:?} must occur once in BASE"
    );
    BASE.replacen(find, replace, 1)
}

struct Case {
    what: &'static str,
    json: String,
    path: &'static str,
    message: &'static str,
}

fn case(what: &'static str, json: String, path: &'static str, message: &'static str) -> Case {
    Case {
        what,
        json,
        path,
        message,
    }
}

fn cases() -> Vec<Case> {
    vec![
        // ---- top level ----
        case(
            "cluster_header of the wrong type",
            patch(r#""cluster_header": "x-meshsplit-cluster""#, r#""cluster_header": 7"#),
            "cluster_header",
            "invalid type: integer `7`, expected a string",
        ),
        case(
            "cluster_header naming a header with request semantics",
            patch(r#""x-meshsplit-cluster""#, r#""content-length""#),
            "cluster_header",
            "must not be \"content-length\"",
        ),
        case(
            "cluster_header in Envoy's own x-envoy- namespace",
            patch(r#""x-meshsplit-cluster""#, r#""x-envoy-original-dst-host""#),
            "cluster_header",
            "x-envoy-",
        ),
        case(
            "misspelt top-level field",
            patch(r#""cluster_header""#, r#""cluster_headers""#),
            "cluster_headers",
            "unknown field `cluster_headers`",
        ),
        case(
            "service_from: unknown variant",
            patch(r#""service_from": {"header": "x-service"}"#, r#""service_from": "path""#),
            "service_from",
            "unknown variant `path`, expected one of `authority`, `header`, `query`",
        ),
        case(
            "service_from: a variant that needs a value, as a plain string, last in the object",
            patch(r#""service_from": {"header": "x-service"}"#, r#""service_from": "header""#),
            "service_from.header",
            "invalid type: unit variant, expected newtype variant",
        ),
        case(
            "service_from: two variant keys in one object",
            patch(r#"{"header": "x-service"}"#, r#"{"header": "x-service", "query": "s"}"#),
            "service_from",
            "expected value",
        ),
        case(
            "service_from: unknown variant key",
            patch(r#"{"header": "x-service"}"#, r#"{"cookie": "x-service"}"#),
            "service_from",
            "unknown variant `cookie`, expected one of `authority`, `header`, `query`",
        ),
        case(
            "service_from: header of the wrong type",
            patch(r#"{"header": "x-service"}"#, r#"{"header": 7}"#),
            "service_from.header",
            "invalid type: integer `7`, expected a string",
        ),
        case(
            "service_from: query must not be empty",
            patch(r#"{"header": "x-service"}"#, r#"{"query": ""}"#),
            "service_from.query",
            "must not be empty",
        ),
        case(
            "on_unknown_service: unknown variant",
            patch(r#""reject""#, r#""drop""#),
            "on_unknown_service",
            "unknown variant `drop`, expected `pass` or `reject`",
        ),
        case(
            "on_unknown_service of the wrong type",
            patch(r#""reject""#, "true"),
            "on_unknown_service",
            "expected value",
        ),
        case(
            "services of the wrong type",
            r#"{"services": {"name": "reviews"}}"#.to_owned(),
            "services",
            "invalid type: map, expected a sequence",
        ),
        case(
            "services missing",
            r#"{"cluster_header": "x-meshsplit-cluster"}"#.to_owned(),
            "",
            "missing field `services`",
        ),
        // ---- services[] ----
        case(
            "service name of the wrong type",
            patch(r#""name": "ratings""#, r#""name": 5"#),
            "services[1].name",
            "invalid type: integer `5`, expected a string",
        ),
        case(
            "service name missing",
            patch(r#""name": "ratings", "#, ""),
            "services[1]",
            "missing field `name`",
        ),
        case(
            "service name not usable as a host when hosts is absent",
            patch(r#""name": "ratings""#, r#""name": "ratings..v1""#),
            "services[1].name",
            "empty label",
        ),
        case(
            "duplicate service names",
            patch(r#""name": "ratings""#, r#""name": "reviews""#),
            "services[1].name",
            "duplicate service name \"reviews\"",
        ),
        case(
            "hosts of the wrong type",
            patch(
                r#""hosts": ["reviews", "reviews.default.svc.cluster.local"]"#,
                r#""hosts": "reviews""#,
            ),
            "services[0].hosts",
            "invalid type: string \"reviews\", expected a sequence",
        ),
        case(
            "hosts entry of the wrong type",
            patch(r#""reviews.default.svc.cluster.local""#, "7"),
            "services[0].hosts[1]",
            "invalid type: integer `7`, expected a string",
        ),
        case(
            "hosts entry with an empty label",
            patch(r#""reviews.default.svc.cluster.local""#, r#""reviews..local""#),
            "services[0].hosts[1]",
            "empty label",
        ),
        case(
            "hosts entry with an unbalanced IPv6 bracket",
            patch(r#""reviews.default.svc.cluster.local""#, r#""[::1""#),
            "services[0].hosts[1]",
            "not a valid host",
        ),
        case(
            "hosts entry with a port and something after it",
            patch(r#""reviews.default.svc.cluster.local""#, r#""reviews:80:1""#),
            "services[0].hosts[1]",
            "not a valid IPv6 address",
        ),
        case(
            "hosts entry with a wildcard",
            patch(r#""reviews.default.svc.cluster.local""#, r#""*.example.com""#),
            "services[0].hosts[1]",
            "wildcards are not supported",
        ),
        case(
            "hosts list with a trailing comma",
            patch(
                r#""reviews.default.svc.cluster.local"]"#,
                r#""reviews.default.svc.cluster.local",]"#,
            ),
            "services[0].hosts",
            "trailing comma",
        ),
        case(
            "strategy: unknown variant",
            patch(r#""strategy": "sticky""#, r#""strategy": "random""#),
            "services[0].strategy",
            "unknown variant `random`, expected one of `weighted`, `round_robin`, `least_request`, `sticky`",
        ),
        case(
            "strategy of the wrong type",
            patch(r#""strategy": "sticky""#, r#""strategy": 3"#),
            "services[0].strategy",
            "expected value",
        ),
        case(
            "hash_on: a variant that needs a value, as a plain string, last in the object",
            patch(r#""hash_on": {"cookie": "session"}"#, r#""hash_on": "cookie""#),
            "services[0].hash_on.cookie",
            "invalid type: unit variant, expected newtype variant",
        ),
        case(
            "hash_on: two variant keys in one object",
            patch(
                r#"{"cookie": "session"}"#,
                r#"{"cookie": "session", "header": "x-user"}"#,
            ),
            "services[0].hash_on",
            "expected value",
        ),
        case(
            "hash_on: unknown variant key",
            patch(r#"{"cookie": "session"}"#, r#"{"path": "session"}"#),
            "services[0].hash_on",
            "unknown variant `path`, expected one of `header`, `cookie`, `query`",
        ),
        case(
            "hash_on: empty cookie name",
            patch(r#"{"cookie": "session"}"#, r#"{"cookie": ""}"#),
            "services[0].hash_on.cookie",
            "must not be empty",
        ),
        case(
            "hash_on without strategy sticky",
            patch(r#""strategy": "sticky""#, r#""strategy": "round_robin""#),
            "services[0].hash_on",
            "only allowed with strategy \"sticky\"",
        ),
        case(
            "upstreams of the wrong type",
            patch(
                r#""upstreams": [{"name": "r1", "cluster": "ratings_v1", "weight": 1}]"#,
                r#""upstreams": {"name": "r1"}"#,
            ),
            "services[1].upstreams",
            "invalid type: map, expected a sequence",
        ),
        case(
            "upstreams missing",
            patch(
                r#", "upstreams": [{"name": "r1", "cluster": "ratings_v1", "weight": 1}]"#,
                "",
            ),
            "services[1]",
            "missing field `upstreams`",
        ),
        // ---- upstreams[] ----
        case(
            "upstream name missing",
            patch(r#""name": "v2", "#, ""),
            "services[0].upstreams[1]",
            "missing field `name`",
        ),
        case(
            "upstream name given twice in one object",
            patch(r#""name": "v2", "#, r#""name": "v2", "name": "v3", "#),
            "services[0].upstreams[1]",
            "duplicate field `name`",
        ),
        case(
            "duplicate upstream names",
            patch(r#""name": "v2""#, r#""name": "v1""#),
            "services[0].upstreams[1].name",
            "duplicate upstream name \"v1\"",
        ),
        case(
            "cluster of the wrong type",
            patch(r#""cluster": "reviews_v2""#, r#""cluster": null"#),
            "services[0].upstreams[1].cluster",
            "invalid type: null, expected a string",
        ),
        case(
            "cluster with an invalid escape",
            patch(r#""cluster": "reviews_v2""#, r#""cluster": "reviews\q""#),
            "services[0].upstreams[1].cluster",
            "invalid escape",
        ),
        case(
            "authority of the wrong type",
            patch(r#""reviews-v1.internal""#, r#"["reviews-v1.internal"]"#),
            "services[0].upstreams[0].authority",
            "invalid type: sequence, expected a string",
        ),
        case(
            "weight with a missing value",
            patch(r#""weight": 20"#, r#""weight": ,"#),
            "services[0].upstreams[1].weight",
            "expected value",
        ),
        case(
            "weight garbled",
            patch(r#""weight": 20"#, r#""weight": twenty"#),
            "services[0].upstreams[1].weight",
            "expected ident",
        ),
        case(
            "weight: invalid number",
            patch(r#""weight": 20"#, r#""weight": 020"#),
            "services[0].upstreams[1].weight",
            "invalid number",
        ),
        case(
            "weight: number out of range",
            patch(r#""weight": 20"#, r#""weight": 1e999"#),
            "services[0].upstreams[1].weight",
            "number out of range",
        ),
        case(
            "weight: integer beyond 64 bits",
            patch(r#""weight": 20"#, r#""weight": 99999999999999999999"#),
            "services[0].upstreams[1].weight",
            "invalid type: floating point",
        ),
        case(
            "weight above the maximum",
            patch(r#""weight": 20"#, r#""weight": 5000000"#),
            "services[0].upstreams[1].weight",
            "must be at most 1000000, got 5000000",
        ),
        case(
            "weight negative",
            patch(r#""weight": 20"#, r#""weight": -1"#),
            "services[0].upstreams[1].weight",
            "invalid value: integer `-1`, expected u64",
        ),
        case(
            "weight as a string",
            patch(r#""weight": 20"#, r#""weight": "20""#),
            "services[0].upstreams[1].weight",
            "invalid type: string \"20\", expected u64",
        ),
        case(
            "misspelt upstream field",
            patch(r#""weight": 20"#, r#""wieght": 20"#),
            "services[0].upstreams[1].wieght",
            "unknown field `wieght`, expected one of `name`, `cluster`, `authority`, `weight`",
        ),
        case(
            "upstream object with a trailing comma",
            patch(r#""weight": 20}"#, r#""weight": 20,}"#),
            "services[0].upstreams[1]",
            "trailing comma",
        ),
        // ---- rules[] ----
        case(
            "rules of the wrong type",
            patch(r#""rules": ["#, r#""rules": 1, "x": ["#),
            "services[0].rules",
            "invalid type: integer `1`, expected a sequence",
        ),
        case(
            "rule without match",
            patch(r#"{"match": "#, r#"{"when": "#),
            "services[0].rules[0].when",
            "unknown field `when`, expected `match` or `upstream`",
        ),
        case(
            "match with a misspelt condition list",
            patch(r#""cookies": "#, r#""cookie": "#),
            "services[0].rules[0].match.cookie",
            "unknown field `cookie`, expected one of `headers`, `cookies`, `query`",
        ),
        case(
            "match with no condition",
            patch(
                r#"{"headers": [{"name": "x-canary", "exact": "true"},
                               {"name": "x-beta", "prefix": "on"},
                               {"name": "x-debug", "present": true}],
                   "cookies": [{"name": "beta", "exact": "1"}],
                   "query": [{"name": "version", "exact": "v2"}]}"#,
                "{}",
            ),
            "services[0].rules[0].match",
            "must list at least one condition",
        ),
        case(
            "headers of the wrong type",
            patch(r#""headers": ["#, r#""headers": {"name": "x"}, "y": ["#),
            "services[0].rules[0].match.headers",
            "invalid type: map, expected a sequence",
        ),
        case(
            "header name with an uppercase letter",
            patch(r#""name": "x-beta""#, r#""name": "X-Beta""#),
            "services[0].rules[0].match.headers[1].name",
            "not a valid lowercase header name",
        ),
        case(
            "exact of the wrong type",
            patch(r#""exact": "true""#, r#""exact": true"#),
            "services[0].rules[0].match.headers[0].exact",
            "invalid type: boolean `true`, expected a string",
        ),
        case(
            "prefix of the wrong type",
            patch(r#""prefix": "on""#, r#""prefix": 1"#),
            "services[0].rules[0].match.headers[1].prefix",
            "invalid type: integer `1`, expected a string",
        ),
        case(
            "present of the wrong type",
            patch(r#""present": true"#, r#""present": "yes""#),
            "services[0].rules[0].match.headers[2].present",
            "invalid type: string \"yes\", expected a boolean",
        ),
        case(
            "present false",
            patch(r#""present": true"#, r#""present": false"#),
            "services[0].rules[0].match.headers[2].present",
            "only `true` is supported",
        ),
        case(
            "header condition with two tests",
            patch(r#""prefix": "on""#, r#""prefix": "on", "exact": "on""#),
            "services[0].rules[0].match.headers[1]",
            "needs exactly one of",
        ),
        case(
            "cookie condition without exact",
            patch(r#"{"name": "beta", "exact": "1"}"#, r#"{"name": "beta"}"#),
            "services[0].rules[0].match.cookies[0]",
            "missing field `exact`",
        ),
        case(
            "query condition with a name of the wrong type",
            patch(r#""name": "version""#, r#""name": ["version"]"#),
            "services[0].rules[0].match.query[0].name",
            "invalid type: sequence, expected a string",
        ),
        case(
            "rule naming an upstream the service lacks",
            patch(r#""upstream": "v2""#, r#""upstream": "v9""#),
            "services[0].rules[0].upstream",
            "no upstream named \"v9\" in this service (upstreams: v1, v2)",
        ),
        case(
            "rule upstream of the wrong type",
            patch(r#""upstream": "v2""#, r#""upstream": 2"#),
            "services[0].rules[0].upstream",
            "invalid type: integer `2`, expected a string",
        ),
        case(
            "rule without upstream",
            patch(r#",
         "upstream": "v2""#, ""),
            "services[0].rules[0]",
            "missing field `upstream`",
        ),
        // ---- damage to the document itself ----
        case(
            "document truncated inside an upstream",
            BASE.get(..BASE.find(r#""weight": 20"#).unwrap_or(0)).unwrap_or_default().to_owned(),
            "services[0].upstreams[1]",
            "EOF while parsing a value",
        ),
        case(
            "document truncated inside a value",
            BASE.get(..BASE.find("reviews_v2").unwrap_or(0)).unwrap_or_default().to_owned(),
            "services[0].upstreams[1].cluster",
            "EOF while parsing a string",
        ),
        // ---- guard and rollout ----
        case(
            "guard error_rate above 1",
            patch(r#""error_rate": 0.5"#, r#""error_rate": 1.5"#),
            "services[1].guard.error_rate",
            "must be above 0 and below 1",
        ),
        case(
            "guard error_rate of 1, which no failure share can exceed",
            patch(r#""error_rate": 0.5"#, r#""error_rate": 1.0"#),
            "services[1].guard.error_rate",
            "must be above 0 and below 1",
        ),
        case(
            "guard error_rate as a string",
            patch(r#""error_rate": 0.5"#, r#""error_rate": "half""#),
            "services[1].guard.error_rate",
            "invalid type: string \"half\", expected f64",
        ),
        case(
            "guard window_s of 0",
            patch(r#""window_s": 10"#, r#""window_s": 0"#),
            "services[1].guard.window_s",
            "must be from 1 to 3600, got 0",
        ),
        case(
            "guard max_ejected_percent above 100",
            patch(r#""max_ejected_percent": 50"#, r#""max_ejected_percent": 101"#),
            "services[1].guard.max_ejected_percent",
            "must be from 0 to 100, got 101",
        ),
        case(
            "unknown guard field",
            patch(r#""eject_s": 30"#, r#""eject": 30"#),
            "services[1].guard.eject",
            "unknown field `eject`",
        ),
        case(
            "guard with neither error_rate nor latency",
            patch(
                r#""error_rate": 0.5, "min_requests": 20, "window_s": 10, "eject_s": 30, "max_ejected_percent": 50,
               "latency": {"percentile": 95, "threshold_ms": 250}}"#,
                r#""min_requests": 20}"#,
            ),
            "services[1].guard",
            "needs `error_rate`, `latency` or both",
        ),
        case(
            "guard failure_codes without error_rate",
            patch(r#""error_rate": 0.5, "#, r#""failure_codes": [500], "#),
            "services[1].guard.failure_codes",
            "has no `error_rate`",
        ),
        case(
            "guard relative_margin without error_rate",
            patch(r#""error_rate": 0.5, "#, r#""relative_margin": 0.1, "#),
            "services[1].guard.relative_margin",
            "has no `error_rate`",
        ),
        case(
            "latency percentile of 0",
            patch(r#""percentile": 95"#, r#""percentile": 0"#),
            "services[1].guard.latency.percentile",
            "must be above 0 and at most 100",
        ),
        case(
            "latency percentile above 100",
            patch(r#""percentile": 95"#, r#""percentile": 100.5"#),
            "services[1].guard.latency.percentile",
            "must be above 0 and at most 100",
        ),
        case(
            "latency percentile with four decimals",
            patch(r#""percentile": 95"#, r#""percentile": 99.9999"#),
            "services[1].guard.latency.percentile",
            "at most three decimals",
        ),
        case(
            "latency percentile as a string",
            patch(r#""percentile": 95"#, r#""percentile": "p95""#),
            "services[1].guard.latency.percentile",
            "invalid type: string \"p95\", expected f64",
        ),
        case(
            "latency threshold_ms of 0",
            patch(r#""threshold_ms": 250"#, r#""threshold_ms": 0"#),
            "services[1].guard.latency.threshold_ms",
            "must be from 1 to 3600000, got 0",
        ),
        case(
            "latency threshold_ms negative",
            patch(r#""threshold_ms": 250"#, r#""threshold_ms": -5"#),
            "services[1].guard.latency.threshold_ms",
            "invalid value: integer `-5`, expected u64",
        ),
        case(
            "latency without threshold_ms",
            patch(r#", "threshold_ms": 250"#, ""),
            "services[1].guard.latency",
            "missing field `threshold_ms`",
        ),
        case(
            "unknown latency field",
            patch(r#""threshold_ms": 250"#, r#""threshold": 250"#),
            "services[1].guard.latency.threshold",
            "unknown field `threshold`",
        ),
        case(
            "rollout start that is not RFC 3339",
            patch(r#""start": "2026-12-01T10:00:00Z""#, r#""start": "next monday""#),
            "services[1].rollout.start",
            "is not an RFC 3339 UTC time",
        ),
        case(
            "rollout steps out of order",
            patch(r#""at_s": 600"#, r#""at_s": 0"#),
            "services[1].rollout.steps[1].at_s",
            "steps must be in order",
        ),
        case(
            "rollout step naming an unknown upstream",
            patch(r#""weights": {"r1": 100}"#, r#""weights": {"r9": 100}"#),
            "services[1].rollout.steps[1].weights.r9",
            "no upstream named \"r9\" in this service",
        ),
        case(
            "rollout step weight of the wrong type",
            patch(r#""weights": {"r1": 99}"#, r#""weights": {"r1": "lots"}"#),
            "services[1].rollout.steps[0].weights.r1",
            "invalid type: string \"lots\", expected u64",
        ),
        case(
            "rollout step whose weights sum to 0",
            patch(r#""weights": {"r1": 99}"#, r#""weights": {"r1": 0}"#),
            "services[1].rollout.steps[0].weights",
            "weights sum to 0",
        ),
        case(
            "rollout without steps",
            patch(r#""steps": [{"at_s": 0, "weights": {"r1": 99}}, {"at_s": 600, "weights": {"r1": 100}}]"#, r#""steps": []"#),
            "services[1].rollout.steps",
            "must list at least one step",
        ),
        case(
            "trailing characters after the document",
            format!("{BASE} x"),
            "",
            "trailing characters",
        ),
        case(
            "not an object",
            "[]".to_owned(),
            "",
            "expected struct RawConfig",
        ),
    ]
}

#[test]
fn the_base_configuration_is_valid() {
    Plan::from_json(BASE.as_bytes()).unwrap();
}

#[test]
fn every_malformed_configuration_names_the_offending_field() {
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        match Plan::from_json(case.json.as_bytes()) {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(e) => {
                let shown = e.to_string();
                let expected_start = if case.path.is_empty() {
                    String::new()
                } else {
                    format!("{}: ", case.path)
                };
                if e.path != case.path
                    || !shown.starts_with(&expected_start)
                    || !e.message.contains(case.message)
                {
                    failures.push(format!(
                        "{}:\n    expected path {:?} and a message containing {:?}\n    got {shown:?}",
                        case.what, case.path, case.message
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
