//! What the filter reads from a request, as pure functions over bytes.
//!
//! Header values are bytes, not text: Envoy passes bytes that are not UTF-8 through, and two
//! distinct keys must never collapse onto one (a lossy conversion would map every invalid
//! sequence to U+FFFD). Sticky keys are hashed, and rules compared, byte for byte.

use std::borrow::Cow;

use crate::host::Host;

/// Every header of a request at once, for hosts that hand them over in one call (proxy-wasm):
/// the host's buffer as it came, and where each name and value lies in it. One allocation for
/// the buffer and one for the ranges, none per header.
#[derive(Debug, Default)]
pub struct HeaderList {
    bytes: Vec<u8>,
    /// (name start, name end, value start, value end), in the order the host holds them.
    entries: Vec<[usize; 4]>,
}

impl HeaderList {
    /// A list over `bytes`; each entry is the ranges of a name and its value in `bytes`
    /// (entries out of bounds read as empty).
    pub fn new(bytes: Vec<u8>, entries: Vec<[usize; 4]>) -> Self {
        Self { bytes, entries }
    }

    fn range(&self, start: usize, end: usize) -> &[u8] {
        self.bytes.get(start..end).unwrap_or_default()
    }

    /// Every (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|&[ns, ne, vs, ve]| (self.range(ns, ne), self.range(vs, ve)))
    }

    /// Where the first copy of header `name` lies, for [`HeaderList::range`].
    fn first_range(&self, name: &[u8]) -> Option<(usize, usize)> {
        self.entries
            .iter()
            .find(|&&[ns, ne, _, _]| self.range(ns, ne) == name)
            .map(|&[_, _, vs, ve]| (vs, ve))
    }

    /// Every copy of header `name`, in order.
    pub fn values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> {
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    /// How many headers it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A header test on the copies of one header: exact value, prefix, or present.
#[derive(Debug, Clone, Copy)]
pub enum ValueTest<'t> {
    Exact(&'t [u8]),
    Prefix(&'t [u8]),
    Present,
}

impl ValueTest<'_> {
    fn holds(self, value: &[u8]) -> bool {
        match self {
            ValueTest::Exact(expected) => value == expected,
            ValueTest::Prefix(prefix) => value.starts_with(prefix),
            ValueTest::Present => true,
        }
    }
}

/// What one request's routing reads, each read from the host and parsed at most once per
/// request, however many rules test it: the first copy of a header (sticky keys), every copy
/// of a header (rule conditions), and the cookie and query pairs (parsed once into [`Pairs`]).
///
/// Hosts that read every copy of a header by name (the native build) are asked by name. Hosts
/// whose read by name answers the first copy only (proxy-wasm, [`Host::first_copy_only`]) are
/// asked for the first copy of each header a condition names (an absent header is the cheap
/// not-found answer); only when a condition does not hold on a present first copy, and another
/// copy could hold it, is the whole map read, once, and every later read answered from it. A
/// plan that names many headers reads the whole map at once instead
/// ([`crate::plan::Service::reads_all_headers`]).
pub struct RequestView<'a, H: Host + ?Sized> {
    host: &'a H,
    /// The first copy of each header read by name.
    read: Vec<(&'a str, Option<Vec<u8>>)>,
    /// Where the first copy of each header asked for lies in the whole map, once it is read:
    /// a rule set asks for the same few headers thousands of times.
    found: Vec<(&'a str, Option<(usize, usize)>)>,
    /// Every copy of each header asked for, values sorted, by name (hosts reading every copy
    /// by name).
    copies: Vec<(&'a str, Vec<Vec<u8>>)>,
    /// Every request header (hosts that answer the first copy by name); `None`: not read.
    all: Option<HeaderList>,
    /// The cookies, and whether they are every cookie of the request (else those of the first
    /// `cookie` header only).
    cookies: Option<(Pairs, bool)>,
    query: Option<Pairs>,
    /// Whether the host answers the first copy only by name.
    first_only: bool,
    /// Read the whole map at the first read (a plan naming many headers).
    eager: bool,
}

impl<'a, H: Host + ?Sized> RequestView<'a, H> {
    /// Reads nothing (and allocates nothing) until something is asked for.
    pub fn new(host: &'a H) -> Self {
        Self {
            host,
            read: Vec::new(),
            found: Vec::new(),
            copies: Vec::new(),
            all: None,
            cookies: None,
            query: None,
            first_only: host.first_copy_only(),
            eager: false,
        }
    }

    /// Like [`RequestView::new`], reading every header in one call at the first read when
    /// `all_at_once` and the host can (the plan's choice, made at configuration).
    pub fn with_plan(host: &'a H, all_at_once: bool) -> Self {
        let mut view = Self::new(host);
        view.eager = all_at_once && view.first_only;
        view
    }

    /// Reads the whole map, once; whether it is there.
    fn load_all(&mut self) -> bool {
        if self.all.is_none() {
            self.all = self.host.request_header_map();
        }
        self.all.is_some()
    }

    /// The first copy of a header.
    pub fn header(&mut self, name: &'a str) -> Option<&[u8]> {
        if self.eager {
            self.load_all();
        }
        if let Some(all) = &self.all {
            let range = match self.found.iter().find(|(n, _)| *n == name) {
                Some(&(_, range)) => range,
                None => {
                    let range = all.first_range(name.as_bytes());
                    self.found.push((name, range));
                    range
                }
            };
            return range.map(|(start, end)| all.range(start, end));
        }
        let index = match self.read.iter().position(|(n, _)| *n == name) {
            Some(index) => index,
            None => {
                self.read.push((name, self.host.request_header(name)));
                self.read.len() - 1
            }
        };
        self.read.get(index).and_then(|(_, value)| value.as_deref())
    }

    /// Whether some copy of header `name` passes `test`.
    pub fn header_holds(&mut self, name: &'a str, test: ValueTest<'_>) -> bool {
        if !self.first_only {
            let copies = self.header_copies(name);
            return match test {
                ValueTest::Exact(expected) => has_exact(copies, expected),
                ValueTest::Prefix(prefix) => has_prefix(copies, prefix),
                ValueTest::Present => !copies.is_empty(),
            };
        }
        let first = self.header(name).map(|first| test.holds(first));
        match first {
            None => return false,
            Some(true) => return true,
            // Pseudo-headers come once; the whole map, when read, is what was tested.
            Some(false) if name.starts_with(':') => return false,
            Some(false) => {
                if self.all.is_none() {
                    self.load_all();
                }
            }
        }
        match &self.all {
            Some(all) => all.values(name.as_bytes()).any(|v| test.holds(v)),
            None => false,
        }
    }

    /// Every copy of a header, sorted (empty when absent), from a host that reads every copy
    /// by name.
    fn header_copies(&mut self, name: &'a str) -> &[Vec<u8>] {
        let index = match self.copies.iter().position(|(n, _)| *n == name) {
            Some(index) => index,
            None => {
                let mut values = self.host.request_header_values(name);
                values.sort_unstable();
                self.copies.push((name, values));
                self.copies.len() - 1
            }
        };
        self.copies.get(index).map_or(&[], |(_, v)| v.as_slice())
    }

    /// The cookies: of every `cookie` header when `every`, else at least of the first one.
    fn cookies_of(&mut self, every: bool) -> &Pairs {
        let stale = match &self.cookies {
            None => true,
            Some((_, complete)) => every && !complete,
        };
        if stale {
            if every && self.first_only {
                self.load_all();
            }
            let mut pairs = Pairs::default();
            let complete = if let Some(all) = self.all.as_ref().filter(|_| self.first_only) {
                for header in all.values(b"cookie") {
                    pairs.push_cookies(header);
                }
                true
            } else if self.first_only {
                // The first `cookie` header; none at all: every cookie there is.
                match self.header("cookie") {
                    Some(header) => {
                        pairs.push_cookies(header);
                        false
                    }
                    None => true,
                }
            } else {
                for header in self.host.request_header_values("cookie") {
                    pairs.push_cookies(&header);
                }
                true
            };
            pairs.sort();
            self.cookies = Some((pairs, complete));
        }
        match &self.cookies {
            Some((pairs, _)) => pairs,
            None => Pairs::empty(),
        }
    }

    /// Whether some cookie (of any `cookie` header) is exactly (`name`, `value`).
    pub fn cookie_is(&mut self, name: &[u8], value: &[u8]) -> bool {
        if self.cookies_of(false).has(name, value) {
            return true;
        }
        let complete = matches!(self.cookies, Some((_, true)));
        !complete && self.cookies_of(true).has(name, value)
    }

    /// The first non-empty cookie called `name`, in the order sent (of every `cookie` header).
    pub fn first_cookie(&mut self, name: &[u8]) -> Option<&[u8]> {
        // Found among the first header's cookies, it is the first of all.
        let complete = self.cookies_of(false).first_non_empty(name).is_some()
            || matches!(self.cookies, Some((_, true)));
        self.cookies_of(!complete).first_non_empty(name)
    }

    /// Every cookie of every `cookie` header, in the order sent, parsed once.
    pub fn cookies(&mut self) -> &Pairs {
        self.cookies_of(true)
    }

    /// The query parameters of `:path`, percent-decoded, in order, parsed once.
    pub fn query(&mut self) -> &Pairs {
        if self.query.is_none() {
            let mut pairs = Pairs::default();
            if let Some(path) = self.header(":path") {
                for (name, value) in query_pairs(path) {
                    pairs.push(&form_decode(name), &form_decode(value));
                }
            }
            pairs.sort();
            self.query = Some(pairs);
        }
        self.query.get_or_insert_with(Pairs::default)
    }
}

/// Whether `sorted` (sorted values) holds `value`.
pub fn has_exact(sorted: &[Vec<u8>], value: &[u8]) -> bool {
    sorted.binary_search_by(|v| v.as_slice().cmp(value)).is_ok()
}

/// Whether some value of `sorted` starts with `prefix`: the values that do are together in
/// sorted order, from the first one not less than `prefix`.
pub fn has_prefix(sorted: &[Vec<u8>], prefix: &[u8]) -> bool {
    let at = sorted.partition_point(|v| v.as_slice() < prefix);
    sorted.get(at).is_some_and(|v| v.starts_with(prefix))
}

/// Name/value pairs (cookies or query parameters) parsed once per request: the bytes in one
/// buffer, the pairs as ranges into it, in the order sent and sorted by (name, value).
#[derive(Debug, Default)]
pub struct Pairs {
    bytes: Vec<u8>,
    /// (name start, name end = value start, value end).
    in_order: Vec<(usize, usize, usize)>,
    /// Indexes into `in_order`, sorted by (name, value).
    sorted: Vec<usize>,
}

impl Pairs {
    fn empty() -> &'static Pairs {
        static EMPTY: Pairs = Pairs {
            bytes: Vec::new(),
            in_order: Vec::new(),
            sorted: Vec::new(),
        };
        &EMPTY
    }

    /// Adds the cookies of one `cookie` header.
    fn push_cookies(&mut self, header: &[u8]) {
        for (name, value) in cookie_pairs(header) {
            self.push(name, value);
        }
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.in_order
            .push((start, start + name.len(), self.bytes.len()));
    }

    fn pair(&self, index: usize) -> (&[u8], &[u8]) {
        let Some(&(start, name_end, end)) = self.in_order.get(index) else {
            return (&[], &[]);
        };
        (
            self.bytes.get(start..name_end).unwrap_or(&[]),
            self.bytes.get(name_end..end).unwrap_or(&[]),
        )
    }

    fn sort(&mut self) {
        let mut sorted: Vec<usize> = (0..self.in_order.len()).collect();
        sorted.sort_by(|&a, &b| self.pair(a).cmp(&self.pair(b)));
        self.sorted = sorted;
    }

    /// Whether some pair is exactly (`name`, `value`).
    pub fn has(&self, name: &[u8], value: &[u8]) -> bool {
        self.sorted
            .binary_search_by(|&i| self.pair(i).cmp(&(name, value)))
            .is_ok()
    }

    /// The value of the first pair called `name`, in the order sent.
    pub fn first(&self, name: &[u8]) -> Option<&[u8]> {
        (0..self.in_order.len())
            .map(|i| self.pair(i))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// The value of the first non-empty pair called `name`, in the order sent.
    pub fn first_non_empty(&self, name: &[u8]) -> Option<&[u8]> {
        (0..self.in_order.len())
            .map(|i| self.pair(i))
            .find(|(n, v)| *n == name && !v.is_empty())
            .map(|(_, v)| v)
    }

    /// How many pairs were parsed.
    pub fn len(&self) -> usize {
        self.in_order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_order.is_empty()
    }
}

/// The cookies of a `cookie` header (`a=1; b="x"`) as (name, value) in order, as browsers and
/// Envoy read it: split on every `;` first, then each piece at its first `=`; names and values
/// trimmed of white space, a value in double quotes without them. Pieces without `=` are
/// skipped. (A `"` never joins pieces: an unrelated cookie whose value starts with an unmatched
/// quote cannot hide the cookies after it.)
pub fn cookie_pairs(header: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header.split(|&b| b == b';').filter_map(|piece| {
        let eq = piece.iter().position(|&b| b == b'=')?;
        let name = piece.get(..eq)?.trim_ascii();
        let value = piece.get(eq + 1..)?.trim_ascii();
        let value = match value {
            [b'"', inner @ .., b'"'] => inner,
            other => other,
        };
        Some((name, value))
    })
}

/// The value of the first non-empty cookie called `name` in a `cookie` header (see
/// [`cookie_pairs`]): an empty copy before it (`mesh-web=; mesh-web=ID`, which a browser sends
/// when an application cleared the cookie on a more specific path) does not hide it.
pub fn cookie_value<'h>(header: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    cookie_pairs(header)
        .find(|(key, value)| *key == name && !value.is_empty())
        .map(|(_, value)| value)
}

/// The raw (not yet decoded) name/value pairs of a `:path`'s query, in order, empty ones
/// skipped; a pair without `=` has an empty value.
fn query_pairs(path: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let query = path
        .iter()
        .position(|&b| b == b'?')
        .and_then(|start| path.get(start + 1..))
        .unwrap_or(&[]);
    let query = match query.iter().position(|&b| b == b'#') {
        Some(end) => query.get(..end).unwrap_or(&[]),
        None => query,
    };
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (
                pair.get(..eq).unwrap_or(&[]),
                pair.get(eq + 1..).unwrap_or(&[]),
            ),
            None => (pair, &[][..]),
        })
}

