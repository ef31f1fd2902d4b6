//! Raw serde types of the plugin configuration JSON, exactly as operators write it.
//!
//! Nothing here is trusted: `plan.rs` validates these values and compiles them into the
//! immutable [`crate::plan::Plan`] the request path reads.

use core::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

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

/// `"authority"`, `{"header": NAME}` or `{"query": PARAM}`. Read by [`Source`], so a mistake is
/// told in these words rather than serde's enum vocabulary.
#[derive(Debug)]
pub enum RawServiceFrom {
    Authority,
    Header(String),
    Query(String),
}

impl<'de> Deserialize<'de> for RawServiceFrom {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const FORMS: Forms = Forms {
            plain: Some("authority"),
            keys: &["header", "query"],
            expecting: r#""authority" or {"header": NAME} or {"query": NAME}"#,
        };
        Ok(match deserializer.deserialize_any(FORMS)? {
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
            return Err(de::Error::custom(format_args!(
                "expected {}, got an object with both {known:?} and {other:?}",
                self.expecting
            )));
        }
        Ok(Source::Keyed(known, name))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawOnUnknown {
    Pass,
    Reject,
}

impl<'de> Deserialize<'de> for RawOnUnknown {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OneOf {
            choices: &[("pass", Self::Pass), ("reject", Self::Reject)],
            expecting: r#""pass" or "reject""#,
        })
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
    #[serde(default)]
    pub assign_cookie: Option<RawAssignCookie>,
}

/// A sticky service on a cookie gives visitors without it one: see `cookie.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssignCookie {
    #[serde(default)]
    pub max_age_s: Option<u64>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub secure: Option<bool>,
    #[serde(default)]
    pub http_only: Option<bool>,
    #[serde(default)]
    pub same_site: Option<RawSameSite>,
}

/// The cookie's `SameSite` attribute, spelled as in `Set-Cookie`.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum RawSameSite {
    Strict,
    Lax,
    None,
}

/// Moves traffic away from an upstream whose responses fail: see `guard.rs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub error_rate: f64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawStrategy {
    Weighted,
    RoundRobin,
    LeastRequest,
    Sticky,
}

impl<'de> Deserialize<'de> for RawStrategy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OneOf {
            choices: &[
                ("weighted", Self::Weighted),
                ("round_robin", Self::RoundRobin),
                ("least_request", Self::LeastRequest),
                ("sticky", Self::Sticky),
            ],
            expecting: r#"one of "weighted", "round_robin", "least_request", "sticky""#,
        })
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

impl<'de> Deserialize<'de> for RawHashOn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const FORMS: Forms = Forms {
            plain: None,
            keys: &["header", "cookie", "query"],
            expecting: r#"{"header": NAME} or {"cookie": NAME} or {"query": NAME}"#,
        };
        match deserializer.deserialize_any(FORMS)? {
            Source::Keyed("header", name) => Ok(Self::Header(name)),
            Source::Keyed("cookie", name) => Ok(Self::Cookie(name)),
            Source::Keyed(_, name) => Ok(Self::Query(name)),
            // FORMS has no plain form, so the visitor never returns it.
            Source::Plain => Err(de::Error::custom(FORMS.expecting)),
        }
    }
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
