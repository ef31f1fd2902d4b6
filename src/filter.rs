//! The HTTP filter: what happens to one request's headers, written against the [`Host`] trait;
//! the per-VM state (plans by root context, random generator); and the thin glue the exported
//! ABI callbacks in `abi.rs` call (wasm32 only).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::rc::Rc;

use rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::host::{Host, SharedWrite};
use crate::in_flight;
use crate::metrics::{Counted, PlanCounters};
use crate::plan::{
    Condition, ConfigError, HashOn, HeaderTest, OnUnknownService, Plan, Service, ServiceFrom,
    Strategy,
};
use crate::request::{host_key, query_param, RequestView};
use crate::select::{least_request, rendezvous, smooth_round_robin, sticky_hash};

/// What the stream should do after its request headers were handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request go on to the router.
    Continue,
    /// A local reply was sent; stop processing.
    Replied,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub verdict: Verdict,
    /// `(service, upstream)` indexes when the request now holds one in-flight count of a
    /// least-request upstream, to give back when the stream ends.
    pub lease: Option<(usize, usize)>,
    /// What the request adds to the plan's counters.
    pub counted: Counted,
}

impl Routed {
    fn unknown(verdict: Verdict) -> Self {
        Self {
            verdict,
            lease: None,
            counted: Counted::Unknown {
                rejected: verdict == Verdict::Replied,
            },
        }
    }
}

/// Routes one request: pick an upstream of the requested service (first matching rule, else
/// the service's strategy) and write the cluster header (and `:authority` when the upstream
/// sets one). Weighted and round-robin services: one header read, then one or two writes.
pub fn on_request_headers<H, R>(plan: &Plan, rng: &mut R, host: &H) -> Routed
where
    H: Host + ?Sized,
    R: Rng + ?Sized,
{
    let mut raw_key = read_service_key(plan, host);
    let key = raw_key.as_deref_mut().map(host_key);
    let Some((service_index, service)) = key.and_then(|k| plan.lookup(k)) else {
        return Routed::unknown(unknown_service(plan, key, host));
    };
    let (upstream_index, leased, rule) = choose_upstream(service, rng, host);
    let Some(upstream) = service.upstreams.get(upstream_index) else {
        let mut routed = Routed::unknown(unknown_service(plan, key, host));
        routed.counted = Counted::Nothing;
        return routed;
    };
    // Always overwrite: a client-sent cluster header is never honoured.
    host.set_request_header(&plan.cluster_header, Some(&upstream.cluster));
    if let Some(authority) = &upstream.authority {
        host.set_request_header(":authority", Some(authority));
    }
    Routed {
        verdict: Verdict::Continue,
        lease: leased.then_some((service_index, upstream_index)),
        counted: Counted::Upstream {
            service: service_index,
            upstream: upstream_index,
            rule,
        },
    }
}

/// The upstream index for a request of `service`, whether it took an in-flight count, and the
/// index of the rule that chose it (`None`: the strategy did).
fn choose_upstream<H, R>(service: &Service, rng: &mut R, host: &H) -> (usize, bool, Option<usize>)
where
    H: Host + ?Sized,
    R: Rng + ?Sized,
{
    let mut request = RequestView::new(host);
    let rule = service
        .rules
        .iter()
        .position(|rule| rule.conditions.iter().all(|c| holds(c, &mut request)));
    let ruled = rule.and_then(|r| service.rules.get(r)).map(|r| r.upstream);
    let weights = service.weights();
    // The least-request count and CAS token read for the chosen upstream, reused to update it.
    let mut seen = None;
    let index = ruled
        .or_else(|| match &service.strategy {
            Strategy::Weighted => None,
            Strategy::RoundRobin(state) => smooth_round_robin(weights, state),
            Strategy::Sticky { hash_on, ids } => {
                let key = sticky_key(hash_on, &mut request)?;
                rendezvous(&key, ids.iter().copied().zip(weights.iter().copied()))
            }
            Strategy::LeastRequest(slots) => {
                let counts: Vec<(u64, u32)> =
                    slots.iter().map(|s| in_flight::read(host, s)).collect();
                let loads: Vec<u64> = counts.iter().map(|&(n, _)| n).collect();
                let index = least_request(weights, &loads, rng)?;
                seen = counts.get(index).copied();
                Some(index)
            }
        })
        // Weighted services, and sticky requests without a key: at random by weight.
        .unwrap_or_else(|| service.pick_weighted(rng));
    let leased = match &service.strategy {
        Strategy::LeastRequest(slots) => slots
            .get(index)
            .is_some_and(|slot| in_flight::acquire(host, slot, seen)),
        _ => false,
    };
    (index, leased, rule)
}

