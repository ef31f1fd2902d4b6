//! HTTP filter mode (`envoy.filters.http.dynamic_modules`): the same decision as the wasm filter,
//! written into the same request headers, then the route cache is cleared so the route follows.
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::host::{create_in, FilterHost, StoreOnly};
use super::imports::{ConfigScheduler, Filter, FilterConfig};
use super::{
    initial_weight_gauges, namespace, record_outcome, tick_stats, with_plan_timed, Counters, Source,
};
use crate::cookie::CookieId;
use crate::guard;
use crate::host::Host;
use crate::in_flight::{self, PROCESS_OWNER};
use crate::instance::{config_fingerprint, config_summary};
use crate::metrics::Counted;
use crate::plan::{Plan, Strategy};
use crate::route::{on_request_headers, unrouted, Verdict};

/// The module's config, shared by Envoy's workers.
pub type SharedConfig = Arc<Source>;

/// Validates the plugin JSON, defines the config's metrics (request counters, least-request
/// gauges, the guard's and rollout's gauges and counters) and creates the least-request counts.
/// `None` refuses the config (Envoy then refuses the listener, or the update), after the same
/// `invalid configuration: path: message` line as the wasm filter.
pub fn config_new(envoy: FilterConfig, name: &[u8], bytes: &[u8]) -> Option<SharedConfig> {
    let plugin = plugin_name(name);
    let plan = match Plan::from_json_named(bytes, &plugin) {
        Ok(plan) => plan,
        Err(err) => {
            log::error!("invalid configuration: {err}");
            return None;
        }
    };
    let namespace = namespace(&plan);
    let mut gauges = HashMap::new();
    for service in &plan.services {
        if let Strategy::LeastRequest(slots) = &service.strategy {
            for slot in slots.iter() {
                if let Some(id) = envoy.define_gauge(&slot.gauge) {
                    gauges.insert(slot.gauge.clone(), id);
                }
                // Create the count empty (unless it exists), so concurrent increments all go
                // through CAS.
                create_in(&namespace, &slot.key, &[]);
            }
        }
    }
    let store = StoreOnly {
        namespace: &namespace,
    };
    let fingerprint = crate::select::sticky_hash(bytes);
    // The guard's records and the weight gauges belong to the newest configuration of this
    // filter name from now on.
    let generation = crate::tick::claim(&plan, &plugin, &store, fingerprint);
    let gauge_generation = crate::tick::claim_gauges(&store, &plugin, fingerprint);
    let (tick_gauges, tick_counter_names) = tick_stats(&plan, &plugin);
    for name in tick_gauges {
        if let Some(id) = envoy.define_gauge(&name) {
            gauges.insert(name, id);
        }
    }
    for (name, weight) in initial_weight_gauges(&plan, &plugin, super::clock::wall_ms()) {
        if let Some(&id) = gauges.get(&name) {
            envoy.set_gauge(id, weight);
        }
    }
    let mut tick_counters = HashMap::new();
    for name in tick_counter_names {
        if let Some(id) = envoy.define_counter(&name) {
            tick_counters.insert(name, id);
        }
    }
    let counters = Counters::define(&plan, &plugin, |name| envoy.define_counter(name));
    // The gauges the filter name's previous configuration set and this one does not have: its
    // first stream puts them back to 0 (a gauge can only be set from a stream), since only the
    // newest configuration sets gauges and nothing else would.
    let stale_gauges = stale_gauge_names(&plugin, crate::tick::gauge_names(&plan, &plugin))
        .iter()
        .filter_map(|name| envoy.define_gauge(name))
        .collect();
    log::info!(
        "{}",
        config_summary(&plan, &config_fingerprint(bytes), &plugin)
    );
    let source = Arc::new(
        Source::new(&plan, bytes, &plugin, gauges, tick_counters, counters)
            .with_generation(generation)
            .with_gauge_generation(gauge_generation)
            .with_stale_gauges(stale_gauges),
    );
    // A config with a guard or a rollout ticks without traffic too (`timer.rs`).
    let ticks = plan
        .services
        .iter()
        .any(|s| s.guard.is_some() || s.rollout.is_some());
    if ticks {
        match ConfigScheduler::new(envoy) {
            Some(scheduler) => super::timer::register(source.id(), scheduler),
            None => log::warn!("no config scheduler: this config ticks at its requests only"),
        }
    }
    Some(source)
}

/// The timer's event for `config` (`timer.rs`), on Envoy's main thread: its idle tick.
pub fn config_scheduled(config: &SharedConfig, envoy: FilterConfig) {
    super::tick_idle(config, envoy);
}

