//! Raw serde types of the plugin configuration JSON, exactly as operators write it.
//!
//! Nothing here is trusted: `plan.rs` validates these values and compiles them into the
//! immutable [`crate::plan::Plan`] the request path reads.

use core::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The meshsplit plugin configuration: the services meshsplit splits, and how it finds which
/// service a request asks for.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(rename = "meshsplit plugin configuration")
)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The JSON Schema an editor validates the file against
    /// (`"$schema": "./meshsplit.schema.json"`); the filter ignores it.
    #[serde(rename = "$schema", default)]
    pub schema: Option<String>,
    /// Request header the chosen cluster is written to; the route reads it with `cluster_header`.
    /// A lowercase header name of the filter's own: the filter overwrites it on every request
    /// (and removes it for unknown services), so it may not be a pseudo-header, any `x-envoy-`
    /// header (Envoy's own; some steer routing, such as `x-envoy-original-dst-host`), nor one of
    /// these headers that carry request semantics: `host`; framing and connection:
    /// `content-length`, `transfer-encoding`, `te`, `trailer`, `connection`, `keep-alive`,
    /// `proxy-connection`, `upgrade`, `expect`, `http2-settings`; the body: `content-type`,
    /// `content-encoding`; credentials: `authorization`, `proxy-authorization`, `cookie`; the
    /// client and the request: `x-forwarded-for`, `x-forwarded-proto`, `x-forwarded-host`,
    /// `x-forwarded-port`, `forwarded`, `via`, `x-request-id`.
    #[serde(default)]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "schema::cluster_header", extend("default" = "x-meshsplit-cluster"))
    )]
    pub cluster_header: Option<String>,
    /// Request header the chosen upstream's `name` (a version label such as `"v2"`) is written
    /// to, for routes that match a header value (an Istio VirtualService or HTTPRoute, an Envoy
    /// Gateway HTTPRoute) rather than read a cluster name. The same rules as `cluster_header`
    /// apply, and the two must differ. With `upstream_header` set and `cluster_header` left out,
    /// only the upstream header is written; set both to have both.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(schema_with = "schema::cluster_header"))]
    pub upstream_header: Option<String>,
    /// Where the service key comes from: `"authority"` (the `:authority`/`Host`),
    /// `{"header": NAME}` (a request header) or `{"query": NAME}` (a URL-decoded query parameter
    /// of `:path`, e.g. `/api?service=reviews`).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = "authority")))]
    pub service_from: Option<RawServiceFrom>,
    /// What happens when the key matches no service (or is missing). `"pass"`: remove any
    /// client-sent cluster header and upstream header (the ones the config writes) and let
    /// Envoy route as without the filter. `"reject"`: answer
    /// 404 with `{"error":"unknown service","service":"<key>"}` (`application/json`; the key as
    /// matched: lowercase, without port; `null` when the request had none).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = "pass")))]
    pub on_unknown_service: Option<RawOnUnknown>,
    /// The services, at least one; names unique.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub services: Vec<RawService>,
}

/// `"authority"`, `{"header": NAME}` or `{"query": PARAM}`. Read by [`Source`], so a mistake is
/// told in these words rather than serde's enum vocabulary.
#[derive(Debug)]
pub enum RawServiceFrom {
    Authority,
    Header(String),
    Query(String),
}

impl RawServiceFrom {
    /// What the reader accepts, and the schema says (`schema` below).
    const FORMS: Forms = Forms {
        plain: Some("authority"),
        keys: &["header", "query"],
        expecting: r#""authority" or {"header": NAME} or {"query": NAME}"#,
    };
}

impl<'de> Deserialize<'de> for RawServiceFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match deserializer.deserialize_any(Self::FORMS)? {
            Source::Plain => Self::Authority,
            Source::Keyed("header", name) => Self::Header(name),
            Source::Keyed(_, name) => Self::Query(name),
        })
    }
}

