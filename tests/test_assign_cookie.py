"""`assign_cookie` through real Envoy with a real cookie jar (http.cookiejar), for the wasm filter
(meshsplit-cookie.wasm) and the native filter: anonymous visitors are split by the weights, stay
on their first upstream, and a ramp moves only the visitors it must, into the raised upstream.
The cluster specifier, which cannot touch responses, refuses the configuration, and so does
meshsplit.wasm, which does not export the response-headers callback."""
import concurrent.futures
import http.cookiejar
import json
import math
import urllib.request

import pytest

import harness
import stats
from stats import chi_square
from test_apply import meshsplit
from test_cli import cli  # noqa: F401  (the session fixture that builds the command)
from test_guard_updates import ecds_bootstrap_for, publish_for
from test_split import start_refused

pytestmark = pytest.mark.builds("wasm", "native")

COOKIE = "mesh-web"
VISITORS = 1000
NEXT = 5
CONNECTIONS = 8


def site(weights, probe="a", **assign):
    """Service "web", sticky on cookie mesh-web which meshsplit assigns, over upstreams named
    like their clusters; and a one-upstream service "probe" that tells which config is live."""
    return {"services": [
        {"name": "web", "strategy": "sticky", "hash_on": {"cookie": COOKIE},
         "assign_cookie": dict({"max_age_s": 3600, "path": "/", "secure": False,
                                "http_only": True, "same_site": "Lax"}, **assign),
         "upstreams": [{"name": n, "cluster": n, "weight": w} for n, w in weights.items()]},
        {"name": "probe", "upstreams": [{"name": probe, "cluster": probe, "weight": 1}]}]}


@pytest.fixture(autouse=True)
def _cookie_module(build, monkeypatch):
    """The wasm build deploys meshsplit-cookie.wasm, the module that can assign cookies."""
    if build == "wasm":
        monkeypatch.setattr(harness, "WASM", harness.WASM_COOKIE)


class Visitor:
    """A browser without cookies for the site: its own cookie jar, any keep-alive connection."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()

    def get(self, connection):
        """The upstream that answered, and the response's Set-Cookie headers."""
        request = urllib.request.Request("http://web/")
        self.jar.add_cookie_header(request)
        headers = {"Host": "web"}
        if request.get_header("Cookie"):
            headers["Cookie"] = request.get_header("Cookie")
        response = connection.send(headers)
        self.jar.extract_cookies(response, request)
        return json.loads(response.body)["upstream"], response.msg.get_all("set-cookie") or []

    def cookie(self):
        return next((c for c in self.jar if c.name == COOKIE), None)


class Connection(harness.Client):
    """One keep-alive connection to Envoy whose answers must come from an upstream."""

    def send(self, headers, path="/"):
        response = self.response(path, headers)
        assert response.status == 200, (response.status, response.body)
        return response


def each_visitor(port, visitors, visit):
    """Runs `visit(visitor, connection)` for every visitor over CONNECTIONS keep-alive
    connections in parallel; returns the results in the visitors' order."""
    def run(offset):
        connection, out = Connection(port), []
        try:
            for visitor in visitors[offset::CONNECTIONS]:
                out.append(visit(visitor, connection))
        finally:
            connection.close()
        return out

    with concurrent.futures.ThreadPoolExecutor(CONNECTIONS) as pool:
        slices = list(pool.map(run, range(CONNECTIONS)))
    results = [None] * len(visitors)
    for offset, out in enumerate(slices):
        results[offset::CONNECTIONS] = out
    return results


BEFORE = {"a": 45, "b": 10, "c": 45}
# b from 10 to 30; a and c lowered in proportion, so b's share goes from 10 % to 30 % and a
# visitor whose upstream changes can only have moved to b.
AFTER = {"a": 35, "b": 30, "c": 35}


