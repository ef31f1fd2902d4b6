//! Envoy's dynamic-module ABI (Envoy 1.40, ABI `v0.2.0`), by hand, its second half: the event
//! hooks meshsplit exports, which hand each event to `filter.rs` or `specifier.rs`. Every hook
//! catches panics: none may unwind into Envoy. `imports.rs` has the callbacks into Envoy.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null;

use super::imports::*;
use super::{filter, specifier};
use crate::route::Verdict;

/// The ABI version this module was written against; Envoy 1.40.0 logs
/// "Dynamic module ABI version v0.2.0 matched." when it agrees.
const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_on_http_filter_request_headers_status_{Continue,StopIteration}`;
/// `Continue` (0) is also the continue status of the body and trailer hooks.
const CONTINUE: u32 = 0;
const STOP_ITERATION: u32 = 1;

/// Runs `f`, turning a panic into `fallback` and an error line: no panic may unwind into Envoy.
fn guarded<T>(hook: &str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(_) => {
            log(
                log::Level::Error,
                &format!("{hook}: panicked; failing closed"),
            );
            fallback
        }
    }
}

/// Bytes of an Envoy buffer passed to a hook, valid for the duration of the hook.
///
/// # Safety
/// `buffer` must describe `length` readable bytes (or have a null pointer) that outlive `'a`.
unsafe fn envoy_bytes<'a>(buffer: EnvoyBuffer) -> &'a [u8] {
    if buffer.ptr.is_null() {
        return &[];
    }
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    guarded("envoy_dynamic_module_on_program_init", null(), || {
        super::on_program_init();
        ABI_VERSION.as_ptr()
    })
}

/// A module-side config handed to Envoy as an opaque pointer (boxed), or null to refuse it.
fn to_envoy<T>(config: Option<T>) -> *const c_void {
    match config {
        Some(config) => Box::into_raw(Box::new(config)) as *const c_void,
        None => null(),
    }
}

/// A config that [`to_envoy`] handed to Envoy, borrowed (`None` for null).
///
/// # Safety
/// `ptr` is null or came from `to_envoy::<T>` and has not been freed; the borrow ends before it
/// is.
unsafe fn from_envoy<'a, T>(ptr: *const c_void) -> Option<&'a T> {
    // SAFETY: guaranteed by the caller.
    unsafe { (ptr as *const T).as_ref() }
}

/// Frees a config that [`to_envoy`] handed to Envoy (null: nothing to free).
///
/// # Safety
/// `ptr` is null or came from `to_envoy::<T>`, and is not used again.
unsafe fn drop_from_envoy<T>(ptr: *const c_void) {
    if !ptr.is_null() {
        // SAFETY: per this function's contract, `ptr` is a `Box<T>` from `to_envoy::<T>`.
        drop(unsafe { Box::from_raw(ptr as *mut T) });
    }
}

/// Returns the module's config (an `Arc<filter::Config>` boxed), or null to refuse the config.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded(
        "envoy_dynamic_module_on_http_filter_config_new",
        null(),
        || {
            // SAFETY: Envoy's name and config buffers live for the duration of this hook.
            let (name, config) = unsafe { (envoy_bytes(name), envoy_bytes(config)) };
            to_envoy(filter::config_new(
                FilterConfig(config_envoy_ptr),
                name,
                config,
            ))
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config_module_ptr: *const c_void,
) {
    guarded(
        "envoy_dynamic_module_on_http_filter_config_destroy",
        (),
        || {
            // SAFETY: Envoy passes back what on_http_filter_config_new returned; the config
            // lives until the drop below.
            if let Some(config) = unsafe { from_envoy::<filter::SharedConfig>(config_module_ptr) } {
                filter::config_destroy(config);
            }
            // SAFETY: Envoy passes back what on_http_filter_config_new returned, once.
            unsafe { drop_from_envoy::<filter::SharedConfig>(config_module_ptr) }
        },
    )
}

