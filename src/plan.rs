//! Validates the raw configuration and compiles it into the immutable plan the request path reads.
//!
//! Every error names the JSON path of the offending field, e.g.
//! `services[0].upstreams[1].weight: must be at most 1000000, got 5000000`.

use std::cell::{Cell, Ref, RefCell};
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::config::{
    RawConfig, RawGuard, RawHashOn, RawLatency, RawOnUnknown, RawRollout, RawRule, RawService,
    RawServiceFrom, RawStrategy, RawUpstream,
};
pub use crate::config_error::ConfigError;
use crate::cookie::AssignCookie;
use crate::guard::{Guard, Latency};
use crate::request::{host_key_str, HostKey};
use crate::reserved_headers::RESERVED_HEADERS;
use crate::rollout::{parse_start, Rollout, Step};
use crate::select::{sticky_hash, WeightedPicker};
use serde_path_to_error::Segment;

pub const DEFAULT_CLUSTER_HEADER: &str = "x-meshsplit-cluster";
/// The upstream header the docs and `meshsplit render` use (`upstream_header` has no default:
/// leaving it out writes no upstream header).
pub const DEFAULT_UPSTREAM_HEADER: &str = "x-meshsplit-upstream";
pub const MAX_WEIGHT: u64 = 1_000_000;

/// Limits of a configuration, each refused with its JSON path. They bound what one
/// `on_configure` may cost (time and VM memory) and what a tick iterates over; the request path
/// itself does not depend on them (one lookup in a sorted table).
pub const MAX_CONFIG_BYTES: usize = 8 * 1024 * 1024;
pub const MAX_SERVICES: usize = 50_000;
pub const MAX_HOSTS_PER_SERVICE: usize = 1_000;
pub const MAX_UPSTREAMS_PER_SERVICE: usize = 256;
pub const MAX_RULES_PER_SERVICE: usize = 256;
pub const MAX_CONDITIONS_PER_RULE: usize = 64;
pub const MAX_ROLLOUT_STEPS: usize = 256;
/// Upstreams of guarded services, in all: every tick of every VM reads each guarded service's
/// record and walks its upstreams' windows, so this bounds what a tick costs.
pub const MAX_GUARDED_UPSTREAMS: usize = 1_024;

/// `Err` at `path` when a list is longer than `max`.
fn at_most(path: impl Into<String>, what: &str, len: usize, max: usize) -> Result<(), ConfigError> {
    if len > max {
        return Err(ConfigError::new(
            path,
            format!("at most {max} {what}, got {len}"),
        ));
    }
    Ok(())
}

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
    pub strategy: Strategy,
    pub rules: Vec<Rule>,
    pub guard: Option<Guard>,
    pub rollout: Option<Rollout>,
    /// The cookie a sticky service on a cookie gives requests without one (`cookie.rs`).
    pub assign_cookie: Option<AssignCookie>,
    /// Whether its requests are read in one call for every header (where the host hands them
    /// over at once, proxy-wasm) rather than one read per header its rules and sticky key
    /// name: decided once, from the headers they name ([`reads_all_headers`]).
    pub reads_all_headers: bool,
    /// The weights as configured, with their picker.
    configured: Weights,
    /// The weights in force when a rollout or the guard changed them (set on the housekeeping
    /// tick, read per request); `None`: the configured ones.
    live: RefCell<Option<Weights>>,
}

/// Weights and the weighted picker built from them.
#[derive(Debug, Clone)]
struct Weights {
    values: Box<[u32]>,
    picker: WeightedPicker,
}

impl Weights {
    fn new(values: &[u32]) -> Option<Self> {
        Some(Self {
            picker: WeightedPicker::new(values)?,
            values: values.into(),
        })
    }
}

/// The weights in force, borrowed for one request.
pub enum WeightsInForce<'a> {
    Configured(&'a [u32]),
    Live(Ref<'a, [u32]>),
}

impl std::ops::Deref for WeightsInForce<'_> {
    type Target = [u32];
    fn deref(&self) -> &[u32] {
        match self {
            WeightsInForce::Configured(values) => values,
            WeightsInForce::Live(values) => values,
        }
    }
}

impl Service {
    /// An upstream index by the weights in force, at random.
    pub fn pick_weighted<R: rand_core::Rng + ?Sized>(&self, rng: &mut R) -> usize {
        match self.live.try_borrow().as_deref() {
            Ok(Some(live)) => live.picker.pick(rng),
            _ => self.configured.picker.pick(rng),
        }
    }

    /// The weights in force: the configured ones unless a rollout or the guard changed them.
    pub fn weights(&self) -> WeightsInForce<'_> {
        // A borrow conflict cannot happen (the tick never runs inside a request); if it did,
        // the configured weights are the safe answer.
        match self.live.try_borrow() {
            Ok(live) => match Ref::filter_map(live, |l| l.as_ref().map(|w| &*w.values)) {
                Ok(values) => WeightsInForce::Live(values),
                Err(_) => WeightsInForce::Configured(&self.configured.values),
            },
            Err(_) => WeightsInForce::Configured(&self.configured.values),
        }
    }

    /// The weights as configured.
    pub fn configured_weights(&self) -> &[u32] {
        &self.configured.values
    }

    /// Puts `weights` (one per upstream) in force; the configured ones when they equal them.
    /// Returns whether anything changed. Weights that sum to 0 change nothing.
    ///
    /// Whenever the weights in force change (a rollout step, an interpolating rollout's tick,
    /// an ejection, a readmission), round robin keeps its place in the rotation: each score is
    /// rescaled to the new total and clamped into the bounds the new weights allow
    /// ([`crate::select::rebase_round_robin`]). Kept as they were, scores earned under
    /// 1 000 000/1 would be paid back under 1/1 in a burst of about 500 000 requests; reset,
    /// every change would hand the next request to the heaviest upstream, and an interpolating
    /// ramp changes the weights on almost every tick (a quiet canary would get nothing).
    pub fn set_weights(&self, weights: &[u32]) -> bool {
        let old_total: u64 = self.weights().iter().map(|&w| u64::from(w)).sum();
        if *self.weights() == *weights {
            return false;
        }
        let Ok(mut live) = self.live.try_borrow_mut() else {
            return false;
        };
        if weights == &*self.configured.values {
            *live = None;
        } else {
            match Weights::new(weights) {
                Some(new) if weights.len() == self.configured.values.len() => *live = Some(new),
                _ => return false,
            }
        }
        if let Strategy::RoundRobin(scores) = &self.strategy {
            crate::select::rebase_round_robin(scores, old_total, weights);
        }
        true
    }
}