/// The forms a source of a key may take: an optional plain string, and objects of exactly one of
/// `keys` whose value is a string (`{"header": "x-user"}`).
struct Forms {
    plain: Option<&'static str>,
    keys: &'static [&'static str],
    /// The forms in the configuration's words, for messages: `expected <expecting>, got ...`.
    expecting: &'static str,
}

/// A value read by [`Forms`]: the plain string, or the key (one of `Forms::keys`) and its value.
enum Source {
    Plain,
    Keyed(&'static str, String),
}

impl<'de> Visitor<'de> for Forms {
    type Value = Source;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Source, E> {
        match self.plain {
            Some(plain) if value == plain => Ok(Source::Plain),
            _ => Err(E::custom(format_args!(
                "expected {}, got the string {value:?}",
                self.expecting
            ))),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Source, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom(format_args!(
                "expected {}, got an empty object",
                self.expecting
            )));
        };
        let Some(&known) = self.keys.iter().find(|k| **k == key) else {
            return Err(de::Error::custom(format_args!(
                "unknown key {key:?}, expected {}",
                self.expecting
            )));
        };
        let name: String = map.next_value()?;
        if let Some(other) = map.next_key::<String>()? {
            return Err(if other == known {
                de::Error::custom(format_args!("the key {known:?} twice"))
            } else {
                de::Error::custom(format_args!(
                    "expected {}, got an object with both {known:?} and {other:?}",
                    self.expecting
                ))
            });
        }
        Ok(Source::Keyed(known, name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOnUnknown {
    Pass,
    Reject,
}

impl RawOnUnknown {
    /// What the reader accepts, and the schema says (`schema` below).
    const ONE_OF: OneOf<Self> = OneOf {
        choices: &[("pass", Self::Pass), ("reject", Self::Reject)],
        expecting: r#""pass" or "reject""#,
    };
}

impl<'de> Deserialize<'de> for RawOnUnknown {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Self::ONE_OF)
    }
}

/// A string out of a fixed set, read as any JSON value so that a value of another type is told
/// as such (`expected "pass" or "reject", got true`) rather than as a JSON syntax error.
struct OneOf<T: 'static> {
    choices: &'static [(&'static str, T)],
    expecting: &'static str,
}

impl<'de, T: Copy> Visitor<'de> for OneOf<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        self.choices
            .iter()
            .find(|(name, _)| *name == value)
            .map(|&(_, choice)| choice)
            .ok_or_else(|| {
                E::custom(format_args!(
                    "expected {}, got the string {value:?}",
                    self.expecting
                ))
            })
    }
}