/// Conditions compare bytes: a configured value (UTF-8 text) matches exactly the request bytes
/// that spell it, and bytes that are not UTF-8 match no configured value.
fn holds<'a, H: Host + ?Sized>(condition: &'a Condition, request: &mut RequestView<'a, H>) -> bool {
    match condition {
        Condition::Header { name, test } => match (request.header(name), test) {
            (Some(value), HeaderTest::Exact(expected)) => value == expected.as_bytes(),
            (Some(value), HeaderTest::Prefix(prefix)) => value.starts_with(prefix.as_bytes()),
            (Some(_), HeaderTest::Present) => true,
            (None, _) => false,
        },
        Condition::Cookie { name, value } => request.cookie(name) == Some(value.as_bytes()),
        Condition::Query { name, value } => {
            request.query(name).as_deref() == Some(value.as_bytes())
        }
    }
}

/// The key a sticky service hashes, as raw bytes; `None` when the request has none (or an
/// empty one).
fn sticky_key<'a, 'v, H: Host + ?Sized>(
    hash_on: &'a HashOn,
    request: &'v mut RequestView<'a, H>,
) -> Option<Cow<'v, [u8]>> {
    let key = match hash_on {
        HashOn::Header(name) => request.header(name).map(Cow::Borrowed),
        HashOn::Cookie(name) => request.cookie(name).map(Cow::Borrowed),
        HashOn::Query(name) => request.query(name),
    };
    key.filter(|k| !k.is_empty())
}

fn unknown_service<H: Host + ?Sized>(plan: &Plan, key: Option<&[u8]>, host: &H) -> Verdict {
    if plan.on_unknown_service == OnUnknownService::Reject {
        let body = unknown_service_body(key);
        if host.send_local_reply(
            404,
            &[("content-type", "application/json")],
            body.as_bytes(),
        ) {
            return Verdict::Replied;
        }
        // The host refused the reply: let the request go on rather than hang it.
    }
    host.set_request_header(&plan.cluster_header, None);
    Verdict::Continue
}

