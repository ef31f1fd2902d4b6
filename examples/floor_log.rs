//! Benchmark floor exporting `proxy_on_context_create`, `proxy_on_request_headers` and
//! `proxy_on_log` (not `proxy_on_delete`), its host calls chosen by the plugin configuration
//! (`floor/calls.rs`): the end of a stream seen from `proxy_on_log`, where the response headers
//! can still be read, against `raw_floor`'s `proxy_on_delete`, where only properties can.
#![allow(unsafe_code)]

#[cfg(target_arch = "wasm32")]
#[macro_use]
#[path = "floor/calls.rs"]
mod calls;

#[cfg(target_arch = "wasm32")]
mod exports {
    use super::calls;

    floor_exports!();

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_log(_context: u32) {
        calls::stream_end();
    }
}
