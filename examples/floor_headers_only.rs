//! Benchmark floor exporting one per-stream callback, `proxy_on_request_headers`, and its host
//! calls chosen by the plugin configuration (`floor/calls.rs`): with `raw_floor` and
//! `floor_create` it measures what each exported callback costs per stream.
#![allow(unsafe_code)]

#[cfg(target_arch = "wasm32")]
#[macro_use]
#[path = "floor/calls.rs"]
mod calls;

#[cfg(target_arch = "wasm32")]
mod exports {
    use super::calls;

    floor_exports!();
}
