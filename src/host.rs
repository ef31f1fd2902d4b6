//! The few host calls the filter makes, behind a trait: each build's adapter talks to Envoy
//! (`wasm/host.rs`), the test fake records what the filter did.

use std::borrow::Cow;

/// Request-path host calls. Implementations never panic; failures are logged and ignored
/// (a failed header write leaves the request as Envoy would route it without the filter).
pub trait Host {
    /// A request header's value as the client sent it: bytes, which need not be UTF-8 (Envoy
    /// passes obs-text through).
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// [`Host::request_header`] handed to `f`: borrowed for the call by a host that can lend
    /// the value without a copy (the native builds: Envoy's own bytes, valid until the header
    /// map changes, so `f` makes no host call), owned by the default, which reads it with
    /// [`Host::request_header`] (so `f` keeps it at no cost).
    fn with_request_header<T>(&self, name: &str, f: impl FnOnce(Option<Cow<'_, [u8]>>) -> T) -> T {
        f(self.request_header(name).map(Cow::Owned))
    }
    /// Every copy of a request header, in the order Envoy holds them (a header sent several
    /// times is several entries). The default reads the first copy only.
    fn request_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.request_header(name).into_iter().collect()
    }
    /// Whether [`Host::request_header`] answers the first copy only and every copy needs
    /// [`Host::request_header_map`] (proxy-wasm); `false` (the default) where
    /// [`Host::request_header_values`] reads every copy by name.
    fn first_copy_only(&self) -> bool {
        false
    }
    /// Every request header in one call, where the host hands them all over at once
    /// (proxy-wasm); `None` (the default) where headers are read by name.
    fn request_header_map(&self) -> Option<crate::request::HeaderList> {
        None
    }
    /// `Some` replaces every copy of the header, `None` removes them all.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    /// Returns whether the reply was accepted (the stream must then stop).
    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool;

    /// A shared-data value (shared by all workers of the VM's `vm_id`) with its CAS token.
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Sets a shared-data value if its CAS token is still `cas` (`0`: unconditionally).
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite;
    /// Writes `initial` under `key` unless the key exists; returns whether it exists now. The
    /// default cannot tell a key another worker created in between (see [`create_shared`]).
    fn create_shared_data(&self, key: &str, initial: &[u8]) -> bool {
        self.shared_data(key).is_some()
            || self.set_shared_data(key, initial, 0) == SharedWrite::Written
    }
    /// Defines (or finds) a gauge; its stat is `wasmcustom.<name>` in the wasm build. Hosts
    /// without metrics (the CLI's simulation, a cluster specifier's selection) keep the
    /// defaults: no metric, and updates are ignored.
    fn define_gauge(&self, _name: &str) -> Option<u32> {
        None
    }
    fn add_to_gauge(&self, _id: u32, _delta: i64) {}
    /// Defines (or finds) a counter; its stat is `wasmcustom.<name>` in the wasm build.
    fn define_counter(&self, _name: &str) -> Option<u32> {
        None
    }
    fn increment_counter(&self, _id: u32, _delta: u64) {}
    /// Sets a gauge to `value`. Hosts without settable gauges ignore it.
    fn set_gauge(&self, _id: u32, _value: u64) {}

    /// At the end of a stream: its response status, if a response was sent (`response.code`).
    /// `None` where the host cannot tell; the guard then sees no outcome.
    fn response_code(&self) -> Option<u64> {
        None
    }
    /// At the end of a stream: Envoy's response flags (`response.flags`, a bit set).
    fn response_flags(&self) -> Option<u64> {
        None
    }

    /// At a stream's response headers: the first copy of a response header. Hosts that never
    /// see responses answer none.
    fn response_header(&self, _name: &str) -> Option<Vec<u8>> {
        None
    }
    /// At a stream's response trailers: the first copy of a trailer.
    fn response_trailer(&self, _name: &str) -> Option<Vec<u8>> {
        None
    }

