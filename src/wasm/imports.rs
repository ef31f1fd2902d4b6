//! The proxy-wasm ABI (0.2.1), by hand, its first half: the host functions meshsplit imports,
//! each behind a small safe function. `exports.rs` has the callbacks the module exports; the
//! arrows run one way: exports -> glue -> host -> imports.
//!
//! Why not the SDK's dispatcher: the host only calls the callbacks a module exports, and each
//! call crosses the VM boundary. The SDK exports every callback (context create, request and
//! response headers/body/trailers, log, done, delete, ...), so each request pays for crossings
//! this filter has no use for. This module exports only what the filter needs (context create,
//! request headers, and delete for least-request bookkeeping and the guard; response headers
//! only in meshsplit-cookie.wasm, feature `assign-cookie`). Measured in
//! instructions under callgrind (`make bench`): the SDK floor costs 11 k instructions per request
//! more than a raw floor making the same host calls (W − R), about seven times meshsplit's own
//! code; `bench/README.md` has the per-crossing table.
#![allow(unsafe_code)]

use std::ptr::{null, null_mut};

use crate::host::SharedWrite;
use crate::request::HeaderList;

/// proxy-wasm status codes used here.
const STATUS_OK: u32 = 0;
const STATUS_CAS_MISMATCH: u32 = 8;
/// `MetricType::Counter` and `MetricType::Gauge`.
const COUNTER: u32 = 0;
const GAUGE: u32 = 1;
/// `MapType::HttpRequestHeaders`.
const REQUEST_HEADERS: u32 = 0;
/// `MapType::HttpResponseHeaders`.
#[cfg(feature = "assign-cookie")]
const RESPONSE_HEADERS: u32 = 2;
/// `MapType::HttpResponseTrailers`.
#[cfg(feature = "assign-cookie")]
const RESPONSE_TRAILERS: u32 = 3;
/// `BufferType::PluginConfiguration`.
const PLUGIN_CONFIGURATION: u32 = 7;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        return_value: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key: *const u8, key_size: usize) -> u32;
    #[cfg(feature = "assign-cookie")]
    fn proxy_add_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        return_value: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        return_value: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details: *const u8,
        status_code_details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

// ---- safe wrappers over the imports ------------------------------------------------------------

/// The buffer a host call returned through out-pointers (`None` when the call failed).
fn returned_buffer(status: u32, data: *mut u8, size: usize) -> Option<Vec<u8>> {
    (status == STATUS_OK).then(|| take_host_buffer(data, size))
}

/// A status as a result; the error carries the status code.
fn checked(status: u32) -> Result<(), u32> {
    if status == STATUS_OK {
        Ok(())
    } else {
        Err(status)
    }
}

/// Takes ownership of a buffer the host filled through `proxy_on_memory_allocate`
/// (`exports.rs`), which allocates with the global allocator and this layout.
fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host got `data` from proxy_on_memory_allocate(size), which allocated exactly
    // `size` bytes as a boxed slice, and hands its ownership back to us here.
    let boxed: Box<[u8]> = unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(data, size)) };
    boxed.into_vec()
}

pub fn log(level: log::Level, message: &str) {
    // proxy-wasm levels: trace 0, debug 1, info 2, warn 3, error 4, critical 5.
    let level = match level {
        log::Level::Trace => 0,
        log::Level::Debug => 1,
        log::Level::Info => 2,
        log::Level::Warn => 3,
        log::Level::Error => 4,
    };
    // SAFETY: the pointer and length describe a live string for the duration of the call.
    unsafe { proxy_log(level, message.as_ptr(), message.len()) };
}

pub fn plugin_configuration() -> Vec<u8> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: out-pointers to locals; the returned buffer is taken over by take_host_buffer.
    let status = unsafe {
        proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, usize::MAX, &mut data, &mut size)
    };
    returned_buffer(status, data, size).unwrap_or_default()
}

/// The Envoy plugin (filter config) name, from the `plugin_name` property.
pub fn plugin_name() -> Option<String> {
    let path = b"plugin_name";
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in plugin_configuration.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    String::from_utf8(returned_buffer(status, data, size)?)
        .ok()
        .filter(|name| !name.is_empty())
}

/// A property that Envoy gives as an 8-byte little-endian integer (`response.code`,
/// `response.flags`); `path` segments are separated by NUL bytes.
pub fn property_u64(path: &[u8]) -> Option<u64> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in plugin_configuration.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    let bytes = returned_buffer(status, data, size)?;
    Some(u64::from_le_bytes(bytes.as_slice().try_into().ok()?))
}

pub fn shared_data(key: &str) -> Option<(Vec<u8>, u32)> {
    let (mut data, mut size, mut cas) = (null_mut(), 0, 0);
    // SAFETY: as in plugin_configuration; `cas` is a local out-parameter.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    returned_buffer(status, data, size).map(|value| (value, cas))
}

pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> SharedWrite {
    // SAFETY: pointers and lengths describe live buffers for the duration of the call.
    match unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    } {
        STATUS_OK => SharedWrite::Written,
        STATUS_CAS_MISMATCH => SharedWrite::CasMismatch,
        _ => SharedWrite::Failed,
    }
}

pub fn define_gauge(name: &str) -> Option<u32> {
    define_metric(GAUGE, name)
}

pub fn define_counter(name: &str) -> Option<u32> {
    define_metric(COUNTER, name)
}

fn define_metric(kind: u32, name: &str) -> Option<u32> {
    let mut id = 0;
    // SAFETY: the name is live for the call; `id` is a local out-parameter.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == STATUS_OK).then_some(id)
}