/// A service: the keys that select it and the upstreams its requests are split between.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(
        rename = "service",
        extend("allOf" = [
            {
                "if": {"properties": {"strategy": {"const": "sticky"}}, "required": ["strategy"]},
                "then": {
                    "properties": {
                        "hash_on": {
                            "type": "object",
                            "errorMessage": "required with strategy \"sticky\": {\"header\": NAME}, {\"cookie\": NAME} or {\"query\": NAME}"
                        }
                    },
                    "required": ["hash_on"]
                },
                "else": {
                    "properties": {
                        "hash_on": {
                            "type": "null",
                            "errorMessage": "only allowed with strategy \"sticky\""
                        }
                    }
                }
            },
            {
                "if": {"properties": {"assign_cookie": {"type": "object"}}, "required": ["assign_cookie"]},
                "then": {
                    "properties": {
                        "strategy": {"const": "sticky"},
                        "hash_on": {"required": ["cookie"]}
                    },
                    "required": ["strategy", "hash_on"]
                }
            }
        ])
    )
)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    /// Unique, non-empty. Without `hosts` it is the service's host, so it must then be a valid
    /// host.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub name: String,
    /// Keys that select this service (default: the name): DNS names (letters, digits, `-` inside
    /// a label, and `_`; no empty labels; labels up to 63 characters, names up to 253), IPv4
    /// literals (`10.0.0.1`), or IPv6 literals written `[::1]` or `::1`, each with an optional
    /// `:port` and trailing dot. Matched case-insensitively, IPv6 literals in canonical form
    /// (`[0:0::1]` is `[::1]`). A host without a port matches the name on any port; a host with a
    /// port matches that port only. Wildcards (`*`, `*.example.com`) are not supported and are an
    /// error: list each host explicitly. A host may belong to one service only. The same matching
    /// applies to keys from `service_from` header and query modes.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// How requests that no rule claims pick an upstream.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = "weighted")))]
    pub strategy: Option<RawStrategy>,
    /// Where a `sticky` service finds the key it hashes; required with `sticky` and only
    /// allowed there.
    #[serde(default)]
    pub hash_on: Option<RawHashOn>,
    /// The upstreams, at least one; names unique; the weights must sum to more than 0.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub upstreams: Vec<RawUpstream>,
    /// Match rules, tried in order before the strategy: the first whose conditions all hold
    /// sends the request to its upstream.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// Move traffic away from an upstream that fails (or gets slow) by itself.
    #[serde(default)]
    pub guard: Option<RawGuard>,
    /// Weights that follow a schedule of steps from an absolute start time.
    #[serde(default)]
    pub rollout: Option<RawRollout>,
    /// Only with `strategy: "sticky"` and `hash_on: {"cookie": NAME}`: give a request without the
    /// cookie a random id, route it by that id and set the cookie on the response (the wasm
    /// build needs `meshsplit-cookie.wasm`; the cluster specifier refuses it).
    #[serde(default)]
    pub assign_cookie: Option<RawAssignCookie>,
}

/// The attributes of the cookie meshsplit sets on a visitor without one (see `cookie.rs`).
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(
        rename = "assign_cookie",
        extend(
            "if" = {"properties": {"same_site": {"const": "None"}}, "required": ["same_site"]},
            "then" = {"properties": {"secure": {"const": true}}, "required": ["secure"]}
        )
    )
)]
#[serde(deny_unknown_fields)]
pub struct RawAssignCookie {
    /// `Max-Age` in seconds, from 1 to 34 560 000 (400 days, the most browsers keep a cookie).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 34_560_000), extend("default" = 2_592_000)))]
    pub max_age_s: Option<u64>,
    /// `Path`: starts with `/`, printable ASCII without spaces or `;`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(regex(pattern = r"^/[!-:<-~]*$"), extend("default" = "/")))]
    pub path: Option<String>,
    /// `Secure`. Off by default: a browser never stores a Secure cookie from a plain-HTTP
    /// response. Turn it on when visitors reach the site over HTTPS.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = false)))]
    pub secure: Option<bool>,
    /// `HttpOnly`: no script needs a routing key.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = true)))]
    pub http_only: Option<bool>,
    /// `SameSite`; `"None"` requires `secure: true`, as browsers do.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = "Lax")))]
    pub same_site: Option<RawSameSite>,
    /// What a response that sets the cookie tells caches. `"private"`: its `Cache-Control`
    /// becomes private (`public` and `s-maxage` dropped, `private` added; `no-store` is left
    /// as it is), so a shared cache (a CDN, Envoy's cache filter) never hands one visitor's id
    /// to the next visitors. `"unchanged"`: the application's `Cache-Control` stays, for pages
    /// no shared cache stores anyway.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = "private")))]
    pub cache_control: Option<RawCacheControl>,
}

/// `assign_cookie.cache_control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawCacheControl {
    Private,
    Unchanged,
}

impl RawCacheControl {
    const ONE_OF: OneOf<Self> = OneOf {
        choices: &[("private", Self::Private), ("unchanged", Self::Unchanged)],
        expecting: r#"one of "private", "unchanged""#,
    };
}

/// The cookie's `SameSite` attribute, spelled as in `Set-Cookie`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawSameSite {
    Strict,
    Lax,
    None,
}

