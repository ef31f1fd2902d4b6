//! HTTP filter mode (`envoy.filters.http.dynamic_modules`): the same decision as the wasm filter,
//! written into the same request headers, then the route cache is cleared so the route follows.
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use super::abi::{Filter, FilterConfig};
use super::host::FilterHost;
use super::{store, with_plan, Counters, Source};
use crate::host::SharedWrite;
use crate::in_flight;
use crate::instance::{config_fingerprint, config_summary};
use crate::plan::{Plan, Strategy};
use crate::route::{on_request_headers, Verdict};

/// The module's config, shared by Envoy's workers.
pub type SharedConfig = Arc<Source>;

/// Validates the plugin JSON, defines the config's metrics and creates the least-request counts.
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
    let mut gauges = HashMap::new();
    for service in &plan.services {
        if let Strategy::LeastRequest(slots) = &service.strategy {
            for slot in slots.iter() {
                if let Some(id) = envoy.define_gauge(&slot.gauge) {
                    gauges.insert(slot.gauge.clone(), id);
                }
                // Create the count at 0, so concurrent increments all go through CAS.
                if store::get(&slot.key).is_none()
                    && store::set(&slot.key, &0u64.to_le_bytes(), 0) != SharedWrite::Written
                {
                    log::warn!("in-flight count {} could not be created", slot.key);
                }
            }
        }
    }
    let counters = Counters::define(&plan, &plugin, |name| envoy.define_counter(name));
    log::info!(
        "{}",
        config_summary(&plan, &config_fingerprint(bytes), &plugin)
    );
    Some(Arc::new(Source::new(bytes, &plugin, gauges, counters)))
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
    }
}

pub fn request_headers(stream: &mut Stream, filter: Filter) -> Verdict {
    let config = &stream.config;
    let host = FilterHost {
        filter,
        gauges: &config.gauges,
        wrote: Cell::new(false),
    };
    let routed = with_plan(config, |plan, rng| {
        (on_request_headers(plan, rng, &host), Rc::clone(plan))
    });
    let Some((routed, plan)) = routed else {
        // No plan on this thread: the request passes untouched, as without the filter.
        return Verdict::Continue;
    };
    for id in config.counters.of(routed.counted).into_iter().flatten() {
        filter.increment_counter(id, 1);
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

/// The stream ended, however it ended: give back its in-flight count and gauge.
pub fn stream_complete(stream: &mut Stream, filter: Filter) {
    if let Some(lease) = &stream.lease {
        let host = FilterHost {
            filter,
            gauges: &stream.config.gauges,
            wrote: Cell::new(false),
        };
        release(lease, Some(&host));
    }
}

/// The stream is destroyed. A count the stream-complete hook did not give back (it should have)
/// is given back here; its gauge cannot be updated without the stream.
pub fn stream_destroy(stream: Stream) {
    if let Some(lease) = &stream.lease {
        release(lease, None);
    }
}

fn release(lease: &Lease, host: Option<&FilterHost<'_>>) {
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
        Some(host) => in_flight::release(host, slot),
        None => in_flight::release(&StoreOnly, slot),
    }
}

/// Shared data without gauges, for the one release that has no stream to update gauges with.
struct StoreOnly;

impl crate::host::Host for StoreOnly {
    fn request_header(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn set_request_header(&self, _: &str, _: Option<&str>) {}
    fn send_local_reply(&self, _: u32, _: &[(&str, &str)], _: &[u8]) -> bool {
        false
    }
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        store::get(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        store::set(key, value, cas)
    }
    fn define_gauge(&self, _: &str) -> Option<u32> {
        None
    }
    fn add_to_gauge(&self, _: u32, _: i64) {}
    fn define_counter(&self, _: &str) -> Option<u32> {
        None
    }
    fn increment_counter(&self, _: u32, _: u64) {}
}