    /// At a stream's response headers: every copy of a response header. Hosts that never see
    /// responses answer none.
    fn response_header_values(&self, _name: &str) -> Vec<Vec<u8>> {
        Vec::new()
    }
    /// At a stream's response headers: adds a copy of a response header. Hosts that never see
    /// responses ignore it.
    fn add_response_header(&self, _name: &str, _value: &str) {}
    /// At a stream's response headers: replaces every copy of a response header with one.
    /// Hosts that never see responses ignore it.
    fn set_response_header(&self, _name: &str, _value: &str) {}
}

/// Creates shared-data `key` holding `initial` if it does not exist yet, so that every later
/// change is a compare-and-swap (with token 0 a write is unconditional and could overwrite
/// another worker's). Returns whether the key exists. Hosts with a create-if-absent of their
/// own (the native build's store) use it; proxy-wasm's shared data has none, so there a worker
/// that finds the key missing writes `initial` unconditionally: if another worker created the
/// key and changed it in the microseconds between that read and that write, the change is lost.
/// Keys are created at configuration, and changed on ticks, which makes that all but impossible.
pub fn create_shared<H: Host + ?Sized>(host: &H, key: &str, initial: &[u8]) -> bool {
    host.shared_data(key).is_some() || host.create_shared_data(key, initial)
}

/// Metric ids by name, defined once per VM: Envoy's `defineMetric` hands out a new id (and keeps
/// it for the life of the VM) on every call, even for a name it already has, so defining again
/// per configuration update would leak ids.
#[derive(Debug, Default)]
pub struct MetricIds {
    gauges: std::cell::RefCell<std::collections::BTreeMap<String, u32>>,
    counters: std::cell::RefCell<std::collections::BTreeMap<String, u32>>,
}

impl MetricIds {
    fn get_or_define(
        ids: &std::cell::RefCell<std::collections::BTreeMap<String, u32>>,
        name: &str,
        define: impl FnOnce() -> Option<u32>,
    ) -> Option<u32> {
        if let Some(&id) = ids.borrow().get(name) {
            return Some(id);
        }
        let id = define()?;
        ids.borrow_mut().insert(name.to_owned(), id);
        Some(id)
    }
}

/// A host whose metric definitions go through a VM's [`MetricIds`]: every other call is the
/// inner host's.
pub struct DefineOnce<'a, H: Host + ?Sized> {
    pub host: &'a H,
    pub ids: &'a MetricIds,
}

