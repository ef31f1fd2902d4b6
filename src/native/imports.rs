//! Envoy's dynamic-module ABI (Envoy 1.40, ABI `v0.2.0`), by hand, its first half: the callbacks
//! meshsplit calls into Envoy and the handles they take, behind small safe functions;
//! `filter.rs` and `specifier.rs` only see slices, strings and opaque handles. `exports.rs` has
//! the event hooks Envoy calls. The arrows run one way: exports -> filter, specifier -> host ->
//! imports. All `unsafe` code of the native build is in these two files.
//!
//! Every declaration below follows `source/extensions/dynamic_modules/abi/abi.h` of the 1.40
//! release; every callback is one that `nm -D` lists in the 1.40.0 binary. C enums are `int`
//! (here `u32`); Envoy's buffers are `{const char* ptr; size_t length}` passed by value.
//! Every exported hook catches panics: none may unwind into Envoy.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr::{null, null_mut};

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub(super) ptr: *const u8,
    pub(super) length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct ModuleBuffer {
    pub(super) ptr: *const u8,
    pub(super) length: usize,
}

impl ModuleBuffer {
    fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
pub(super) struct ModuleHttpHeader {
    pub(super) key_ptr: *const u8,
    pub(super) key_length: usize,
    pub(super) value_ptr: *const u8,
    pub(super) value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
pub(super) const REQUEST_HEADER: u32 = 0;
/// `envoy_dynamic_module_type_http_header_type_ResponseHeader`.
pub(super) const RESPONSE_HEADER: u32 = 2;
/// `envoy_dynamic_module_type_http_header_type_ResponseTrailer`.
pub(super) const RESPONSE_TRAILER: u32 = 3;
/// `envoy_dynamic_module_type_attribute_id_{ResponseCode,ResponseFlags}` (`response.code`,
/// `response.flags`: Envoy's response flags as a bit set, e.g. 0x20 for UF).
pub(super) const ATTRIBUTE_RESPONSE_CODE: u32 = 15;
pub(super) const ATTRIBUTE_RESPONSE_FLAGS: u32 = 17;

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub(super) const METRICS_SUCCESS: u32 = 0;

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_get_header(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter_envoy_ptr: *mut c_void,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter_envoy_ptr: *mut c_void);
    fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: *mut c_void,
        status_code: u32,
        headers: *const ModuleHttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_gauge(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_decrement_gauge(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        filter_config_envoy_ptr: *mut c_void,
    ) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler_module_ptr: *mut c_void,
        event_id: u64,
    );
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler_module_ptr: *mut c_void,
    );
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter_envoy_ptr: *mut c_void,
        attribute_id: u32,
        result: *mut u64,
    ) -> bool;

    fn envoy_dynamic_module_callback_cluster_specifier_get_request_header_value(
        context_envoy_ptr: *mut c_void,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        total_count: *mut usize,
    ) -> bool;
    fn envoy_dynamic_module_callback_cluster_specifier_get_random_value(
        context_envoy_ptr: *mut c_void,
    ) -> u64;
    fn envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(
        context_envoy_ptr: *mut c_void,
        cluster_name: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_cluster_specifier_set_cluster_not_found_response_code(
        context_envoy_ptr: *mut c_void,
        status_code: u32,
    ) -> bool;
    fn envoy_dynamic_module_callback_cluster_specifier_config_define_counter(
        config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_cluster_specifier_config_increment_counter(
        config_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_cluster_specifier_config_define_gauge(
        config_envoy_ptr: *mut c_void,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_cluster_specifier_config_set_gauge(
        config_envoy_ptr: *mut c_void,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

// ---- handles ----------------------------------------------------------------------------------

/// Envoy's HTTP filter (one stream), valid for the duration of the hook it was passed to.
#[derive(Clone, Copy)]
pub struct Filter(pub(super) *mut c_void);

/// Envoy's HTTP filter config, valid during `envoy_dynamic_module_on_http_filter_config_new` and
/// `envoy_dynamic_module_on_http_filter_config_scheduled`.
#[derive(Clone, Copy)]
pub struct FilterConfig(pub(super) *mut c_void);

/// A filter config's scheduler: an event committed to it runs
/// `envoy_dynamic_module_on_http_filter_config_scheduled` on Envoy's main thread. Created in
/// `config_new`, deleted once, in `config_destroy`.
pub struct ConfigScheduler(*mut c_void);

// SAFETY: Envoy's ABI says committing to a config scheduler is safe from any thread (it posts
// to the main thread's dispatcher through a weak pointer to the config, a no-op once the config
// is gone); the pointer is only passed back to Envoy, and deleted once (`delete`), after which
// no commit is made (the timer's registry holds it under a lock).
unsafe impl Send for ConfigScheduler {}

impl ConfigScheduler {
    /// A scheduler of `config` (during `config_new`, on the main thread); `None` if Envoy gives
    /// none.
    pub fn new(config: FilterConfig) -> Option<Self> {
        // SAFETY: the config pointer of the running config_new hook.
        let ptr =
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config.0) };
        (!ptr.is_null()).then_some(Self(ptr))
    }

    /// Runs the config's scheduled hook with `event` on the main thread, soon.
    pub fn commit(&self, event: u64) {
        // SAFETY: a live scheduler (not yet deleted: `delete` consumes it).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event) }
    }

    pub fn delete(self) {
        // SAFETY: a live scheduler, deleted once (this consumes it).
        unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

/// One cluster selection, valid for the duration of `envoy_dynamic_module_on_cluster_specifier_select`.
#[derive(Clone, Copy)]
pub struct Selection(pub(super) *mut c_void);

/// Envoy's cluster specifier config: it outlives the module's config object, which Envoy
/// destroys first.
#[derive(Clone, Copy)]
pub struct SpecifierConfig(pub(super) *mut c_void);

// SAFETY: Envoy creates the cluster specifier config on the main thread and keeps it alive until
// after `envoy_dynamic_module_on_cluster_specifier_config_destroy`; the only call made through it
// after creation are `config_increment_counter` and `config_set_gauge`, which Envoy allows from
// any worker (counters and gauges are atomic and the id table is frozen once the config is
// created).
unsafe impl Send for SpecifierConfig {}
// SAFETY: as above; the handle is never written through, only passed back to Envoy.
unsafe impl Sync for SpecifierConfig {}

// ---- safe wrappers over the callbacks -----------------------------------------------------------

/// Log levels of `envoy_dynamic_module_type_log_level`.
pub(super) fn level_number(level: log::Level) -> u32 {
    match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    }
}

/// Logs through Envoy's `dynamic_modules` logger.
pub fn log(level: log::Level, message: &str) {
    // SAFETY: the buffer describes a live string for the duration of the call; Envoy copies it.
    unsafe {
        envoy_dynamic_module_callback_log(level_number(level), ModuleBuffer::of(message.as_bytes()))
    }
}

pub fn log_enabled(level: log::Level) -> bool {
    // SAFETY: plain value only.
    unsafe { envoy_dynamic_module_callback_log_enabled(level_number(level)) }
}

/// Copies an Envoy buffer that a callback returned; `None` when it is null.
pub(super) fn copied(buffer: EnvoyBuffer) -> Option<Vec<u8>> {
    if buffer.ptr.is_null() {
        return None;
    }
    // SAFETY: Envoy returned a pointer to `length` bytes of a header value that stays valid
    // until the header map changes; it is copied here before any other call.
    Some(unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }.to_vec())
}

thread_local! {
    /// Whether a request header value of the hook running on this thread is lent
    /// ([`Filter::with_request_header`]): request header writes and local replies, which could
    /// free it, are refused meanwhile.
    static LENT: Cell<bool> = const { Cell::new(false) };
}

/// [`LENT`] set while it lives, then put back as it was (also when the borrower panics, so
/// that failing closed can still reply).
struct Lending(bool);

impl Lending {
    fn start() -> Self {
        Self(LENT.with(|lent| lent.replace(true)))
    }
}

impl Drop for Lending {
    fn drop(&mut self) {
        LENT.with(|lent| lent.set(self.0));
    }
}

/// Whether a call that could change the request's header map must be refused now (a value is
/// lent); logged when it is.
fn refused_while_lent(what: &str) -> bool {
    let lent = LENT.with(Cell::get);
    if lent {
        log::error!("{what} refused: a request header value is lent");
    }
    lent
}

/// A header value Envoy returned (`found`, `buffer`), lent to `f` for its call, without a copy.
fn lent<T>(found: bool, buffer: EnvoyBuffer, f: impl FnOnce(Option<&[u8]>) -> T) -> T {
    if !found || buffer.ptr.is_null() {
        return f(None);
    }
    // SAFETY: Envoy returned a pointer to `length` bytes of a header value, valid until the
    // header map changes, which cannot happen until `f` returns: the cluster specifier's ABI has
    // no call that changes request headers, and the filter's refuses them while a value is lent
    // (`LENT`). The slice is borrowed for `f`'s call only and cannot outlive it.
    f(Some(unsafe {
        std::slice::from_raw_parts(buffer.ptr, buffer.length)
    }))
}

/// Every copy of a header, in order, through `get(index, result, count)`: one ABI call per copy,
/// which also tells how many copies there are.
pub(super) fn header_copies(
    mut get: impl FnMut(usize, &mut EnvoyBuffer, &mut usize) -> bool,
) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    let mut count = 1usize;
    let mut index = 0usize;
    while index < count {
        let mut result = EnvoyBuffer {
            ptr: null(),
            length: 0,
        };
        let found = get(index, &mut result, &mut count);
        match found.then(|| copied(result)).flatten() {
            Some(value) => values.push(value),
            None => break,
        }
        index += 1;
    }
    values
}

impl Filter {
    /// The first value of a request header, as bytes.
    pub fn request_header(self, name: &str) -> Option<Vec<u8>> {
        self.with_request_header(name, |value| value.map(<[u8]>::to_vec))
    }

    /// The first value of a request header, lent to `f` without a copy. The value is Envoy's
    /// own, freed when the header map changes: until `f` returns, this thread's request header
    /// writes and local replies are refused ([`LENT`]).
    pub fn with_request_header<T>(self, name: &str, f: impl FnOnce(Option<&[u8]>) -> T) -> T {
        let mut result = EnvoyBuffer {
            ptr: null(),
            length: 0,
        };
        // SAFETY: the filter pointer is the one Envoy passed to the running hook; the key lives
        // for the call; `result` is a local out-parameter; the count is optional (null).
        let found = unsafe {
            envoy_dynamic_module_callback_http_get_header(
                self.0,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                &mut result,
                0,
                null_mut(),
            )
        };
        let _lending = Lending::start();
        lent(found, result, f)
    }

    /// Every copy of a request header, in order.
    pub fn request_header_values(self, name: &str) -> Vec<Vec<u8>> {
        self.header_values(REQUEST_HEADER, name)
    }

    /// Every copy of a header of the map `header_type` (request or response), in order.
    fn header_values(self, header_type: u32, name: &str) -> Vec<Vec<u8>> {
        header_copies(|index, result, count| {
            // SAFETY: as in with_request_header; `count` is a local out-parameter for the number of
            // copies, and the response map is only asked for in the response-headers hook.
            unsafe {
                envoy_dynamic_module_callback_http_get_header(
                    self.0,
                    header_type,
                    ModuleBuffer::of(name.as_bytes()),
                    result,
                    index,
                    count,
                )
            }
        })
    }

    /// Replaces every copy of a response header with one (in the response-headers hook).
    pub fn set_response_header(self, name: &str, value: &str) -> bool {
        // SAFETY: as in with_request_header; Envoy copies key and value.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                RESPONSE_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// Replaces every copy of a request header (`Some`) or removes them all (`None`).
    pub fn set_request_header(self, name: &str, value: Option<&str>) -> bool {
        if refused_while_lent("writing a request header") {
            return false;
        }
        let value = match value {
            Some(v) => ModuleBuffer::of(v.as_bytes()),
            // A null value removes the header.
            None => ModuleBuffer {
                ptr: null(),
                length: 0,
            },
        };
        // SAFETY: as in with_request_header; Envoy copies key and value.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                value,
            )
        }
    }

    /// Makes the router pick the route again, so it sees the headers just written.
    pub fn clear_route_cache(self) {
        // SAFETY: the filter pointer of the running hook.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// Sends a local reply; `false` when it was refused (a request header value is lent).
    pub fn send_response(self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        if refused_while_lent("a local reply") {
            return false;
        }
        let headers: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr(),
                key_length: k.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect();
        let details = b"meshsplit_unknown_service";
        // SAFETY: the filter pointer of the running hook; the header array, body and details
        // live for the call, and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body),
                ModuleBuffer::of(details),
            )
        }
        true
    }

    pub fn increment_counter(self, id: usize, value: u64) -> bool {
        // SAFETY: the filter pointer of the running hook; no labels (null, 0).
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(
                self.0,
                id,
                null(),
                0,
                value,
            )
        };
        result == METRICS_SUCCESS
    }

    pub fn add_to_gauge(self, id: usize, delta: i64) -> bool {
        let value = delta.unsigned_abs();
        // SAFETY: as in increment_counter.
        let result = unsafe {
            if delta >= 0 {
                envoy_dynamic_module_callback_http_filter_increment_gauge(
                    self.0,
                    id,
                    null(),
                    0,
                    value,
                )
            } else {
                envoy_dynamic_module_callback_http_filter_decrement_gauge(
                    self.0,
                    id,
                    null(),
                    0,
                    value,
                )
            }
        };
        result == METRICS_SUCCESS
    }

    pub fn set_gauge(self, id: usize, value: u64) -> bool {
        // SAFETY: as in increment_counter.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_set_gauge(self.0, id, null(), 0, value)
        };
        result == METRICS_SUCCESS
    }

    /// Every copy of a response header, in order (in the response-headers hook).
    pub fn response_header_values(self, name: &str) -> Vec<Vec<u8>> {
        self.header_values(RESPONSE_HEADER, name)
    }

    /// Every copy of a response trailer, in order (in the response-trailers hook).
    pub fn response_trailer_values(self, name: &str) -> Vec<Vec<u8>> {
        self.header_values(RESPONSE_TRAILER, name)
    }

    /// Adds a copy of a response header (in the response-headers hook).
    pub fn add_response_header(self, name: &str, value: &str) -> bool {
        // SAFETY: the filter pointer of the running hook; key and value live for the call and
        // Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                RESPONSE_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value.as_bytes()),
            )
        }
    }

    /// The stream's response status (`response.code`), once a response was sent.
    pub fn response_code(self) -> Option<u64> {
        self.attribute_int(ATTRIBUTE_RESPONSE_CODE)
    }

    /// The stream's response flags (`response.flags`), as the wasm build reads them.
    pub fn response_flags(self) -> Option<u64> {
        self.attribute_int(ATTRIBUTE_RESPONSE_FLAGS)
    }

    /// An integer attribute of the stream. Envoy 1.40 answers `response.code` and
    /// `response.flags` at stream end; an attribute it does not implement logs an error there.
    fn attribute_int(self, id: u32) -> Option<u64> {
        let mut value = 0;
        // SAFETY: the filter pointer of the running hook; `value` is a local out-parameter.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(self.0, id, &mut value)
        };
        found.then_some(value)
    }
}

