"""`meshsplit preview`: simulated requests through the filter's own decision code agree with the
weights, name the rule or strategy that routes a request, and predict how many sticky keys an
edit moves, as the filter in Envoy moves them."""
import concurrent.futures
import json
import re
import subprocess
import time

import harness
import stats
from stats import chi_square
from test_apply import ecds_envoy, meshsplit
from test_cli import cli  # noqa: F401  (the session fixture that builds the command)

P_MIN = stats.P_MIN
KEYS = [f"key-{i}" for i in range(2000)]


def upstreams(weights, prefix=""):
    return [{"name": n, "cluster": f"{prefix}{n}", "weight": w} for n, w in weights.items()]


def write(tmp_path, name, plugin):
    path = tmp_path / name
    path.write_text(json.dumps(plugin))
    return path


def preview_json(cli, *args):  # noqa: F811
    result = meshsplit(cli, "preview", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_simulated_shares_pass_chi_square_against_the_weights(cli, tmp_path):  # noqa: F811
    config = write(tmp_path, "split.json", {"services": [
        {"name": "svc", "upstreams": upstreams({"v1": 90, "v2": 10, "v3": 0})}]})
    out = preview_json(cli, config, "--requests", "10000", "--seed", "7")
    service = out["configs"][0]["services"][0]
    counts = [u["count"] for u in service["upstreams"]]
    assert sum(counts) == 10000 and counts[2] == 0, counts
    stat, p = chi_square(counts, [90, 10, 0])
    assert p > P_MIN, (counts, stat)
    assert [u["expected"] for u in service["upstreams"]] == [0.9, 0.1, 0.0]
    # The text table says the same.
    text = meshsplit(cli, "preview", config, "--seed", "7").stdout
    assert re.search(r"^  v3 +v3 +0 +0\.0 % +0\.0 %$", text, re.M), text


def test_a_request_matching_a_rule_is_shown_going_where_the_rule_sends_it(cli, tmp_path):  # noqa: F811
    config = write(tmp_path, "split.json", {"services": [{
        "name": "reviews", "upstreams": upstreams({"v1": 100, "v2": 0}, "reviews_"),
        "rules": [{"match": {"headers": [{"name": "x-canary", "exact": "true"}]}, "upstream": "v2"}]}]})
    result = meshsplit(cli, "preview", config, "--header", "x-canary: true")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{config}: a request with x-canary: true",
        'reviews: v2 (cluster reviews_v2) by rule 0: header x-canary = "true"',
    ]
    route = preview_json(cli, config, "--header", "x-canary:true")["configs"][0]["routes"][0]
    assert (route["upstream"], route["by"], route["rule"]) == ("v2", "rule", 0)
    # Without the header the strategy decides.
    other = preview_json(cli, config, "--header", "x-canary:false")["configs"][0]["routes"][0]
    assert (other["upstream"], other["by"], other["rule"]) == ("v1", "strategy", None)
    # The plain preview lists the rule.
    text = meshsplit(cli, "preview", config).stdout
    assert '  rule 0: header x-canary = "true" -> v2 (reviews_v2)\n' in text, text


def test_round_robin_shows_its_first_cycle(cli, tmp_path):  # noqa: F811
    config = write(tmp_path, "split.json", {"services": [{
        "name": "rr", "strategy": "round_robin", "upstreams": upstreams({"a": 5, "b": 1, "c": 1})}]})
    text = meshsplit(cli, "preview", config).stdout
    assert "  first cycle (7 requests): a a b a c a a\n" in text, text
    cycle = preview_json(cli, config)["configs"][0]["services"][0]["round_robin_cycle"]
    assert cycle == {"length": 7, "first": ["a", "a", "b", "a", "c", "a", "a"]}


def sticky(weights):
    return {"services": [{"name": "svc", "strategy": "sticky", "hash_on": {"header": "x-user-id"},
                          "upstreams": upstreams(weights)}]}


def owners(port, keys):
    """The upstream that answers each key, over 8 keep-alive connections."""
    def worker(chunk):
        client = harness.Client(port)
        try:
            return {k: harness.answer_key(*client.get("/", {"Host": "svc", "x-user-id": k})[::2])
                    for k in chunk}
        finally:
            client.close()

    chunks = [keys[i::8] for i in range(8)]
    result = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for part in pool.map(worker, chunks):
            result.update(part)
    return result


def renamed(plugin, old_name, new_name):
    """`plugin` with upstream `old_name` called `new_name`, on the same cluster."""
    plugin = json.loads(json.dumps(plugin))
    for upstream in plugin["services"][0]["upstreams"]:
        if upstream["name"] == old_name:
            upstream["name"] = new_name
    return plugin


