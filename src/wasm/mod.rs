//! The wasm build (proxy-wasm ABI). The arrows run one way: the exported callbacks (`exports`)
//! call the glue (`glue`), which drives the core through the host calls behind its `Host` trait
//! (`host`), which are the ABI's imports (`imports`). All `unsafe` code is in `exports` and
//! `imports`.

mod exports;
mod glue;
mod host;
mod imports;