/// How a service picks an upstream for requests that no rule claims.
#[derive(Debug, Clone)]
pub enum Strategy {
    /// At random, by weight.
    Weighted,
    /// Smooth weighted round robin; the cells are this VM's scheduling state (one per upstream).
    RoundRobin(Box<[Cell<i64>]>),
    /// Fewest in-flight requests relative to weight, counted across all workers.
    LeastRequest(Box<[InFlight]>),
    /// Rendezvous hashing of a request key; `ids` are the hashes of the upstream names.
    Sticky { hash_on: HashOn, ids: Box<[u64]> },
}

impl Strategy {
    /// The strategy's name as the configuration spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::RoundRobin(_) => "round_robin",
            Strategy::LeastRequest(_) => "least_request",
            Strategy::Sticky { .. } => "sticky",
        }
    }
}

/// Where the in-flight count of one least-request upstream lives.
#[derive(Debug, Clone)]
pub struct InFlight {
    /// proxy-wasm shared data key (shared by all workers of this Envoy and `vm_id`).
    pub key: String,
    /// Gauge of this upstream's requests in flight, for operators (`wasmcustom.<name>` in
    /// Envoy's stats): +1 when a request takes a count, -1 when its stream ends.
    pub gauge: String,
    /// This VM's id of the gauge, once defined.
    pub gauge_id: Cell<Option<u32>>,
}

/// Where a sticky service finds its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(String),
    Cookie(String),
    Query(String),
}

/// Routes requests matching every condition to one upstream, before the strategy runs.
#[derive(Debug, Clone)]
pub struct Rule {
    pub conditions: Vec<Condition>,
    pub upstream: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Header { name: String, test: HeaderTest },
    Cookie { name: String, value: String },
    Query { name: String, value: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderTest {
    Exact(String),
    Prefix(String),
    Present,
}

/// The request headers a plan writes for a routed request and removes from any other: its
/// cluster header, its upstream header, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedHeaders {
    /// Gets the cluster (`cluster_header`); `None` when the config names only an
    /// `upstream_header`.
    pub cluster: Option<String>,
    /// Gets the upstream's name (`upstream_header`).
    pub upstream: Option<String>,
}

impl OwnedHeaders {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.cluster
            .iter()
            .chain(self.upstream.iter())
            .map(String::as_str)
    }
}

/// The validated configuration. Built once per `on_configure`, read per request; the only
/// state that changes afterwards is per VM: round-robin positions and gauge ids (in `Cell`s).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The headers the chosen upstream is written to.
    pub headers: OwnedHeaders,
    pub service_from: ServiceFrom,
    pub on_unknown_service: OnUnknownService,
    pub services: Vec<Service>,
    /// (normalized host (see [`crate::request::host_key`]), index in `services`), sorted by host.
    by_host: Vec<(String, usize)>,
    /// Every service reads its requests in one call for every header
    /// ([`Service::reads_all_headers`]): then that one call answers the service key too, and
    /// the key costs no read of its own.
    pub reads_all_headers: bool,
}

