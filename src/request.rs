//! What the filter reads from a request, as pure functions over strings.

use std::borrow::Cow;

use crate::host::Host;

/// The request headers one request's routing reads, each fetched from the host at most once.
pub struct RequestView<'a, H: Host + ?Sized> {
    host: &'a H,
    read: Vec<(&'a str, Option<String>)>,
}

impl<'a, H: Host + ?Sized> RequestView<'a, H> {
    /// Reads nothing (and allocates nothing) until a header is asked for.
    pub fn new(host: &'a H) -> Self {
        Self {
            host,
            read: Vec::new(),
        }
    }

    pub fn header(&mut self, name: &'a str) -> Option<&str> {
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
    pub fn cookie(&mut self, name: &str) -> Option<&str> {
        self.header("cookie")
            .and_then(|header| cookie_value(header, name))
    }

    /// The URL-decoded value of query parameter `name`, from `:path`.
    pub fn query(&mut self, name: &str) -> Option<Cow<'_, str>> {
        self.header(":path")
            .and_then(|path| query_param(path, name))
    }
}

/// The value of cookie `name` in a `cookie` header (`a=1; b=2`), without surrounding quotes.
pub fn cookie_value<'h>(header: &'h str, name: &str) -> Option<&'h str> {
    header
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
}

/// Turns an authority (or any service key) into the form hosts are matched in: lowercase,
/// without a port and without a trailing dot. IPv6 literals lose their brackets:
/// `[::1]:8080` becomes `::1`. Lowercases in place so that the request path does not allocate.
pub fn host_key(raw: &mut str) -> &str {
    raw.make_ascii_lowercase();
    let host: &str = raw;
    let host = if let Some(bracketed) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        bracketed
            .split_once(']')
            .map_or(bracketed, |(inside, _)| inside)
    } else {
        match host.split_once(':') {
            // Exactly one colon: `name:port`. Several colons: a bare IPv6 literal, kept whole.
            Some((name, port)) if !port.contains(':') => name,
            _ => host,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// The URL-decoded value of the first query parameter called `name` in a `:path`
/// (`+` decodes to a space, as in HTML forms). Borrowed when no decoding was needed.
pub fn query_param<'a>(path: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let (_, query) = path.split_once('?')?;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> String {
        let mut owned = s.to_owned();
        host_key(&mut owned).to_owned()
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
    fn cookie_value_finds_the_named_cookie() {
        assert_eq!(cookie_value("a=1; beta=yes; c=3", "beta"), Some("yes"));
        assert_eq!(cookie_value("beta=\"quoted\"", "beta"), Some("quoted"));
        assert_eq!(cookie_value("alphabeta=1; beta=2", "beta"), Some("2"));
        assert_eq!(cookie_value("a=1", "beta"), None);
        assert_eq!(cookie_value("beta", "beta"), None);
        assert_eq!(cookie_value("beta=", "beta"), Some(""));
    }

    #[test]
    fn query_param_finds_and_decodes() {
        assert_eq!(
            query_param("/a?service=reviews", "service").as_deref(),
            Some("reviews")
        );
        assert_eq!(
            query_param("/a?x=1&service=my%20svc+x", "service").as_deref(),
            Some("my svc x")
        );
        assert_eq!(
            query_param("/a?service=a&service=b", "service").as_deref(),
            Some("a")
        );
        assert_eq!(
            query_param("/a?ser%76ice=c", "service").as_deref(),
            Some("c")
        );
    }

    #[test]
    fn query_param_ignores_fragment_and_missing() {
        assert_eq!(
            query_param("/a?service=r#frag", "service").as_deref(),
            Some("r")
        );
        assert_eq!(query_param("/a?other=1", "service"), None);
        assert_eq!(query_param("/a", "service"), None);
        assert_eq!(query_param("/a?service", "service").as_deref(), Some(""));
    }
}
