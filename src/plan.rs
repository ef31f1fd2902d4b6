//! Validates the raw configuration and compiles it into the immutable plan the request path reads.
//!
//! Every error names the JSON path of the offending field, e.g.
//! `services[0].upstreams[1].weight: must be at most 1000000, got 5000000`.

use std::fmt;

use crate::config::{RawConfig, RawOnUnknown, RawService, RawServiceFrom, RawUpstream};
use crate::json_path::{offset_of, path_at};
use crate::request::host_key;
use crate::select::WeightedPicker;

pub const DEFAULT_CLUSTER_HEADER: &str = "x-meshsplit-cluster";
pub const MAX_WEIGHT: u64 = 1_000_000;

/// A configuration problem: where (JSON path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where the service key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFrom {
    Authority,
    Header(String),
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnknownService {
    /// Remove any client-sent cluster header and let Envoy route as without the filter.
    Pass,
    /// Answer 404 with a small JSON body.
    Reject,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub cluster: String,
    pub authority: Option<String>,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub upstreams: Vec<Upstream>,
    picker: WeightedPicker,
}

impl Service {
    /// The upstream for one request, by weight.
    pub fn pick<R: rand_core::Rng + ?Sized>(&self, rng: &mut R) -> Option<&Upstream> {
        self.upstreams.get(self.picker.pick(rng))
    }
}

/// The validated, immutable configuration. Built once per `on_configure`, read per request.
#[derive(Debug, Clone)]
pub struct Plan {
    pub cluster_header: String,
    pub service_from: ServiceFrom,
    pub on_unknown_service: OnUnknownService,
    pub services: Vec<Service>,
    /// (normalized host (see [`host_key`]), index in `services`), sorted by host.
    by_host: Vec<(String, usize)>,
}

impl Plan {
    /// Parses and validates plugin configuration bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "",
                "configuration is empty; expected a JSON object with a \"services\" list",
            ));
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| {
            let offset = offset_of(bytes, e.line(), e.column());
            ConfigError::new(path_at(bytes, offset), e.to_string())
        })?;
        Self::compile(raw)
    }

    /// Validates raw configuration and builds the lookup structures.
    pub fn compile(raw: RawConfig) -> Result<Self, ConfigError> {
        let cluster_header = match raw.cluster_header {
            None => DEFAULT_CLUSTER_HEADER.to_owned(),
            Some(name) => {
                check_header_name("cluster_header", &name)?;
                if name == "host" {
                    return Err(ConfigError::new(
                        "cluster_header",
                        "must not be \"host\": it is the request's authority",
                    ));
                }
                name
            }
        };
        let service_from = compile_service_from(raw.service_from)?;
        let on_unknown_service = match raw.on_unknown_service {
            None | Some(RawOnUnknown::Pass) => OnUnknownService::Pass,
            Some(RawOnUnknown::Reject) => OnUnknownService::Reject,
        };
        if raw.services.is_empty() {
            return Err(ConfigError::new(
                "services",
                "must list at least one service",
            ));
        }

        // Each service on its own first, then what must be unique across services.
        let mut services = Vec::with_capacity(raw.services.len());
        let mut hosts: Vec<(String, usize, String)> = Vec::new(); // (key, service, JSON path)
        for (index, raw_service) in raw.services.iter().enumerate() {
            let path = format!("services[{index}]");
            services.push(compile_service(&path, raw_service)?);
            for (host_path, key) in host_keys(&path, raw_service)? {
                hosts.push((key, index, host_path));
            }
        }
        let names: Vec<&str> = raw.services.iter().map(|s| s.name.as_str()).collect();
        if let Some((first, repeat)) = first_duplicate(&names) {
            return Err(ConfigError::new(
                format!("services[{repeat}].name"),
                format!(
                    "duplicate service name {:?} (first at services[{first}])",
                    names.get(repeat).copied().unwrap_or_default()
                ),
            ));
        }
        let keys: Vec<&str> = hosts.iter().map(|(key, _, _)| key.as_str()).collect();
        if let Some((first, repeat)) = first_duplicate(&keys) {
            let owner = hosts.get(first).map_or(0, |(_, service, _)| *service);
            let (key, _, path) = hosts.get(repeat).cloned().unwrap_or_default();
            return Err(ConfigError::new(
                path,
                format!(
                    "host {key:?} is already matched by services[{owner}] ({:?})",
                    names.get(owner).copied().unwrap_or_default()
                ),
            ));
        }
        // A sorted table with binary search: as fast as hashing for this use (measured in the
        // benchmark's 10 000-service scenario) and smaller in the module than a HashMap.
        let mut by_host: Vec<(String, usize)> = hosts
            .into_iter()
            .map(|(key, service, _)| (key, service))
            .collect();
        by_host.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            cluster_header,
            service_from,
            on_unknown_service,
            services,
            by_host,
        })
    }

    /// The service whose hosts contain `key`, which must already be normalized by [`host_key`].
    pub fn service_for(&self, key: &str) -> Option<&Service> {
        let index = self
            .by_host
            .binary_search_by(|(host, _)| host.as_str().cmp(key))
            .ok()?;
        self.by_host
            .get(index)
            .and_then(|&(_, service)| self.services.get(service))
    }
}

