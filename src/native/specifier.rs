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
//!
//! A `rollout` works: with no timer in this ABI, its weights are put in force from the
//! selections themselves, at most twice a second per worker (a clock read per selection of a
//! plan with a rollout; nothing for plans without).
//!
//! Unknown services: no cluster is selected, so the route's `cluster_not_found_response_code`
//! answers (`pass`; the shipped config sets 404), or 404 whatever the route says (`reject`).
//! There is no JSON body in this mode. Envoy may ask again on a retry or a route refresh; a
//! weighted or round-robin pick may then differ from the first (sticky and rule picks do not).
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use super::abi::{Selection, SpecifierConfig};
use super::filter::plugin_name;
use super::host::{Decision, SelectionHost, StoreOnly};
use super::{with_plan, Counters, Source};
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
    log::info!(
        "{}",
        config_summary(&plan, &config_fingerprint(bytes), &plugin)
    );
    Some(Arc::new(Config {
        source: Source::new(bytes, &plugin, HashMap::new(), HashMap::new(), counters),
        envoy,
    }))
}

/// Picks the cluster of one request. Returns whether a decision was made.
pub fn select(config: &SharedConfig, selection: Selection) -> bool {
    let decision = with_plan(&config.source, &StoreOnly, |plan, rng| {
        let host = SelectionHost {
            selection,
            cluster_header: &plan.cluster_header,
            decision: RefCell::new(Decision::Pass),
        };
        let routed = on_request_headers(plan, rng, &host, PROCESS_OWNER);
        (routed.counted, host.decision.into_inner())
    });
    let Some((counted, decision)) = decision else {
        return false;
    };
    for id in config.source.counters.of(counted).into_iter().flatten() {
        config.envoy.increment_counter(id, 1);
    }
    match decision {
        Decision::Cluster(cluster) => {
            selection.set_cluster(&cluster);
            true
        }
        Decision::Reject => selection.set_cluster_not_found_response_code(404),
        Decision::Pass => false,
    }
}
