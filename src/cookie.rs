//! Cookies meshsplit assigns: a sticky service on `{"cookie": NAME}` with `assign_cookie` gives
//! every request without that cookie a fresh random id, routes the request by it with the same
//! rendezvous hashing as any sticky key, and sets the cookie on the response, so the visitor's
//! next requests carry the id and land on the same upstream.
//!
//! The id is 128 bits from the VM's generator (xoshiro256++, seeded once per VM or worker from
//! the host's random source: WASI `random_get` in the wasm build, the OS in the native one),
//! written as 22 characters of URL-safe base64 without padding. It is a routing key, not a
//! credential: nothing trusts it, and a visitor who sets it by hand only picks where its own
//! requests go, as it could with any sticky key.

use rand_core::Rng;

use crate::config::{RawAssignCookie, RawCacheControl, RawSameSite};
use crate::config_error::ConfigError;
use crate::host::Host;

/// Characters of an id: 128 bits in sextets, rounded up.
pub const ID_LEN: usize = 22;

/// `max_age_s` when not given: 30 days.
pub const DEFAULT_MAX_AGE_S: u64 = 2_592_000;
/// The longest `max_age_s` accepted: 400 days, the most browsers keep a cookie (RFC 6265bis).
pub const MAX_MAX_AGE_S: u64 = 34_560_000;

/// The response header meshsplit adds.
pub const SET_COOKIE: &str = "set-cookie";

/// An assigned visitor id: URL-safe base64 of 16 random bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CookieId([u8; ID_LEN]);

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

impl CookieId {
    /// A fresh id from the VM's generator.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let high = u128::from(rng.next_u64()) << 64;
        Self::from_bits(high | u128::from(rng.next_u64()))
    }

    /// The id of 16 bytes (big-endian bits), as base64url without padding writes them.
    /// Hand-written: twenty lines for one fixed length, where a base64 crate would bring its
    /// whole engine into the module.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self::from_bits(u128::from_be_bytes(bytes))
    }

    fn from_bits(bits: u128) -> Self {
        // 21 whole sextets from the top, then the last 2 bits padded with zeros.
        let sextets = (0..21u32)
            .map(|i| (bits >> (122 - 6 * i)) & 63)
            .chain(std::iter::once((bits & 3) << 4));
        let mut out = [b'A'; ID_LEN];
        for (slot, sextet) in out.iter_mut().zip(sextets) {
            *slot = ALPHABET.get(sextet as usize).copied().unwrap_or(b'A');
        }
        Self(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// A service's `assign_cookie`, compiled: the cookie's name and the attributes written after
/// its value (`; Max-Age=2592000; Path=/; HttpOnly; SameSite=Lax`), formatted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignCookie {
    pub name: String,
    pub attributes: String,
    /// The cookie's `Path`: only requests inside it are assigned an id (a request outside it
    /// does not carry the cookie, and a new id would replace the visitor's).
    pub path: String,
    /// Whether a response that sets the cookie is made private to shared caches.
    pub private: bool,
}

impl AssignCookie {
    /// The `Set-Cookie` value that assigns `id`.
    pub fn header_value(&self, id: &CookieId) -> String {
        let mut value = String::with_capacity(self.name.len() + 1 + ID_LEN + self.attributes.len());
        value.push_str(&self.name);
        value.push('=');
        value.push_str(id.as_str());
        value.push_str(&self.attributes);
        value
    }
}

/// The longest `Set-Cookie` value written without allocating (name, id and attributes).
const INLINE_VALUE: usize = 256;

impl AssignCookie {
    /// [`AssignCookie::header_value`] written into `buffer` when it fits, as it does for every
    /// cookie path of ordinary length: the response path allocates nothing for it.
    fn header_value_in<'b>(
        &self,
        id: &CookieId,
        buffer: &'b mut [u8; INLINE_VALUE],
    ) -> std::borrow::Cow<'b, str> {
        let parts = [
            self.name.as_bytes(),
            b"=",
            id.as_bytes(),
            self.attributes.as_bytes(),
        ];
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let Some(out) = buffer.get_mut(..len) else {
            return self.header_value(id).into();
        };
        let mut at = 0;
        for part in parts {
            if let Some(slot) = out.get_mut(at..at + part.len()) {
                slot.copy_from_slice(part);
            }
            at += part.len();
        }
        match std::str::from_utf8(out) {
            Ok(value) => value.into(),
            Err(_) => self.header_value(id).into(),
        }
    }
}

