"""`meshsplit preview` tells the truth: the same config and the same requests, routed by `preview`
and through real Envoy, end at the same upstream, rule by rule. Rules on `host` (Envoy's
`:authority`) and on headers Envoy adds before the filters run (`x-request-id`,
`x-forwarded-proto`) included."""
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
PLUGIN = {"services": [
    {"name": name, "upstreams": [{"name": "base", "cluster": "base", "weight": 1},
                                 {"name": "hit", "cluster": "hit", "weight": 0}],
     "rules": [{"match": {"headers": [test]}, "upstream": "hit"}]}
    for name, test in RULES.items()]}
# The requests: each sent to every service, with these headers besides Host.
REQUESTS = {
    "plain": ("/", {}),
    "canary": ("/", {"x-canary": "true"}),
    "api": ("/api/v1", {}),
    "own request id and https": ("/", {"x-request-id": "abc", "x-forwarded-proto": "https"}),
    "upper-case forwarded proto": ("/", {"x-forwarded-proto": "HTTPS"}),
}


def previewed(cli, config, path, headers):  # noqa: F811
    args = ["preview", config, "--json", "--path", path]
    for name, value in headers.items():
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
            client = harness.Client(envoy.port)
            try:
                seen = {what: {service: harness.answer_key(*client.get(path, dict(headers, Host=service))[::2])
                               for service in RULES}
                        for what, (path, headers) in REQUESTS.items()}
            finally:
                client.close()
    assert {w: {s: (seen[w][s], expected[w][s]) for s in RULES if seen[w][s] != expected[w][s]} for w in REQUESTS} == {w: {} for w in REQUESTS}
    # What the rules say Envoy does, so the comparison cannot pass by both being wrong alike.
    assert seen["plain"] == {
        "on-host": "hit", "on-host-prefix": "hit", "on-authority": "hit", "on-request-id": "hit",
        "on-forwarded-proto": "hit", "on-canary": "base", "on-method": "hit", "on-scheme": "hit",
        "on-path": "base", "on-forwarded-for": "base", "on-envoy-internal": "base"}
    assert seen["canary"]["on-canary"] == "hit" and seen["api"]["on-path"] == "hit"
    # A client's x-forwarded-proto stays, and sets :scheme (HTTP/1.1 has none of its own).
    assert seen["own request id and https"]["on-forwarded-proto"] == "base"
    assert seen["own request id and https"]["on-scheme"] == "base"
