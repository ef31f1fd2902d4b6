//! Cluster specifier mode (`envoy.router.cluster_specifier_plugin.dynamic_modules`): the route
//! asks meshsplit for a cluster. The same decision as the filter, read from the same request
//! headers, but nothing is written: the cluster goes straight to the route.
//!
//! What this mode cannot do, and refuses at configuration time with a pointer to what to do:
//! - rewrite `:authority` (`upstreams[].authority`): use the route's `auto_host_rewrite` with
//!   endpoint `hostname`s, or the HTTP filter mode;
//! - `least_request`: a cluster specifier never learns when a request ends, so it cannot count
//!   requests in flight; use the HTTP filter mode.
//! - `guard`: for the same reason it never sees a response, so it cannot tell a failing
//!   upstream; use the HTTP filter mode.
//! - `assign_cookie`: the cookie is set on the response, which a cluster specifier cannot
//!   touch; use the HTTP filter mode.
//!
//! A `rollout` works: with no timer in this ABI, its weights are put in force from the
//! selections themselves, at most twice a second per worker (a clock read per selection of a
//! plan with a rollout; nothing for plans without).
//!
//! The weight gauges: set when Envoy creates the config, and by a rollout's tick when its
//! weights change, through the config (this ABI lets any worker set a config's gauges).
//!
//! Unknown services: no cluster is selected, so the route's `cluster_not_found_response_code`
//! answers (`pass`; the shipped config sets 404), or 404 whatever the route says (`reject`).
//! There is no JSON body in this mode.
//!
//! Envoy asks again for the same request whenever a filter clears the route cache (Lua's
//! `clearRouteCache()`, ext_authz, header mutation). Each worker remembers its latest selections
//! (`memory.rs`) by config and by Envoy's random value of the request (its stream id, the same
//! for every selection of one request), with a hash of the request headers the decision read:
//! asked again with those headers unchanged, it answers the same decision and counts nothing, so
//! a weighted or round-robin pick does not change under the request. If a filter changed a
//! header the decision read, the request is decided again; if the decision differs, it is counted
//! and the first one is counted as superseded (`<service>.<upstream>.superseded_total`), so that
//! `requests_total` − `superseded_total` is what each upstream was sent. (Rule hits and unknown
//! services count decisions.)
//!
//! A client-sent cluster header: this mode never reads it (the cluster goes straight to the
//! route), but it cannot remove it either (the cluster specifier ABI of Envoy 1.40 reads request
//! headers only), so the header would reach the upstream as the client sent it. The route
//! removes it: `request_headers_to_remove` on the route (envoy/envoy-native.yaml).
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::mem::take;
use std::sync::Arc;

use super::filter::plugin_name;
use super::host::{SelectionHost, SpecifierTick, StoreOnly};
use super::imports::{Selection, SpecifierConfig};
use super::memory::{hash_of, Kind, Memory, Names, Reads, Recall};
use super::{initial_weight_gauges, namespace, with_plan, Counters, Source};
use crate::in_flight::PROCESS_OWNER;
use crate::instance::{config_fingerprint, config_summary};
use crate::plan::Plan;
use crate::route::on_request_headers;

pub struct Config {
    source: Source,
    envoy: SpecifierConfig,
}

pub type SharedConfig = Arc<Config>;

pub fn config_new(envoy: SpecifierConfig, name: &[u8], bytes: &[u8]) -> Option<SharedConfig> {
    let plugin = plugin_name(name);
    let plan = match Plan::from_json_named(bytes, &plugin).and_then(|plan| {
        plan.check_cluster_specifier()?;
        Ok(plan)
    }) {
        Ok(plan) => plan,
        Err(err) => {
            log::error!("invalid configuration: {err}");
            return None;
        }
    };
    let counters = Counters::define(&plan, &plugin, |name| envoy.define_counter(name))
        .with_superseded(&plan, &plugin, |name| envoy.define_counter(name));
    let namespace = namespace(&plan);
    let gauge_generation = crate::tick::claim_gauges(
        &StoreOnly {
            namespace: &namespace,
        },
        &plugin,
        crate::select::sticky_hash(bytes),
    );
    // The weight gauges: set now, and by the tick of a plan with a rollout when they change.
    let mut gauges = HashMap::new();
    for (name, weight) in initial_weight_gauges(&plan, &plugin, super::clock::wall_ms()) {
        if let Some(id) = envoy.define_gauge(&name) {
            envoy.set_gauge(id, weight);
            gauges.insert(name, id);
        }
    }
    log::info!(
        "{}",
        config_summary(&plan, &config_fingerprint(bytes), &plugin)
    );
    Some(Arc::new(Config {
        source: Source::new(&plan, bytes, &plugin, gauges, HashMap::new(), counters)
            .with_gauge_generation(gauge_generation),
        envoy,
    }))
}

