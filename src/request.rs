//! What the filter reads from a request, as pure functions over bytes.
//!
//! Header values are bytes, not text: Envoy passes bytes that are not UTF-8 through, and two
//! distinct keys must never collapse onto one (a lossy conversion would map every invalid
//! sequence to U+FFFD). Sticky keys are hashed, and rules compared, byte for byte.

use std::borrow::Cow;

use crate::host::Host;

/// The request headers one request's routing reads, each fetched from the host at most once.
pub struct RequestView<'a, H: Host + ?Sized> {
    host: &'a H,
    read: Vec<(&'a str, Option<Vec<u8>>)>,
}

impl<'a, H: Host + ?Sized> RequestView<'a, H> {
    /// Reads nothing (and allocates nothing) until a header is asked for.
    pub fn new(host: &'a H) -> Self {
        Self {
            host,
            read: Vec::new(),
        }
    }

    pub fn header(&mut self, name: &'a str) -> Option<&[u8]> {
        let index = match self.read.iter().position(|(n, _)| *n == name) {
            Some(index) => index,
            None => {
                self.read.push((name, self.host.request_header(name)));
                self.read.len() - 1
            }
        };
        self.read.get(index).and_then(|(_, value)| value.as_deref())
    }

    /// The value of cookie `name`, from the `cookie` header.
    pub fn cookie(&mut self, name: &str) -> Option<&[u8]> {
        self.header("cookie")
            .and_then(|header| cookie_value(header, name.as_bytes()))
    }

