//! The per-request decision: what happens to one request's headers, given the plan and a
//! view of the request through the [`Host`] trait. This file is how a request picks an
//! upstream: the service key, the lookup, rules, the strategy, and the headers written.

use std::borrow::Cow;

use rand_core::Rng;

use crate::cookie::{path_matches, CookieId};
use crate::host::Host;
use crate::in_flight;
use crate::metrics::Counted;
use crate::plan::{
    Condition, HashOn, HeaderTest, OnUnknownService, OwnedHeaders, Plan, Service, ServiceFrom,
    Strategy,
};
use crate::request::{host_key, query_param, RequestView, ValueTest};
use crate::select::{least_request, rendezvous, smooth_round_robin};

/// What the stream should do after its request headers were handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request go on to the router.
    Continue,
    /// A local reply was sent; stop processing.
    Replied,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub verdict: Verdict,
    /// `(service, upstream)` indexes when the request now holds one in-flight count of a
    /// least-request upstream, to give back when the stream ends.
    pub lease: Option<(usize, usize)>,
    /// What the request adds to the plan's counters.
    pub counted: Counted,
    /// The visitor id assigned to a request without the cookie of a service with
    /// `assign_cookie`: its response sets the cookie (see [`crate::cookie`]).
    pub cookie: Option<CookieId>,
}

impl Routed {
    fn unknown(verdict: Verdict) -> Self {
        Self {
            verdict,
            lease: None,
            counted: Counted::Unknown {
                rejected: verdict == Verdict::Replied,
            },
            cookie: None,
        }
    }
}

/// Routes one request: pick an upstream of the requested service (first matching rule, else
/// the service's strategy) and write the cluster header (and `:authority` when the upstream
/// sets one). Weighted and round-robin services: one header read, then one or two writes.
/// A least-request count is taken for `owner` (see [`in_flight`]).
pub fn on_request_headers<H, R>(plan: &Plan, rng: &mut R, host: &H, owner: u32) -> Routed
where
    H: Host + ?Sized,
    R: Rng + ?Sized,
{
    // A plan whose every service reads the whole map reads it first (where the host hands it
    // over at once): it holds the key too.
    let all_first = plan.reads_all_headers && host.first_copy_only();
    let mut early = all_first.then(|| RequestView::with_plan(host, true));
    let (mut raw_key, direct) = match early.as_mut() {
        Some(view) => (view_service_key(plan, view), None),
        None => read_service_key(plan, host),
    };
    let (key, found) = match direct {
        // The key as sent is a configured host: `host_key` would give it back unchanged.
        Some(found) => (None, Some(found)),
        None => match raw_key.as_mut().map(host_key) {
            Some(Some(parsed)) => (Some(parsed.bare), plan.lookup_host(parsed)),
            // No key, or a malformed one (named in a 404 as sent, lowercased).
            _ => (raw_key.as_deref(), None),
        },
    };
    let Some((service_index, service)) = found else {
        return Routed::unknown(unknown_service(plan, key, host));
    };
    let view = early.unwrap_or_else(|| RequestView::with_plan(host, service.reads_all_headers));
    let (upstream_index, leased, rule, cookie) = choose_upstream(service, rng, host, owner, view);
    let Some(upstream) = service.upstreams.get(upstream_index) else {
        let mut routed = Routed::unknown(unknown_service(plan, key, host));
        routed.counted = Counted::Nothing;
        return routed;
    };
    // Always overwrite: a client-sent cluster or upstream header is never honoured.
    if let Some(name) = &plan.headers.cluster {
        host.set_request_header(name, Some(&upstream.cluster));
    }
    if let Some(name) = &plan.headers.upstream {
        host.set_request_header(name, Some(&upstream.name));
    }
    if let Some(authority) = &upstream.authority {
        host.set_request_header(":authority", Some(authority));
    }
    Routed {
        verdict: Verdict::Continue,
        lease: leased.then_some((service_index, upstream_index)),
        counted: Counted::Upstream {
            service: service_index,
            upstream: upstream_index,
            rule,
        },
        cookie,
    }
}