/// The ABI's metric definition callbacks (counter or gauge, filter or specifier config): all
/// take the config, a name, no labels, and return the id through an out-parameter.
pub(super) type DefineMetric =
    unsafe extern "C" fn(*mut c_void, ModuleBuffer, *const ModuleBuffer, usize, *mut usize) -> u32;

/// Defines a metric without labels on a config that Envoy is creating.
pub(super) fn define_metric(
    define: DefineMetric,
    config: *mut c_void,
    name: &str,
) -> Option<usize> {
    let mut id = 0;
    // SAFETY: `config` is the config pointer Envoy passed to the config_new hook that is
    // running; the name lives for the call; no labels (null, 0); `id` is a local out-parameter.
    let result = unsafe {
        define(
            config,
            ModuleBuffer::of(name.as_bytes()),
            null(),
            0,
            &mut id,
        )
    };
    (result == METRICS_SUCCESS).then_some(id)
}

impl FilterConfig {
    pub fn define_counter(self, name: &str) -> Option<usize> {
        define_metric(
            envoy_dynamic_module_callback_http_filter_config_define_counter,
            self.0,
            name,
        )
    }

    pub fn define_gauge(self, name: &str) -> Option<usize> {
        define_metric(
            envoy_dynamic_module_callback_http_filter_config_define_gauge,
            self.0,
            name,
        )
    }