/// A request's host in the form hosts are matched in (see [`host_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostKey<'a> {
    /// The host without its port: a lowercase DNS name or IPv4 literal without trailing dot,
    /// or an IPv6 literal in its canonical text (RFC 5952, no brackets: `::1`).
    pub bare: &'a [u8],
    /// With a port: the host and its port as written (`reviews:9080`, `[::1]:80`).
    pub with_port: Option<&'a [u8]>,
}

/// Parses an authority (or any service key) strictly: a DNS name (letters, digits, `-`, `_`,
/// non-empty dot-separated labels, one optional trailing dot), an IPv4 literal, or an IPv6
/// literal in brackets, each with an optional numeric port; or a bare IPv6 literal without
/// port. Anything else is `None`, an unknown service: brackets around a name (`[reviews]`),
/// text after `]` (`[reviews]junk`), an unclosed bracket, a port that is empty or not a number
/// from 0 to 65535 (`reviews:`, `reviews:abc`), or a second port.
///
/// Works in place: lowercases `raw` and rewrites it into the key's form (IPv6 literals in
/// canonical form, so `[0:0::1]` and `[::1]` are one host); allocates only if a canonical
/// IPv6 literal is longer than the one written (`1::2:3:4:5:6:7` is `1:0:2:3:4:5:6:7`).
pub fn host_key(raw: &mut Vec<u8>) -> Option<HostKey<'_>> {
    if raw.first() == Some(&b'[') {
        raw.make_ascii_lowercase();
        let close = raw.iter().position(|&b| b == b']')?;
        let address = ipv6(raw.get(1..close)?)?;
        let port = port_digits(raw.get(close + 1..)?)?;
        raw.clear();
        write_ipv6(raw, address, true)?;
        let bare_end = raw.len() - 1;
        if let Some((digits, len)) = port {
            raw.push(b':');
            raw.extend_from_slice(digits.get(..len)?);
        }
        return Some(HostKey {
            bare: raw.get(1..bare_end)?,
            with_port: port.and(Some(raw.as_slice())),
        });
    }
    let name = scan_name(raw);
    if name.colons >= 2 {
        let address = ipv6(raw)?;
        raw.clear();
        write_ipv6(raw, address, false)?;
        return Some(HostKey {
            bare: raw.as_slice(),
            with_port: None,
        });
    }
    let name_end = name.end;
    let has_port = name_end < raw.len();
    if has_port {
        port_digits(raw.get(name_end..)?)?;
    }
    if !name.valid {
        return None;
    }
    let name_len = name_end - usize::from(name.dotted);
    if name.dotted {
        raw.remove(name_len);
    }
    Some(HostKey {
        bare: raw.get(..name_len)?,
        with_port: has_port.then_some(raw.as_slice()),
    })
}

