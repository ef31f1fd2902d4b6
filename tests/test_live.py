"""The shipped live setup (envoy/envoy-live.yaml): the filter from a watched ECDS file, with
default_config for a start without a usable file, through real Envoy."""
import json
import sys

import pytest

import harness
import test_reload

sys.path.insert(0, str(harness.ENVOY_DIR))
import live  # noqa: E402  (envoy/live.py, behind `make live`)

PLUGIN = json.loads((harness.ENVOY_DIR / "meshsplit.json").read_text())
CLUSTERS = sorted({u["cluster"] for s in PLUGIN["services"] for u in s["upstreams"]})


def start(ecds_file, ports, tmp_path):
    config = live.live_bootstrap(ports, harness.free_port(), harness.free_port(), ecds_file)
    return harness.Envoy(config, tmp_path)


@pytest.mark.parametrize("content", ["", '{"version_info": "0", "resources": []}'],
                         ids=["empty-file", "no-resource"])
def test_a_start_without_a_usable_file_is_served_by_default_config(wasm, tmp_path, content):
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    (ecds / "meshsplit.json").write_text(content)
    with harness.upstreams(*CLUSTERS) as ports, start(ecds / "meshsplit.json", ports, tmp_path) as envoy:
        seen = harness.send(envoy.port, 400, {"Host": "reviews"})
        assert set(seen) <= set(CLUSTERS) and sum(seen.values()) == 400, seen
        assert harness.send(envoy.port, 20, {"Host": "reviews", "x-canary": "true"}) == {"reviews_v3": 20}
        # The file was rejected, and said so.
        assert envoy.stats("extension_config_discovery.http_filter.meshsplit.config_fail")[
            "extension_config_discovery.http_filter.meshsplit.config_fail"] == 1

        # A good file written later replaces the default.
        test_reload.publish(ecds, 1, {"services": [{"name": "reviews", "upstreams": [
            {"name": "v2", "cluster": "reviews_v2", "weight": 1}]}]})
        assert harness.wait_for(lambda: harness.send(envoy.port, 20, {"Host": "reviews"}) == {"reviews_v2": 20})


def test_a_missing_file_is_refused_at_start_with_a_clear_error(wasm, tmp_path):
    """Envoy 1.40 insists on an existing file for path_config_source: make live creates an empty
    one, and docs/operating.md says so."""
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    with harness.upstreams(*CLUSTERS) as ports:
        envoy = start(ecds / "meshsplit.json", ports, tmp_path)
        with pytest.raises(RuntimeError):
            envoy.start()
        assert envoy.wait_exit() != 0
        assert "paths must refer to an existing path in the system" in envoy.log()


def test_envoy_live_yaml_validates_with_an_empty_file(wasm, tmp_path):
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    (ecds / "meshsplit.json").write_text("")
    config = live.live_bootstrap({c: 1 for c in CLUSTERS}, 10000, 9901, ecds / "meshsplit.json")
    proc = harness.validate(harness.write_yaml(config, tmp_path))
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_default_config_is_the_sample_config():
    config = harness.load_yaml(harness.ENVOY_DIR / "envoy-live.yaml")
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    default = hcm["http_filters"][0]["config_discovery"]["default_config"]["config"]
    assert json.loads(default["configuration"]["value"]) == PLUGIN


def test_make_live_shows_the_split_move_after_an_edit(wasm, tmp_path):
    """envoy/live.py (what `make live` runs) on a copy of the sample config: saving new weights
    moves the shares in its table."""
    import subprocess
    import time
    subprocess.run(["make", "--no-print-directory", "-s", "cli"], cwd=harness.ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    config = tmp_path / "meshsplit.json"
    config.write_text(json.dumps(PLUGIN))
    proc = subprocess.Popen([sys.executable, str(harness.ENVOY_DIR / "live.py"), "--config", str(config),
                             "--seconds", "12", "--rate", "150", "--window", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Saved 4 s in; the last table (2 s) starts 10 s in or later: 6 s for the save to be
        # applied, and 12 s for Envoy to be ready at all, on a busy machine.
        time.sleep(4)
        moved = json.loads(json.dumps(PLUGIN))
        for u in moved["services"][0]["upstreams"]:
            u["weight"] = 1 if u["name"] == "v2" else 0
        config.write_text(json.dumps(moved))
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert "applied" in out, out[-3000:]
    last = out[out.rindex("meshsplit status of"):]
    assert re_share(last, "v2") == ("1", "100.0%"), last
    assert re_share(last, "v1") == ("0", "0.0%"), last


def re_share(table, upstream):
    """The weight in force and the observed share of `upstream` in the `meshsplit status` table
    live.py prints."""
    for line in table.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[0] == upstream:
            return fields[1], fields[3]
    return None
