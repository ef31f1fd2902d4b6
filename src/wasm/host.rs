//! [`Host`] over the proxy-wasm ABI: the host calls of the stream (or root context) whose
//! callback is running.
use super::imports;
use crate::host::{Host, SharedWrite};
use crate::request::HeaderList;

/// Host calls of the stream whose callback is running.
pub struct EnvoyHost;

impl Host for EnvoyHost {
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        imports::request_header(name)
    }

    /// proxy-wasm's `get_header_map_value` answers the first copy only: every copy needs the
    /// whole map (one call).
    fn request_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        imports::request_headers()
            .map(|all| all.values(name.as_bytes()).map(<[u8]>::to_vec).collect())
            .unwrap_or_default()
    }

    fn first_copy_only(&self) -> bool {
        true
    }

    fn request_header_map(&self) -> Option<HeaderList> {
        imports::request_headers()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        if let Err(status) = imports::set_request_header(name, value) {
            log::warn!("writing request header {name}: status {status}");
        }
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> bool {
        match imports::send_local_response(status, headers, body) {
            Ok(()) => true,
            Err(err) => {
                log::warn!("sending local reply {status}: status {err}");
                false
            }
        }
    }

    fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        imports::shared_data(key)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: u32) -> SharedWrite {
        imports::set_shared_data(key, value, cas)
    }

    fn define_gauge(&self, name: &str) -> Option<u32> {
        imports::define_gauge(name)
    }

    fn add_to_gauge(&self, id: u32, delta: i64) {
        imports::add_to_metric(id, delta);
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        imports::define_counter(name)
    }

    fn increment_counter(&self, id: u32, delta: u64) {
        imports::add_to_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
    }

    fn set_gauge(&self, id: u32, value: u64) {
        imports::record_metric(id, value);
    }

    fn response_code(&self) -> Option<u64> {
        imports::property_u64(b"response\0code")
    }

    fn response_flags(&self) -> Option<u64> {
        imports::property_u64(b"response\0flags")
    }

    #[cfg(feature = "assign-cookie")]
    fn response_header_values(&self, name: &str) -> Vec<Vec<u8>> {
        imports::response_headers()
            .map(|all| all.values(name.as_bytes()).map(<[u8]>::to_vec).collect())
            .unwrap_or_default()
    }

    #[cfg(feature = "assign-cookie")]
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        imports::response_header(name, false)
    }

    #[cfg(feature = "assign-cookie")]
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        imports::response_header(name, true)
    }

    #[cfg(feature = "assign-cookie")]
    fn add_response_header(&self, name: &str, value: &str) {
        if let Err(status) = imports::add_response_header(name, value) {
            log::warn!("adding response header {name}: status {status}");
        }
    }

    #[cfg(feature = "assign-cookie")]
    fn set_response_header(&self, name: &str, value: &str) {
        if let Err(status) = imports::set_response_header(name, value) {
            log::warn!("setting response header {name}: status {status}");
        }
    }
}