/// What one pass over an authority (not starting with `[`) finds; it lowercases it on the way.
struct NameScan {
    /// How many `:` it has (two or more: an IPv6 literal).
    colons: usize,
    /// Where the name ends: at the first `:`, or the end.
    end: usize,
    /// Whether the name ends with a `.` (one trailing dot is allowed and dropped).
    dotted: bool,
    /// Whether the name, without one trailing dot, is [`valid_name`].
    valid: bool,
}

/// Lowercases `raw` and reads it once (the request path's [`host_key`] runs on every request).
fn scan_name(raw: &mut [u8]) -> NameScan {
    let mut scan = NameScan {
        colons: 0,
        end: raw.len(),
        dotted: false,
        valid: true,
    };
    let mut label_len = 0usize;
    let mut in_name = true;
    for (i, byte) in raw.iter_mut().enumerate() {
        byte.make_ascii_lowercase();
        let b = *byte;
        if b == b':' {
            scan.colons += 1;
            if in_name {
                in_name = false;
                scan.end = i;
            }
            continue;
        }
        if !in_name {
            continue;
        }
        if b == b'.' {
            // An empty label (`..`, a leading `.`) is invalid; a trailing `.` is the one allowed.
            scan.valid &= label_len > 0;
            scan.dotted = true;
            label_len = 0;
        } else {
            scan.valid &= b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
            scan.dotted = false;
            label_len += 1;
        }
    }
    // Non-empty, and its last label non-empty unless a trailing dot follows a non-empty one.
    scan.valid &= label_len > 0 || scan.dotted;
    scan
}