impl RawSameSite {
    /// What the reader accepts, and the schema says (`schema` below).
    const ONE_OF: OneOf<Self> = OneOf {
        choices: &[
            ("Strict", Self::Strict),
            ("Lax", Self::Lax),
            ("None", Self::None),
        ],
        expecting: r#"one of "Strict", "Lax", "None""#,
    };
}

impl<'de> Deserialize<'de> for RawSameSite {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Self::ONE_OF)
    }
}

impl<'de> Deserialize<'de> for RawCacheControl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Self::ONE_OF)
    }
}

/// Moves traffic away from an upstream whose responses fail (see `guard.rs`): an upstream whose
/// share of failures over the window exceeds `error_rate` is ejected (weight 0) for a time, then
/// readmitted.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(
        rename = "guard",
        extend(
            "anyOf" = [
                {"properties": {"error_rate": {"type": "number"}}, "required": ["error_rate"]},
                {"properties": {"latency": {"type": "object"}}, "required": ["latency"]}
            ],
            "allOf" = [
                {
                    "if": {"properties": {"failure_codes": {"type": "array"}}, "required": ["failure_codes"]},
                    "then": {"properties": {"error_rate": {"type": "number"}}, "required": ["error_rate"]}
                },
                {
                    "if": {"properties": {"relative_margin": {"type": "number"}}, "required": ["relative_margin"]},
                    "then": {"properties": {"error_rate": {"type": "number"}}, "required": ["error_rate"]}
                },
                {
                    "if": {"properties": {"abandoned_after_ms": {"type": "integer"}}, "required": ["abandoned_after_ms"]},
                    "then": {"properties": {"error_rate": {"type": "number"}}, "required": ["error_rate"]}
                },
                {
                    "if": {"properties": {"grpc_failure_codes": {"type": "array"}}, "required": ["grpc_failure_codes"]},
                    "then": {"properties": {"error_rate": {"type": "number"}}, "required": ["error_rate"]}
                }
            ]
        )
    )
)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// Fraction of failed requests above which an upstream is ejected, in (0, 1). Optional when
    /// `latency` is given; at least one of the two is required.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("exclusiveMinimum" = 0, "exclusiveMaximum" = 1)))]
    pub error_rate: Option<f64>,
    /// Fewest requests in the window for a decision.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("default" = 20)))]
    pub min_requests: Option<u64>,
    /// Seconds of outcomes considered, 1 to 3600.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 3600), extend("default" = 10)))]
    pub window_s: Option<u64>,
    /// Seconds an ejection lasts the first time (longer when it repeats), 1 to 86 400.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 86_400), extend("default" = 30)))]
    pub eject_s: Option<u64>,
    /// Most of the service's weight that may be ejected at once, in percent.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(max = 100), extend("default" = 50)))]
    pub max_ejected_percent: Option<u64>,
    /// Response statuses that count as failures, each 400 to 599 (`[]`: only Envoy's upstream
    /// failures count).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(range(min = 400, max = 599)), extend("default" = [500, 502, 503, 504])))]
    pub failure_codes: Option<Vec<u16>>,
    /// Relative mode: eject only when the failure rate exceeds the other upstreams' by more than
    /// this, in [0, 1). Only with `error_rate`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("minimum" = 0, "exclusiveMaximum" = 1)))]
    pub relative_margin: Option<f64>,
    /// Also eject an upstream whose requests got slow: when the `percentile` of their durations
    /// over the window is above `threshold_ms`.
    #[serde(default)]
    pub latency: Option<RawLatency>,
    /// A request the client abandons (resets, times out) with no response after waiting at least
    /// this many milliseconds counts as a failure of its upstream: a version that hangs is
    /// ejected even when clients give up before Envoy does. 0 to 3 600 000; 0: abandoned
    /// requests never count as failures. Only with `error_rate`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(range(max = 3_600_000), extend("default" = 500)))]
    pub abandoned_after_ms: Option<u64>,
    /// gRPC statuses that count as failures when a gRPC call is answered (HTTP 200 with a
    /// `grpc-status`), each 0 to 16 (`[]`: no gRPC status counts). The default is what says
    /// the server is unhealthy or broken: UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS (not
    /// DEADLINE_EXCEEDED: a client sets its own deadline). Only with `error_rate`.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(inner(range(max = 16)), extend("default" = [2, 13, 14, 15])))]
    pub grpc_failure_codes: Option<Vec<u16>>,
}