/// The upstream index for a request of `service`, whether it took an in-flight count, the
/// index of the rule that chose it (`None`: the strategy did), and the visitor id it was
/// assigned (`assign_cookie`, without the cookie).
///
/// A request without the cookie is assigned an id even when a rule routes it: the rule decides
/// this request, the id decides every later one no rule claims, so the visitor is on one
/// upstream from its next request on, whichever request came first (without an id it would be
/// assigned one by its first request that no rule claims, one request later at best).
fn choose_upstream<'a, H, R>(
    service: &'a Service,
    rng: &mut R,
    host: &'a H,
    owner: u32,
    mut request: RequestView<'a, H>,
) -> (usize, bool, Option<usize>, Option<CookieId>)
where
    H: Host + ?Sized,
    R: Rng + ?Sized,
{
    let rule = service
        .rules
        .iter()
        .position(|rule| rule.conditions.iter().all(|c| holds(c, &mut request)));
    let ruled = rule.and_then(|r| service.rules.get(r)).map(|r| r.upstream);
    let cookie = match (&service.assign_cookie, &service.strategy) {
        (Some(assign), Strategy::Sticky { hash_on, .. })
            if sticky_key(hash_on, &mut request).is_none()
                // Outside the cookie's path the browser sends no cookie: an id set there would
                // replace the visitor's (`/` holds every path; no read for it).
                && (assign.path == "/"
                    || request
                        .header(":path")
                        .is_some_and(|p| path_matches(p, &assign.path))) =>
        {
            Some(CookieId::random(rng))
        }
        _ => None,
    };
    let in_force = service.weights();
    let weights: &[u32] = &in_force;
    // The least-request value read for the chosen upstream, reused to update it.
    let mut seen = None;
    let index = ruled
        .or_else(|| match &service.strategy {
            Strategy::Weighted => None,
            Strategy::RoundRobin(state) => smooth_round_robin(weights, state),
            Strategy::Sticky { hash_on, ids } => {
                let entries = ids.iter().copied().zip(weights.iter().copied());
                match &cookie {
                    // Routed by the id it is given, as its next requests will be.
                    Some(id) => rendezvous(id.as_bytes(), entries),
                    None => rendezvous(&sticky_key(hash_on, &mut request)?, entries),
                }
            }
            Strategy::LeastRequest(slots) => {
                let counts: Vec<in_flight::Seen> =
                    slots.iter().map(|s| in_flight::read(host, s)).collect();
                let loads: Vec<u64> = counts.iter().map(|seen| seen.load).collect();
                let index = least_request(weights, &loads, rng)?;
                seen = counts.into_iter().nth(index);
                Some(index)
            }
        })
        // Weighted services, and sticky requests without a key: at random by weight.
        .unwrap_or_else(|| service.pick_weighted(rng));
    let leased = match &service.strategy {
        Strategy::LeastRequest(slots) => slots
            .get(index)
            .is_some_and(|slot| in_flight::acquire(host, slot, owner, seen)),
        _ => false,
    };
    (index, leased, rule, cookie)
}

/// Conditions compare bytes: a configured value (UTF-8 text) matches exactly the request bytes
/// that spell it, and bytes that are not UTF-8 match no configured value. A condition holds when
/// any copy of its header, any cookie of its name (in any `cookie` header) or any query
/// parameter of its name satisfies it: adding a copy never makes a condition stop holding.
fn holds<'a, H: Host + ?Sized>(condition: &'a Condition, request: &mut RequestView<'a, H>) -> bool {
    match condition {
        Condition::Header { name, test } => {
            let test = match test {
                HeaderTest::Exact(expected) => ValueTest::Exact(expected.as_bytes()),
                HeaderTest::Prefix(prefix) => ValueTest::Prefix(prefix.as_bytes()),
                HeaderTest::Present => ValueTest::Present,
            };
            request.header_holds(name, test)
        }
        Condition::Cookie { name, value } => request.cookie_is(name.as_bytes(), value.as_bytes()),
        Condition::Query { name, value } => request.query().has(name.as_bytes(), value.as_bytes()),
    }
}

/// The key a sticky service hashes, as raw bytes; `None` when the request has none (or an
/// empty one).
fn sticky_key<'a, 'v, H: Host + ?Sized>(
    hash_on: &'a HashOn,
    request: &'v mut RequestView<'a, H>,
) -> Option<Cow<'v, [u8]>> {
    // The first copy, the first cookie or the first parameter of the name, in the order sent.
    let key = match hash_on {
        HashOn::Header(name) => request.header(name).map(Cow::Borrowed),
        // The first non-empty cookie: `mesh-web=; mesh-web=ID` (a cleared copy first) is ID.
        HashOn::Cookie(name) => request.first_cookie(name.as_bytes()).map(Cow::Borrowed),
        HashOn::Query(name) => request.query().first(name.as_bytes()).map(Cow::Borrowed),
    };
    key.filter(|k| !k.is_empty())
}

