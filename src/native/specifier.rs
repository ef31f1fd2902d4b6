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
//! `clearRouteCache()`, ext_authz, header mutation). Each worker remembers the last
//! [`REMEMBERED`] selections by config and by Envoy's random value of the request (its stream id,
//! the same for every selection of one request), with the request headers the decision read:
//! asked again with those headers unchanged, it answers the same decision and counts nothing, so
//! counters equal requests and a weighted or round-robin pick does not change under the request.
//! If a filter changed a header the decision read, the request is decided (and counted) again.
//!
//! A client-sent cluster header: this mode never reads it (the cluster goes straight to the
//! route), but it cannot remove it either (the cluster specifier ABI of Envoy 1.40 reads request
//! headers only), so the header would reach the upstream as the client sent it. The route
//! removes it: `request_headers_to_remove` on the route (envoy/envoy-native.yaml).
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::filter::plugin_name;
use super::host::{Decision, SelectionHost, SpecifierTick, StoreOnly};
use super::imports::{Selection, SpecifierConfig};
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
    let counters = Counters::define(&plan, &plugin, |name| envoy.define_counter(name));
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

/// How many selections a worker remembers (about 100 bytes each), so that a refresh of the
/// route finds its request's decision. Enough for the requests a worker has between a request's
/// first selection and a refresh (a filter that waits on a call, such as ext_authz, lets others
/// in); a request that was pushed out is decided and counted again.
const REMEMBERED: usize = 1024;

/// A decision, and the request headers it read with their values.
struct Selected {
    reads: Vec<(String, Vec<Vec<u8>>)>,
    decision: Decision,
}

/// A worker's last selections, by config id and random value.
#[derive(Default)]
struct Selections {
    by_request: HashMap<(u64, u64), Selected>,
    order: VecDeque<(u64, u64)>,
}

impl Selections {
    /// The decision of `request` if it was selected before and the headers its decision read
    /// are unchanged; forgets it if they changed.
    fn again(&mut self, request: (u64, u64), selection: Selection) -> Option<Decision> {
        let selected = self.by_request.get(&request)?;
        let unchanged = selected
            .reads
            .iter()
            .all(|(name, values)| selection.request_header_values(name) == *values);
        if unchanged {
            return Some(selected.decision.clone());
        }
        self.by_request.remove(&request);
        None
    }

    fn remember(&mut self, request: (u64, u64), selected: Selected) {
        if self.by_request.insert(request, selected).is_none() {
            self.order.push_back(request);
        }
        while self.order.len() > REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.by_request.remove(&oldest);
            }
        }
    }
}

thread_local! {
    static SELECTIONS: RefCell<Selections> = RefCell::new(Selections::default());
}

/// Picks the cluster of one request. Returns whether a decision was made.
pub fn select(config: &SharedConfig, selection: Selection) -> bool {
    #[cfg(feature = "test-hooks")]
    super::hooks::run(|name| selection.request_header_values(name).into_iter().next());
    // 0: Envoy gave no random value, so no way to know a refresh.
    let request = Some(selection.random_value())
        .filter(|&random| random != 0)
        .map(|random| (config.source.id(), random));
    if let Some(request) = request {
        let again = SELECTIONS.with(|cell| {
            cell.try_borrow_mut()
                .ok()
                .and_then(|mut selections| selections.again(request, selection))
        });
        if let Some(decision) = again {
            return apply(selection, decision);
        }
    }
    let source = &config.source;
    let tick_host = SpecifierTick {
        store: source.store(),
        envoy: config.envoy,
        gauges: &source.gauges,
    };
    let decided = with_plan(source, &tick_host, |plan, rng| {
        let host = SelectionHost {
            selection,
            namespace: &source.namespace,
            cluster_header: plan
                .headers
                .cluster
                .as_deref()
                .unwrap_or(crate::plan::DEFAULT_CLUSTER_HEADER),
            decision: RefCell::new(Decision::Pass),
            reads: RefCell::new(Vec::new()),
        };
        let routed = on_request_headers(plan, rng, &host, PROCESS_OWNER);
        (
            routed.counted,
            host.decision.into_inner(),
            host.reads.into_inner(),
        )
    });
    let Some((counted, decision, reads)) = decided else {
        log::error!("no plan to select a cluster with; failing closed");
        return fail_closed(config, selection);
    };
    for id in source.counters.of(counted).into_iter().flatten() {
        config.envoy.increment_counter(id, 1);
    }
    if let Some(request) = request {
        SELECTIONS.with(|cell| {
            if let Ok(mut selections) = cell.try_borrow_mut() {
                let decision = decision.clone();
                selections.remember(request, Selected { reads, decision });
            }
        });
    }
    apply(selection, decision)
}

fn apply(selection: Selection, decision: Decision) -> bool {
    match decision {
        Decision::Cluster(cluster) => {
            selection.set_cluster(&cluster);
            true
        }
        Decision::Reject => selection.set_cluster_not_found_response_code(404),
        Decision::Pass => false,
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