@pytest.fixture(scope="module")
def live(build, tmp_path_factory):
    """An Envoy whose plugin config comes from a watched ECDS file (to ramp live), with its
    visitors: {"envoy", "ecds", "visitors", "first"}."""
    directory = tmp_path_factory.mktemp("cookie")
    ecds = directory / "ecds"
    ecds.mkdir()
    first = site(BEFORE)
    # The autouse fixture is function-scoped: pick the module here as well.
    module = harness.WASM_COOKIE if build == "wasm" else harness.WASM
    saved, harness.WASM = harness.WASM, module
    try:
        publish_for(build, ecds, 1, first)
        with harness.upstreams("a", "b", "c") as ports:
            config = ecds_bootstrap_for(build, ecds, ports, first)
            with harness.Envoy(config, directory) as envoy:
                yield {"envoy": envoy, "ecds": ecds, "build": build,
                       "visitors": [Visitor() for _ in range(VISITORS)]}
    finally:
        harness.WASM = saved


def test_visitors_without_cookies_are_split_by_the_weights_and_stay_on_their_upstream(live):
    def visit(visitor, connection):
        first, set_cookies = visitor.get(connection)
        assert len(set_cookies) == 1, set_cookies
        cookie = visitor.cookie()
        assert cookie is not None and len(cookie.value) == 22, set_cookies
        assert all(c.isalnum() or c in "-_" for c in cookie.value), cookie.value
        after = [visitor.get(connection) for _ in range(NEXT)]
        # The cookie is sent back, so nothing more is set and the upstream stays.
        assert all(not set_cookie for _, set_cookie in after), after
        return first, [upstream for upstream, _ in after]

    results = each_visitor(live["envoy"].port, live["visitors"], visit)
    live["first"] = [first for first, _ in results]
    strays = [(first, after) for first, after in results if set(after) != {first}]
    assert not strays, strays[:5]
    ids = {v.cookie().value for v in live["visitors"]}
    assert len(ids) == VISITORS
    counts = [live["first"].count(n) for n in BEFORE]
    _, p = chi_square(counts, list(BEFORE.values()))
    assert p > stats.P_MIN, counts


def test_a_ramp_moves_about_the_share_it_must_and_only_into_the_raised_upstream(live):
    assert "first" in live, "runs after the split test, with its visitors"
    envoy = live["envoy"]
    publish_for(live["build"], live["ecds"], 2, site(AFTER, probe="b"))
    probe = harness.Client(envoy.port)
    try:
        assert harness.wait_for(
            lambda: json.loads(probe.get("/", {"Host": "probe"})[2])["upstream"] == "b", 20)
    finally:
        probe.close()

    now = each_visitor(envoy.port, live["visitors"], lambda v, c: v.get(c)[0])
    moves = [(was, is_) for was, is_ in zip(live["first"], now) if was != is_]
    assert {is_ for _, is_ in moves} <= {"b"}, moves[:10]
    # b's share goes from 10 % to 30 %: 20 % of visitors move. Binomial(1000, 0.2) has a
    # standard deviation of 12.6; 5 of them (±63) fail a correct build about once in 1.7
    # million runs, the suite's threshold (stats.P_MIN).
    expected = VISITORS * 0.2
    tolerance = 5 * math.sqrt(VISITORS * 0.2 * 0.8)
    stats.count_check()
    assert abs(len(moves) - expected) <= tolerance, len(moves)
    live["moved"] = len(moves) / VISITORS


def test_preview_predicts_the_share_of_assigned_visitors_the_ramp_moved(live, cli, tmp_path):  # noqa: F811
    assert "moved" in live, "runs after the ramp test"
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(site(BEFORE)))
    new.write_text(json.dumps(site(AFTER, probe="b")))
    result = meshsplit(cli, "preview", new, "--against", old, "--json")
    assert result.returncode == 0, result.stderr
    web = json.loads(result.stdout)["services"][0]
    keys = web["keys"]
    assert keys["sample"] == "assigned visitor ids" and keys["sampled"] == 10_000
    assert {m["to"] for m in keys["moves"]} == {"b"}, keys
    # 10 000 sampled ids against 1 000 visitors through Envoy: the difference of the two shares
    # has a standard deviation of 0.013 at 20 %; 5 of them.
    stats.count_check()
    assert abs(keys["fraction"] - live["moved"]) <= 0.066, (keys["fraction"], live["moved"])