impl<H: Host + ?Sized> Host for DefineOnce<'_, H> {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.host.request_header(name)
    }
    fn with_request_header<T>(&self, name: &str, f: impl FnOnce(Option<Cow<'_, [u8]>>) -> T) -> T {
        self.host.with_request_header(name, f)
    }
    fn request_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.host.request_header_values(name)
    }
    fn first_copy_only(&self) -> bool {
        self.host.first_copy_only()
    }
    fn request_header_map(&self) -> Option<crate::request::HeaderList> {
        self.host.request_header_map()
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) {
        self.host.set_request_header(name, value);
    }
    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        self.host.send_local_reply(status, headers, body)
    }
    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.host.shared_data(key)
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        self.host.set_shared_data(key, value, cas)
    }
    fn create_shared_data(&self, key: &str, initial: &[u8]) -> bool {
        self.host.create_shared_data(key, initial)
    }
    fn define_gauge(&self, name: &str) -> Option<u32> {
        MetricIds::get_or_define(&self.ids.gauges, name, || self.host.define_gauge(name))
    }
    fn add_to_gauge(&self, id: u32, delta: i64) {
        self.host.add_to_gauge(id, delta);
    }
    fn define_counter(&self, name: &str) -> Option<u32> {
        MetricIds::get_or_define(&self.ids.counters, name, || self.host.define_counter(name))
    }
    fn increment_counter(&self, id: u32, delta: u64) {
        self.host.increment_counter(id, delta);
    }
    fn set_gauge(&self, id: u32, value: u64) {
        self.host.set_gauge(id, value);
    }
    fn response_code(&self) -> Option<u64> {
        self.host.response_code()
    }
    fn response_flags(&self) -> Option<u64> {
        self.host.response_flags()
    }
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.host.response_header(name)
    }
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.host.response_trailer(name)
    }
    fn response_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        self.host.response_header_values(name)
    }
    fn add_response_header(&self, name: &str, value: &str) {
        self.host.add_response_header(name, value);
    }
    fn set_response_header(&self, name: &str, value: &str) {
        self.host.set_response_header(name, value);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedWrite {
    Written,
    /// Another worker wrote in between: read again and retry.
    CasMismatch,
    Failed,
}

#[cfg(test)]
pub use fake::FakeHost;

#[cfg(test)]
mod fake {
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;
    use std::rc::Rc;

    use super::SharedWrite;

    /// Shared data: key to (value, CAS token).
    pub type SharedData = BTreeMap<String, (Vec<u8>, u32)>;

    /// A local reply as the filter sent it: status, headers, body.
    pub type Reply = (u32, Vec<(String, String)>, Vec<u8>);

    /// Request headers in a vector plus a record of every host call; shared data and gauges in
    /// maps (shared between fakes through `Rc` to model several workers).
    #[derive(Default)]
    pub struct FakeHost {
        pub headers: RefCell<Vec<(String, Vec<u8>)>>,
        pub calls: RefCell<Vec<String>>,
        pub reply: RefCell<Option<Reply>>,
        pub shared: Rc<RefCell<SharedData>>,
        pub gauges: Rc<RefCell<Vec<(String, i64)>>>,
        pub counters: Rc<RefCell<Vec<(String, u64)>>>,
        /// Makes the next N shared-data writes fail with a CAS mismatch, as a racing worker would.
        pub cas_conflicts: Cell<u32>,
        /// Makes local replies fail.
        pub refuse_replies: Cell<bool>,
        /// What `response_code` and `response_flags` answer.
        pub response: Cell<(Option<u64>, Option<u64>)>,
        /// Like Envoy's `defineMetric`, every definition hands out a new id (never freed), even
        /// for a name defined before: id → index in `gauges` / `counters` (shared with
        /// siblings, which tests also use as other streams of the same VM).
        pub gauge_ids: Rc<RefCell<Vec<usize>>>,
        pub counter_ids: Rc<RefCell<Vec<usize>>>,
        /// Definitions made through this fake, by name.
        pub defines: RefCell<BTreeMap<String, u32>>,
        /// Makes the native store's create-if-absent available (`create_shared_data`).
        pub atomic_create: Cell<bool>,
        /// The response headers a stream's response-headers callback sees and changes.
        pub response_headers: RefCell<Vec<(String, Vec<u8>)>>,
        /// The response trailers `response_trailer` reads.
        pub response_trailers: RefCell<Vec<(String, Vec<u8>)>>,
        /// Reads by name answer the first copy only, every copy comes with the whole map, as
        /// in proxy-wasm.
        pub first_only: Cell<bool>,
    }

    impl FakeHost {
        pub fn with_headers(headers: &[(&str, &str)]) -> Self {
            let raw: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
            Self::with_raw_headers(&raw)
        }

        /// Header values as raw bytes, which need not be UTF-8.
        pub fn with_raw_headers(headers: &[(&str, &[u8])]) -> Self {
            let host = Self::default();
            *host.headers.borrow_mut() = headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
                .collect();
            host
        }

        pub fn header(&self, name: &str) -> Option<String> {
            self.headers
                .borrow()
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        }

        pub fn counter(&self, name: &str) -> u64 {
            self.counters
                .borrow()
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v)
        }

        pub fn call_count(&self) -> usize {
            self.calls.borrow().len()
        }

        /// Another "worker": the same shared data and gauges, its own request headers.
        pub fn sibling(&self, headers: &[(&str, &str)]) -> Self {
            let host = Self::with_headers(headers);
            FakeHost {
                shared: Rc::clone(&self.shared),
                gauges: Rc::clone(&self.gauges),
                counters: Rc::clone(&self.counters),
                gauge_ids: Rc::clone(&self.gauge_ids),
                counter_ids: Rc::clone(&self.counter_ids),
                ..host
            }
        }

        pub fn gauge(&self, name: &str) -> i64 {
            self.gauges
                .borrow()
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v)
        }
    }

    /// A new id for metric `name` (added at 0 to `metrics` when new), as Envoy gives one per
    /// definition.
    fn define<T: Default>(
        metrics: &mut Vec<(String, T)>,
        ids: &mut Vec<usize>,
        defines: &mut BTreeMap<String, u32>,
        name: &str,
    ) -> Option<u32> {
        let index = match metrics.iter().position(|(n, _)| n == name) {
            Some(index) => index,
            None => {
                metrics.push((name.to_owned(), T::default()));
                metrics.len() - 1
            }
        };
        *defines.entry(name.to_owned()).or_default() += 1;
        ids.push(index);
        u32::try_from(ids.len() - 1).ok()
    }

    impl FakeHost {
        /// How many times metric `name` was defined by this VM.
        pub fn definitions(&self, name: &str) -> u32 {
            self.defines.borrow().get(name).copied().unwrap_or(0)
        }

        fn gauge_index(&self, id: u32) -> Option<usize> {
            self.gauge_ids.borrow().get(id as usize).copied()
        }

        fn counter_index(&self, id: u32) -> Option<usize> {
            self.counter_ids.borrow().get(id as usize).copied()
        }
    }

    impl super::Host for FakeHost {
        fn first_copy_only(&self) -> bool {
            self.first_only.get()
        }

        fn request_header_map(&self) -> Option<crate::request::HeaderList> {
            if !self.first_only.get() {
                return None;
            }
            self.calls.borrow_mut().push("get map".to_owned());
            let mut bytes = Vec::new();
            let mut entries = Vec::new();
            for (name, value) in self.headers.borrow().iter() {
                let start = bytes.len();
                bytes.extend_from_slice(name.as_bytes());
                let name_end = bytes.len();
                bytes.extend_from_slice(value);
                entries.push([start, name_end, name_end, bytes.len()]);
            }
            Some(crate::request::HeaderList::new(bytes, entries))
        }

        fn request_header(&self, name: &str) -> Option<Vec<u8>> {
            self.calls.borrow_mut().push(format!("get {name}"));
            self.headers
                .borrow()
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }

        fn request_header_values(&self, name: &str) -> Vec<Vec<u8>> {
            self.calls.borrow_mut().push(format!("get all {name}"));
            self.headers
                .borrow()
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect()
        }

        fn set_request_header(&self, name: &str, value: Option<&str>) {
            self.calls.borrow_mut().push(format!("set {name}"));
            let mut headers = self.headers.borrow_mut();
            headers.retain(|(k, _)| k != name);
            if let Some(v) = value {
                headers.push((name.to_owned(), v.as_bytes().to_vec()));
            }
        }

        fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
            self.calls.borrow_mut().push(format!("reply {status}"));
            if self.refuse_replies.get() {
                return false;
            }
            *self.reply.borrow_mut() = Some((
                status,
                headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                body.to_vec(),
            ));
            true
        }

        fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.calls.borrow_mut().push(format!("shared get {key}"));
            self.shared.borrow().get(key).cloned()
        }

        fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
            self.calls.borrow_mut().push(format!("shared set {key}"));
            if self.cas_conflicts.get() > 0 {
                self.cas_conflicts.set(self.cas_conflicts.get() - 1);
                return SharedWrite::CasMismatch;
            }
            let mut shared = self.shared.borrow_mut();
            let next = shared.values().map(|(_, c)| *c).max().unwrap_or(0) + 1;
            match shared.get_mut(key) {
                Some(entry) if cas != 0 && cas != entry.1 => SharedWrite::CasMismatch,
                Some(entry) => {
                    *entry = (value.to_vec(), next);
                    SharedWrite::Written
                }
                None => {
                    shared.insert(key.to_owned(), (value.to_vec(), next));
                    SharedWrite::Written
                }
            }
        }

        fn create_shared_data(&self, key: &str, initial: &[u8]) -> bool {
            if !self.atomic_create.get() {
                return self.shared_data(key).is_some()
                    || self.set_shared_data(key, initial, 0) == SharedWrite::Written;
            }
            self.calls.borrow_mut().push(format!("shared create {key}"));
            let mut shared = self.shared.borrow_mut();
            if !shared.contains_key(key) {
                let next = shared.values().map(|(_, c)| *c).max().unwrap_or(0) + 1;
                shared.insert(key.to_owned(), (initial.to_vec(), next));
            }
            true
        }

        fn define_gauge(&self, name: &str) -> Option<u32> {
            define(
                &mut self.gauges.borrow_mut(),
                &mut self.gauge_ids.borrow_mut(),
                &mut self.defines.borrow_mut(),
                name,
            )
        }

        fn add_to_gauge(&self, id: u32, delta: i64) {
            self.calls
                .borrow_mut()
                .push(format!("gauge {id} {delta:+}"));
            if let Some(i) = self.gauge_index(id) {
                if let Some((_, value)) = self.gauges.borrow_mut().get_mut(i) {
                    *value += delta;
                }
            }
        }

        fn define_counter(&self, name: &str) -> Option<u32> {
            self.calls
                .borrow_mut()
                .push(format!("define counter {name}"));
            define(
                &mut self.counters.borrow_mut(),
                &mut self.counter_ids.borrow_mut(),
                &mut self.defines.borrow_mut(),
                name,
            )
        }

        fn set_gauge(&self, id: u32, value: u64) {
            self.calls
                .borrow_mut()
                .push(format!("gauge {id} = {value}"));
            if let Some(i) = self.gauge_index(id) {
                if let Some((_, current)) = self.gauges.borrow_mut().get_mut(i) {
                    *current = i64::try_from(value).unwrap_or(i64::MAX);
                }
            }
        }

        fn response_code(&self) -> Option<u64> {
            self.calls.borrow_mut().push("response code".to_owned());
            self.response.get().0
        }

        fn response_flags(&self) -> Option<u64> {
            self.calls.borrow_mut().push("response flags".to_owned());
            self.response.get().1
        }

        fn response_header(&self, name: &str) -> Option<Vec<u8>> {
            self.calls.borrow_mut().push(format!("get response {name}"));
            self.response_headers
                .borrow()
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }

        fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
            self.calls.borrow_mut().push(format!("get trailer {name}"));
            self.response_trailers
                .borrow()
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }

        fn response_header_values(&self, name: &str) -> Vec<Vec<u8>> {
            self.calls
                .borrow_mut()
                .push(format!("get all response {name}"));
            self.response_headers
                .borrow()
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect()
        }

        fn add_response_header(&self, name: &str, value: &str) {
            self.calls.borrow_mut().push(format!("add response {name}"));
            self.response_headers
                .borrow_mut()
                .push((name.to_owned(), value.as_bytes().to_vec()));
        }

        fn set_response_header(&self, name: &str, value: &str) {
            self.calls.borrow_mut().push(format!("set response {name}"));
            let mut headers = self.response_headers.borrow_mut();
            headers.retain(|(k, _)| k != name);
            headers.push((name.to_owned(), value.as_bytes().to_vec()));
        }

        fn increment_counter(&self, id: u32, delta: u64) {
            self.calls
                .borrow_mut()
                .push(format!("counter {id} +{delta}"));
            if let Some(i) = self.counter_index(id) {
                if let Some((_, value)) = self.counters.borrow_mut().get_mut(i) {
                    *value += delta;
                }
            }
        }
    }
}