/// Ejects an upstream whose requests got slow (see `guard.rs`): the time from the request's
/// headers reaching meshsplit to the stream's end, per upstream over the guard's window and
/// `min_requests`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "latency"))]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    /// The percentile checked (nearest rank), in (0, 100] with at most three decimals.
    #[cfg_attr(feature = "schema", schemars(extend("exclusiveMinimum" = 0, "maximum" = 100)))]
    pub percentile: f64,
    /// The upstream is ejected when that percentile is above this many milliseconds, 1 to
    /// 3 600 000.
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 3_600_000)))]
    pub threshold_ms: u64,
    /// Relative mode: eject for latency only when the upstream's share of requests slower than
    /// `threshold_ms` exceeds the other upstreams' share by more than this, in [0, 1); versions
    /// that are slow alike (long polls, streams) eject nothing.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("minimum" = 0, "exclusiveMaximum" = 1)))]
    pub relative_margin: Option<f64>,
}

/// Weights that change on a schedule (see `rollout.rs`). Before `start` the service's own
/// weights apply; from each step's time its weights do.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "rollout"))]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// When the schedule starts: an RFC 3339 UTC time, e.g. `2026-12-01T10:00:00Z`.
    pub start: String,
    /// Move the weights linearly from each step to the next instead of in steps.
    #[serde(default)]
    pub interpolate: bool,
    /// The steps, at least one, in increasing `at_s`.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub steps: Vec<RawStep>,
}

/// One step of a rollout.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "rollout_step"))]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    /// Seconds after `start` at which the step's weights apply.
    pub at_s: u64,
    /// Upstream name to weight (0 to 1 000 000); upstreams not listed get 0.
    pub weights: RawStepWeights,
}

/// A JSON object of upstream name to weight, in the order written. Read by hand into a list:
/// a map type would cost the module several KB more for the same check.
#[derive(Debug, Default)]
pub struct RawStepWeights(pub Vec<(String, u64)>);

impl<'de> Deserialize<'de> for RawStepWeights {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawStepWeights;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of upstream name to weight")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut weights = Vec::new();
                while let Some((name, weight)) = map.next_entry::<String, u64>()? {
                    weights.push((name, weight));
                }
                Ok(RawStepWeights(weights))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawStrategy {
    Weighted,
    RoundRobin,
    LeastRequest,
    Sticky,
}

impl RawStrategy {
    /// What the reader accepts, and the schema says (`schema` below).
    const ONE_OF: OneOf<Self> = OneOf {
        choices: &[
            ("weighted", Self::Weighted),
            ("round_robin", Self::RoundRobin),
            ("least_request", Self::LeastRequest),
            ("sticky", Self::Sticky),
        ],
        expecting: r#"one of "weighted", "round_robin", "least_request", "sticky""#,
    };
}

impl<'de> Deserialize<'de> for RawStrategy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Self::ONE_OF)
    }
}

/// Where a sticky service finds the key it hashes: `{"header": NAME}`, `{"cookie": NAME}` or
/// `{"query": PARAM}`.
#[derive(Debug)]
pub enum RawHashOn {
    Header(String),
    Cookie(String),
    Query(String),
}

impl RawHashOn {
    /// What the reader accepts, and the schema says (`schema` below).
    const FORMS: Forms = Forms {
        plain: None,
        keys: &["header", "cookie", "query"],
        expecting: r#"{"header": NAME} or {"cookie": NAME} or {"query": NAME}"#,
    };
}