/// `{"error":"unknown service","service":KEY}` (`null` without a key), written by hand: the
/// reject path is the only place the module would otherwise need a JSON serializer. Bytes of
/// the key that are not UTF-8 are shown as U+FFFD (the body is JSON, so it must be text).
fn unknown_service_body(key: Option<&[u8]>) -> String {
    let mut body = String::from(r#"{"error":"unknown service","service":"#);
    match key {
        None => body.push_str("null"),
        Some(key) => {
            body.push('"');
            for c in String::from_utf8_lossy(key).chars() {
                match c {
                    '"' => body.push_str("\\\""),
                    '\\' => body.push_str("\\\\"),
                    c if u32::from(c) < 0x20 => {
                        body.push_str(&format!("\\u{:04x}", u32::from(c)));
                    }
                    c => body.push(c),
                }
            }
            body.push('"');
        }
    }
    body.push('}');
    body
}

fn read_service_key<H: Host + ?Sized>(plan: &Plan, host: &H) -> Option<Vec<u8>> {
    match &plan.service_from {
        ServiceFrom::Authority => host.request_header(":authority"),
        ServiceFrom::Header(name) => host.request_header(name),
        ServiceFrom::Query(param) => {
            let path = host.request_header(":path")?;
            query_param(&path, param.as_bytes()).map(Cow::into_owned)
        }
    }
}

/// A short fingerprint of a configuration's bytes (hex), so operators can tell from the log
/// and from `meshsplit check` which configuration is live.
pub fn config_fingerprint(bytes: &[u8]) -> String {
    format!("{:08x}", sticky_hash(bytes) >> 32)
}

/// How many services the accepted-configuration line names before it only counts the rest.
const SUMMARY_SERVICES: usize = 8;

/// One line describing an accepted plan: services, upstreams (cluster and weight), strategies.
pub fn config_summary(plan: &Plan, fingerprint: &str, plugin: &str) -> String {
    let upstreams: usize = plan.services.iter().map(|s| s.upstreams.len()).sum();
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut line = format!(
        "configuration {fingerprint} accepted for {plugin}: {}, {}",
        plural(plan.services.len(), "service", "services"),
        plural(upstreams, "upstream", "upstreams"),
    );
    for (index, service) in plan.services.iter().enumerate() {
        if index == SUMMARY_SERVICES {
            let rest = plan.services.len() - index;
            let noun = if rest == 1 { "service" } else { "services" };
            line.push_str(&format!("; and {rest} more {noun}"));
            break;
        }
        line.push_str(if index == 0 { ": " } else { "; " });
        line.push_str(&format!("{} ({}", service.name, service.strategy.name()));
        for upstream in &service.upstreams {
            line.push_str(&format!(
                ", {}={} {}",
                upstream.name, upstream.cluster, upstream.weight
            ));
        }
        if !service.rules.is_empty() {
            line.push_str(&format!(
                ", {}",
                plural(service.rules.len(), "rule", "rules")
            ));
        }
        line.push(')');
    }
    line
}

/// Seconds within which the same configuration accepted again counts as the same acceptance.
pub const ANNOUNCE_WINDOW_S: u64 = 10;

/// Whether this VM is the first of its Envoy (same `vm_id`) to accept configuration
/// `fingerprint` for `plugin`. Envoy configures each plugin on the main thread and then on every
/// worker within moments, so the accepted-configuration line is logged once: by the first VM,
/// unless the same configuration was already announced less than [`ANNOUNCE_WINDOW_S`] ago.
/// Keyed by fingerprint, so listeners with different configurations are each announced.
pub fn first_to_accept<H: Host + ?Sized>(
    host: &H,
    plugin: &str,
    fingerprint: &str,
    now_s: u64,
) -> bool {
    first_to_report(host, "accepted", plugin, fingerprint, now_s)
}

/// Like [`first_to_accept`], for a refused configuration (counted once per Envoy).
pub fn first_to_refuse<H: Host + ?Sized>(
    host: &H,
    plugin: &str,
    fingerprint: &str,
    now_s: u64,
) -> bool {
    first_to_report(host, "refused", plugin, fingerprint, now_s)
}

fn first_to_report<H: Host + ?Sized>(
    host: &H,
    event: &str,
    plugin: &str,
    fingerprint: &str,
    now_s: u64,
) -> bool {
    let key = format!("meshsplit/{event}/{}:{plugin}/{fingerprint}", plugin.len());
    for _ in 0..8 {
        let cas = match host.shared_data(&key) {
            Some((value, cas)) => {
                let then = value.as_slice().try_into().map_or(0, u64::from_le_bytes);
                if now_s.saturating_sub(then) < ANNOUNCE_WINDOW_S {
                    return false;
                }
                cas
            }
            None => 0,
        };
        match host.set_shared_data(&key, &now_s.to_le_bytes(), cas) {
            SharedWrite::Written => return true,
            SharedWrite::CasMismatch => continue,
            // No shared data: log on every VM rather than never.
            SharedWrite::Failed => return true,
        }
    }
    false
}

/// Counter of requests that passed untouched because their filter instance had no plan.
pub const UNPLANNED_COUNTER: &str = "meshsplit.requests_without_plan";

/// The state of one VM (one per Envoy worker and per main thread): a plan per root context and
/// the VM's random generator.
///
/// Every filter instance sharing the VM (listeners with the same `vm_id` and module, or the
/// configs before and after a live update) has its own root context, and a stream is routed
/// only with the plan of the root it was created under. Plans are never evicted while their
/// root lives: Envoy deletes the root contexts it no longer needs, and their plans go with them,
/// so memory is bounded by the live roots.
pub struct Vm {
    roots: Vec<RootPlan>,
    /// The stream created last and its root. Envoy creates a stream's context immediately before
    /// calling its request-headers callback, so this names the root of that request.
    last_stream: Option<(u32, u32)>,
    rng: Xoshiro256PlusPlus,
    /// Streams holding an in-flight count of a least-request upstream, until they end.
    leases: BTreeMap<u32, Lease>,
    /// The counter of requests without a plan, once defined (on the first such request).
    unplanned: Option<u32>,
    /// Whether the first request without a plan was logged (once per VM).
    unplanned_logged: bool,
}

struct Lease {
    plan: Rc<Plan>,
    service: usize,
    upstream: usize,
}

struct RootPlan {
    id: u32,
    plan: Rc<Plan>,
    counters: PlanCounters,
}

impl Vm {
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            roots: Vec::new(),
            last_stream: None,
            rng: Xoshiro256PlusPlus::from_seed(seed),
            leases: BTreeMap::new(),
            unplanned: None,
            unplanned_logged: false,
        }
    }

    /// Parses and installs a plugin configuration for `root` of the filter instance (Envoy
    /// plugin) named `plugin`. On error nothing changes: the previous plan, if any, keeps serving.
    pub fn configure<H: Host + ?Sized>(
        &mut self,
        root: u32,
        bytes: &[u8],
        plugin: &str,
        host: &H,
    ) -> Result<Rc<Plan>, ConfigError> {
        let plan = Plan::from_json_named(bytes, plugin)?;
        for service in &plan.services {
            if let Strategy::LeastRequest(slots) = &service.strategy {
                for slot in slots.iter() {
                    slot.gauge_id.set(host.define_gauge(&slot.gauge));
                    in_flight::ensure(host, slot);
                }
            }
        }
        let counters = PlanCounters::new(&plan, plugin);
        let plan = Rc::new(plan);
        match self.roots.iter_mut().find(|r| r.id == root) {
            Some(entry) => {
                // What the old plan counted is not lost.
                entry.counters.flush(&entry.plan, host);
                entry.plan = Rc::clone(&plan);
                entry.counters = counters;
            }
            None => self.roots.push(RootPlan {
                id: root,
                plan: Rc::clone(&plan),
                counters,
            }),
        }
        Ok(plan)
    }

    /// The housekeeping tick of root context `root` (about once a second): adds what its plan
    /// counted since the last tick to Envoy's counters.
    pub fn tick<H: Host + ?Sized>(&mut self, root: u32, host: &H) {
        if let Some(entry) = self.roots.iter_mut().find(|r| r.id == root) {
            entry.counters.flush(&entry.plan, host);
        }
    }

    /// How many root contexts (filter instances) hold a plan in this VM.
    pub fn plans(&self) -> usize {
        self.roots.len()
    }

    /// A stream context was created under root context `parent`.
    pub fn stream_created(&mut self, context: u32, parent: u32) {
        self.last_stream = Some((context, parent));
    }

    /// The index in `roots` of the root a stream was created under; never another root's.
    fn root_of(&self, context: u32) -> Option<usize> {
        let root = match self.last_stream {
            Some((ctx, root)) if ctx == context => root,
            _ => return None,
        };
        self.roots.iter().position(|r| r.id == root)
    }

    /// Handles a stream's request headers. A stream whose root has no plan (not configured, or
    /// not known) passes untouched: counted, and logged once per VM.
    pub fn request_headers<H: Host + ?Sized>(&mut self, context: u32, host: &H) -> Verdict {
        let Some(entry) = self.root_of(context).and_then(|i| self.roots.get_mut(i)) else {
            self.count_unplanned(context, host);
            return Verdict::Continue;
        };
        let routed = on_request_headers(&entry.plan, &mut self.rng, host);
        // Compiled out only in the benchmark's comparison module (feature `bench-uncounted`).
        if cfg!(not(feature = "bench-uncounted")) {
            entry.counters.count(routed.counted);
        }
        if let Some((service, upstream)) = routed.lease {
            self.leases.insert(
                context,
                Lease {
                    plan: Rc::clone(&entry.plan),
                    service,
                    upstream,
                },
            );
        }
        routed.verdict
    }

    fn count_unplanned<H: Host + ?Sized>(&mut self, context: u32, host: &H) {
        if self.unplanned.is_none() {
            self.unplanned = host.define_counter(UNPLANNED_COUNTER);
        }
        if let Some(id) = self.unplanned {
            host.increment_counter(id, 1);
        }
        if !self.unplanned_logged {
            self.unplanned_logged = true;
            let root = match self.last_stream {
                Some((ctx, root)) if ctx == context => format!("root context {root}"),
                _ => "an unknown root context".to_owned(),
            };
            log::warn!(
                "a request of {root} passed without routing: its filter instance has no \
                 configuration in this VM (counted in wasmcustom.{UNPLANNED_COUNTER}; logged once)"
            );
        }
    }

    /// A context was deleted. A stream's ends however it ended (finished, reset, aborted,
    /// answered locally): give back its in-flight count, if it holds one. A root context's means
    /// its filter instance is gone: drop its plan. Returns whether a plan was dropped.
    pub fn context_deleted<H: Host + ?Sized>(&mut self, context: u32, host: &H) -> bool {
        if let Some(index) = self.roots.iter().position(|r| r.id == context) {
            let mut entry = self.roots.swap_remove(index);
            entry.counters.flush(&entry.plan, host);
            return true;
        }
        if self.leases.is_empty() {
            return false;
        }
        let Some(lease) = self.leases.remove(&context) else {
            return false;
        };
        if let Some(Strategy::LeastRequest(slots)) =
            lease.plan.services.get(lease.service).map(|s| &s.strategy)
        {
            if let Some(slot) = slots.get(lease.upstream) {
                in_flight::release(host, slot);
            }
        }
        false
    }
}