    /// The percent-decoded value of query parameter `name`, from `:path`.
    pub fn query(&mut self, name: &str) -> Option<Cow<'_, [u8]>> {
        self.header(":path")
            .and_then(|path| query_param(path, name.as_bytes()))
    }
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`), without surrounding quotes.
pub fn cookie_value<'h>(header: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    header
        .split(|&b| b == b';')
        .filter_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            Some((pair.get(..eq)?, pair.get(eq + 1..)?))
        })
        .find(|(key, _)| key.trim_ascii() == name)
        .map(|(_, value)| {
            let value = value.trim_ascii();
            value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value)
        })
}

/// Turns an authority (or any service key) into the form hosts are matched in: lowercase,
/// without a port and without a trailing dot. IPv6 literals lose their brackets:
/// `[::1]:8080` becomes `::1`. Lowercases in place so that the request path does not allocate.
pub fn host_key(raw: &mut [u8]) -> &[u8] {
    raw.make_ascii_lowercase();
    let host: &[u8] = raw;
    let host = if let Some(bracketed) = host.strip_prefix(b"[") {
        // `[v6]` or `[v6]:port`
        match bracketed.iter().position(|&b| b == b']') {
            Some(end) => bracketed.get(..end).unwrap_or(bracketed),
            None => bracketed,
        }
    } else {
        let mut colons = host.iter().enumerate().filter(|(_, &b)| b == b':');
        match (colons.next(), colons.next()) {
            // Exactly one colon: `name:port`. Several colons: a bare IPv6 literal, kept whole.
            (Some((at, _)), None) => host.get(..at).unwrap_or(host),
            _ => host,
        }
    };
    host.strip_suffix(b".").unwrap_or(host)
}

/// [`host_key`] of a string, for configuration time.
pub fn host_key_str(raw: &str) -> String {
    let mut bytes = raw.as_bytes().to_vec();
    String::from_utf8_lossy(host_key(&mut bytes)).into_owned()
}

/// The percent-decoded value of the first query parameter called `name` in a `:path`
/// (`+` decodes to a space, as in HTML forms; names are decoded before comparing). Bytes, as
/// decoded: `%FF` and `%FE` stay distinct. Borrowed when no decoding was needed.
pub fn query_param<'a>(path: &'a [u8], name: &[u8]) -> Option<Cow<'a, [u8]>> {
    let start = path.iter().position(|&b| b == b'?')? + 1;
    let query = path.get(start..)?;
    let query = match query.iter().position(|&b| b == b'#') {
        Some(end) => query.get(..end)?,
        None => query,
    };
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (pair.get(..eq)?, pair.get(eq + 1..)?),
                None => (pair, &[][..]),
            };
            (form_decode(key).as_ref() == name).then(|| form_decode(value))
        })
}

/// `application/x-www-form-urlencoded` decoding to bytes: `+` is a space, `%XX` a byte; a `%`
/// not followed by two hex digits stays as it is.
fn form_decode(input: &[u8]) -> Cow<'_, [u8]> {
    if input.contains(&b'+') {
        let spaced: Vec<u8> = input
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        Cow::Owned(percent_encoding::percent_decode(&spaced).collect())
    } else {
        percent_encoding::percent_decode(input).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        host_key_str(s)
    }

    fn query(path: &str, name: &str) -> Option<Vec<u8>> {
        query_param(path.as_bytes(), name.as_bytes()).map(Cow::into_owned)
    }

    fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h [u8]> {
        cookie_value(header.as_bytes(), name.as_bytes())
    }

    #[test]
    fn host_key_lowercases_and_drops_port() {
        assert_eq!(key("Reviews.Default.SVC:9080"), "reviews.default.svc");
        assert_eq!(key("reviews"), "reviews");
    }

    #[test]
    fn host_key_drops_trailing_dot() {
        assert_eq!(
            key("reviews.default.svc.cluster.local.:80"),
            "reviews.default.svc.cluster.local"
        );
    }

    #[test]
    fn host_key_handles_ipv6_literals() {
        assert_eq!(key("[::1]:8080"), "::1");
        assert_eq!(key("[FE80::1]"), "fe80::1");
        assert_eq!(key("::1"), "::1");
    }

    #[test]
    fn host_key_of_empty_is_empty() {
        assert_eq!(key(""), "");
        assert_eq!(key(":80"), "");
    }

    #[test]
    fn host_key_keeps_bytes_that_are_not_utf8() {
        let mut raw = b"A\xffB:80".to_vec();
        assert_eq!(host_key(&mut raw), b"a\xffb");
    }

    #[test]
    fn cookie_value_finds_the_named_cookie() {
        assert_eq!(cookie("a=1; beta=yes; c=3", "beta"), Some(&b"yes"[..]));
        assert_eq!(cookie("beta=\"quoted\"", "beta"), Some(&b"quoted"[..]));
        assert_eq!(cookie("alphabeta=1; beta=2", "beta"), Some(&b"2"[..]));
        assert_eq!(cookie("a=1", "beta"), None);
        assert_eq!(cookie("beta", "beta"), None);
        assert_eq!(cookie("beta=", "beta"), Some(&b""[..]));
    }

    #[test]
    fn cookie_values_are_bytes() {
        assert_eq!(
            cookie_value(b"s=\xff\xfe; t=1", b"s"),
            Some(&b"\xff\xfe"[..])
        );
    }

    #[test]
    fn query_param_finds_and_decodes() {
        assert_eq!(
            query("/a?service=reviews", "service").as_deref(),
            Some(&b"reviews"[..])
        );
        assert_eq!(
            query("/a?x=1&service=my%20svc+x", "service").as_deref(),
            Some(&b"my svc x"[..])
        );
        assert_eq!(
            query("/a?service=a&service=b", "service").as_deref(),
            Some(&b"a"[..])
        );
        assert_eq!(
            query("/a?ser%76ice=c", "service").as_deref(),
            Some(&b"c"[..])
        );
    }

    #[test]
    fn query_param_decodes_to_distinct_bytes() {
        assert_eq!(query("/a?u=%FF", "u").as_deref(), Some(&b"\xff"[..]));
        assert_eq!(query("/a?u=%FE", "u").as_deref(), Some(&b"\xfe"[..]));
        // A `%` without two hex digits stays as written.
        assert_eq!(query("/a?u=%zz%4", "u").as_deref(), Some(&b"%zz%4"[..]));
    }

    #[test]
    fn query_param_ignores_fragment_and_missing() {
        assert_eq!(
            query("/a?service=r#frag", "service").as_deref(),
            Some(&b"r"[..])
        );
        assert_eq!(query("/a?other=1", "service"), None);
        assert_eq!(query("/a", "service"), None);
        assert_eq!(query("/a?service", "service").as_deref(), Some(&b""[..]));
        assert_eq!(
            query("/a?&&service=x&", "service").as_deref(),
            Some(&b"x"[..])
        );
    }
}