def test_against_predicts_the_sticky_keys_envoy_moves(cli, wasm, tmp_path, capsys):  # noqa: F811
    old_plugin, new_plugin = sticky({"v1": 85, "v2": 10, "v3": 5}), sticky({"v1": 85, "v2": 25, "v3": 5})
    predicted = against_through_envoy(cli, wasm, tmp_path, capsys, old_plugin, new_plugin)
    assert {m["to"] for m in predicted["keys"]["moves"]} == {"v2"}, predicted


def test_against_counts_a_renamed_upstream_on_its_cluster_as_no_move(cli, wasm, tmp_path,  # noqa: F811
                                                                      capsys):
    """v1 becomes `stable` on the same cluster: its new name hashes differently, so keys change
    upstream name, but only those that change cluster move (through Envoy, by the cluster that
    answers)."""
    old_plugin = sticky({"v1": 85, "v2": 10, "v3": 5})
    new_plugin = renamed(old_plugin, "v1", "stable")
    predicted = against_through_envoy(cli, wasm, tmp_path, capsys, old_plugin, new_plugin)
    assert predicted["keys"]["renamed_fraction"] > 0.5, predicted
    assert [(m["from"], m["to"]) for m in predicted["keys"]["renames"]] == [("v1", "stable")]


def against_through_envoy(cli, wasm, tmp_path, capsys, old_plugin, new_plugin):  # noqa: F811
    """Runs `preview --against`, then applies both configs to one Envoy in turn: the fraction of
    keys whose cluster changes matches the prediction. Returns the prediction."""
    old, new = write(tmp_path, "old.json", old_plugin), write(tmp_path, "new.json", new_plugin)
    predicted = preview_json(cli, new, "--against", old)["services"][0]
    assert predicted["change"] == "changed"
    fraction = predicted["keys"]["fraction"]

    ecds = tmp_path / "ecds"
    ecds.mkdir()
    created = meshsplit(cli, "apply", old, "--to", ecds / "meshsplit.json", "--module", wasm)
    assert created.returncode == 0, created.stderr
    with ecds_envoy(ecds, ["v1", "v2", "v3"], old_plugin, tmp_path) as envoy:
        before = owners(envoy.port, KEYS)
        reloads = envoy.stats("extension_config_discovery").get(
            "extension_config_discovery.http_filter.meshsplit.config_reload", 0)
        applied = meshsplit(cli, "apply", new, "--to", ecds / "meshsplit.json")
        assert applied.returncode == 0, applied.stderr
        assert harness.wait_for(lambda: envoy.stats("extension_config_discovery").get(
            "extension_config_discovery.http_filter.meshsplit.config_reload", 0) > reloads)
        time.sleep(0.2)
        after = owners(envoy.port, KEYS)
    assert set(before.values()) == {"v1", "v2", "v3"}
    # The upstreams answer with their cluster's name: a key moved if its cluster changed.
    moved = [k for k in KEYS if before[k] != after[k]]
    destinations = {c for m in predicted["keys"]["moves"] for c in clusters_of(new_plugin, m["to"])}
    assert all(after[k] in destinations for k in moved), "keys moved to an upstream not predicted"
    observed = len(moved) / len(KEYS)
    with capsys.disabled():
        print(f"\npreview --against: {fraction:.1%} of sample keys move; through Envoy "
              f"{observed:.1%} of {len(KEYS)} keys moved")
    assert abs(observed - fraction) <= 0.03, (observed, fraction)
    # apply printed the same prediction (same sample keys) in its text form.
    assert f"svc: {fraction * 100:.1f} % of keys move: " in applied.stdout, applied.stdout
    return predicted


def clusters_of(plugin, upstream):
    return {u["cluster"] for u in plugin["services"][0]["upstreams"] if u["name"] == upstream}


def test_unknown_service_and_bad_options_are_exit_2_and_invalid_configs_exit_1(cli, tmp_path):  # noqa: F811
    config = write(tmp_path, "split.json", sticky({"v1": 1}))
    result = meshsplit(cli, "preview", config, "--service", "nope")
    assert result.returncode == 2 and 'no service named "nope" (services: svc)' in result.stderr
    assert meshsplit(cli, "preview", config, "--header", "novalue").returncode == 2
    bad = write(tmp_path, "bad.json", {"services": []})
    result = meshsplit(cli, "preview", bad)
    assert (result.returncode, result.stdout) == (
        1, f"{bad}: invalid configuration: services: must list at least one service\n")
    assert subprocess.run([str(cli), "preview", "--help"], capture_output=True).returncode == 0
