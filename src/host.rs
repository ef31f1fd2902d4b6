//! The few host calls the filter makes, behind a trait: the wasm adapter talks to Envoy,
//! the test fake records what the filter did.

/// Request-path host calls. Implementations never panic; failures are logged and ignored
/// (a failed header write leaves the request as Envoy would route it without the filter).
pub trait Host {
    fn request_header(&self, name: &str) -> Option<String>;
    /// `Some` replaces every copy of the header, `None` removes them all.
    fn set_request_header(&self, name: &str, value: Option<&str>);
    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]);
}

#[cfg(target_arch = "wasm32")]
pub use wasm::EnvoyHost;

#[cfg(target_arch = "wasm32")]
mod wasm {
    use crate::abi;

    /// Host calls of the stream whose callback is running.
    pub struct EnvoyHost;

    impl super::Host for EnvoyHost {
        fn request_header(&self, name: &str) -> Option<String> {
            abi::request_header(name)
        }

        fn set_request_header(&self, name: &str, value: Option<&str>) {
            if let Err(status) = abi::set_request_header(name, value) {
                log::warn!("writing request header {name}: status {status}");
            }
        }

        fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
            if let Err(err) = abi::send_local_response(status, headers, body) {
                log::warn!("sending local reply {status}: status {err}");
            }
        }
    }
}

#[cfg(test)]
pub use fake::FakeHost;

#[cfg(test)]
mod fake {
    use std::cell::RefCell;

    /// A local reply as the filter sent it: status, headers, body.
    pub type Reply = (u32, Vec<(String, String)>, Vec<u8>);

    /// Request headers in a vector plus a record of every host call.
    #[derive(Default)]
    pub struct FakeHost {
        pub headers: RefCell<Vec<(String, String)>>,
        pub calls: RefCell<Vec<String>>,
        pub reply: RefCell<Option<Reply>>,
    }

    impl FakeHost {
        pub fn with_headers(headers: &[(&str, &str)]) -> Self {
            let host = Self::default();
            *host.headers.borrow_mut() = headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            host
        }

        pub fn header(&self, name: &str) -> Option<String> {
            self.headers
                .borrow()
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }

        pub fn call_count(&self) -> usize {
            self.calls.borrow().len()
        }
    }

    impl super::Host for FakeHost {
        fn request_header(&self, name: &str) -> Option<String> {
            self.calls.borrow_mut().push(format!("get {name}"));
            self.header(name)
        }

        fn set_request_header(&self, name: &str, value: Option<&str>) {
            self.calls.borrow_mut().push(format!("set {name}"));
            let mut headers = self.headers.borrow_mut();
            headers.retain(|(k, _)| k != name);
            if let Some(v) = value {
                headers.push((name.to_owned(), v.to_owned()));
            }
        }

        fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
            self.calls.borrow_mut().push(format!("reply {status}"));
            *self.reply.borrow_mut() = Some((
                status,
                headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                body.to_vec(),
            ));
        }
    }
}