/// Envoy destroys `config`: its timer stops (streams may hold the config a while longer).
pub fn config_destroy(config: &SharedConfig) {
    super::timer::unregister(config.id());
}

/// The guard gauge names the last configuration of filter `plugin` had that `current` (the
/// names of the configuration being created) does not; remembers `current` for the next one.
fn stale_gauge_names(plugin: &str, current: Vec<String>) -> Vec<String> {
    static LAST: std::sync::Mutex<Vec<(String, Vec<String>)>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut last) = LAST.lock() else {
        return Vec::new();
    };
    let previous = match last.iter_mut().find(|(p, _)| p == plugin) {
        Some((_, names)) => std::mem::replace(names, current.clone()),
        None => {
            last.push((plugin.to_owned(), current.clone()));
            Vec::new()
        }
    };
    let current: std::collections::BTreeSet<&String> = current.iter().collect();
    previous
        .into_iter()
        .filter(|name| !current.contains(name))
        .collect()
}

/// The filter's name (`filter_name`), which names its stats and least-request counts.
pub fn plugin_name(name: &[u8]) -> String {
    match std::str::from_utf8(name) {
        Ok(name) if !name.is_empty() => name.to_owned(),
        _ => "meshsplit".to_owned(),
    }
}

/// One stream.
pub struct Stream {
    config: SharedConfig,
    /// The least-request count this stream holds, to give back when it ends.
    lease: Option<Lease>,
    /// The (service, upstream) of a guarded service this stream went to: its outcome feeds the
    /// guard when it ends.
    observed: Option<(usize, usize)>,
    /// The visitor id assigned to this request, with its plan and service: the response sets
    /// the cookie.
    cookie: Option<(Rc<Plan>, usize, CookieId)>,
    /// When its request headers came, if its service's guard times its streams.
    started: Option<std::time::Instant>,
    /// When its response headers came (time to first byte), if timed.
    first_byte: Option<std::time::Instant>,
    /// Whether it is a gRPC call (`content-type: application/grpc...`) of a guarded service:
    /// its `grpc-status` is read from its response headers (trailers-only) or trailers.
    grpc: bool,
    /// That `grpc-status`, when the response carried one.
    grpc_status: Option<u64>,
}

struct Lease {
    plan: Rc<Plan>,
    service: usize,
    upstream: usize,
    /// Whether the stream-complete hook gave the count back already.
    released: Cell<bool>,
}

pub fn stream_new(config: &SharedConfig) -> Stream {
    Stream {
        config: Arc::clone(config),
        lease: None,
        observed: None,
        cookie: None,
        started: None,
        first_byte: None,
        grpc: false,
        grpc_status: None,
    }
}

impl Source {
    fn host(&self, filter: Filter) -> FilterHost<'_> {
        FilterHost {
            filter,
            namespace: &self.namespace,
            gauges: &self.gauges,
            counters: &self.tick_counters,
            wrote: Cell::new(false),
        }
    }
}

pub fn request_headers(stream: &mut Stream, filter: Filter) -> Verdict {
    #[cfg(feature = "test-hooks")]
    super::hooks::run(|name| filter.request_header(name));
    let config = &stream.config;
    let host = config.host(filter);
    if !config.stale_gauges.is_empty()
        && !config
            .stale_zeroed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        for &id in &config.stale_gauges {
            filter.set_gauge(id, 0);
        }
    }
    let routed = with_plan_timed(config, &host, |plan, rng, now| {
        (
            on_request_headers(plan, rng, &host, PROCESS_OWNER),
            Rc::clone(plan),
            now,
        )
    });
    let Some((routed, plan, now)) = routed else {
        // No plan on this thread (it could not be built, or a hook re-entered): no decision.
        log::error!("no plan to route a request with; failing closed");
        return fail_closed(config, filter);
    };
    for id in config.counters.of(routed.counted).into_iter().flatten() {
        filter.increment_counter(id, 1);
    }
    if let Counted::Upstream {
        service, upstream, ..
    } = routed.counted
    {
        if let Some(guard) = plan.services.get(service).and_then(|s| s.guard.as_ref()) {
            stream.observed = Some((service, upstream));
            if guard.times_streams() {
                stream.started = now;
            }
            stream.grpc = guard.error_rate.is_some()
                && filter
                    .request_header("content-type")
                    .is_some_and(|v| v.starts_with(b"application/grpc"));
        }
        if let Some(id) = routed.cookie {
            stream.cookie = Some((Rc::clone(&plan), service, id));
        }
    }
    if let Some((service, upstream)) = routed.lease {
        stream.lease = Some(Lease {
            plan,
            service,
            upstream,
            released: Cell::new(false),
        });
    }
    if routed.verdict == Verdict::Continue && host.wrote.get() {
        // Without this the route chosen before the filter ran stays, whatever the header says.
        filter.clear_route_cache();
    }
    routed.verdict
}

