//! Table of malformed configurations: each one must be rejected with the exact JSON path of
//! the offending field and a message that says what is wrong with it.

use super::*;

/// A valid configuration that uses every field. Each case below damages one spot of it.
/// `service_from` and `hash_on` come last in their objects on purpose: that is where serde's enum
/// reading once misplaced the path of a key source written as a plain string.
const BASE: &str = r#"{
  "$schema": "./meshsplit.schema.json",
  "cluster_header": "x-meshsplit-cluster",
  "on_unknown_service": "reject",
  "services": [
    {
      "name": "reviews",
      "hosts": ["reviews", "reviews.default.svc.cluster.local"],
      "strategy": "sticky",
      "assign_cookie": {"max_age_s": 3600, "path": "/", "secure": true, "http_only": true, "same_site": "Lax"},
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
            patch(
                r#""cluster_header": "x-meshsplit-cluster""#,
                r#""cluster_header": 7"#,
            ),
            "cluster_header",
            "expected a string, got the number 7",
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
            r#"unknown field "cluster_headers", expected one of "$schema", "cluster_header", "service_from", "on_unknown_service", "services""#,
        ),
        case(
            "service_from: unknown variant",
            patch(
                r#""service_from": {"header": "x-service"}"#,
                r#""service_from": "path""#,
            ),
            "service_from",
            r#"expected "authority" or {"header": NAME} or {"query": NAME}, got the string "path""#,
        ),
        case(
            "service_from: a key source written as a plain string, last in the object",
            patch(
                r#""service_from": {"header": "x-service"}"#,
                r#""service_from": "header""#,
            ),
            "service_from",
            r#"expected "authority" or {"header": NAME} or {"query": NAME}, got the string "header""#,
        ),
        case(
            "service_from: two variant keys in one object",
            patch(
                r#"{"header": "x-service"}"#,
                r#"{"header": "x-service", "query": "s"}"#,
            ),
            "service_from",
            r#"expected "authority" or {"header": NAME} or {"query": NAME}, got an object with both "header" and "query""#,
        ),
        case(
            "service_from: unknown variant key",
            patch(r#"{"header": "x-service"}"#, r#"{"cookie": "x-service"}"#),
            "service_from",
            r#"unknown key "cookie", expected "authority" or {"header": NAME} or {"query": NAME}"#,
        ),
        case(
            "service_from: header of the wrong type",
            patch(r#"{"header": "x-service"}"#, r#"{"header": 7}"#),
            "service_from.header",
            "expected a string, got the number 7",
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
            r#"expected "pass" or "reject", got the string "drop""#,
        ),
        case(
            "on_unknown_service of the wrong type",
            patch(r#""reject""#, "true"),
            "on_unknown_service",
            r#"expected "pass" or "reject", got true"#,
        ),
        case(
            "services of the wrong type",
            r#"{"services": {"name": "reviews"}}"#.to_owned(),
            "services",
            "expected a list, got an object",
        ),
        case(
            "services missing",
            r#"{"cluster_header": "x-meshsplit-cluster"}"#.to_owned(),
            "",
            r#"missing field "services""#,
        ),
        // ---- services[] ----
        case(
            "service name of the wrong type",
            patch(r#""name": "ratings""#, r#""name": 5"#),
            "services[1].name",
            "expected a string, got the number 5",
        ),
        case(
            "service name missing",
            patch(r#""name": "ratings", "#, ""),
            "services[1]",
            r#"missing field "name""#,
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
            r#"expected a list, got the string "reviews""#,
        ),
        case(
            "hosts entry of the wrong type",
            patch(r#""reviews.default.svc.cluster.local""#, "7"),
            "services[0].hosts[1]",
            "expected a string, got the number 7",
        ),
        case(
            "hosts entry with an empty label",
            patch(
                r#""reviews.default.svc.cluster.local""#,
                r#""reviews..local""#,
            ),
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
            patch(
                r#""reviews.default.svc.cluster.local""#,
                r#""reviews:80:1""#,
            ),
            "services[0].hosts[1]",
            "not a valid IPv6 address",
        ),
        case(
            "hosts entry with a wildcard",
            patch(
                r#""reviews.default.svc.cluster.local""#,
                r#""*.example.com""#,
            ),
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
            r#"expected one of "weighted", "round_robin", "least_request", "sticky", got the string "random""#,
        ),
        case(
            "strategy of the wrong type",
            patch(r#""strategy": "sticky""#, r#""strategy": 3"#),
            "services[0].strategy",
            r#"expected one of "weighted", "round_robin", "least_request", "sticky", got the number 3"#,
        ),
        case(
            "hash_on: a key source written as a plain string, last in the object",
            patch(
                r#""hash_on": {"cookie": "session"}"#,
                r#""hash_on": "cookie""#,
            ),
            "services[0].hash_on",
            r#"expected {"header": NAME} or {"cookie": NAME} or {"query": NAME}, got the string "cookie""#,
        ),
        case(
            "hash_on: two variant keys in one object",
            patch(
                r#"{"cookie": "session"}"#,
                r#"{"cookie": "session", "header": "x-user"}"#,
            ),
            "services[0].hash_on",
            r#"expected {"header": NAME} or {"cookie": NAME} or {"query": NAME}, got an object with both "cookie" and "header""#,
        ),
        case(
            "hash_on: unknown variant key",
            patch(r#"{"cookie": "session"}"#, r#"{"path": "session"}"#),
            "services[0].hash_on",
            r#"unknown key "path", expected {"header": NAME} or {"cookie": NAME} or {"query": NAME}"#,
        ),
        case(
            "assign_cookie with hash_on a header",
            patch(r#"{"cookie": "session"}"#, r#"{"header": "x-user"}"#),
            "services[0].assign_cookie",
            "only allowed with strategy \"sticky\" and \"hash_on\": {\"cookie\": NAME}",
        ),
        case(
            "assign_cookie on a weighted service",
            patch(r#""strategy": "sticky","#, r#""strategy": "weighted","#).replacen(
                r#",
      "hash_on": {"cookie": "session"}"#,
                "",
                1,
            ),
            "services[0].assign_cookie",
            "only allowed with strategy \"sticky\"",
        ),
        case(
            "assign_cookie: a cookie name that cannot be set",
            patch(r#"{"cookie": "session"}"#, r#"{"cookie": "my session"}"#),
            "services[0].hash_on.cookie",
            "cannot be set as a cookie name with assign_cookie",
        ),
        case(
            "assign_cookie: unknown field",
            patch(
                r#""same_site": "Lax"}"#,
                r#""same_site": "Lax", "domain": "x"}"#,
            ),
            "services[0].assign_cookie.domain",
            r#"unknown field "domain", expected one of "max_age_s", "path", "secure", "http_only", "same_site""#,
        ),
        case(
            "assign_cookie: same_site in lowercase",
            patch(r#""same_site": "Lax""#, r#""same_site": "lax""#),
            "services[0].assign_cookie.same_site",
            r#"expected one of "Strict", "Lax", "None", got the string "lax""#,
        ),
        case(
            "assign_cookie: SameSite=None without secure",
            patch(
                r#""secure": true, "http_only": true, "same_site": "Lax""#,
                r#""secure": false, "same_site": "None""#,
            ),
            "services[0].assign_cookie.same_site",
            "\"None\" requires \"secure\": true",
        ),
        case(
            "assign_cookie: max_age_s of 0",
            patch(r#""max_age_s": 3600"#, r#""max_age_s": 0"#),
            "services[0].assign_cookie.max_age_s",
            "must be from 1 to 34560000",
        ),
        case(
            "assign_cookie: max_age_s above 400 days",
            patch(r#""max_age_s": 3600"#, r#""max_age_s": 34560001"#),
            "services[0].assign_cookie.max_age_s",
            "must be from 1 to 34560000",
        ),
        case(
            "assign_cookie: a path that does not start with /",
            patch(r#""path": "/""#, r#""path": "shop""#),
            "services[0].assign_cookie.path",
            "is not a cookie path: it must start with '/'",
        ),
        case(
            "assign_cookie: a path with ';'",
            patch(r#""path": "/""#, r#""path": "/a;b""#),
            "services[0].assign_cookie.path",
            "is not a cookie path",
        ),
        case(
            "assign_cookie: secure not a boolean",
            patch(r#""secure": true"#, r#""secure": "yes""#),
            "services[0].assign_cookie.secure",
            r#"expected true or false, got the string "yes""#,
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
            "expected a list, got an object",
        ),
        case(
            "upstreams missing",
            patch(
                r#", "upstreams": [{"name": "r1", "cluster": "ratings_v1", "weight": 1}]"#,
                "",
            ),
            "services[1]",
            r#"missing field "upstreams""#,
        ),
        // ---- upstreams[] ----
        case(
            "upstream name missing",
            patch(r#""name": "v2", "#, ""),
            "services[0].upstreams[1]",
            r#"missing field "name""#,
        ),
        case(
            "upstream name given twice in one object",
            patch(r#""name": "v2", "#, r#""name": "v2", "name": "v3", "#),
            "services[0].upstreams[1]",
            r#"duplicate field "name""#,
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
            "expected a string, got null",
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
            "expected a string, got a list",
        ),
        case(
            "weight with a missing value",
            patch(r#""weight": 20"#, r#""weight": ,"#),
            "services[0].upstreams[1].weight",
            "invalid JSON: expected a value",
        ),
        case(
            "weight garbled",
            patch(r#""weight": 20"#, r#""weight": twenty"#),
            "services[0].upstreams[1].weight",
            "invalid JSON: expected true, false or null",
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
            "expected a whole number (0 or more), got the number 1e+20",
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
            "expected a whole number (0 or more), got the number -1",
        ),
        case(
            "weight as a string",
            patch(r#""weight": 20"#, r#""weight": "20""#),
            "services[0].upstreams[1].weight",
            r#"expected a whole number (0 or more), got the string "20""#,
        ),
        case(
            "misspelt upstream field",
            patch(r#""weight": 20"#, r#""wieght": 20"#),
            "services[0].upstreams[1].wieght",
            r#"unknown field "wieght", expected one of "name", "cluster", "authority", "weight""#,
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
            "expected a list, got the number 1",
        ),
        case(
            "rule without match",
            patch(r#"{"match": "#, r#"{"when": "#),
            "services[0].rules[0].when",
            r#"unknown field "when", expected "match" or "upstream""#,
        ),
        case(
            "match with a misspelt condition list",
            patch(r#""cookies": "#, r#""cookie": "#),
            "services[0].rules[0].match.cookie",
            r#"unknown field "cookie", expected one of "headers", "cookies", "query""#,
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
            "expected a list, got an object",
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
            "expected a string, got true",
        ),
        case(
            "prefix of the wrong type",
            patch(r#""prefix": "on""#, r#""prefix": 1"#),
            "services[0].rules[0].match.headers[1].prefix",
            "expected a string, got the number 1",
        ),
        case(
            "present of the wrong type",
            patch(r#""present": true"#, r#""present": "yes""#),
            "services[0].rules[0].match.headers[2].present",
            r#"expected true or false, got the string "yes""#,
        ),
        case(
            "present false",
            patch(r#""present": true"#, r#""present": false"#),
            "services[0].rules[0].match.headers[2].present",
            "only true is supported",
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
            r#"missing field "exact""#,
        ),
        case(
            "query condition with a name of the wrong type",
            patch(r#""name": "version""#, r#""name": ["version"]"#),
            "services[0].rules[0].match.query[0].name",
            "expected a string, got a list",
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
            "expected a string, got the number 2",
        ),
        case(
            "rule without upstream",
            patch(
                r#",
         "upstream": "v2""#,
                "",
            ),
            "services[0].rules[0]",
            r#"missing field "upstream""#,
        ),
        // ---- damage to the document itself ----
        case(
            "document truncated inside an upstream",
            BASE.get(..BASE.find(r#""weight": 20"#).unwrap_or(0))
                .unwrap_or_default()
                .to_owned(),
            "services[0].upstreams[1]",
            "invalid JSON: the document ends where a value should be",
        ),
        case(
            "document truncated inside a value",
            BASE.get(..BASE.find("reviews_v2").unwrap_or(0))
                .unwrap_or_default()
                .to_owned(),
            "services[0].upstreams[1].cluster",
            "invalid JSON: the document ends inside a string",
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
            r#"expected a number, got the string "half""#,
        ),
        case(
            "guard window_s of 0",
            patch(r#""window_s": 10"#, r#""window_s": 0"#),
            "services[1].guard.window_s",
            "must be from 1 to 3600, got 0",
        ),
        case(
            "guard max_ejected_percent above 100",
            patch(
                r#""max_ejected_percent": 50"#,
                r#""max_ejected_percent": 101"#,
            ),
            "services[1].guard.max_ejected_percent",
            "must be from 0 to 100, got 101",
        ),
        case(
            "unknown guard field",
            patch(r#""eject_s": 30"#, r#""eject": 30"#),
            "services[1].guard.eject",
            r#"unknown field "eject", expected one of "error_rate", "min_requests", "window_s", "eject_s", "max_ejected_percent", "failure_codes", "relative_margin""#,
        ),
        case(
            "guard with neither error_rate nor latency",
            patch(
                r#""error_rate": 0.5, "min_requests": 20, "window_s": 10, "eject_s": 30, "max_ejected_percent": 50,
               "latency": {"percentile": 95, "threshold_ms": 250}}"#,
                r#""min_requests": 20}"#,
            ),
            "services[1].guard",
            r#"needs "error_rate", "latency" or both"#,
        ),
        case(
            "guard failure_codes without error_rate",
            patch(r#""error_rate": 0.5, "#, r#""failure_codes": [500], "#),
            "services[1].guard.failure_codes",
            r#"has no "error_rate""#,
        ),
        case(
            "guard relative_margin without error_rate",
            patch(r#""error_rate": 0.5, "#, r#""relative_margin": 0.1, "#),
            "services[1].guard.relative_margin",
            r#"has no "error_rate""#,
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
            r#"expected a number, got the string "p95""#,
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
            "expected a whole number (0 or more), got the number -5",
        ),
        case(
            "latency without threshold_ms",
            patch(r#", "threshold_ms": 250"#, ""),
            "services[1].guard.latency",
            r#"missing field "threshold_ms""#,
        ),
        case(
            "unknown latency field",
            patch(r#""threshold_ms": 250"#, r#""threshold": 250"#),
            "services[1].guard.latency.threshold",
            r#"unknown field "threshold", expected "percentile" or "threshold_ms""#,
        ),
        case(
            "rollout start that is not RFC 3339",
            patch(
                r#""start": "2026-12-01T10:00:00Z""#,
                r#""start": "next monday""#,
            ),
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
            r#"expected a whole number (0 or more), got the string "lots""#,
        ),
        case(
            "rollout step whose weights sum to 0",
            patch(r#""weights": {"r1": 99}"#, r#""weights": {"r1": 0}"#),
            "services[1].rollout.steps[0].weights",
            "weights sum to 0",
        ),
        case(
            "rollout without steps",
            patch(
                r#""steps": [{"at_s": 0, "weights": {"r1": 99}}, {"at_s": 600, "weights": {"r1": 100}}]"#,
                r#""steps": []"#,
            ),
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
            "expected an object, got a list",
        ),
    ]
}

/// Words of serde's and Rust's vocabulary an operator should never have to read.
const JARGON: &[&str] = &[
    "newtype",
    "variant",
    "struct",
    "map",
    "sequence",
    "u64",
    "u32",
    "f64",
    "usize",
    // serde's quoting of a name (`unknown field `x``); a backquote inside a list of characters
    // a cookie name may use is the configuration's own words.
    " `",
    "invalid type",
    "invalid value",
];

#[test]
fn no_message_speaks_serde() {
    let mut failures = Vec::new();
    for case in cases() {
        if let Err(e) = Plan::from_json(case.json.as_bytes()) {
            let message = e.to_string();
            for word in JARGON {
                if message.contains(word) {
                    failures.push(format!("{}: {word:?} in {message:?}", case.what));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
