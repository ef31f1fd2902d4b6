//! The proxy-wasm ABI (0.2.1), by hand, its second half: the callbacks the module exports, which
//! hand each call to `glue`. Only these are exported, so the host calls nothing else (see
//! `imports.rs` for why not the SDK's dispatcher).
#![allow(unsafe_code)]

use std::alloc::{alloc, Layout};
use std::ptr::null_mut;

use super::glue;
use crate::route::Verdict;

extern "C" {
    fn __wasm_call_ctors();
}

/// WASI reactor initialization, called by the host once after instantiation.
#[no_mangle]
pub extern "C" fn _initialize() {
    // SAFETY: the linker-generated constructor function, called once as WASI reactors require.
    unsafe { __wasm_call_ctors() };
}

/// Marks the ABI version this module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The host allocates every buffer it returns to us through this.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    if size == 0 {
        return std::ptr::NonNull::<u8>::dangling().as_ptr();
    }
    match Layout::array::<u8>(size) {
        // SAFETY: non-zero size; ownership goes to the host and comes back in take_host_buffer,
        // which frees it as a Box<[u8]> of the same length (same layout).
        Ok(layout) => unsafe { alloc(layout) },
        Err(_) => null_mut(),
    }
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_context_id: u32, _vm_configuration_size: usize) -> u32 {
    glue::on_vm_start();
    1
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(
    root_context_id: u32,
    _plugin_configuration_size: usize,
) -> u32 {
    u32::from(glue::on_configure(root_context_id))
}

#[no_mangle]
pub extern "C" fn proxy_on_context_create(context_id: u32, parent_context_id: u32) {
    glue::on_context_create(context_id, parent_context_id);
}

/// The housekeeping tick of a root context (root contexts only: no per-request cost).
#[no_mangle]
pub extern "C" fn proxy_on_tick(root_context_id: u32) {
    glue::on_tick(root_context_id);
}

/// Called when a stream ends, however it ends: gives back in-flight counts.
#[no_mangle]
pub extern "C" fn proxy_on_delete(context_id: u32) {
    glue::on_context_delete(context_id);
}

/// Sets an assigned cookie on the response. Exported only by the module built with feature
/// `assign-cookie` (meshsplit-cookie.wasm): Envoy calls a module's response-headers callback on
/// every stream once it is exported, so the module that does not assign cookies leaves it out
/// (bench/README.md has the cost). Always 0 (Continue).
#[cfg(feature = "assign-cookie")]
#[no_mangle]
pub extern "C" fn proxy_on_response_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: u32,
) -> u32 {
    glue::on_stream_response_headers(context_id);
    0
}

/// A guarded gRPC call's `grpc-status` trailer. Exported only by meshsplit-cookie.wasm, with the
/// response-headers callback; Envoy calls it only for responses that have trailers (gRPC
/// calls), so plain HTTP streams pay nothing for it. Always 0 (Continue).
#[cfg(feature = "assign-cookie")]
#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(context_id: u32, _num_trailers: usize) -> u32 {
    glue::on_stream_response_trailers(context_id);
    0
}

/// Returns 0 (Continue) or 1 (StopIteration, after a local reply).
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(
    context_id: u32,
    _num_headers: usize,
    _end_of_stream: u32,
) -> u32 {
    match glue::on_stream_request_headers(context_id) {
        Verdict::Continue => 0,
        Verdict::Replied => 1,
    }
}
