//! Benchmark floor exporting `proxy_on_context_create` and `proxy_on_request_headers` (not
//! `proxy_on_delete`), its host calls chosen by the plugin configuration (`floor/calls.rs`):
//! `raw_floor` minus this one is what exporting `proxy_on_delete` costs per stream.
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
}
