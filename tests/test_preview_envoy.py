"""`meshsplit preview` tells the truth: the same config and the same requests, routed by `preview`
and through real Envoy, end at the same upstream, rule by rule. Rules on `host` (Envoy's
`:authority`) and on headers Envoy adds before the filters run (`x-request-id`,
`x-forwarded-proto`) included."""
import http.client
import json

import pytest

import harness
from test_apply import meshsplit
from test_cli import cli  # noqa: F401  (the session fixture that builds the command)

# One service per rule, so every rule is seen alone: `base` takes whatever the rule does not.
RULES = {
    "on-host": {"name": "host", "exact": "on-host"},
    "on-host-prefix": {"name": "host", "prefix": "on-"},
    "on-authority": {"name": ":authority", "exact": "on-authority"},
    "on-request-id": {"name": "x-request-id", "present": True},
    "on-forwarded-proto": {"name": "x-forwarded-proto", "exact": "http"},
    "on-canary": {"name": "x-canary", "exact": "true"},
    "on-method": {"name": ":method", "exact": "GET"},
    "on-scheme": {"name": ":scheme", "exact": "http"},
    "on-path": {"name": ":path", "prefix": "/api"},
    "on-forwarded-for": {"name": "x-forwarded-for", "present": True},
    "on-envoy-internal": {"name": "x-envoy-internal", "present": True},
}
# A rule on a cookie, which any cookie of any `cookie` header satisfies.
COOKIE_RULES = {"on-beta-cookie": {"name": "beta", "exact": "1"}}
PLUGIN = {"services": [
    {"name": name, "upstreams": [{"name": "base", "cluster": "base", "weight": 1},
                                 {"name": "hit", "cluster": "hit", "weight": 0}],
     "rules": [{"match": {"cookies" if name in COOKIE_RULES else "headers": [test]}, "upstream": "hit"}]}
    for name, test in {**RULES, **COOKIE_RULES}.items()]}
SERVICES = [*RULES, *COOKIE_RULES]
# The requests: each sent to every service, with these headers besides Host.
# Headers are (name, value) pairs: a name may repeat, as a client may send it twice.
REQUESTS = {
    "plain": ("/", []),
    "canary": ("/", [("x-canary", "true")]),
    "api": ("/api/v1", []),
    "own request id and https": ("/", [("x-request-id", "abc"), ("x-forwarded-proto", "https")]),
    "upper-case forwarded proto": ("/", [("x-forwarded-proto", "HTTPS")]),
    # A condition holds when any copy satisfies it, whichever comes first.
    "canary true then false": ("/", [("x-canary", "true"), ("x-canary", "false")]),
    "canary false then true": ("/", [("x-canary", "false"), ("x-canary", "true")]),
    "two cookie headers": ("/", [("cookie", "theme=dark"), ("cookie", "beta=1")]),
}


def get(port, path, headers):
    """(status, body) of a GET sending `headers` as given, repeated names included."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def previewed(cli, config, path, headers):  # noqa: F811
    args = ["preview", config, "--json", "--path", path]
    for name, value in headers:
        args += ["--header", f"{name}: {value}"]
    result = meshsplit(cli, *args)
    assert result.returncode == 0, result.stderr
    routes = json.loads(result.stdout)["configs"][0]["routes"]
    return {r["service"]: r["upstream"] for r in routes}


@pytest.mark.builds("wasm", "native", "specifier")
def test_preview_and_envoy_route_the_same_requests_alike_rule_by_rule(cli, build, tmp_path):  # noqa: F811
    config = tmp_path / "plugin.json"
    config.write_text(json.dumps(PLUGIN))
    expected = {what: previewed(cli, config, path, headers) for what, (path, headers) in REQUESTS.items()}
    with harness.upstreams("base", "hit") as ports:
        bootstrap = harness.bootstrap(PLUGIN, ports, harness.free_port(), harness.free_port())
        with harness.Envoy(bootstrap, tmp_path) as envoy:
            seen = {what: {service: harness.answer_key(*get(envoy.port, path, [("Host", service), *headers]))
                           for service in SERVICES}
                    for what, (path, headers) in REQUESTS.items()}
    assert {w: {s: (seen[w][s], expected[w][s]) for s in SERVICES if seen[w][s] != expected[w][s]} for w in REQUESTS} == {w: {} for w in REQUESTS}
    for repeated in ("canary true then false", "canary false then true"):
        assert seen[repeated]["on-canary"] == "hit", seen[repeated]
    assert seen["two cookie headers"]["on-beta-cookie"] == "hit", seen["two cookie headers"]
    # What the rules say Envoy does, so the comparison cannot pass by both being wrong alike.
    assert seen["plain"] == {
        "on-host": "hit", "on-host-prefix": "hit", "on-authority": "hit", "on-request-id": "hit",
        "on-forwarded-proto": "hit", "on-canary": "base", "on-method": "hit", "on-scheme": "hit",
        "on-path": "base", "on-forwarded-for": "base", "on-envoy-internal": "base",
        "on-beta-cookie": "base"}
    assert seen["canary"]["on-canary"] == "hit" and seen["api"]["on-path"] == "hit"
    # A client's x-forwarded-proto stays, and sets :scheme (HTTP/1.1 has none of its own).
    assert seen["own request id and https"]["on-forwarded-proto"] == "base"
    assert seen["own request id and https"]["on-scheme"] == "base"
