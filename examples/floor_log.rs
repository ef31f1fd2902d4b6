//! Benchmark floor exporting `proxy_on_context_create`, `proxy_on_request_headers` and
//! `proxy_on_log` (not `proxy_on_delete`), its host calls chosen by the plugin configuration
//! (`floor/calls.rs`): the end of a stream seen from `proxy_on_log`, where the response headers
//! can still be read, against `raw_floor`'s `proxy_on_delete`, where only properties can.
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
    pub extern "C" fn proxy_on_log(_context: u32) {
        calls::stream_end();
    }
}