/// Asks for `proxy_on_tick` on the current root context every `period` milliseconds.
pub fn set_tick_period_milliseconds(period: u32) -> Result<(), u32> {
    // SAFETY: plain values only.
    checked(unsafe { proxy_set_tick_period_milliseconds(period) })
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: plain values only.
    unsafe { proxy_record_metric(id, value) };
}

pub fn add_to_metric(id: u32, delta: i64) {
    // SAFETY: plain values only.
    unsafe { proxy_increment_metric(id, delta) };
}

/// A request header's value as raw bytes; `None` when absent. The bytes need not be UTF-8
/// (Envoy passes obs-text through), and are kept exactly: sticky keys and rules compare bytes.
pub fn request_header(name: &str) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in plugin_configuration.
    let status = unsafe {
        proxy_get_header_map_value(
            REQUEST_HEADERS,
            name.as_ptr(),
            name.len(),
            &mut data,
            &mut size,
        )
    };
    returned_buffer(status, data, size)
}

/// The first copy of a response header (`trailers`: of a response trailer).
#[cfg(feature = "assign-cookie")]
pub fn response_header(name: &str, trailers: bool) -> Option<Vec<u8>> {
    let map = if trailers {
        RESPONSE_TRAILERS
    } else {
        RESPONSE_HEADERS
    };
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in plugin_configuration.
    let status =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size) };
    returned_buffer(status, data, size)
}

/// Every request header, in order: one host call for the whole map, kept in the buffer the
/// host filled (no copy per header).
pub fn request_headers() -> Option<HeaderList> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in plugin_configuration.
    let status = unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut data, &mut size) };
    returned_buffer(status, data, size).and_then(decode_pairs)
}

/// Every response header, in order: one host call for the whole map.
#[cfg(feature = "assign-cookie")]
pub fn response_headers() -> Option<HeaderList> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: as in plugin_configuration.
    let status = unsafe { proxy_get_header_map_pairs(RESPONSE_HEADERS, &mut data, &mut size) };
    returned_buffer(status, data, size).and_then(decode_pairs)
}

/// Adds a copy of a response header.
#[cfg(feature = "assign-cookie")]
pub fn add_response_header(name: &str, value: &str) -> Result<(), u32> {
    // SAFETY: pointers and lengths describe live strings for the duration of the call.
    checked(unsafe {
        proxy_add_header_map_value(
            RESPONSE_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// proxy-wasm's serialized header map: a u32 count, then a (name size, value size) u32 pair per
/// header, then each name and value followed by a NUL byte; all little-endian. Read in place:
/// the list keeps the buffer and the ranges of each name and value.
fn decode_pairs(bytes: Vec<u8>) -> Option<HeaderList> {
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([*b.first()?, *b.get(1)?, *b.get(2)?, *b.get(3)?]) as usize)
    };
    let count = word(0)?;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut entries = Vec::with_capacity(count.min(bytes.len() / 8));
    for i in 0..count {
        let (name_len, value_len) = (word(4 + 8 * i)?, word(8 + 8 * i)?);
        let name_end = data.checked_add(name_len)?;
        let value_start = name_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        if value_end > bytes.len() {
            return None;
        }
        entries.push([data, name_end, value_start, value_end]);
        data = value_end.checked_add(1)?;
    }
    Some(HeaderList::new(bytes, entries))
}

/// Replaces every copy of a response header with one.
#[cfg(feature = "assign-cookie")]
pub fn set_response_header(name: &str, value: &str) -> Result<(), u32> {
    // SAFETY: pointers and lengths describe live strings for the duration of the call.
    checked(unsafe {
        proxy_replace_header_map_value(
            RESPONSE_HEADERS,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Replaces every copy of a request header (`Some`) or removes them all (`None`).
pub fn set_request_header(name: &str, value: Option<&str>) -> Result<(), u32> {
    // SAFETY: pointers and lengths describe live strings for the duration of the call.
    let status = unsafe {
        match value {
            Some(v) => proxy_replace_header_map_value(
                REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                v.as_ptr(),
                v.len(),
            ),
            None => proxy_remove_header_map_value(REQUEST_HEADERS, name.as_ptr(), name.len()),
        }
    };
    checked(status)
}

pub fn send_local_response(
    status_code: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), u32> {
    let headers = serialize_headers(headers);
    // SAFETY: pointers and lengths describe live buffers for the duration of the call.
    let status = unsafe {
        proxy_send_local_response(
            status_code,
            null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    checked(status)
}

/// The ABI's header map encoding: count, then (name size, value size) pairs, then each name and
/// value followed by a NUL byte; integers are little-endian u32.
fn serialize_headers(headers: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 10)
        .sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    bytes.extend_from_slice(&len32(headers.len()));
    for (name, value) in headers {
        bytes.extend_from_slice(&len32(name.len()));
        bytes.extend_from_slice(&len32(value.len()));
    }
    for (name, value) in headers {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn clock_time_get(clock_id: u32, precision: u64, time: *mut u64) -> u16;
}

/// WASI's monotonic clock.
const CLOCK_MONOTONIC: u32 = 1;

/// Milliseconds of the host's monotonic clock: Envoy answers it from its own monotonic time
/// source, the same for every VM of the process (std's `Instant` cannot give the raw value that
/// VMs compare through shared data). 0 if the host has none.
pub fn monotonic_ms() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: `nanos` is a valid, writable u64 for the duration of the call.
    let errno = unsafe { clock_time_get(CLOCK_MONOTONIC, 1_000_000, &mut nanos) };
    if errno == 0 {
        nanos / 1_000_000
    } else {
        0
    }
}
