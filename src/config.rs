//! Raw serde types of the plugin configuration JSON, exactly as operators write it.
//!
//! Nothing here is trusted: `plan.rs` validates these values and compiles them into the
//! immutable [`crate::plan::Plan`] the request path reads.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub cluster_header: Option<String>,
    #[serde(default)]
    pub service_from: Option<RawServiceFrom>,
    #[serde(default)]
    pub on_unknown_service: Option<RawOnUnknown>,
    pub services: Vec<RawService>,
}

/// `"authority"`, `{"header": NAME}` or `{"query": PARAM}`: serde's externally tagged form.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawServiceFrom {
    Authority,
    Header(String),
    Query(String),
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawOnUnknown {
    Pass,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    #[serde(default)]
    pub strategy: Option<RawStrategy>,
    #[serde(default)]
    pub hash_on: Option<RawHashOn>,
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub guard: Option<RawGuard>,
    #[serde(default)]
    pub rollout: Option<RawRollout>,
}

/// Moves traffic away from an upstream whose responses fail: see `guard.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    #[serde(default)]
    pub error_rate: Option<f64>,
    #[serde(default)]
    pub min_requests: Option<u64>,
    #[serde(default)]
    pub window_s: Option<u64>,
    #[serde(default)]
    pub eject_s: Option<u64>,
    #[serde(default)]
    pub max_ejected_percent: Option<u64>,
    #[serde(default)]
    pub failure_codes: Option<Vec<u16>>,
    #[serde(default)]
    pub relative_margin: Option<f64>,
    #[serde(default)]
    pub latency: Option<RawLatency>,
}

/// Ejects an upstream whose requests got slow: see `guard.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLatency {
    pub percentile: f64,
    pub threshold_ms: u64,
}

/// Weights that change on a schedule: see `rollout.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// RFC 3339 UTC time, e.g. `2026-12-01T10:00:00Z`.
    pub start: String,
    #[serde(default)]
    pub interpolate: bool,
    pub steps: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub at_s: u64,
    /// Upstream name to weight; upstreams not listed get 0.
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

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RawStrategy {
    Weighted,
    RoundRobin,
    LeastRequest,
    Sticky,
}

/// Where a sticky service finds the key it hashes: `{"header": NAME}`, `{"cookie": NAME}` or
/// `{"query": PARAM}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawHashOn {
    Header(String),
    Cookie(String),
    Query(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    pub upstream: String,
}

/// Every condition listed must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    #[serde(default)]
    pub headers: Vec<RawHeaderMatch>,
    #[serde(default)]
    pub cookies: Vec<RawValueMatch>,
    #[serde(default)]
    pub query: Vec<RawValueMatch>,
}

/// Exactly one of `exact`, `prefix` or `present: true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValueMatch {
    pub name: String,
    pub exact: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub cluster: String,
    #[serde(default)]
    pub authority: Option<String>,
    /// Wider than the allowed range so that an out-of-range weight gets a precise message
    /// from validation instead of a generic integer-overflow error from serde.
    pub weight: u64,
}