/// Validates `assign_cookie` (at JSON path `path`) for the cookie `name` the service hashes.
///
/// Defaults: `max_age_s` 2 592 000 (30 days), `path` `/`, `secure` false (a cookie marked
/// Secure is never stored from a plain-HTTP response, so a site behind plain HTTP would assign a
/// new id on every request), `http_only` true (no script needs a routing key), `same_site`
/// `Lax`. `SameSite=None` requires `secure: true`, as browsers do.
pub fn compile(path: &str, name: &str, raw: &RawAssignCookie) -> Result<AssignCookie, ConfigError> {
    let error = |field: &str, message: String| ConfigError {
        path: format!("{path}.{field}"),
        message,
    };
    let max_age = raw.max_age_s.unwrap_or(DEFAULT_MAX_AGE_S);
    if !(1..=MAX_MAX_AGE_S).contains(&max_age) {
        return Err(error(
            "max_age_s",
            format!(
                "must be from 1 to {MAX_MAX_AGE_S} (400 days, the most browsers keep a \
                 cookie), got {max_age}"
            ),
        ));
    }
    let cookie_path = raw.path.as_deref().unwrap_or("/");
    if !cookie_path.starts_with('/')
        || cookie_path
            .chars()
            .any(|c| !c.is_ascii_graphic() || c == ';')
    {
        return Err(error(
            "path",
            format!(
                "{cookie_path:?} is not a cookie path: it must start with '/' and hold only \
                 printable ASCII without spaces or ';'"
            ),
        ));
    }
    let secure = raw.secure.unwrap_or(false);
    let same_site = raw.same_site.unwrap_or(RawSameSite::Lax);
    if same_site == RawSameSite::None && !secure {
        return Err(error(
            "same_site",
            "\"None\" requires \"secure\": true (browsers refuse a SameSite=None cookie \
             without Secure)"
                .to_owned(),
        ));
    }
    // Browsers drop a cookie whose name claims a prefix its attributes do not honour
    // (RFC 6265bis, case-insensitively): no visitor would keep it.
    let lower = name.to_ascii_lowercase();
    if (lower.starts_with("__secure-") || lower.starts_with("__host-")) && !secure {
        return Err(error(
            "secure",
            format!(
                "{name:?} starts with a __Secure- or __Host- prefix, which browsers accept only \
                 with Secure: set \"secure\": true (or rename the cookie)"
            ),
        ));
    }
    if lower.starts_with("__host-") && cookie_path != "/" {
        return Err(error(
            "path",
            format!(
                "{name:?} starts with __Host-, which browsers accept only with Path=/: remove \
                 \"path\" or rename the cookie"
            ),
        ));
    }
    let mut attributes = format!("; Max-Age={max_age}; Path={cookie_path}");
    if secure {
        attributes.push_str("; Secure");
    }
    if raw.http_only.unwrap_or(true) {
        attributes.push_str("; HttpOnly");
    }
    attributes.push_str(match same_site {
        RawSameSite::Strict => "; SameSite=Strict",
        RawSameSite::Lax => "; SameSite=Lax",
        RawSameSite::None => "; SameSite=None",
    });
    Ok(AssignCookie {
        name: name.to_owned(),
        attributes,
        path: cookie_path.to_owned(),
        private: raw.cache_control.unwrap_or(RawCacheControl::Private) == RawCacheControl::Private,
    })
}