impl Plan {
    /// Parses and validates plugin configuration bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        Self::from_json_named(bytes, "meshsplit")
    }

    /// Like [`Plan::from_json`], for the filter instance (Envoy plugin) called `plugin`: the
    /// name keeps least-request counters of different filter instances apart.
    pub fn from_json_named(bytes: &[u8], plugin: &str) -> Result<Self, ConfigError> {
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::new(
                "",
                format!(
                    "configuration is {} bytes; at most {MAX_CONFIG_BYTES} bytes are accepted",
                    bytes.len()
                ),
            ));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ConfigError::new(
                "",
                "configuration is empty; expected a JSON object with a \"services\" list",
            ));
        }
        Self::compile(parse(bytes)?, plugin)
    }

    /// Validates raw configuration and builds the lookup structures.
    pub fn compile(raw: RawConfig, plugin: &str) -> Result<Self, ConfigError> {
        if let Some(name) = &raw.cluster_header {
            check_owned_header("cluster_header", name)?;
        }
        if let Some(name) = &raw.upstream_header {
            check_owned_header("upstream_header", name)?;
            if raw.cluster_header.as_ref() == Some(name) {
                return Err(ConfigError::new(
                    "upstream_header",
                    format!("must differ from cluster_header (both are {name:?})"),
                ));
            }
        }
        let cluster_header = match (raw.cluster_header, &raw.upstream_header) {
            (Some(name), _) => Some(name),
            (None, None) => Some(DEFAULT_CLUSTER_HEADER.to_owned()),
            (None, Some(_)) => None,
        };
        let upstream_header = raw.upstream_header;
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
        at_most("services", "services", raw.services.len(), MAX_SERVICES)?;

        // Each service on its own first, then what must be unique across services.
        let mut services = Vec::with_capacity(raw.services.len());
        let mut hosts: Vec<(String, usize, String)> = Vec::new(); // (key, service, JSON path)
        for (index, raw_service) in raw.services.iter().enumerate() {
            let path = format!("services[{index}]");
            services.push(compile_service(&path, raw_service, plugin)?);
            for (host_path, key) in host_keys(&path, raw_service)? {
                hosts.push((key, index, host_path));
            }
        }
        let mut guarded = 0usize;
        for (index, service) in services.iter().enumerate() {
            if service.guard.is_some() {
                guarded += service.upstreams.len();
                if guarded > MAX_GUARDED_UPSTREAMS {
                    return Err(ConfigError::new(
                        format!("services[{index}].guard"),
                        format!(
                            "guards cover at most {MAX_GUARDED_UPSTREAMS} upstreams in all, and \
                             this one brings them to {guarded} (each tick reads every guarded \
                             upstream's window)"
                        ),
                    ));
                }
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
        check_stat_names(&services)?;
        // A sorted table with binary search: as fast as hashing for this use (measured in the
        // benchmark's 10 000-service scenario) and smaller in the module than a HashMap.
        let mut by_host: Vec<(String, usize)> = hosts
            .into_iter()
            .map(|(key, service, _)| (key, service))
            .collect();
        by_host.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if upstream_header.is_some() {
            // The name is now a header value, which a route matches exactly.
            for (s, service) in services.iter().enumerate() {
                for (u, upstream) in service.upstreams.iter().enumerate() {
                    check_header_value(
                        &format!("services[{s}].upstreams[{u}].name"),
                        &upstream.name,
                    )?;
                }
            }
        }
        let reads_all_headers =
            !services.is_empty() && services.iter().all(|s| s.reads_all_headers);
        Ok(Self {
            headers: OwnedHeaders {
                cluster: cluster_header,
                upstream: upstream_header,
            },
            service_from,
            on_unknown_service,
            services,
            by_host,
            reads_all_headers,
        })
    }

    /// The hosts of the `index`-th service, normalized (lowercase, without port), sorted.
    pub fn hosts_of(&self, index: usize) -> Vec<String> {
        self.by_host
            .iter()
            .filter(|(_, owner)| *owner == index)
            .map(|(host, _)| host.clone())
            .collect()
    }

    /// The service whose hosts contain `key`, which must already be normalized by
    /// [`crate::request::host_key`].
    pub fn service_for(&self, key: &(impl AsRef<[u8]> + ?Sized)) -> Option<&Service> {
        self.lookup(key.as_ref()).map(|(_, service)| service)
    }

    /// What a valid plan may not use when meshsplit runs as a route cluster specifier (native
    /// build), which reads the request but cannot write headers or see the request end.
    pub fn check_cluster_specifier(&self) -> Result<(), ConfigError> {
        if self.headers.upstream.is_some() {
            return Err(ConfigError::new(
                "upstream_header",
                "a cluster specifier picks the cluster itself and writes no header; remove \
                 upstream_header, or use meshsplit as an HTTP filter \
                 (envoy.filters.http.dynamic_modules) for a route that matches the header",
            ));
        }
        for (s, service) in self.services.iter().enumerate() {
            if service.guard.is_some() {
                return Err(ConfigError {
                    path: format!("services[{s}].guard"),
                    message:
                        "the guard needs to see each response, which a cluster specifier does \
                              not; use meshsplit as an HTTP filter \
                              (envoy.filters.http.dynamic_modules) for this service"
                            .to_owned(),
                });
            }
            if let Strategy::LeastRequest(_) = service.strategy {
                return Err(ConfigError {
                    path: format!("services[{s}].strategy"),
                    message: "\"least_request\" needs to see each request end, which a cluster \
                              specifier does not; use meshsplit as an HTTP filter \
                              (envoy.filters.http.dynamic_modules) for this service"
                        .to_owned(),
                });
            }
            for (u, upstream) in service.upstreams.iter().enumerate() {
                if upstream.authority.is_some() {
                    return Err(ConfigError {
                        path: format!("services[{s}].upstreams[{u}].authority"),
                        message: "a cluster specifier cannot rewrite headers; remove it and set \
                                  auto_host_rewrite: true on the route with the endpoint's hostname \
                                  in the cluster, or use meshsplit as an HTTP filter"
                            .to_owned(),
                    });
                }
            }
        }
        self.check_no_assign_cookie(
            "assigning a cookie means setting it on the response, which a cluster specifier \
             cannot touch (it only picks a cluster); use meshsplit as an HTTP filter \
             (envoy.filters.http.dynamic_modules) for this service",
        )
    }

    /// Refuses a plan that assigns cookies where responses are not seen; `why` says where
    /// and what to do instead.
    pub fn check_no_assign_cookie(&self, why: &str) -> Result<(), ConfigError> {
        match self.services.iter().position(|s| s.assign_cookie.is_some()) {
            Some(s) => Err(ConfigError::new(
                format!("services[{s}].assign_cookie"),
                why,
            )),
            None => Ok(()),
        }
    }

    /// The service a parsed request host selects: its host with the port when the config
    /// lists it so (`reviews:9080`), else its host without the port (`reviews`).
    pub fn lookup_host(&self, key: HostKey<'_>) -> Option<(usize, &Service)> {
        key.with_port
            .and_then(|with_port| self.lookup(with_port))
            .or_else(|| self.lookup(key.bare))
    }

    /// The service a raw request key (an authority, or a header or query value) selects:
    /// [`host_key`](crate::request::host_key), then [`Plan::lookup_host`].
    pub fn find(&self, raw: &mut Vec<u8>) -> Option<(usize, &Service)> {
        crate::request::host_key(raw).and_then(|key| self.lookup_host(key))
    }

    /// Like [`Plan::service_for`], with the service's index in `services`.
    pub fn lookup(&self, key: &[u8]) -> Option<(usize, &Service)> {
        let index = self
            .by_host
            .binary_search_by(|(host, _)| host.as_bytes().cmp(key))
            .ok()?;
        let &(_, service) = self.by_host.get(index)?;
        Some((service, self.services.get(service)?))
    }
}

/// Deserializes the raw configuration, tracking the JSON path of the value being read so that
/// a serde error names the field it is about, in the configuration's words
/// (`serde_words`): `services[0].upstreams[1].weight: expected a whole number (0 or more), got the
/// string "10" at line 1 column 87`.
///
/// `serde_path_to_error` costs the module 21.3 KB (202 949 to 224 276 bytes after
/// `wasm-opt -Oz`; see bench/README.md) over a hand-written scanner that recovered the path from
/// serde_json's error position. The scanner got the path wrong whenever that position was not
/// inside the offending value: a missing value, a variant written as a plain string, two variant
/// keys in one object. Configure-time code only; the request path does not change.
fn parse(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    refuse_positional(bytes)?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let raw: RawConfig = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = json_path(e.path());
        ConfigError::new(
            path,
            crate::serde_words::reword(&e.into_inner().to_string()),
        )
    })?;
    // Only white space may follow the document.
    deserializer
        .end()
        .map_err(|e| ConfigError::new("", crate::serde_words::reword(&e.to_string())))?;
    Ok(raw)
}