/// Of all pairs of equal items, the one whose second occurrence comes first:
/// `(index of the first occurrence, index of the repeat)`.
fn first_duplicate(items: &[&str]) -> Option<(usize, usize)> {
    let mut order: Vec<(&str, usize)> = items.iter().copied().zip(0..).collect();
    order.sort_unstable();
    order
        .windows(2)
        .filter_map(|pair| match pair {
            [(a, first), (b, repeat)] if a == b => Some((*first, *repeat)),
            _ => None,
        })
        .min_by_key(|&(_, repeat)| repeat)
}

fn compile_service_from(raw: Option<RawServiceFrom>) -> Result<ServiceFrom, ConfigError> {
    match raw {
        None | Some(RawServiceFrom::Authority) => Ok(ServiceFrom::Authority),
        Some(RawServiceFrom::Header(name)) => {
            check_header_name("service_from.header", &name)?;
            Ok(ServiceFrom::Header(name))
        }
        Some(RawServiceFrom::Query(param)) => {
            if param.is_empty() {
                return Err(ConfigError::new("service_from.query", "must not be empty"));
            }
            Ok(ServiceFrom::Query(param))
        }
    }
}

fn compile_service(path: &str, raw: &RawService) -> Result<Service, ConfigError> {
    check_text(&format!("{path}.name"), &raw.name)?;
    if let Some(strategy) = &raw.strategy {
        if strategy != "weighted" {
            return Err(ConfigError::new(
                format!("{path}.strategy"),
                format!("unsupported strategy {strategy:?}; supported: \"weighted\""),
            ));
        }
    }
    if raw.upstreams.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.upstreams"),
            "must list at least one upstream",
        ));
    }
    let mut upstreams: Vec<Upstream> = Vec::with_capacity(raw.upstreams.len());
    for (index, raw_upstream) in raw.upstreams.iter().enumerate() {
        let upstream_path = format!("{path}.upstreams[{index}]");
        if let Some(first) = upstreams.iter().position(|u| u.name == raw_upstream.name) {
            return Err(ConfigError::new(
                format!("{upstream_path}.name"),
                format!(
                    "duplicate upstream name {:?} (first at {path}.upstreams[{first}])",
                    raw_upstream.name
                ),
            ));
        }
        upstreams.push(compile_upstream(&upstream_path, raw_upstream)?);
    }
    let weights: Vec<u32> = upstreams.iter().map(|u| u.weight).collect();
    let picker = WeightedPicker::new(&weights).ok_or_else(|| {
        ConfigError::new(
            format!("{path}.upstreams"),
            "weights sum to 0; at least one upstream needs a weight above 0",
        )
    })?;
    Ok(Service {
        name: raw.name.clone(),
        upstreams,
        picker,
    })
}

