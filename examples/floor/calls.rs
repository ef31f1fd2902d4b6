//! What the benchmark floors do inside the VM, shared by `raw_floor`, `floor_headers_only` and
//! `floor_create`, which differ only in the callbacks they export (each exported per-stream
//! callback is a crossing Envoy makes for every stream). The plugin configuration chooses the
//! host calls of `proxy_on_request_headers` and `proxy_on_delete`, so that each crossing can be
//! measured on its own:
//!
//! - `none`: no host call;
//! - `get-missing`: read a header the request does not have (a host call that allocates nothing);
//! - `get`: read `:authority` (the host calls back into the VM to allocate the value);
//! - `get-pairs`: read the whole request header map in one call (one value, every header);
//! - `get-set` (the default, what meshsplit does): read `:authority`, write the cluster header
//!   and `:authority`;
//! - `get-set-clear`: `get-set`, then call the `clear_route_cache` foreign function (Envoy ≥ 1.33)
//!   as a module of a newer ABI would have to; if Envoy lacks it, the cluster header names no
//!   cluster, so the benchmark's sanity check (every answer 200) fails;
//! - `get-set-code`: `get-set`, and read the `response.code` property when the stream ends;
//! - `get-set-status`: `get-set`, and read the `:status` response header when the stream ends.
#![allow(unsafe_code)]
// Each floor uses the part its exports call.
#![allow(dead_code)]

use std::alloc::{alloc, dealloc, Layout};
use std::sync::atomic::{AtomicU8, Ordering};

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        value: *mut *mut u8,
        value_len: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, value: *mut *mut u8, value_len: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_len: usize,
        value: *const u8,
        value_len: usize,
    ) -> u32;
    fn proxy_get_buffer_bytes(
        buffer: u32,
        start: usize,
        max: usize,
        value: *mut *mut u8,
        value_len: *mut usize,
    ) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_len: usize,
        value: *mut *mut u8,
        value_len: *mut usize,
    ) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_len: usize,
        arguments: *const u8,
        arguments_len: usize,
        results: *mut *mut u8,
        results_len: *mut usize,
    ) -> u32;
}

/// The exports every floor has (ABI version, allocation, VM start, configure, request headers);
/// each floor adds the per-stream callbacks it is about. Expanded where `calls` is in scope.
macro_rules! floor_exports {
    () => {
        #[no_mangle]
        pub extern "C" fn proxy_abi_version_0_2_1() {}

        #[no_mangle]
        pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
            calls::allocate(size)
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
            1
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_configure(_root: u32, _size: usize) -> u32 {
            calls::configure();
            1
        }

        #[no_mangle]
        pub extern "C" fn proxy_on_request_headers(_context: u32, _n: usize, _eos: u32) -> u32 {
            calls::request_headers();
            0
        }
    };
}

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
const PLUGIN_CONFIGURATION: u32 = 7;

const NONE: u8 = 0;
const GET_MISSING: u8 = 1;
const GET: u8 = 2;
const GET_SET: u8 = 3;
const GET_SET_CODE: u8 = 4;
const GET_SET_STATUS: u8 = 5;
const GET_PAIRS: u8 = 6;
const GET_SET_CLEAR: u8 = 7;

static MODE: AtomicU8 = AtomicU8::new(GET_SET);

pub fn allocate(size: usize) -> *mut u8 {
    match Layout::array::<u8>(size.max(1)) {
        // SAFETY: a non-zero layout; the host hands the buffer back and `free` releases it.
        Ok(layout) => unsafe { alloc(layout) },
        Err(_) => std::ptr::null_mut(),
    }
}

fn free(ptr: *mut u8, len: usize) {
    if !ptr.is_null() {
        if let Ok(layout) = Layout::array::<u8>(len.max(1)) {
            // SAFETY: allocated by `allocate` with the same length.
            unsafe { dealloc(ptr, layout) };
        }
    }
}

/// Reads the plugin configuration: which host calls to make.
pub fn configure() {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: out-pointers to locals; the host fills them with a buffer from `allocate`.
    let status =
        unsafe { proxy_get_buffer_bytes(PLUGIN_CONFIGURATION, 0, usize::MAX, &mut ptr, &mut len) };
    let mode = if status == 0 && !ptr.is_null() {
        // SAFETY: the host wrote `len` bytes at `ptr`.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        let mode = match bytes {
            b"none" => NONE,
            b"get-missing" => GET_MISSING,
            b"get" => GET,
            b"get-set-code" => GET_SET_CODE,
            b"get-set-status" => GET_SET_STATUS,
            b"get-pairs" => GET_PAIRS,
            b"get-set-clear" => GET_SET_CLEAR,
            _ => GET_SET,
        };
        free(ptr, len);
        mode
    } else {
        GET_SET
    };
    MODE.store(mode, Ordering::Relaxed);
}

fn get(map: u32, key: &str) -> bool {
    let mut ptr: *mut u8 = std::ptr::null_mut();
    let mut len: usize = 0;
    // SAFETY: out-pointers to locals; the host fills them with a buffer from `allocate`.
    let status =
        unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut ptr, &mut len) };
    free(ptr, len);
    status == 0
}

fn set(key: &str, value: &str) {
    // SAFETY: pointers and lengths of live strings.
    unsafe {
        proxy_replace_header_map_value(
            REQUEST_HEADERS,
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
        );
    }
}

pub fn request_headers() {
    match MODE.load(Ordering::Relaxed) {
        NONE => {}
        GET_MISSING => {
            get(REQUEST_HEADERS, "x-absent");
        }
        GET => {
            get(REQUEST_HEADERS, ":authority");
        }
        GET_PAIRS => {
            let mut ptr: *mut u8 = std::ptr::null_mut();
            let mut len: usize = 0;
            // SAFETY: out-pointers to locals; the host fills them with a buffer from `allocate`.
            unsafe { proxy_get_header_map_pairs(REQUEST_HEADERS, &mut ptr, &mut len) };
            free(ptr, len);
        }
        GET_SET_CLEAR => {
            if get_set() {
                let name = "clear_route_cache";
                let mut ptr: *mut u8 = std::ptr::null_mut();
                let mut len: usize = 0;
                // SAFETY: a live name, no arguments, out-pointers to locals.
                let status = unsafe {
                    proxy_call_foreign_function(
                        name.as_ptr(),
                        name.len(),
                        std::ptr::null(),
                        0,
                        &mut ptr,
                        &mut len,
                    )
                };
                free(ptr, len);
                if status != 0 {
                    set("x-meshsplit-cluster", "no-clear-route-cache");
                }
            }
        }
        _ => {
            get_set();
        }
    }
}

/// What meshsplit does: read `:authority`, then write the cluster header and `:authority`.
/// Whether the request had an `:authority`.
#[inline(always)]
fn get_set() -> bool {
    let found = get(REQUEST_HEADERS, ":authority");
    if found {
        set("x-meshsplit-cluster", "reviews_v1");
        set(":authority", "reviews-v1.internal");
    }
    found
}

pub fn stream_end() {
    match MODE.load(Ordering::Relaxed) {
        GET_SET_CODE => {
            let path = b"response\0code";
            let mut ptr: *mut u8 = std::ptr::null_mut();
            let mut len: usize = 0;
            // SAFETY: out-pointers to locals; the host fills them with a buffer from `allocate`.
            unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut ptr, &mut len) };
            free(ptr, len);
        }
        GET_SET_STATUS => {
            get(RESPONSE_HEADERS, ":status");
        }
        _ => {}
    }
}