/// Objects the configuration reads by field name. serde would also take a JSON list for each, by
/// position (`"guard": [0.1]` as `error_rate 0.1`), which no reader can check by its keys; such
/// lists are refused here, with their path, before the configuration is read.
fn refuse_positional(bytes: &[u8]) -> Result<(), ConfigError> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        // Not JSON: the reader says where.
        return Ok(());
    };
    let list = |path: &str, what: &str| {
        Err(ConfigError::new(
            path,
            format!(
                "expected an object, got a list: {what} is read by field name, never by \
                 position"
            ),
        ))
    };
    let object = |value: &serde_json::Value, path: &str, what: &str| -> Result<(), ConfigError> {
        if value.is_array() {
            return list(path, what);
        }
        Ok(())
    };
    let each = |value: Option<&serde_json::Value>,
                path: &str,
                what: &str,
                check: &dyn Fn(&serde_json::Value, &str) -> Result<(), ConfigError>|
     -> Result<(), ConfigError> {
        if let Some(items) = value.and_then(serde_json::Value::as_array) {
            for (i, item) in items.iter().enumerate() {
                let at = format!("{path}[{i}]");
                if item.is_array() {
                    return list(&at, what);
                }
                check(item, &at)?;
            }
        }
        Ok(())
    };
    let none = |_: &serde_json::Value, _: &str| Ok(());
    object(&value, "", "the configuration")?;
    each(
        value.get("services"),
        "services",
        "a service",
        &|service, at| {
            each(
                service.get("upstreams"),
                &format!("{at}.upstreams"),
                "an upstream",
                &none,
            )?;
            each(
                service.get("rules"),
                &format!("{at}.rules"),
                "a rule",
                &|rule, at| {
                    let Some(matcher) = rule.get("match") else {
                        return Ok(());
                    };
                    let at = format!("{at}.match");
                    object(matcher, &at, "a match")?;
                    for key in ["headers", "cookies", "query"] {
                        each(
                            matcher.get(key),
                            &format!("{at}.{key}"),
                            "a condition",
                            &none,
                        )?;
                    }
                    Ok(())
                },
            )?;
            if let Some(guard) = service.get("guard") {
                object(guard, &format!("{at}.guard"), "a guard")?;
                if let Some(latency) = guard.get("latency") {
                    object(
                        latency,
                        &format!("{at}.guard.latency"),
                        "a latency condition",
                    )?;
                }
            }
            if let Some(rollout) = service.get("rollout") {
                object(rollout, &format!("{at}.rollout"), "a rollout")?;
                each(
                    rollout.get("steps"),
                    &format!("{at}.rollout.steps"),
                    "a step",
                    &none,
                )?;
            }
            if let Some(assign) = service.get("assign_cookie") {
                object(assign, &format!("{at}.assign_cookie"), "assign_cookie")?;
            }
            Ok(())
        },
    )
}

/// `services[0].upstreams[1].weight`. An enum's variant reads like a field
/// (`service_from.header`); segments whose key is not known yet (an error while reading an
/// object's next key) are left out, so the path names the object.
fn json_path(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
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
            Ok(ServiceFrom::Header(envoy_header_name(&name)))
        }
        Some(RawServiceFrom::Query(param)) => {
            if param.is_empty() {
                return Err(ConfigError::new("service_from.query", "must not be empty"));
            }
            Ok(ServiceFrom::Query(param))
        }
    }
}

fn compile_service(path: &str, raw: &RawService, plugin: &str) -> Result<Service, ConfigError> {
    check_text(&format!("{path}.name"), &raw.name)?;
    if raw.upstreams.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.upstreams"),
            "must list at least one upstream",
        ));
    }
    at_most(
        format!("{path}.upstreams"),
        "upstreams per service",
        raw.upstreams.len(),
        MAX_UPSTREAMS_PER_SERVICE,
    )?;
    at_most(
        format!("{path}.rules"),
        "rules per service",
        raw.rules.len(),
        MAX_RULES_PER_SERVICE,
    )?;
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
    let configured = Weights::new(&weights).ok_or_else(|| {
        ConfigError::new(
            format!("{path}.upstreams"),
            "weights sum to 0; at least one upstream needs a weight above 0",
        )
    })?;
    let strategy = compile_strategy(path, raw, &upstreams, plugin)?;
    let rules = raw
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| compile_rule(&format!("{path}.rules[{index}]"), rule, &upstreams))
        .collect::<Result<Vec<_>, _>>()?;
    let guard = raw
        .guard
        .as_ref()
        .map(|g| compile_guard(&format!("{path}.guard"), g))
        .transpose()?;
    let rollout = raw
        .rollout
        .as_ref()
        .map(|r| compile_rollout(&format!("{path}.rollout"), r, &upstreams))
        .transpose()?;
    let assign_cookie = compile_assign_cookie(path, raw)?;
    let reads_all_headers = reads_all_headers(&rules, &strategy);
    Ok(Service {
        name: raw.name.clone(),
        upstreams,
        strategy,
        rules,
        guard,
        rollout,
        assign_cookie,
        reads_all_headers,
        configured,
        live: RefCell::new(None),
    })
}