fn compile_upstream(path: &str, raw: &RawUpstream) -> Result<Upstream, ConfigError> {
    check_text(&format!("{path}.name"), &raw.name)?;
    check_header_value(&format!("{path}.cluster"), &raw.cluster)?;
    if let Some(authority) = &raw.authority {
        check_authority(&format!("{path}.authority"), authority)?;
    }
    let weight = u32::try_from(raw.weight)
        .ok()
        .filter(|&w| u64::from(w) <= MAX_WEIGHT)
        .ok_or_else(|| {
            ConfigError::new(
                format!("{path}.weight"),
                format!("must be at most {MAX_WEIGHT}, got {}", raw.weight),
            )
        })?;
    Ok(Upstream {
        name: raw.name.clone(),
        cluster: raw.cluster.clone(),
        authority: raw.authority.clone(),
        weight,
    })
}

/// The normalized hosts of a service (`hosts`, or its name when absent), with their JSON paths.
fn host_keys(path: &str, raw: &RawService) -> Result<Vec<(String, String)>, ConfigError> {
    let hosts = raw
        .hosts
        .as_deref()
        .unwrap_or(std::slice::from_ref(&raw.name));
    if hosts.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.hosts"),
            "must list at least one host (leave it out to match the service name)",
        ));
    }
    let mut keys: Vec<(String, String)> = Vec::with_capacity(hosts.len());
    for (index, host) in hosts.iter().enumerate() {
        let host_path = if raw.hosts.is_some() {
            format!("{path}.hosts[{index}]")
        } else {
            format!("{path}.name")
        };
        let mut key = host.clone();
        let key = host_key(&mut key).to_owned();
        if key.is_empty()
            || key
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'/')
        {
            return Err(ConfigError::new(
                host_path,
                format!("not a valid host: {host:?}"),
            ));
        }
        if let Some((first, _)) = keys.iter().find(|(_, k)| *k == key) {
            return Err(ConfigError::new(
                host_path,
                format!("host {host:?} is listed twice (first at {first})"),
            ));
        }
        keys.push((host_path, key));
    }
    Ok(keys)
}

/// A lowercase HTTP header name (RFC 9110 token), not a pseudo-header.
fn check_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    if name.starts_with(':') {
        return Err(ConfigError::new(
            path,
            format!("{name:?} is a pseudo-header; use a regular header name"),
        ));
    }
    let is_token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if let Some(bad) = name
        .chars()
        .find(|&c| !is_token(c) || c.is_ascii_uppercase())
    {
        return Err(ConfigError::new(
            path,
            format!("{name:?} is not a valid lowercase header name (bad character {bad:?})"),
        ));
    }
    Ok(())
}

/// Something Envoy accepts as a header value and that reads unambiguously in logs.
fn check_header_value(path: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(path, "must not be empty"));
    }
    if value.trim() != value {
        return Err(ConfigError::new(
            path,
            format!("{value:?} has leading or trailing white space"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ConfigError::new(
            path,
            format!("{value:?} contains a control character"),
        ));
    }
    Ok(())
}

/// A non-empty name such as a service or upstream name.
fn check_text(path: &str, value: &str) -> Result<(), ConfigError> {
    check_header_value(path, value)
}

/// `host` or `host:port`, as it would appear in `:authority`.
fn check_authority(path: &str, value: &str) -> Result<(), ConfigError> {
    check_header_value(path, value)?;
    if let Some(bad) = value
        .chars()
        .find(|&c| c.is_whitespace() || "/?#@\\\"".contains(c))
    {
        return Err(ConfigError::new(
            path,
            format!("{value:?} is not a valid authority (bad character {bad:?})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