/// A DNS name or IPv4 literal (without trailing dot): non-empty labels of letters, digits,
/// `-` and `_`.
#[cfg(test)]
pub(crate) fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn ipv6(text: &[u8]) -> Option<std::net::Ipv6Addr> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

fn write_ipv6(out: &mut Vec<u8>, address: std::net::Ipv6Addr, brackets: bool) -> Option<()> {
    use std::io::Write as _;
    let written = if brackets {
        write!(out, "[{address}]")
    } else {
        write!(out, "{address}")
    };
    written.ok()
}

/// `""` (no port) or `:` followed by 1 to 5 digits up to 65535: the digits as written, or
/// `None` when malformed.
#[allow(clippy::type_complexity)]
fn port_digits(after: &[u8]) -> Option<Option<([u8; 5], usize)>> {
    let Some(digits) = after.strip_prefix(b":") else {
        return after.is_empty().then_some(None);
    };
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u32, |v, &d| v * 10 + u32::from(d - b'0'));
    if value > 65_535 {
        return None;
    }
    let mut copy = [0u8; 5];
    copy.get_mut(..digits.len())?.copy_from_slice(digits);
    Some(Some((copy, digits.len())))
}

/// [`host_key`] of a configured host: the key it is matched by (with its port when it has
/// one), or `None` when it is not a valid host.
pub fn host_key_str(raw: &str) -> Option<String> {
    let mut bytes = raw.as_bytes().to_vec();
    let key = host_key(&mut bytes)?;
    Some(String::from_utf8_lossy(key.with_port.unwrap_or(key.bare)).into_owned())
}