/// Whether a service's requests are read in one call for every header (where the host hands
/// them over at once, proxy-wasm) rather than one read per header its rules and sticky key
/// name (cookies count as the `cookie` header, query parameters as `:path`). Measured in
/// proxy-wasm (bench/README.md, "Reading a request"): a read that returns a value costs about
/// 10.7 k instructions, one that finds nothing 2.0 k, and the whole map of an ordinary request
/// 11.3 k, barely more than one value. So the whole map is the cheaper read as soon as two
/// headers are named and one of them is sure to be there (`:path` always is: a value, and any
/// second read costs more than the difference), or when so many are named
/// ([`WHOLE_MAP_FROM`]) that even all of them absent cost more. Otherwise (one header, or a few
/// that requests mostly lack, such as a canary pin) reading by name is cheaper: an absent header
/// is the not-found answer, and the map is read only when a present first copy fails a
/// condition another copy could pass.
fn reads_all_headers(rules: &[Rule], strategy: &Strategy) -> bool {
    let mut names: Vec<&str> = Vec::new();
    let named = rules
        .iter()
        .flat_map(|r| r.conditions.iter())
        .map(|condition| match condition {
            Condition::Header { name, .. } => name.as_str(),
            Condition::Cookie { .. } => "cookie",
            Condition::Query { .. } => ":path",
        })
        .chain(match strategy {
            Strategy::Sticky { hash_on, .. } => Some(match hash_on {
                HashOn::Header(name) => name.as_str(),
                HashOn::Cookie(_) => "cookie",
                HashOn::Query(_) => ":path",
            }),
            _ => None,
        });
    for name in named {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let path = names.contains(&":path");
    (path && names.len() >= 2) || names.len() >= WHOLE_MAP_FROM
}

/// How many headers named make the whole map the cheaper read even when every one of them is
/// absent (7 not-found reads, about 13 k instructions, against the map's 11.3 k).
pub const WHOLE_MAP_FROM: usize = 7;

fn compile_guard(path: &str, raw: &RawGuard) -> Result<Guard, ConfigError> {
    if raw.error_rate.is_none() && raw.latency.is_none() {
        return Err(ConfigError::new(
            path.to_owned(),
            r#"needs "error_rate", "latency" or both (what ejects an upstream)"#,
        ));
    }
    // A failure share cannot exceed 1, so an error_rate of 1 could never eject anything.
    if raw
        .error_rate
        .is_some_and(|rate| !(rate > 0.0 && rate < 1.0))
    {
        return Err(ConfigError::new(
            format!("{path}.error_rate"),
            // The value itself is not shown: formatting a float would cost the module ~10 KB.
            "must be above 0 and below 1 (a fraction of the requests; a share of failures \
             above 1 cannot happen, so 1 would never eject)",
        ));
    }
    // What judges failures means nothing without a failure rate to judge them by.
    if raw.error_rate.is_none() {
        let judging = [
            ("failure_codes", raw.failure_codes.is_some()),
            ("relative_margin", raw.relative_margin.is_some()),
            ("abandoned_after_ms", raw.abandoned_after_ms.is_some()),
            ("grpc_failure_codes", raw.grpc_failure_codes.is_some()),
        ];
        if let Some((field, _)) = judging.iter().find(|(_, given)| *given) {
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                r#"judges failures, and this guard has no "error_rate" to eject on them"#,
            ));
        }
    }
    let latency = raw
        .latency
        .as_ref()
        .map(|l| compile_latency(&format!("{path}.latency"), l))
        .transpose()?;
    let within = |field: &str, value: Option<u64>, default: u64, min: u64, max: u64| {
        let value = value.unwrap_or(default);
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::new(
                format!("{path}.{field}"),
                format!("must be from {min} to {max}, got {value}"),
            ))
        }
    };
    let mut failure_codes = raw
        .failure_codes
        .clone()
        .unwrap_or_else(|| Guard::DEFAULT_FAILURE_CODES.to_vec());
    if let Some(code) = failure_codes.iter().find(|c| !(400..=599).contains(*c)) {
        return Err(ConfigError::new(
            format!("{path}.failure_codes"),
            format!("{code} is not a 4xx or 5xx status"),
        ));
    }
    failure_codes.sort_unstable();
    failure_codes.dedup();
    let mut grpc_failure_codes = raw
        .grpc_failure_codes
        .clone()
        .unwrap_or_else(|| Guard::DEFAULT_GRPC_FAILURE_CODES.to_vec());
    if let Some(code) = grpc_failure_codes.iter().find(|c| **c > 16) {
        return Err(ConfigError::new(
            format!("{path}.grpc_failure_codes"),
            format!("{code} is not a gRPC status (0 to 16)"),
        ));
    }
    grpc_failure_codes.sort_unstable();
    grpc_failure_codes.dedup();
    let latency_relative_margin = raw.latency.as_ref().and_then(|l| l.relative_margin);
    if let Some(margin) = latency_relative_margin {
        if !(0.0..1.0).contains(&margin) {
            return Err(ConfigError::new(
                format!("{path}.latency.relative_margin"),
                "must be at least 0 and below 1 (a difference of shares of slow requests)",
            ));
        }
    }
    if let Some(margin) = raw.relative_margin {
        if !(0.0..1.0).contains(&margin) {
            return Err(ConfigError::new(
                format!("{path}.relative_margin"),
                "must be at least 0 and below 1 (a difference of failure rates)",
            ));
        }
    }
    Ok(Guard {
        failure_codes,
        grpc_failure_codes,
        latency_relative_margin,
        relative_margin: raw.relative_margin,
        error_rate: raw.error_rate,
        latency,
        min_requests: within(
            "min_requests",
            raw.min_requests,
            Guard::DEFAULT_MIN_REQUESTS,
            1,
            1_000_000,
        )?,
        window_s: within("window_s", raw.window_s, Guard::DEFAULT_WINDOW_S, 1, 3600)?,
        eject_s: within("eject_s", raw.eject_s, Guard::DEFAULT_EJECT_S, 1, 86_400)?,
        max_ejected_percent: within(
            "max_ejected_percent",
            raw.max_ejected_percent,
            Guard::DEFAULT_MAX_EJECTED_PERCENT,
            0,
            100,
        )?,
        abandoned_after_ms: within(
            "abandoned_after_ms",
            raw.abandoned_after_ms,
            Guard::DEFAULT_ABANDONED_AFTER_MS,
            0,
            3_600_000,
        )?,
    })
}