#[cfg(target_arch = "wasm32")]
pub use glue::{
    on_configure, on_context_create, on_context_delete, on_stream_request_headers, on_tick,
    on_vm_start,
};

/// The VM-global state behind the exported callbacks (a wasm VM is single-threaded).
#[cfg(target_arch = "wasm32")]
mod glue {
    use std::cell::RefCell;

    use super::{Verdict, Vm};
    use crate::abi;
    use crate::host::{EnvoyHost, Host};

    thread_local! {
        static VM: RefCell<Option<Vm>> = const { RefCell::new(None) };
    }

    struct HostLogger;

    impl log::Log for HostLogger {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            match record.args().as_str() {
                Some(message) => abi::log(record.level(), message),
                None => abi::log(record.level(), &record.args().to_string()),
            }
        }
        fn flush(&self) {}
    }

    static LOGGER: HostLogger = HostLogger;

    fn with_vm<T>(f: impl FnOnce(&mut Vm) -> T) -> Option<T> {
        VM.with(|cell| {
            let mut slot = cell.try_borrow_mut().ok()?;
            if slot.is_none() {
                *slot = Some(Vm::new(seed()));
            }
            slot.as_mut().map(f)
        })
    }

    /// Seeded once per VM, so the request path never asks the host for randomness.
    fn seed() -> [u8; 32] {
        let mut seed = [0u8; 32];
        if let Err(err) = getrandom::fill(&mut seed) {
            log::warn!("no random seed from the host ({err}); seeding from the clock");
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed[..16].copy_from_slice(&nanos.to_le_bytes());
        }
        seed
    }

    pub fn on_vm_start() {
        // The host filters by its own log level; the request path does not log.
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Trace);
        }
        std::panic::set_hook(Box::new(|info| {
            abi::log(log::Level::Error, &format!("panic: {info}"))
        }));
    }

    pub fn on_configure(root: u32, bytes: &[u8]) -> bool {
        let started = std::time::Instant::now();
        let plugin = abi::plugin_name().unwrap_or_else(|| "meshsplit".to_owned());
        let fingerprint = super::config_fingerprint(bytes);
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let result = with_vm(|vm| match vm.configure(root, bytes, &plugin, &EnvoyHost) {
            Ok(plan) => {
                // The housekeeping tick of this root context: counters are flushed on it.
                if let Err(status) = abi::set_tick_period_milliseconds(TICK_MS) {
                    log::warn!("no housekeeping tick (status {status}): counters stay at 0");
                }
                if super::first_to_accept(&EnvoyHost, &plugin, &fingerprint, now_s) {
                    log::info!("{}", super::config_summary(&plan, &fingerprint, &plugin));
                }
                // Read by the benchmark (configure time, VM memory); debug level keeps the
                // several on_configure calls per plugin out of normal logs.
                log::debug!(
                    "configured {} services in {} us; VM memory {} KiB; {} plans in this VM",
                    plan.services.len(),
                    u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    core::arch::wasm32::memory_size::<0>() * 64,
                    vm.plans()
                );
                true
            }
            Err(err) => {
                // On a live update Envoy keeps serving with the previous plan.
                log::error!("invalid configuration: {err}");
                if super::first_to_refuse(&EnvoyHost, &plugin, &fingerprint, now_s) {
                    let name = crate::metrics::config_failures_name(&plugin);
                    if let Some(id) = EnvoyHost.define_counter(&name) {
                        EnvoyHost.increment_counter(id, 1);
                    }
                }
                false
            }
        });
        result.unwrap_or(false)
    }

    /// Period of the housekeeping tick of every root context.
    const TICK_MS: u32 = 1000;

    pub fn on_tick(root: u32) {
        with_vm(|vm| vm.tick(root, &EnvoyHost));
    }

    pub fn on_context_create(context: u32, parent: u32) {
        if parent != 0 {
            with_vm(|vm| vm.stream_created(context, parent));
        }
    }

    pub fn on_context_delete(context: u32) {
        with_vm(|vm| {
            if vm.context_deleted(context, &EnvoyHost) {
                log::debug!(
                    "root context {context} deleted: its plan is dropped; {} plans in this VM",
                    vm.plans()
                );
            }
        });
    }

    pub fn on_stream_request_headers(context: u32) -> Verdict {
        with_vm(|vm| vm.request_headers(context, &EnvoyHost)).unwrap_or(Verdict::Continue)
    }
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