/// The percent-decoded value of the first query parameter called `name` in a `:path`
/// (`+` decodes to a space, as in HTML forms; names are decoded before comparing). Bytes, as
/// decoded: `%FF` and `%FE` stay distinct. Borrowed when no decoding was needed.
pub fn query_param<'a>(path: &'a [u8], name: &[u8]) -> Option<Cow<'a, [u8]>> {
    query_pairs(path)
        .find_map(|(key, value)| (form_decode(key).as_ref() == name).then(|| form_decode(value)))
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

    fn key(s: &str) -> Option<String> {
        host_key_str(s)
    }

    fn query(path: &str, name: &str) -> Option<Vec<u8>> {
        query_param(path.as_bytes(), name.as_bytes()).map(Cow::into_owned)
    }

    fn cookie<'h>(header: &'h str, name: &str) -> Option<&'h [u8]> {
        cookie_value(header.as_bytes(), name.as_bytes())
    }

    fn bare(s: &str) -> Option<String> {
        let mut raw = s.as_bytes().to_vec();
        host_key(&mut raw).map(|k| String::from_utf8(k.bare.to_vec()).unwrap())
    }

    #[test]
    fn host_key_lowercases_and_keeps_the_port_apart() {
        assert_eq!(
            bare("Reviews.Default.SVC:9080").as_deref(),
            Some("reviews.default.svc")
        );
        assert_eq!(
            key("Reviews.Default.SVC:9080").as_deref(),
            Some("reviews.default.svc:9080")
        );
        assert_eq!(key("reviews").as_deref(), Some("reviews"));
    }

    #[test]
    fn host_key_drops_trailing_dot() {
        assert_eq!(
            bare("reviews.default.svc.cluster.local.:80").as_deref(),
            Some("reviews.default.svc.cluster.local")
        );
        assert_eq!(key("reviews.:80").as_deref(), Some("reviews:80"));
    }

    #[test]
    fn host_key_canonicalises_ipv6_literals() {
        assert_eq!(bare("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(key("[0:0::1]:8080").as_deref(), Some("[::1]:8080"));
        assert_eq!(bare("[FE80::1]").as_deref(), Some("fe80::1"));
        assert_eq!(bare("[0:0::1]").as_deref(), Some("::1"));
        assert_eq!(bare("0:0:0:0:0:0:0:1").as_deref(), Some("::1"));
        assert_eq!(bare("::1").as_deref(), Some("::1"));
        // Longer in canonical form than as written.
        assert_eq!(bare("[1::2:3:4:5:6:7]").as_deref(), Some("1:0:2:3:4:5:6:7"));
    }

    #[test]
    fn malformed_authorities_have_no_key() {
        for malformed in [
            "",
            ":80",
            "[reviews]",
            "[reviews]junk",
            "[reviews",
            "[::1",
            "[::1]junk",
            "[::1]:80:80",
            "reviews:abc",
            "reviews:",
            "reviews:65536",
            "reviews:123456",
            "reviews:80:80",
            "web:80:80",
            "::::",
            "re views",
            "a..b",
            ".a",
            "a/b",
            "a@b",
            "[::1]:",
            "reviews:+80",
            "reviews:-1",
        ] {
            assert_eq!(key(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn host_key_refuses_bytes_that_are_not_ascii() {
        let mut raw = b"A\xffB:80".to_vec();
        assert_eq!(host_key(&mut raw), None);
    }

    #[test]
    fn cookie_value_finds_the_named_cookie() {
        assert_eq!(cookie("a=1; beta=yes; c=3", "beta"), Some(&b"yes"[..]));
        assert_eq!(cookie("beta=\"quoted\"", "beta"), Some(&b"quoted"[..]));
        assert_eq!(cookie("alphabeta=1; beta=2", "beta"), Some(&b"2"[..]));
        assert_eq!(cookie("a=1", "beta"), None);
        assert_eq!(cookie("beta", "beta"), None);
        assert_eq!(cookie("beta=", "beta"), None);
        // An empty copy first (a cleared cookie) does not hide the real one.
        assert_eq!(cookie("beta=; beta=2", "beta"), Some(&b"2"[..]));
        // A quote never joins pieces: split on `;` first, as browsers and Envoy.
        assert_eq!(cookie(r#"x="a; beta=ID; y="b""#, "beta"), Some(&b"ID"[..]));
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