fn compile_latency(path: &str, raw: &RawLatency) -> Result<Latency, ConfigError> {
    // In thousandths, so that deciding is integer arithmetic.
    let milli = raw.percentile * 1000.0;
    if !(raw.percentile > 0.0 && raw.percentile <= 100.0) || (milli - milli.round()).abs() > 1e-6 {
        return Err(ConfigError::new(
            format!("{path}.percentile"),
            "must be above 0 and at most 100, with at most three decimals (95, 99.9)",
        ));
    }
    if !(1..=3_600_000).contains(&raw.threshold_ms) {
        return Err(ConfigError::new(
            format!("{path}.threshold_ms"),
            format!("must be from 1 to 3600000, got {}", raw.threshold_ms),
        ));
    }
    Ok(Latency {
        percentile_milli: milli.round() as u64,
        threshold_ms: raw.threshold_ms,
    })
}

fn compile_rollout(
    path: &str,
    raw: &RawRollout,
    upstreams: &[Upstream],
) -> Result<Rollout, ConfigError> {
    let start_ms = parse_start(&raw.start).ok_or_else(|| {
        ConfigError::new(
            format!("{path}.start"),
            format!(
                "{:?} is not an RFC 3339 UTC time such as \"2026-12-01T10:00:00Z\"",
                raw.start
            ),
        )
    })?;
    if raw.steps.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.steps"),
            "must list at least one step",
        ));
    }
    at_most(
        format!("{path}.steps"),
        "steps",
        raw.steps.len(),
        MAX_ROLLOUT_STEPS,
    )?;
    let mut steps: Vec<Step> = Vec::with_capacity(raw.steps.len());
    for (index, raw_step) in raw.steps.iter().enumerate() {
        let at = format!("{path}.steps[{index}]");
        if let Some(previous) = steps.last() {
            if raw_step.at_s <= previous.at_s {
                return Err(ConfigError::new(
                    format!("{at}.at_s"),
                    format!(
                        "steps must be in order: {} is not after the previous step's {}",
                        raw_step.at_s, previous.at_s
                    ),
                ));
            }
        }
        let mut weights = vec![0u32; upstreams.len()];
        let mut named = vec![false; upstreams.len()];
        for (name, weight) in &raw_step.weights.0 {
            let field = format!("{at}.weights.{name}");
            let Some(i) = upstreams.iter().position(|u| &u.name == name) else {
                let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                return Err(ConfigError::new(
                    field,
                    format!(
                        "no upstream named {name:?} in this service (upstreams: {})",
                        names.join(", ")
                    ),
                ));
            };
            if named.get(i).copied().unwrap_or(false) {
                return Err(ConfigError::new(field, "listed twice"));
            }
            let weight = u32::try_from(*weight)
                .ok()
                .filter(|&w| u64::from(w) <= MAX_WEIGHT)
                .ok_or_else(|| {
                    ConfigError::new(
                        field.clone(),
                        format!("must be at most {MAX_WEIGHT}, got {weight}"),
                    )
                })?;
            if let (Some(slot), Some(seen)) = (weights.get_mut(i), named.get_mut(i)) {
                *slot = weight;
                *seen = true;
            }
        }
        if weights.iter().all(|&w| w == 0) {
            return Err(ConfigError::new(
                format!("{at}.weights"),
                "weights sum to 0; at least one upstream needs a weight above 0",
            ));
        }
        steps.push(Step {
            at_s: raw_step.at_s,
            weights: weights.into(),
        });
    }
    Ok(Rollout {
        start_ms,
        interpolate: raw.interpolate,
        steps: steps.into(),
    })
}

fn compile_strategy(
    path: &str,
    raw: &RawService,
    upstreams: &[Upstream],
    plugin: &str,
) -> Result<Strategy, ConfigError> {
    let strategy = raw.strategy.unwrap_or(RawStrategy::Weighted);
    match (&raw.hash_on, strategy) {
        (None, RawStrategy::Sticky) => {
            return Err(ConfigError::new(
                format!("{path}.hash_on"),
                "required with strategy \"sticky\": {\"header\": NAME}, {\"cookie\": NAME} or {\"query\": NAME}",
            ))
        }
        (Some(_), RawStrategy::Weighted | RawStrategy::RoundRobin | RawStrategy::LeastRequest) => {
            return Err(ConfigError::new(
                format!("{path}.hash_on"),
                "only allowed with strategy \"sticky\"",
            ))
        }
        _ => {}
    }
    Ok(match strategy {
        RawStrategy::Weighted => Strategy::Weighted,
        RawStrategy::RoundRobin => {
            Strategy::RoundRobin(upstreams.iter().map(|_| Cell::new(0)).collect())
        }
        RawStrategy::LeastRequest => Strategy::LeastRequest(
            upstreams
                .iter()
                .map(|u| InFlight {
                    key: counter_key(plugin, &raw.name, &u.name),
                    gauge: format!(
                        "meshsplit.{}.{}.{}.in_flight",
                        stat_segment(plugin),
                        stat_segment(&raw.name),
                        stat_segment(&u.name)
                    ),
                    gauge_id: Cell::new(None),
                })
                .collect(),
        ),
        RawStrategy::Sticky => {
            let hash_on = match &raw.hash_on {
                Some(RawHashOn::Header(name)) => {
                    check_header_name(&format!("{path}.hash_on.header"), name)?;
                    HashOn::Header(envoy_header_name(name))
                }
                Some(RawHashOn::Cookie(name)) => {
                    check_cookie_name(&format!("{path}.hash_on.cookie"), name)?;
                    HashOn::Cookie(name.clone())
                }
                Some(RawHashOn::Query(name)) => {
                    check_text(&format!("{path}.hash_on.query"), name)?;
                    HashOn::Query(name.clone())
                }
                None => return Err(ConfigError::new(format!("{path}.hash_on"), "required")),
            };
            Strategy::Sticky {
                hash_on,
                ids: upstreams
                    .iter()
                    .map(|u| sticky_hash(u.name.as_bytes()))
                    .collect(),
            }
        }
    })
}