def test_the_cookie_has_exactly_the_attributes_configured(deploy):
    plugin = site({"a": 1}, max_age_s=600, path="/shop", secure=True, http_only=False,
                  same_site="None")
    envoy = deploy(plugin, ["a"])
    connection = Connection(envoy.port)
    try:
        response = connection.send({"Host": "web"}, "/shop/cart")
        (value,) = response.msg.get_all("set-cookie")
        name_id, attributes = value.split(";", 1)
        name, id_ = name_id.split("=")
        assert name == COOKIE and len(id_) == 22
        assert attributes == " Max-Age=600; Path=/shop; Secure; SameSite=None"
        # With the cookie, nothing is set.
        again = connection.send({"Host": "web", "Cookie": f"{COOKIE}={id_}"}, "/shop/cart")
        assert again.msg.get_all("set-cookie") is None
    finally:
        connection.close()


def test_a_response_that_sets_the_cookie_itself_is_left_alone(build, tmp_path):
    # The "application": the route adds the Set-Cookie a request asks for in x-app-cookie,
    # before the response reaches meshsplit's response-headers callback.
    with harness.upstreams("a") as ports:
        config = harness.bootstrap(site({"a": 1}), ports, harness.free_port(), harness.free_port())
        routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
            "typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
        routes[0]["response_headers_to_add"] = [{
            "header": {"key": "set-cookie", "value": "%REQ(x-app-cookie)%"},
            "append_action": "APPEND_IF_EXISTS_OR_ADD", "keep_empty_value": False}]
        with harness.Envoy(config, tmp_path) as envoy:
            connection = Connection(envoy.port)
            try:
                taken = connection.send({"Host": "web", "x-app-cookie": f"{COOKIE}=chosen; Path=/"})
                assert taken.msg.get_all("set-cookie") == [f"{COOKIE}=chosen; Path=/"]
                other = connection.send({"Host": "web", "x-app-cookie": "theme=dark"})
                (theirs, ours) = sorted(other.msg.get_all("set-cookie"), key=len)
                assert theirs == "theme=dark" and ours.startswith(f"{COOKIE}="), (theirs, ours)
            finally:
                connection.close()


@pytest.mark.builds("specifier")
def test_the_cluster_specifier_refuses_assign_cookie_and_says_why(build, tmp_path):
    code, log = start_refused(site({"a": 1}), tmp_path)
    assert code != 0
    assert ("invalid configuration: services[0].assign_cookie: assigning a cookie means setting "
            "it on the response, which a cluster specifier cannot touch") in log


@pytest.mark.builds("wasm")
def test_the_module_without_the_response_callback_refuses_assign_cookie(build, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setattr(harness, "WASM", harness.WASM_COOKIE.with_name("meshsplit.wasm"))
    code, log = start_refused(site({"a": 1}), tmp_path)
    assert code != 0
    assert ("invalid configuration: services[0].assign_cookie: this module does not export the "
            "response-headers callback") in log
    assert "load meshsplit-cookie.wasm" in log


def cdn(meshsplit_port):
    """An Envoy with the HTTP cache filter in front of the meshsplit Envoy: a CDN."""
    cache = {"name": "envoy.filters.http.cache", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
        "typed_config": {"@type": "type.googleapis.com/"
                         "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"}}}
    listener = harness.http_listener("cdn", harness.free_port(), [
        {"match": {"prefix": "/"}, "route": {"cluster": "site"}}], [cache])
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": harness.free_port()}}},
            "static_resources": {"listeners": [listener],
                                 "clusters": [harness.static_cluster("site", meshsplit_port)]}}