/// Whether a cookie name can be set as it is: an RFC 6265 token (the name `hash_on` reads
/// must also be one when meshsplit writes it).
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether a `Set-Cookie` value sets cookie `name` (its name is what precedes the first `=`,
/// white space trimmed).
pub fn sets(value: &[u8], name: &[u8]) -> bool {
    let Some(end) = value.iter().position(|&b| b == b'=') else {
        return false;
    };
    value.get(..end).map(<[u8]>::trim_ascii) == Some(name)
}

/// At the response headers of a stream that was assigned `id`: sets the cookie, unless the
/// response already sets a cookie of that name (the application took over, and its value wins),
/// and, with `cache_control: "private"`, makes the response private to shared caches. Two host
/// calls (the first `set-cookie` header read, which finds nothing in a response that sets no
/// cookie, and one header added; every `set-cookie` header is read only when the first sets
/// another cookie), and with `private` two more (the first `cache-control` read, and written
/// when it must change).
pub fn on_response_headers<H: Host + ?Sized>(assign: &AssignCookie, id: &CookieId, host: &H) {
    let name = assign.name.as_bytes();
    let taken = match host.response_header(SET_COOKIE) {
        None => false,
        Some(first) if sets(&first, name) => true,
        Some(_) => host
            .response_header_values(SET_COOKIE)
            .iter()
            .any(|v| sets(v, name)),
    };
    if taken {
        return;
    }
    let mut buffer = [0u8; INLINE_VALUE];
    host.add_response_header(SET_COOKIE, &assign.header_value_in(id, &mut buffer));
    if assign.private {
        let current = host.response_header(CACHE_CONTROL);
        if let Some(value) = private_cache_control(current.as_deref()) {
            host.set_response_header(CACHE_CONTROL, &value);
        }
    }
}

/// The response header that tells caches what they may store.
pub const CACHE_CONTROL: &str = "cache-control";

/// The `Cache-Control` a response carrying a per-visitor `Set-Cookie` gets, from the one it has
/// (`None`: none); `None` when it needs no change (already `private` or `no-store`, without
/// `public` or `s-maxage`). `public` and `s-maxage` go (they let a shared cache store it),
/// `private` comes first, every other directive stays as written (`max-age` still lets the
/// visitor's own browser cache the page).
pub fn private_cache_control(current: Option<&[u8]>) -> Option<String> {
    let text = String::from_utf8_lossy(current.unwrap_or_default());
    // Directives are separated by commas outside quoted strings (`no-cache="a, b"` is one).
    let mut pieces: Vec<&str> = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pieces.extend(text.get(start..i));
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.extend(text.get(start..));
    let directives: Vec<&str> = pieces
        .into_iter()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    let name = |d: &str| {
        d.split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    };
    let shared = |d: &&str| matches!(name(d).as_str(), "public" | "s-maxage");
    // A qualified `private="X-Foo"` keeps only that field from a shared cache: not private.
    let already = directives
        .iter()
        .any(|d| d.eq_ignore_ascii_case("private") || name(d) == "no-store");
    if already && !directives.iter().any(shared) {
        return None;
    }
    let mut out = vec!["private"];
    out.extend(
        directives
            .iter()
            .filter(|d| !shared(d) && name(d) != "private"),
    );
    Some(out.join(", "))
}

/// Whether a request for `request_path` (`:path`, its query ignored) is inside cookie path
/// `cookie_path` (RFC 6265 5.1.4): the same path, or below it at a `/`.
pub fn path_matches(request_path: &[u8], cookie_path: &str) -> bool {
    let end = request_path
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(request_path.len());
    let path = request_path.get(..end).unwrap_or_default();
    let cookie = cookie_path.as_bytes();
    match path.strip_prefix(cookie) {
        Some(rest) => rest.is_empty() || cookie.ends_with(b"/") || rest.starts_with(b"/"),
        None => false,
    }
}

#[cfg(test)]
#[path = "cookie_tests.rs"]
mod tests;
