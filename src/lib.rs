//! meshsplit: an HTTP filter for Envoy that splits traffic between upstream clusters.
//!
//! The core knows no ABI: configuration (`config`, `plan`), selection (`select`), what a request
//! offers (`request`), the per-request decision (`route`), per-instance state (`instance`,
//! `metrics`, `in_flight`), all behind the `host::Host` trait and tested natively. Adapters
//! depend on the core, never the other way: `wasm` (proxy-wasm ABI, wasm32 only) and `native`
//! (Envoy dynamic module; its ABI code only with the `native` feature).

pub mod config;
mod config_error;
pub mod cookie;
pub mod guard;
pub mod guard_record;
pub mod host;
pub mod in_flight;
pub mod instance;
pub mod metrics;
#[cfg(not(target_arch = "wasm32"))]
mod native;
pub mod plan;
pub mod request;
mod reserved_headers;
pub mod rollout;
pub mod route;
pub mod select;
mod serde_words;
pub mod tick;
// The core's tests also run compiled to wasm32 (make wasm-test): without the adapter.
#[cfg(all(target_arch = "wasm32", not(test)))]
mod wasm;

// Fuzzing reads the shipped configs and catches panics: native test runs only.
#[cfg(test)]
#[cfg(not(target_arch = "wasm32"))]
mod fuzz;
#[cfg(test)]
#[cfg(not(target_arch = "wasm32"))]
mod fuzz_tests;
#[cfg(test)]
mod property_tests;