/// The config scheduler's event (the idle tick, `timer.rs`), on Envoy's main thread.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    config_envoy_ptr: *mut c_void,
    config_module_ptr: *const c_void,
    _event_id: u64,
) {
    guarded(
        "envoy_dynamic_module_on_http_filter_config_scheduled",
        (),
        || {
            // SAFETY: Envoy passes back what on_http_filter_config_new returned, alive until
            // on_http_filter_config_destroy, which runs on this (main) thread too.
            if let Some(config) = unsafe { from_envoy::<filter::SharedConfig>(config_module_ptr) } {
                filter::config_scheduled(config, FilterConfig(config_envoy_ptr));
            }
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_module_ptr: *const c_void,
    _filter_envoy_ptr: *mut c_void,
) -> *const c_void {
    guarded("envoy_dynamic_module_on_http_filter_new", null(), || {
        if config_module_ptr.is_null() {
            return null();
        }
        // SAFETY: the config pointer came from config_new and Envoy keeps it alive while any of
        // its filters exist; it is only read.
        let config = unsafe { &*(config_module_ptr as *const filter::SharedConfig) };
        Box::into_raw(Box::new(filter::stream_new(config))) as *const c_void
    })
}

/// The stream object of a hook.
///
/// # Safety
/// `filter_module_ptr` must be a pointer returned by `envoy_dynamic_module_on_http_filter_new`
/// that Envoy has not destroyed; Envoy calls one stream's hooks on one thread, one at a time.
unsafe fn stream<'a>(filter_module_ptr: *const c_void) -> Option<&'a mut filter::Stream> {
    // SAFETY: guaranteed by the caller.
    unsafe { (filter_module_ptr as *mut filter::Stream).as_mut() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    const HOOK: &str = "envoy_dynamic_module_on_http_filter_request_headers";
    let filter = Filter(filter_envoy_ptr);
    let status = |verdict| match verdict {
        Verdict::Continue => CONTINUE,
        Verdict::Replied => STOP_ITERATION,
    };
    let decided = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: Envoy passes the pointer it got from on_http_filter_new.
        let Some(stream) = (unsafe { stream(filter_module_ptr) }) else {
            return CONTINUE;
        };
        status(filter::request_headers(stream, filter))
    }));
    match decided {
        Ok(status) => status,
        Err(_) => {
            // Fail closed for real: no client-sent cluster header survives, and `reject`
            // answers as for an unknown service (the config is immutable, so a panic cannot
            // have left it half-changed).
            log(
                log::Level::Error,
                &format!("{HOOK}: panicked; failing closed"),
            );
            let closed = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: as above; the hook that panicked holds no reference to the stream
                // any more.
                match unsafe { stream(filter_module_ptr) } {
                    Some(stream) => {
                        status(filter::fail_closed(filter::stream_config(stream), filter))
                    }
                    None => CONTINUE,
                }
            }));
            closed.unwrap_or_else(|_| {
                // Even that panicked: answer 503 rather than let the request go anywhere.
                log(
                    log::Level::Error,
                    &format!("{HOOK}: failing closed panicked; answering 503"),
                );
                filter.send_response(503, &[], b"");
                STOP_ITERATION
            })
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
) {
    guarded(
        "envoy_dynamic_module_on_http_filter_stream_complete",
        (),
        || {
            // SAFETY: as in request_headers.
            if let Some(stream) = unsafe { stream(filter_module_ptr) } {
                filter::stream_complete(stream, Filter(filter_envoy_ptr));
            }
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module_ptr: *const c_void) {
    guarded("envoy_dynamic_module_on_http_filter_destroy", (), || {
        if !filter_module_ptr.is_null() {
            // SAFETY: the pointer came from Box::into_raw in on_http_filter_new; Envoy destroys
            // each filter once, after its last hook.
            let stream = unsafe { Box::from_raw(filter_module_ptr as *mut filter::Stream) };
            filter::stream_destroy(*stream);
        }
    })
}

// Hooks Envoy requires of every HTTP filter module, which meshsplit does not use: each lets the
// stream go on untouched. Their arguments are not read.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) -> u32 {
    CONTINUE
}

/// Sets a cookie the stream's request was assigned (`assign_cookie`); nothing otherwise.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    guarded(
        "envoy_dynamic_module_on_http_filter_response_headers",
        CONTINUE,
        || {
            // SAFETY: as in request_headers.
            if let Some(stream) = unsafe { stream(filter_module_ptr) } {
                filter::response_headers(stream, Filter(filter_envoy_ptr));
            }
            CONTINUE
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter_envoy_ptr: *mut c_void,
    filter_module_ptr: *const c_void,
) -> u32 {
    guarded(
        "envoy_dynamic_module_on_http_filter_response_trailers",
        CONTINUE,
        || {
            // SAFETY: as in request_headers.
            if let Some(stream) = unsafe { stream(filter_module_ptr) } {
                filter::response_trailers(stream, Filter(filter_envoy_ptr));
            }
            CONTINUE
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _event_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _callout_id: u64,
    _result: u32,
    _headers: *const c_void,
    _headers_size: usize,
    _body_chunks: *const c_void,
    _body_chunks_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _headers: *const c_void,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _data: *const c_void,
    _data_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _trailers: *const c_void,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
    _stream_id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter_envoy_ptr: *mut c_void,
    _filter_module_ptr: *const c_void,
) {
}

// ---- cluster specifier -------------------------------------------------------------------------

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_new(
    config_envoy_ptr: *mut c_void,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guarded(
        "envoy_dynamic_module_on_cluster_specifier_config_new",
        null(),
        || {
            // SAFETY: Envoy's name and config buffers live for the duration of this hook.
            let (name, config) = unsafe { (envoy_bytes(name), envoy_bytes(config)) };
            to_envoy(specifier::config_new(
                SpecifierConfig(config_envoy_ptr),
                name,
                config,
            ))
        },
    )
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_destroy(
    config_module_ptr: *const c_void,
) {
    guarded(
        "envoy_dynamic_module_on_cluster_specifier_config_destroy",
        (),
        || {
            // SAFETY: Envoy passes back what on_cluster_specifier_config_new returned, once.
            unsafe { drop_from_envoy::<specifier::SharedConfig>(config_module_ptr) }
        },
    )
}

/// Returns whether a decision was made (a cluster, or a not-found status for the route).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_select(
    config_module_ptr: *const c_void,
    context_envoy_ptr: *mut c_void,
) -> bool {
    const HOOK: &str = "envoy_dynamic_module_on_cluster_specifier_select";
    if config_module_ptr.is_null() {
        return false;
    }
    // SAFETY: the config pointer came from config_new and outlives every route entry Envoy
    // creates with it; it is only read (shared across workers: the config is Sync).
    let config = unsafe { &*(config_module_ptr as *const specifier::SharedConfig) };
    let selection = Selection(context_envoy_ptr);
    match catch_unwind(AssertUnwindSafe(|| specifier::select(config, selection))) {
        Ok(decided) => decided,
        Err(_) => {
            // No cluster; with `reject` the unknown-service status (see specifier::fail_closed).
            log(
                log::Level::Error,
                &format!("{HOOK}: panicked; failing closed"),
            );
            guarded(HOOK, false, || specifier::fail_closed(config, selection))
        }
    }
}

#[cfg(test)]
#[path = "fuzz_tests.rs"]
mod fuzz_tests;
