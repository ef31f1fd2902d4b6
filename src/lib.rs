//! meshsplit: a proxy-wasm HTTP filter that splits traffic between upstream clusters.
//!
//! Pure logic (`config`, `plan`, `select`, `request`) and the filter's per-request and per-VM
//! logic build and test natively; the proxy-wasm ABI (`abi`) is compiled for `wasm32` only.

#[cfg(target_arch = "wasm32")]
mod abi;
pub mod config;
pub mod filter;
pub mod host;
pub mod in_flight;
pub mod metrics;
pub mod plan;
pub mod request;
pub mod select;
