//! Benchmark floor without the SDK (scenario R): the same per-stream exports as meshsplit
//! (context create, request headers, delete) and, by default, the same host calls on the weighted
//! path, nothing else. meshsplit minus R is meshsplit's own logic; the SDK floor minus R is what
//! the SDK's other exports cost per request. Its plugin configuration selects other host calls
//! (`floor/calls.rs`), and `floor_headers_only` and `floor_create` export fewer callbacks: together
//! they measure what each crossing costs.
#![allow(unsafe_code)]

#[cfg(target_arch = "wasm32")]
#[path = "floor/calls.rs"]
mod calls;

#[cfg(target_arch = "wasm32")]
mod exports {
    use super::calls;

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

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_delete(_context: u32) {
        calls::stream_end();
    }
}
