//! [`Host`] over the dynamic-module ABI: the HTTP filter's host calls for one stream, and the
//! cluster specifier's for one selection. Shared data (least-request counts, the guard's
//! buckets and ejections) is process-wide (`store`), so it is exact across workers as in the
//! wasm build.
//!
//! Every key goes under its config's namespace ([`super::Source::namespace`]): two configs that
//! share a `filter_name` but send the same upstream names to different clusters do not share
//! counts or ejections, as two wasm VMs with their own `vm_id` would not.
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::imports::{Filter, FilterConfig, Selection, SpecifierConfig};
use super::memory::{Kind, Names, Reads};
use super::store;
use crate::host::{Host, SharedWrite};

/// Host calls of the stream whose hook is running.
pub struct FilterHost<'a> {
    pub filter: Filter,
    /// The config's shared-data namespace.
    pub namespace: &'a str,
    /// Gauge ids by name, defined with the config.
    pub gauges: &'a HashMap<String, usize>,
    /// The guard's counter ids by name, defined with the config.
    pub counters: &'a HashMap<String, usize>,
    /// Whether a request header was written (the route cache must then be cleared).
    pub wrote: Cell<bool>,
}

impl Host for FilterHost<'_> {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.filter.request_header(name)
    }

    fn with_request_header<T>(&self, name: &str, f: impl FnOnce(Option<Cow<'_, [u8]>>) -> T) -> T {
        self.filter
            .with_request_header(name, |value| f(value.map(Cow::Borrowed)))
    }

    fn request_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.filter.request_header_values(name)
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        self.wrote.set(true);
        if !self.filter.set_request_header(name, value) {
            log::warn!("writing request header {name} failed");
        }
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        self.filter.send_response(status, headers, body)
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        store::get(&namespaced(self.namespace, key))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        store::set(&namespaced(self.namespace, key), value, cas)
    }

    fn create_shared_data(&self, key: &str, initial: &[u8]) -> bool {
        create_in(self.namespace, key, initial)
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        self.gauges.get(name).and_then(|&id| u32::try_from(id).ok())
    }

    fn add_to_gauge(&self, id: u32, delta: i64) {
        self.filter.add_to_gauge(id as usize, delta);
    }

    fn set_gauge(&self, id: u32, value: u64) {
        self.filter.set_gauge(id as usize, value);
    }

    /// The request counters are defined with the config and counted by the glue (the core's
    /// `PlanCounters` is not used by this build); the guard's ejection counters are defined
    /// with the config too, and found here by name.
    fn define_counter(&self, name: &str) -> Option<u32> {
        self.counters
            .get(name)
            .and_then(|&id| u32::try_from(id).ok())
    }

    fn increment_counter(&self, id: u32, delta: u64) {
        self.filter.increment_counter(id as usize, delta);
    }

    fn response_code(&self) -> Option<u64> {
        self.filter.response_code()
    }

    fn response_flags(&self) -> Option<u64> {
        self.filter.response_flags()
    }

    fn response_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.filter.response_header_values(name)
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.filter.response_header_values(name).into_iter().next()
    }

    fn add_response_header(&self, name: &str, value: &str) {
        if !self.filter.add_response_header(name, value) {
            log::warn!("adding response header {name} failed");
        }
    }

    fn set_response_header(&self, name: &str, value: &str) {
        if !self.filter.set_response_header(name, value) {
            log::warn!("setting response header {name} failed");
        }
    }
}

/// `key` in `namespace`.
fn namespaced(namespace: &str, key: &str) -> String {
    // Who sets a filter name's weight gauges is one question for the whole process, whatever
    // clusters each of its configurations sends to.
    if key.starts_with(crate::tick::GAUGE_OWNER_PREFIX) {
        return key.to_owned();
    }
    let mut full = String::with_capacity(namespace.len() + key.len());
    full.push_str(namespace);
    full.push_str(key);
    full
}

/// Creates shared-data `key` holding `initial` if it is missing, in one step: unlike reading,
/// then writing with token 0, it cannot overwrite a value another worker created (and perhaps
/// changed) in between. Returns whether the key exists (always: the store cannot fail).
/// Every native host answers the core's `create_shared` with it.
pub fn create_in(namespace: &str, key: &str, initial: &[u8]) -> bool {
    store::create(&namespaced(namespace, key), initial);
    true
}

/// Shared data only: for the release of a least-request count after its stream is gone, and
/// for creating a config.
pub struct StoreOnly<'a> {
    /// The config's shared-data namespace.
    pub namespace: &'a str,
}

impl Host for StoreOnly<'_> {
    fn request_header(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn set_request_header(&self, _: &str, _: Option<&str>) {}
    fn send_local_reply(&self, _: u32, _: &[(&str, &str)], _: &[u8]) -> bool {
        false
    }
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        store::get(&namespaced(self.namespace, key))
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        store::set(&namespaced(self.namespace, key), value, cas)
    }

    fn create_shared_data(&self, key: &str, initial: &[u8]) -> bool {
        create_in(self.namespace, key, initial)
    }
}

/// A config whose gauges can be set without a stream.
pub trait ConfigGauges: Copy {
    fn set_config_gauge(self, id: usize, value: u64);
}

