//! Benchmark floor without the SDK (scenario R): the same host calls as `sdk_floor`, and the same
//! per-stream exports as meshsplit (context create, request headers, delete), doing nothing else.
//! meshsplit minus R is meshsplit's own logic; the SDK floor minus R is what the SDK's other
//! exports cost per request.
#![allow(unsafe_code)]

#[cfg(target_arch = "wasm32")]
mod floor {
    use std::alloc::{alloc, dealloc, Layout};

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            value: *mut *mut u8,
            value_len: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map: u32,
            key: *const u8,
            key_len: usize,
            value: *const u8,
            value_len: usize,
        ) -> u32;
    }

    #[no_mangle]
    pub extern "C" fn proxy_abi_version_0_2_1() {}

    #[no_mangle]
    pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
        match Layout::array::<u8>(size.max(1)) {
            Ok(layout) => unsafe { alloc(layout) },
            Err(_) => std::ptr::null_mut(),
        }
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_vm_start(_root: u32, _size: usize) -> u32 {
        1
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_configure(_root: u32, _size: usize) -> u32 {
        1
    }

    fn set(key: &str, value: &str) {
        unsafe {
            proxy_replace_header_map_value(0, key.as_ptr(), key.len(), value.as_ptr(), value.len());
        }
    }

    #[no_mangle]
    pub extern "C" fn proxy_on_context_create(_context: u32, _parent: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_delete(_context: u32) {}

    #[no_mangle]
    pub extern "C" fn proxy_on_request_headers(_context: u32, _n: usize, _eos: u32) -> u32 {
        let key = ":authority";
        let mut ptr: *mut u8 = std::ptr::null_mut();
        let mut len: usize = 0;
        let status =
            unsafe { proxy_get_header_map_value(0, key.as_ptr(), key.len(), &mut ptr, &mut len) };
        if status == 0 && !ptr.is_null() {
            if let Ok(layout) = Layout::array::<u8>(len.max(1)) {
                unsafe { dealloc(ptr, layout) };
            }
            set("x-meshsplit-cluster", "reviews_v1");
            set(":authority", "reviews-v1.internal");
        }
        0
    }
}