impl<'de> Deserialize<'de> for RawHashOn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_any(Self::FORMS)? {
            Source::Keyed("header", name) => Ok(Self::Header(name)),
            Source::Keyed("cookie", name) => Ok(Self::Cookie(name)),
            Source::Keyed(_, name) => Ok(Self::Query(name)),
            // FORMS has no plain form, so the visitor never returns it.
            Source::Plain => Err(de::Error::custom(Self::FORMS.expecting)),
        }
    }
}

/// A match rule: requests that meet every condition of `match` go to `upstream`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "rule"))]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// The conditions, all of which must hold (at least one).
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    /// The name of one of the service's upstreams (any weight, 0 included).
    pub upstream: String,
}

/// Conditions on a request; every condition listed must hold.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(
        rename = "match",
        extend("anyOf" = [
            {"properties": {"headers": {"minItems": 1}}, "required": ["headers"]},
            {"properties": {"cookies": {"minItems": 1}}, "required": ["cookies"]},
            {"properties": {"query": {"minItems": 1}}, "required": ["query"]}
        ])
    )
)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Conditions on request headers.
    #[serde(default)]
    pub headers: Vec<RawHeaderMatch>,
    /// Conditions on cookies (from the `cookie` header).
    #[serde(default)]
    pub cookies: Vec<RawValueMatch>,
    /// Conditions on URL-decoded query parameters of `:path`.
    #[serde(default)]
    pub query: Vec<RawValueMatch>,
}

/// A condition on a request header: exactly one of `exact`, `prefix` or `present: true`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(
        rename = "header_condition",
        extend("oneOf" = [
            {"properties": {"exact": {"type": "string"}}, "required": ["exact"]},
            {"properties": {"prefix": {"type": "string"}}, "required": ["prefix"]},
            {"properties": {"present": {"const": true}}, "required": ["present"]}
        ])
    )
)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    /// The header's name, lowercase (a pseudo-header such as `:path` too).
    #[cfg_attr(feature = "schema", schemars(regex(pattern = schema::RULE_HEADER_NAME)))]
    pub name: String,
    /// The header equals this value.
    #[serde(default)]
    pub exact: Option<String>,
    /// The header starts with this value.
    #[serde(default)]
    pub prefix: Option<String>,
    /// `true`: the header is present, whatever its value (`false` is not a condition).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(extend("enum" = [true, null])))]
    pub present: Option<bool>,
}

/// A condition on a cookie or a query parameter: its value equals `exact`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "value_condition"))]
#[serde(deny_unknown_fields)]
pub struct RawValueMatch {
    /// The cookie's or parameter's name.
    pub name: String,
    /// The value it must equal.
    pub exact: String,
}

/// An upstream: an Envoy cluster and its weight.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(rename = "upstream"))]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Unique within the service.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub name: String,
    /// Envoy cluster name written to the cluster header; non-empty, no control characters, no
    /// surrounding spaces.
    #[cfg_attr(feature = "schema", schemars(length(min = 1)))]
    pub cluster: String,
    /// When set, `:authority` is rewritten to it for requests sent to this upstream; when absent
    /// `:authority` is left as the client sent it.
    #[serde(default)]
    pub authority: Option<String>,
    /// Each request picks upstream i with probability weight[i] / sum(weights); 0 means drained:
    /// never picked.
    // Wider than the allowed range so that an out-of-range weight gets a precise message from
    // validation instead of a generic integer-overflow error from serde.
    #[cfg_attr(feature = "schema", schemars(range(max = 1_000_000)))]
    pub weight: u64,
}

/// JSON Schemas of the types read by hand above (`meshsplit schema`; the derived types take
/// theirs from their fields and doc comments).
#[cfg(feature = "schema")]
mod schema {
    use std::borrow::Cow;

    use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

    use super::{
        RawCacheControl, RawHashOn, RawOnUnknown, RawSameSite, RawServiceFrom, RawStepWeights,
        RawStrategy,
    };

