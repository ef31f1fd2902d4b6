//! meshsplit: a proxy-wasm HTTP filter that splits traffic between upstream clusters.
//!
//! Pure logic (`config`, `plan`, `select`, `request`) builds and tests natively; the proxy-wasm
//! glue is compiled for `wasm32` only.

pub mod config;
pub mod filter;
pub mod host;
pub mod plan;
pub mod request;
pub mod select;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    // The host filters by its own log level; the request path does not log.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::SplitRoot::new())
    });
}}
