//! Benchmark floor without the SDK (scenario R): the same per-stream exports as meshsplit
//! (context create, request headers, delete) and, by default, the same host calls on the weighted
//! path, nothing else. meshsplit minus R is meshsplit's own logic; the SDK floor minus R is what
//! the SDK's other exports cost per request. Its plugin configuration selects other host calls
//! (`floor/calls.rs`), and `floor_headers_only` and `floor_create` export fewer callbacks: together
//! they measure what each crossing costs.
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
    pub extern "C" fn proxy_on_delete(_context: u32) {
        calls::stream_end();
    }
}