impl ConfigGauges for SpecifierConfig {
    fn set_config_gauge(self, id: usize, value: u64) {
        self.set_gauge(id, value);
    }
}

impl ConfigGauges for FilterConfig {
    fn set_config_gauge(self, id: usize, value: u64) {
        self.set_gauge(id, value);
    }
}

/// A tick without a stream: shared data, and the gauges defined on a config, set through it.
/// No counters. The cluster specifier's tick (rollouts; it has no guard; its ABI lets any
/// worker set its config's gauges), and the tick of an idle HTTP filter config on Envoy's main
/// thread (`timer.rs`; it never ejects).
pub struct ConfigTick<'a, E> {
    pub store: StoreOnly<'a>,
    pub envoy: E,
    /// Gauge ids by name: the weight gauges, and the guard's.
    pub gauges: &'a HashMap<String, usize>,
}

/// The cluster specifier's tick.
pub type SpecifierTick<'a> = ConfigTick<'a, SpecifierConfig>;

impl<E: ConfigGauges> Host for ConfigTick<'_, E> {
    fn request_header(&self, _: &str) -> Option<Vec<u8>> {
        None
    }
    fn set_request_header(&self, _: &str, _: Option<&str>) {}
    fn send_local_reply(&self, _: u32, _: &[(&str, &str)], _: &[u8]) -> bool {
        false
    }
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.store.shared_data(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        self.store.set_shared_data(key, value, cas)
    }
    fn create_shared_data(&self, key: &str, initial: &[u8]) -> bool {
        self.store.create_shared_data(key, initial)
    }
    fn define_gauge(&self, name: &str) -> Option<u32> {
        self.gauges.get(name).and_then(|&id| u32::try_from(id).ok())
    }
    fn set_gauge(&self, id: u32, value: u64) {
        self.envoy.set_config_gauge(id as usize, value);
    }
}

/// Host calls of one cluster selection. Writing the cluster header records the cluster (in
/// `cluster`, a buffer the worker reuses); a local reply records a rejection. (A config that
/// rewrites `:authority` is refused in this mode.) Every request header read is recorded in
/// `reads`, so that a refresh of the route can tell whether the decision still holds.
pub struct SelectionHost<'a> {
    pub selection: Selection,
    /// The config's shared-data namespace.
    pub namespace: &'a str,
    pub cluster_header: &'a str,
    pub kind: Cell<Kind>,
    pub cluster: RefCell<String>,
    pub reads: RefCell<Reads>,
    pub names: &'a RefCell<Names>,
}

impl SelectionHost<'_> {
    fn record<'v>(&self, name: &str, all: bool, values: impl IntoIterator<Item = &'v [u8]>) {
        if let (Ok(mut reads), Ok(mut names)) =
            (self.reads.try_borrow_mut(), self.names.try_borrow_mut())
        {
            reads.record(&mut names, name, all, values);
        }
    }
}

impl Host for SelectionHost<'_> {
    /// The first copy only: one ABI call.
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.with_request_header(name, |value| value.map(Cow::into_owned))
    }

    fn with_request_header<T>(&self, name: &str, f: impl FnOnce(Option<Cow<'_, [u8]>>) -> T) -> T {
        self.selection.with_request_header(name, |value| {
            self.record(name, false, value);
            f(value.map(Cow::Borrowed))
        })
    }

    fn request_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        let values = self.selection.request_header_values(name);
        self.record(name, true, values.iter().map(Vec::as_slice));
        values
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        if name != self.cluster_header {
            log::warn!("the cluster specifier cannot write request header {name}");
            return;
        }
        match value {
            Some(cluster) => {
                if let Ok(mut buffer) = self.cluster.try_borrow_mut() {
                    buffer.clear();
                    buffer.push_str(cluster);
                    self.kind.set(Kind::Cluster);
                }
            }
            None if self.kind.get() == Kind::Reject => {}
            None => self.kind.set(Kind::Pass),
        }
    }

    fn send_local_reply(&self, _status: u32, _headers: &[(&str, &str)], _body: &[u8]) -> bool {
        self.kind.set(Kind::Reject);
        true
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        store::get(&namespaced(self.namespace, key))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        store::set(&namespaced(self.namespace, key), value, cas)
    }

    fn create_shared_data(&self, key: &str, initial: &[u8]) -> bool {
        create_in(self.namespace, key, initial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_configs_namespaces_share_no_key() {
        let (a, b) = (
            StoreOnly {
                namespace: "test/config-a/",
            },
            StoreOnly {
                namespace: "test/config-b/",
            },
        );
        let key = "meshsplit/load/9:meshsplit/3:svc/2:v2";
        assert!(create_in(a.namespace, key, b"a"));
        assert_eq!(
            a.set_shared_data(key, b"a's count", 0),
            SharedWrite::Written
        );
        assert_eq!(b.shared_data(key), None);
        assert!(create_in(b.namespace, key, b""));
        assert_eq!(
            a.shared_data(key).map(|(v, _)| v),
            Some(b"a's count".to_vec())
        );
        assert_eq!(b.shared_data(key).map(|(v, _)| v), Some(Vec::new()));
    }
}
