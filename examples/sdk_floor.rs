//! Benchmark floor (scenario W): a proxy-wasm filter on the same Rust SDK that makes exactly the
//! host calls meshsplit makes on its weighted path (read `:authority`, write the cluster header
//! and `:authority`) and nothing else. meshsplit's cost minus this one is meshsplit's own code.
//!
//! Build: `cargo build --release --target wasm32-wasip1 --example sdk_floor`.

#[cfg(target_arch = "wasm32")]
mod floor {
    use proxy_wasm::traits::{Context, HttpContext, RootContext};
    use proxy_wasm::types::{Action, ContextType};

    struct FloorRoot;
    struct FloorStream;

    impl Context for FloorRoot {}
    impl RootContext for FloorRoot {
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(FloorStream))
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
    }

    impl Context for FloorStream {}
    impl HttpContext for FloorStream {
        fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
            if self.get_http_request_header(":authority").is_some() {
                self.set_http_request_header("x-meshsplit-cluster", Some("reviews_v1"));
                self.set_http_request_header(":authority", Some("reviews-v1.internal"));
            }
            Action::Continue
        }
    }

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(FloorRoot) });
    }}
}