thread_local! {
    /// This worker's latest selections (`memory.rs`).
    static MEMORY: RefCell<Memory> = const { RefCell::new(Memory::new()) };
    /// The request header names this worker's decisions read.
    static NAMES: RefCell<Names> = const { RefCell::new(Names::new()) };
    /// The cluster buffer of the next decision (a slot's old one, reused).
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Picks the cluster of one request. Returns whether a decision was made.
pub fn select(config: &SharedConfig, selection: Selection) -> bool {
    #[cfg(feature = "test-hooks")]
    super::hooks::run(|name| selection.with_request_header(name, |v| v.map(<[u8]>::to_vec)));
    let id = config.source.id();
    // 0: Envoy gave no random value, so no way to know a refresh (never remembered).
    let random = selection.random_value();
    let recalled = NAMES.with(|names| {
        let names = names.try_borrow().ok()?;
        MEMORY.with(|memory| {
            let mut memory = memory.try_borrow_mut().ok()?;
            Some(memory.recall(
                &names,
                id,
                random,
                |name, all, index| {
                    if all {
                        let values = selection.request_header_values(name);
                        hash_of(index, true, values.iter().map(Vec::as_slice))
                    } else {
                        selection.with_request_header(name, |value| hash_of(index, false, value))
                    }
                },
                |kind, cluster| apply(selection, kind, cluster),
            ))
        })
    });
    let earlier = match recalled.unwrap_or(Recall::Unknown) {
        Recall::Same(applied) => return applied,
        Recall::Changed(counted) => Some(counted),
        Recall::Unknown => None,
    };
    let source = &config.source;
    let tick_host = SpecifierTick {
        store: source.store(),
        envoy: config.envoy,
        gauges: &source.gauges,
    };
    let scratch = SCRATCH.with(|cell| cell.try_borrow_mut().map(|mut s| take(&mut *s)));
    let decided = NAMES.with(|names| {
        with_plan(source, &tick_host, |plan, rng| {
            let host = SelectionHost {
                selection,
                namespace: &source.namespace,
                cluster_header: plan
                    .headers
                    .cluster
                    .as_deref()
                    .unwrap_or(crate::plan::DEFAULT_CLUSTER_HEADER),
                kind: Cell::new(Kind::Pass),
                cluster: RefCell::new(scratch.unwrap_or_default()),
                reads: RefCell::new(
                    names
                        .try_borrow()
                        .map_or_else(|_| Reads::incomplete(), |names| Reads::new(&names)),
                ),
                names,
            };
            let routed = on_request_headers(plan, rng, &host, PROCESS_OWNER);
            (
                routed.counted,
                host.kind.get(),
                host.cluster.into_inner(),
                host.reads.into_inner(),
            )
        })
    });
    let Some((counted, kind, mut cluster, reads)) = decided else {
        log::error!("no plan to select a cluster with; failing closed");
        return fail_closed(config, selection);
    };
    // Counted once per request: a decision that supersedes a different one counts, and the
    // earlier one is counted as superseded; the same decision again counts nothing.
    match earlier {
        Some(Some(before)) if before == counted => {}
        _ => {
            for id in source.counters.of(counted).into_iter().flatten() {
                config.envoy.increment_counter(id, 1);
            }
            if let Some(id) = earlier
                .flatten()
                .and_then(|c| source.counters.superseded_of(c))
            {
                config.envoy.increment_counter(id, 1);
            }
        }
    }
    let remembered = MEMORY.with(|memory| {
        let mut memory = memory.try_borrow_mut().ok()?;
        Some(memory.remember(
            earlier.is_some(),
            id,
            random,
            reads,
            counted,
            kind,
            &mut cluster,
            |kind, cluster| apply(selection, kind, cluster),
        ))
    });
    let applied = remembered.unwrap_or_else(|| apply(selection, kind, &cluster));
    // What is left in `cluster` (the slot's old buffer) is the next decision's.
    SCRATCH.with(|cell| {
        if let Ok(mut scratch) = cell.try_borrow_mut() {
            *scratch = cluster;
        }
    });
    applied
}

fn apply(selection: Selection, kind: Kind, cluster: &str) -> bool {
    match kind {
        Kind::Cluster => {
            selection.set_cluster(cluster);
            true
        }
        Kind::Reject => selection.set_cluster_not_found_response_code(404),
        Kind::Pass => false,
    }
}

/// A selection no plan decided (after a panic, or without a plan): no cluster, and with
/// `on_unknown_service: reject` the unknown-service status (404). A client-sent cluster header
/// plays no part in this mode.
pub fn fail_closed(config: &SharedConfig, selection: Selection) -> bool {
    if config.source.reject_unknown {
        return selection.set_cluster_not_found_response_code(404);
    }
    false
}