fn unknown_service<H: Host + ?Sized>(plan: &Plan, key: Option<&[u8]>, host: &H) -> Verdict {
    let reject = plan.on_unknown_service == OnUnknownService::Reject;
    unrouted(&plan.headers, reject, key, host)
}

/// What a request that gets no upstream gets: an unknown service, or a request no plan could
/// decide (an adapter's fallback after a bug, with `key` `None`). With `reject`, the 404 answer
/// of an unknown service; otherwise, or if the host refuses the reply, the request goes on
/// without any of the headers the filter owns, `owned` (a client-sent cluster or upstream
/// header is removed, so the client cannot pick).
pub fn unrouted<H: Host + ?Sized>(
    owned: &OwnedHeaders,
    reject: bool,
    key: Option<&[u8]>,
    host: &H,
) -> Verdict {
    if reject {
        let body = unknown_service_body(key);
        if host.send_local_reply(
            404,
            &[("content-type", "application/json")],
            body.as_bytes(),
        ) {
            return Verdict::Replied;
        }
        // The host refused the reply: let the request go on rather than hang it.
    }
    for name in owned.names() {
        host.set_request_header(name, None);
    }
    Verdict::Continue
}

/// `{"error":"unknown service","service":KEY}` (`null` without a key), written by hand: the
/// reject path is the only place the module would otherwise need a JSON serializer. Bytes of
/// the key that are not UTF-8 are shown as U+FFFD (the body is JSON, so it must be text).
fn unknown_service_body(key: Option<&[u8]>) -> String {
    let mut body = String::from(r#"{"error":"unknown service","service":"#);
    match key {
        None => body.push_str("null"),
        Some(key) => {
            body.push('"');
            for c in String::from_utf8_lossy(key).chars() {
                match c {
                    '"' => body.push_str("\\\""),
                    '\\' => body.push_str("\\\\"),
                    c if u32::from(c) < 0x20 => {
                        body.push_str(&format!("\\u{:04x}", u32::from(c)));
                    }
                    c => body.push(c),
                }
            }
            body.push('"');
        }
    }
    body.push('}');
    body
}

/// [`read_service_key`] from a view that holds every header.
fn view_service_key<'a, H: Host + ?Sized>(
    plan: &'a Plan,
    view: &mut RequestView<'a, H>,
) -> Option<Vec<u8>> {
    match &plan.service_from {
        ServiceFrom::Authority => view.header(":authority").map(<[u8]>::to_vec),
        ServiceFrom::Header(name) => view.header(name).map(<[u8]>::to_vec),
        ServiceFrom::Query(param) => {
            query_param(view.header(":path")?, param.as_bytes()).map(Cow::into_owned)
        }
    }
}

/// The request's service key, read with one header read. A key that is, as sent, one of the
/// plan's hosts (the usual request: `Host: reviews`) is looked up as it is, without a copy where
/// the host lends the value: a configured host is its own [`host_key`], so the answer is the
/// one the parsed key would get. Otherwise the key is copied, for [`host_key`] to normalize.
fn read_service_key<'p, H: Host + ?Sized>(
    plan: &'p Plan,
    host: &H,
) -> (Option<Vec<u8>>, Option<(usize, &'p Service)>) {
    let direct = |value: Cow<'_, [u8]>| match plan.lookup(&value) {
        Some(found) => (None, Some(found)),
        None => (Some(value.into_owned()), None),
    };
    match &plan.service_from {
        ServiceFrom::Authority => {
            host.with_request_header(":authority", |v| v.map_or((None, None), direct))
        }
        ServiceFrom::Header(name) => {
            host.with_request_header(name, |v| v.map_or((None, None), direct))
        }
        ServiceFrom::Query(param) => host.with_request_header(":path", |path| {
            path.as_deref()
                .and_then(|path| query_param(path, param.as_bytes()))
                .map_or((None, None), direct)
        }),
    }
}

#[cfg(test)]
#[path = "route_tests.rs"]
pub(crate) mod tests;