    /// A lowercase header name, as `plan::check_header_name` accepts it (HTTP token characters).
    pub const HEADER_NAME: &str = r"^[a-z0-9!#$%&'*+.^_`|~-]+$";
    /// A rule's header name: the same, or a pseudo-header (`:path`).
    pub const RULE_HEADER_NAME: &str = r"^:?[a-z0-9!#$%&'*+.^_`|~-]+$";

    /// `{"KEY": NAME}` with a non-empty NAME; a header name is lowercase.
    fn keyed(key: &str, description: &str) -> serde_json::Value {
        let name = if key == "header" {
            serde_json::json!({"type": "string", "minLength": 1, "pattern": HEADER_NAME})
        } else {
            serde_json::json!({"type": "string", "minLength": 1})
        };
        serde_json::json!({
            "type": "object",
            "description": description,
            "properties": {key: name},
            "required": [key],
            "additionalProperties": false,
        })
    }

    /// The schema of a key source: its plain string (only `service_from` has one, the authority),
    /// then an object of each key.
    fn forms(forms: &super::Forms) -> Schema {
        let plain = forms.plain.map(|plain| {
            serde_json::json!({"const": plain, "description": "The `:authority` (`Host`) of the request."})
        });
        let keyed = forms.keys.iter().map(|&key| {
            let description = match key {
                "header" => "A request header.",
                "cookie" => "A cookie of the `cookie` header.",
                _ => "A URL-decoded query parameter of `:path`.",
            };
            keyed(key, description)
        });
        let branches: Vec<serde_json::Value> = plain.into_iter().chain(keyed).collect();
        json_schema!({"oneOf": branches})
    }

    /// The schema of a string out of a fixed set.
    fn one_of<T>(one_of: &super::OneOf<T>) -> Schema {
        let names: Vec<&str> = one_of.choices.iter().map(|(name, _)| *name).collect();
        json_schema!({"type": "string", "enum": names})
    }

    /// `cluster_header`: a header name that is not one of the headers the plan reserves
    /// (`reserved_headers.rs`, Envoy's `x-envoy-`).
    pub fn cluster_header(_: &mut SchemaGenerator) -> Schema {
        let reserved: Vec<&str> = crate::reserved_headers::RESERVED_HEADERS
            .iter()
            .map(|(name, _)| *name)
            .collect();
        // `null` is the default, as for every optional field.
        json_schema!({
            "anyOf": [
                {
                    "type": "string",
                    "pattern": HEADER_NAME,
                    "not": {"anyOf": [{"enum": reserved}, {"pattern": "^x-envoy-"}]},
                },
                {"type": "null"},
            ]
        })
    }

    impl JsonSchema for RawSameSite {
        fn schema_name() -> Cow<'static, str> {
            "same_site".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            one_of(&RawSameSite::ONE_OF)
        }
    }

    impl JsonSchema for RawCacheControl {
        fn schema_name() -> Cow<'static, str> {
            "cache_control".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            one_of(&RawCacheControl::ONE_OF)
        }
    }

    impl JsonSchema for RawServiceFrom {
        fn schema_name() -> Cow<'static, str> {
            "service_from".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            forms(&RawServiceFrom::FORMS)
        }
    }

    impl JsonSchema for RawHashOn {
        fn schema_name() -> Cow<'static, str> {
            "hash_on".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            forms(&RawHashOn::FORMS)
        }
    }

    impl JsonSchema for RawOnUnknown {
        fn schema_name() -> Cow<'static, str> {
            "on_unknown_service".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            one_of(&RawOnUnknown::ONE_OF)
        }
    }

    impl JsonSchema for RawStrategy {
        fn schema_name() -> Cow<'static, str> {
            "strategy".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            one_of(&RawStrategy::ONE_OF)
        }
    }

    impl JsonSchema for RawStepWeights {
        fn schema_name() -> Cow<'static, str> {
            "step_weights".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            json_schema!({
                "type": "object",
                "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
            })
        }
    }
}