/// `assign_cookie`: only on a sticky service that hashes a cookie, whose name it sets.
fn compile_assign_cookie(
    path: &str,
    raw: &RawService,
) -> Result<Option<AssignCookie>, ConfigError> {
    let Some(assign) = &raw.assign_cookie else {
        return Ok(None);
    };
    let at = format!("{path}.assign_cookie");
    let name = match (raw.strategy, &raw.hash_on) {
        (Some(RawStrategy::Sticky), Some(RawHashOn::Cookie(name))) => name,
        _ => {
            return Err(ConfigError::new(
                at,
                "only allowed with strategy \"sticky\" and \"hash_on\": {\"cookie\": NAME}: \
                 meshsplit assigns the cookie the service hashes",
            ))
        }
    };
    if !crate::cookie::is_token(name) {
        return Err(ConfigError::new(
            format!("{path}.hash_on.cookie"),
            format!(
                "{name:?} cannot be set as a cookie name with assign_cookie: use letters, \
                 digits and !#$%&'*+-.^_`|~ only"
            ),
        ));
    }
    crate::cookie::compile(&at, name, assign).map(Some)
}

/// The shared-data key of one least-request counter. Each name is length-prefixed, so no choice
/// of names (they may contain `/`) makes two counters share a key.
fn counter_key(plugin: &str, service: &str, upstream: &str) -> String {
    format!(
        "meshsplit/load/{}:{plugin}/{}:{service}/{}:{upstream}",
        plugin.len(),
        service.len(),
        upstream.len()
    )
}

/// Refuses services (across the plan) and upstreams (within a service) whose stat names are
/// equal: their counters and gauges would be one and the same metric, summed together.
fn check_stat_names(services: &[Service]) -> Result<(), ConfigError> {
    if let Some((first, repeat, segment)) = stat_clash(services.iter().map(|s| s.name.as_str())) {
        let name = |i: usize| services.get(i).map_or("", |s| s.name.as_str());
        return Err(stat_name_clash(
            format!("services[{repeat}].name"),
            name(repeat),
            &segment,
            &format!("services[{first}].name"),
            name(first),
        ));
    }
    for (s, service) in services.iter().enumerate() {
        let upstreams = &service.upstreams;
        if let Some((first, repeat, segment)) =
            stat_clash(upstreams.iter().map(|u| u.name.as_str()))
        {
            let name = |i: usize| upstreams.get(i).map_or("", |u| u.name.as_str());
            return Err(stat_name_clash(
                format!("services[{s}].upstreams[{repeat}].name"),
                name(repeat),
                &segment,
                &format!("services[{s}].upstreams[{first}].name"),
                name(first),
            ));
        }
    }
    Ok(())
}

/// The first of `names` whose stat segment repeats an earlier one's: (first, repeat, segment).
fn stat_clash<'a>(names: impl Iterator<Item = &'a str>) -> Option<(usize, usize, String)> {
    let segments: Vec<String> = names.map(stat_segment).collect();
    let refs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (first, repeat) = first_duplicate(&refs)?;
    Some((
        first,
        repeat,
        segments.get(repeat).cloned().unwrap_or_default(),
    ))
}

fn stat_name_clash(
    path: String,
    name: &str,
    segment: &str,
    first_path: &str,
    first: &str,
) -> ConfigError {
    ConfigError::new(
        path,
        format!(
            "{name:?} has the stat name {segment:?}, the same as {first_path} ({first:?}), so \
             their metrics would be summed together (stat names keep only letters, digits, '-' \
             and '_'); rename one"
        ),
    )
}