    /// Sets a gauge defined on this config, while Envoy creates it or in its scheduled hook (no
    /// stream needed).
    pub fn set_gauge(self, id: usize, value: u64) -> bool {
        // SAFETY: the config pointer of the running config_new hook; no labels (null, 0).
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_set_gauge(self.0, id, null(), 0, value)
        };
        result == METRICS_SUCCESS
    }
}

impl Selection {
    /// The first copy of a request header, lent to `f` without a copy: one ABI call (this ABI
    /// has no call that changes request headers, so the value stays valid).
    pub fn with_request_header<T>(self, name: &str, f: impl FnOnce(Option<&[u8]>) -> T) -> T {
        let mut result = EnvoyBuffer {
            ptr: null(),
            length: 0,
        };
        let mut count = 0usize;
        // SAFETY: the context pointer of the running select hook; the key lives for the call;
        // `result` and `count` are local out-parameters.
        let found = unsafe {
            envoy_dynamic_module_callback_cluster_specifier_get_request_header_value(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                &mut result,
                0,
                &mut count,
            )
        };
        lent(found, result, f)
    }

    /// Every copy of a request header, in order.
    pub fn request_header_values(self, name: &str) -> Vec<Vec<u8>> {
        header_copies(|index, result, count| {
            // SAFETY: as in with_request_header; `count` is a local out-parameter for the number of
            // copies.
            unsafe {
                envoy_dynamic_module_callback_cluster_specifier_get_request_header_value(
                    self.0,
                    ModuleBuffer::of(name.as_bytes()),
                    result,
                    index,
                    count,
                )
            }
        })
    }

