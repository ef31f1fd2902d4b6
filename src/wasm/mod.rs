//! The wasm build (proxy-wasm ABI): imports and exports with all their `unsafe` (`abi`), the
//! glue the exported callbacks call (`glue`), and the host calls behind the core's `Host`
//! trait (`host`). Arrows point to the core only.

mod abi;
mod glue;
mod host;