/// A name made safe as one segment of an Envoy stat name (no dots or colons).
pub fn stat_segment(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn compile_rule(path: &str, raw: &RawRule, upstreams: &[Upstream]) -> Result<Rule, ConfigError> {
    let upstream = upstreams
        .iter()
        .position(|u| u.name == raw.upstream)
        .ok_or_else(|| {
            let names: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
            ConfigError::new(
                format!("{path}.upstream"),
                format!(
                    "no upstream named {:?} in this service (upstreams: {})",
                    raw.upstream,
                    names.join(", ")
                ),
            )
        })?;
    let m = &raw.matcher;
    if m.headers.is_empty() && m.cookies.is_empty() && m.query.is_empty() {
        return Err(ConfigError::new(
            format!("{path}.match"),
            "must list at least one condition (headers, cookies or query)",
        ));
    }
    let count = m.headers.len() + m.cookies.len() + m.query.len();
    at_most(
        format!("{path}.match"),
        "conditions per rule",
        count,
        MAX_CONDITIONS_PER_RULE,
    )?;
    let mut conditions = Vec::with_capacity(count);
    for (index, h) in m.headers.iter().enumerate() {
        let at = format!("{path}.match.headers[{index}]");
        check_rule_header_name(&format!("{at}.name"), &h.name)?;
        let test = match (&h.exact, &h.prefix, h.present) {
            (Some(v), None, None) => HeaderTest::Exact(v.clone()),
            (None, Some(v), None) => HeaderTest::Prefix(v.clone()),
            (None, None, Some(true)) => HeaderTest::Present,
            (None, None, Some(false)) => {
                return Err(ConfigError::new(
                    format!("{at}.present"),
                    "only true is supported (a header that must be absent is not a condition)",
                ))
            }
            _ => {
                return Err(ConfigError::new(
                    at,
                    "needs exactly one of \"exact\", \"prefix\" or \"present\": true",
                ))
            }
        };
        conditions.push(Condition::Header {
            name: envoy_header_name(&h.name),
            test,
        });
    }
    for (index, c) in m.cookies.iter().enumerate() {
        check_cookie_name(&format!("{path}.match.cookies[{index}].name"), &c.name)?;
        // A cookie's value ends at the first `;` of the header (browsers and Envoy split there).
        if c.exact.contains(';') {
            return Err(ConfigError::new(
                format!("{path}.match.cookies[{index}].exact"),
                format!(
                    "{:?} holds a ';', which ends a cookie's value: no cookie could match it",
                    c.exact
                ),
            ));
        }
        conditions.push(Condition::Cookie {
            name: c.name.clone(),
            value: c.exact.clone(),
        });
    }
    for (index, q) in m.query.iter().enumerate() {
        check_text(&format!("{path}.match.query[{index}].name"), &q.name)?;
        conditions.push(Condition::Query {
            name: q.name.clone(),
            value: q.exact.clone(),
        });
    }
    Ok(Rule {
        conditions,
        upstream,
    })
}

/// A header name a rule may test: a lowercase header name or a pseudo-header such as `:path`.
/// The name under which Envoy keeps header `name`: `host` is `:authority` (HTTP/1.1's Host and
/// HTTP/2's `:authority` are one header in Envoy, and a list of every header shows only the
/// latter), so a rule, a sticky key or a service key on `host` reads `:authority`.
fn envoy_header_name(name: &str) -> String {
    if name.eq_ignore_ascii_case("host") {
        ":authority".to_owned()
    } else {
        name.to_owned()
    }
}

fn check_rule_header_name(path: &str, name: &str) -> Result<(), ConfigError> {
    match name.strip_prefix(':') {
        Some(pseudo) if !pseudo.is_empty() => check_header_name(path, pseudo),
        _ => check_header_name(path, name),
    }
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
    at_most(
        format!("{path}.hosts"),
        "hosts per service",
        hosts.len(),
        MAX_HOSTS_PER_SERVICE,
    )?;
    let mut keys: Vec<(String, String)> = Vec::with_capacity(hosts.len());
    for (index, host) in hosts.iter().enumerate() {
        let host_path = if raw.hosts.is_some() {
            format!("{path}.hosts[{index}]")
        } else {
            format!("{path}.name")
        };
        check_host(&host_path, host)?;
        let key = host_key_str(host).ok_or_else(|| {
            ConfigError::new(host_path.clone(), format!("not a valid host: {host:?}"))
        })?;
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

/// A header name the filter may own (`cluster_header`, `upstream_header`, named by `PATH`):
/// valid, and not one that carries request semantics.
fn check_owned_header(path: &str, name: &str) -> Result<(), ConfigError> {
    let advice = format!(
        "the filter overwrites the {} on every request; use a header of its own, such as {:?}",
        path.replace('_', " "),
        if path == "upstream_header" {
            DEFAULT_UPSTREAM_HEADER
        } else {
            DEFAULT_CLUSTER_HEADER
        }
    );
    check_header_name(path, name)?;
    if let Some((_, why)) = RESERVED_HEADERS
        .iter()
        .find(|(reserved, _)| *reserved == name)
    {
        return Err(ConfigError::new(
            path,
            format!("must not be {name:?}: {why}, and {advice}"),
        ));
    }
    if name.starts_with("x-envoy-") {
        // Envoy acts on some of these (x-envoy-original-dst-host picks an original-destination
        // endpoint, x-envoy-retry-on sets retries) and strips or rewrites others.
        return Err(ConfigError::new(
            path,
            format!("must not be {name:?}: headers starting with \"x-envoy-\" are Envoy's own, and {advice}"),
        ));
    }
    Ok(())
}

/// A host a service is matched by: a DNS name (letters, digits, `-`, and `_` as Kubernetes
/// and SRV names use it), an IPv4 literal, or an IPv6 literal written `[::1]` or `::1`; with
/// an optional `:port` (ignored when matching) and an optional trailing dot.
fn check_host(path: &str, host: &str) -> Result<(), ConfigError> {
    if host.contains('*') {
        return Err(ConfigError::new(
            path,
            format!("{host:?}: wildcards are not supported; list each host explicitly"),
        ));
    }
    host_form(host)
        .map_err(|why| ConfigError::new(path, format!("not a valid host: {host:?} ({why})")))
}

fn host_form(host: &str) -> Result<(), String> {
    if let Some(bracketed) = host.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or("'[' without a closing ']'")?;
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{inside:?} is not a valid IPv6 address"));
        }
        return match after.strip_prefix(':') {
            Some(port) => port_form(port),
            None if after.is_empty() => Ok(()),
            None => Err("only a :port may follow ']'".to_owned()),
        };
    }
    match host.split(':').count() {
        1 => name_form(host),
        2 => {
            let (name, port) = host.split_once(':').unwrap_or((host, ""));
            name_form(name)?;
            port_form(port)
        }
        _ if host.parse::<Ipv6Addr>().is_ok() => Ok(()),
        _ => Err("more than one ':' and not a valid IPv6 address".to_owned()),
    }
}

fn port_form(port: &str) -> Result<(), String> {
    match port.parse::<u16>() {
        Ok(_) if port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(format!("port {port:?} is not a number from 0 to 65535")),
    }
}

/// A DNS name (RFC 1123 labels; `_` tolerated) or an IPv4 literal, with an optional trailing
/// dot.
fn name_form(name: &str) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("empty name".to_owned());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".to_owned());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".to_owned());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(bad) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(format!("bad character {bad:?}"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    // A name whose last label is numeric can only be an IPv4 address (no top-level domain is
    // numeric), so `10.0.0.256` or `10.1` is a mistake rather than a name.
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    if numeric_tld && name.parse::<Ipv4Addr>().is_err() {
        return Err("not a valid IPv4 address".to_owned());
    }
    Ok(())
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

/// A cookie name that a `cookie` header can carry: `=` ends a name and `;` ends a cookie, so a
/// name holding either could never match.
fn check_cookie_name(path: &str, name: &str) -> Result<(), ConfigError> {
    check_text(path, name)?;
    if let Some(bad) = name.chars().find(|&c| c == '=' || c == ';') {
        return Err(ConfigError::new(
            path,
            format!("{name:?} is not a valid cookie name (bad character {bad:?}): no cookie could match it"),
        ));
    }
    Ok(())
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

#[cfg(test)]
#[path = "config_error_table_tests.rs"]
mod config_error_table_tests;

#[cfg(test)]
#[path = "plan_render.rs"]
pub(crate) mod render;