def cacheable_site(ports, **assign):
    """The meshsplit Envoy, whose application marks its page `public, max-age=3600`."""
    config = harness.bootstrap(site({"a": 1, "b": 1}, **assign), ports, harness.free_port(),
                               harness.free_port())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        route["response_headers_to_add"] = [{
            "header": {"key": "cache-control", "value": "public, max-age=3600"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    return config


@pytest.mark.parametrize("cache_control", ["private", "unchanged"])
def test_a_shared_cache_never_hands_one_visitors_id_to_the_next(build, tmp_path, cache_control):
    """Ten new visitors, one after the other, through a CDN (Envoy's cache filter): each gets an
    id of its own, because the response that sets it is made private; with
    `cache_control: "unchanged"` (the application's `public` stays) the CDN hands the first
    visitor's id to every later one, which is why "private" is the default."""
    with harness.upstreams("a", "b") as ports, \
            harness.Envoy(cacheable_site(ports, cache_control=cache_control), tmp_path / "site"
                          if (tmp_path / "site").mkdir() is None else None) as site_envoy, \
            harness.Envoy(cdn(site_envoy.port), tmp_path) as front:
        ids, controls = [], []
        for _ in range(10):
            connection = Connection(front.port)
            try:
                response = connection.send({"Host": "web"})
            finally:
                connection.close()
            (value,) = response.msg.get_all("set-cookie")
            ids.append(value.split(";")[0])
            controls.append(response.getheader("cache-control"))
    if cache_control == "private":
        assert len(set(ids)) == 10, ids
        assert set(controls) == {"private, max-age=3600"}, controls
    else:
        assert len(set(ids)) == 1, ids


def test_requests_outside_the_cookie_path_keep_the_visitors_id(build, tmp_path):
    """`path: /shop` and a real cookie jar: `/shop/`, then `/static/app.js` (the browser sends
    no cookie there), then `/shop/` again: the request outside the path gets no new id, and the
    visitor keeps its id and its upstream."""
    with harness.upstreams("a", "b") as ports:
        config = harness.bootstrap(site({"a": 1, "b": 1}, path="/shop"), ports,
                                   harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            connection = Connection(envoy.port)
            changed = outside_cookies = 0
            try:
                for _ in range(100):
                    jar = http.cookiejar.CookieJar()

                    def visit(path):
                        request = urllib.request.Request(f"http://web{path}")
                        jar.add_cookie_header(request)
                        headers = {"Host": "web"}
                        if request.get_header("Cookie"):
                            headers["Cookie"] = request.get_header("Cookie")
                        response = connection.send(headers, path)
                        jar.extract_cookies(response, request)
                        return json.loads(response.body)["upstream"], response

                    first, _ = visit("/shop/")
                    (before,) = [c.value for c in jar if c.name == COOKIE]
                    _, outside = visit("/static/app.js")
                    outside_cookies += len(outside.msg.get_all("set-cookie") or [])
                    again, _ = visit("/shop/")
                    (after,) = [c.value for c in jar if c.name == COOKIE]
                    changed += (before != after) or (first != again)
            finally:
                connection.close()
    assert outside_cookies == 0
    assert changed == 0


def test_a_visitors_id_is_read_past_an_empty_copy_and_an_unmatched_quote(deploy):
    """What browsers send: a cleared copy of the cookie before the real one (an application
    cleared it on a more specific path), and an unrelated cookie whose value starts with an
    unmatched quote. Either way the visitor's id is read: no new id is set, and every request
    lands on the id's upstream."""
    envoy = deploy(site({"a": 1, "b": 1}), ["a", "b", "probe"])
    connection = Connection(envoy.port)
    try:
        first = connection.send({"Host": "web"})
        (value,) = first.msg.get_all("set-cookie")
        id_ = value.split(";")[0].split("=", 1)[1]
        home = json.loads(first.body)["upstream"]
        for cookie in (f"{COOKIE}=; {COOKIE}={id_}", f'x="a; {COOKIE}={id_}; y="b"'):
            for _ in range(20):
                response = connection.send({"Host": "web", "Cookie": cookie})
                assert response.msg.get_all("set-cookie") is None, cookie
                assert json.loads(response.body)["upstream"] == home, cookie
    finally:
        connection.close()