/// The response headers: sets the cookie the request was assigned, unless the response sets
/// one of that name already. Nothing for other streams.
pub fn response_headers(stream: &mut Stream, filter: Filter) {
    // A timed stream's duration ends here, at its first byte: a response whose headers come at
    // once and whose body streams (a download, a server stream, a WebSocket) is not slow.
    if stream.started.is_some() && stream.first_byte.is_none() {
        stream.first_byte = Some(std::time::Instant::now());
    }
    if stream.grpc {
        stream.grpc_status = first_grpc_status(filter.response_header_values("grpc-status"));
    }
    let Some((plan, service, id)) = stream.cookie.take() else {
        return;
    };
    if let Some(assign) = plan
        .services
        .get(service)
        .and_then(|s| s.assign_cookie.as_ref())
    {
        crate::cookie::on_response_headers(assign, &id, &stream.config.host(filter));
    }
}

/// The response trailers: a gRPC call's `grpc-status`.
pub fn response_trailers(stream: &mut Stream, filter: Filter) {
    if stream.grpc {
        if let Some(code) = first_grpc_status(filter.response_trailer_values("grpc-status")) {
            stream.grpc_status = Some(code);
        }
    }
}

/// The first copy of a `grpc-status`, as a number.
fn first_grpc_status(values: Vec<Vec<u8>>) -> Option<u64> {
    guard::parse_grpc_status(values.first()?)
}

/// A request no plan decided (after a panic, or without a plan): it must not go where a
/// client-sent cluster header points. The header is removed and the route cache cleared, and
/// with `on_unknown_service: reject` the request gets the unknown-service answer (404, service
/// `null`); with `pass` it goes on as an unknown service would.
pub fn fail_closed(config: &Source, filter: Filter) -> Verdict {
    let host = config.host(filter);
    let verdict = unrouted(&config.headers, config.reject_unknown, None, &host);
    if verdict == Verdict::Continue {
        filter.clear_route_cache();
    }
    verdict
}

/// The config of a stream, for the fallback of a hook that panicked.
pub fn stream_config(stream: &Stream) -> &Source {
    &stream.config
}

/// The stream ended, however it ended: give back its in-flight count and gauge, and tell the
/// guard how it went, from `response.code` and `response.flags` as in the wasm build (a 5xx
/// failed; no response but a flag that blames the upstream failed; no response otherwise, such
/// as a client that went away, does not count). One attribute read per stream of a guarded
/// service (two without a response); none for other services.
pub fn stream_complete(stream: &mut Stream, filter: Filter) {
    if stream.lease.is_none() && stream.observed.is_none() {
        return;
    }
    let host = stream.config.host(filter);
    if let Some(lease) = &stream.lease {
        release(lease, &stream.config, Some(&host));
    }
    if let Some((service, upstream)) = stream.observed.take() {
        let code = host.response_code();
        // The flags matter only without a status, with a 5xx or for a failed gRPC call: skip
        // that read otherwise.
        let flags = if guard::needs_flags(code, stream.grpc_status) {
            host.response_flags()
        } else {
            None
        };
        record_outcome(
            &stream.config,
            &host,
            service,
            upstream,
            guard::grpc_outcome(code, flags, stream.grpc_status),
            stream.started.map(|started| (started, stream.first_byte)),
        );
    }
}

/// The stream is destroyed. A count the stream-complete hook did not give back (it should have)
/// is given back here; its gauge cannot be updated without the stream.
pub fn stream_destroy(stream: Stream) {
    if let Some(lease) = &stream.lease {
        release(lease, &stream.config, None);
    }
}

fn release(lease: &Lease, config: &Source, host: Option<&FilterHost<'_>>) {
    if lease.released.replace(true) {
        return;
    }
    let Some(Strategy::LeastRequest(slots)) =
        lease.plan.services.get(lease.service).map(|s| &s.strategy)
    else {
        return;
    };
    let Some(slot) = slots.get(lease.upstream) else {
        return;
    };
    match host {
        Some(host) => in_flight::release(host, slot, PROCESS_OWNER),
        None => in_flight::release(&config.store(), slot, PROCESS_OWNER),
    }
}