    /// The random value Envoy routes this request with: its stream id, the same for every
    /// selection of one request (a route refresh asks again with it).
    pub fn random_value(self) -> u64 {
        // SAFETY: the context pointer of the running select hook.
        unsafe { envoy_dynamic_module_callback_cluster_specifier_get_random_value(self.0) }
    }

    pub fn set_cluster(self, cluster: &str) {
        // SAFETY: the context pointer of the running select hook; Envoy copies the name.
        unsafe {
            envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(
                self.0,
                ModuleBuffer::of(cluster.as_bytes()),
            )
        }
    }

    pub fn set_cluster_not_found_response_code(self, status: u32) -> bool {
        // SAFETY: the context pointer of the running select hook; a plain value.
        unsafe {
            envoy_dynamic_module_callback_cluster_specifier_set_cluster_not_found_response_code(
                self.0, status,
            )
        }
    }
}

impl SpecifierConfig {
    pub fn define_counter(self, name: &str) -> Option<usize> {
        define_metric(
            envoy_dynamic_module_callback_cluster_specifier_config_define_counter,
            self.0,
            name,
        )
    }

    pub fn define_gauge(self, name: &str) -> Option<usize> {
        define_metric(
            envoy_dynamic_module_callback_cluster_specifier_config_define_gauge,
            self.0,
            name,
        )
    }

    pub fn set_gauge(self, id: usize, value: u64) -> bool {
        // SAFETY: as in increment_counter: gauges are atomic, and the id table is frozen.
        let result = unsafe {
            envoy_dynamic_module_callback_cluster_specifier_config_set_gauge(
                self.0,
                id,
                null(),
                0,
                value,
            )
        };
        result == METRICS_SUCCESS
    }

    pub fn increment_counter(self, id: usize, value: u64) -> bool {
        // SAFETY: Envoy's config outlives the module's (see the Send/Sync impls); no labels.
        let result = unsafe {
            envoy_dynamic_module_callback_cluster_specifier_config_increment_counter(
                self.0,
                id,
                null(),
                0,
                value,
            )
        };
        result == METRICS_SUCCESS
    }
}
