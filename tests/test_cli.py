"""`meshsplit check`, the operator's command: it finds plugin configs in the files operators edit
and reports exactly what the filter in Envoy would."""
import json
import pathlib
import re
import subprocess

import pytest

import harness
import test_reload
from test_split import service

CLI = harness.ROOT / "target" / "release" / "meshsplit"
INVALID = "invalid configuration: "

# The invalid configs the rest of the suite feeds to Envoy.
BAD_CONFIGS = {
    # test_split.test_envoy_refuses_to_start_with_invalid_config
    "weight_too_high": {"services": [service("split", [("v1", 1, {}), ("v2", 5000000, {})])]},
    # test_split.test_envoy_refuses_to_start_with_unknown_field
    "unknown_field": {"services": [service("split", [("v1", 1, {"wieght": 3})])]},
    # the rejected live update of test_reload
    "ecds_update": test_reload.plugin({"a": 5000000, "b": 0}),
}

MISSPELT = {"services": [{"name": "reviews", "upstreams": [
    {"name": "v1", "cluster": "reviews_v1", "weight": 90},
    {"name": "v2", "cluster": "reviews_v9", "weight": 10}]}]}


@pytest.fixture(scope="session")
def cli():
    """The release build of the command, built (or found up to date) once per session."""
    subprocess.run(["make", "--no-print-directory", "-s", "cli"], cwd=harness.ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return CLI


def check(cli, *args):
    return subprocess.run([str(cli), "check", *map(str, args)], capture_output=True, text=True,
                          timeout=60)


def envoy_error(plugin, tmp_path):
    """What Envoy logs after "invalid configuration: " when it starts with `plugin`."""
    config = harness.bootstrap(plugin, {"split_v1": harness.free_port()}, harness.free_port(),
                               harness.free_port())
    output = harness.validate(harness.write_yaml(config, tmp_path)).stdout
    errors = [line.split(INVALID, 1)[1] for line in output.splitlines() if INVALID in line]
    assert errors, output[-5000:]
    return errors[0]


def bootstrap_file(plugin, clusters, tmp_path, **extra):
    config = harness.bootstrap(plugin, {name: harness.free_port() for name in clusters},
                               harness.free_port(), harness.free_port())
    config.update(extra)
    return harness.write_yaml(config, tmp_path)


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_check_prints_the_error_envoy_logs_for_every_bad_config_of_the_suite(cli, wasm, tmp_path, name):
    plugin = BAD_CONFIGS[name]
    expected = envoy_error(plugin, tmp_path)
    plain = write(tmp_path / "plugin.json", json.dumps(plugin))
    bootstrap = bootstrap_file(plugin, ["split_v1"], tmp_path)
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    test_reload.publish(ecds, 3, plugin)
    for path, where in ((plain, ""), (bootstrap, ": listeners[0] meshsplit"),
                        (ecds / "meshsplit.json", ": resources[0] meshsplit")):
        result = check(cli, path)
        assert result.returncode == 1, result.stderr
        line = f"{path}{where}: {INVALID}{expected}"
        assert result.stdout.startswith(line), (result.stdout, line)
        # A position in a config embedded as a string is said to be inside it, with the file's line.
        rest = result.stdout[len(line):]
        if path == plain or " at line " not in expected:
            assert rest == "\n"
        else:
            assert re.fullmatch(r" inside the embedded JSON string \((line \d+ of the file|the string "
                                r"starts at line \d+ of the file)\)\n", rest), rest


def test_misspelt_cluster_in_a_bootstrap_is_a_warning_envoy_does_not_give(cli, wasm, tmp_path):
    path = bootstrap_file(MISSPELT, ["reviews_v1", "reviews_v2"], tmp_path)
    assert harness.validate(path).returncode == 0
    result = check(cli, path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        f"{path}: listeners[0] meshsplit: ok: 1 service (reviews: weighted, 2 upstreams)",
        f"warning: {path}: listeners[0] meshsplit: services[0].upstreams[1].cluster: cluster "
        "\"reviews_v9\" is not defined in this bootstrap's static_resources.clusters "
        "(requests routed there get 503 NC)",
    ]


def test_strict_makes_a_warning_fail_the_check(cli, tmp_path):
    path = bootstrap_file(MISSPELT, ["reviews_v1", "reviews_v2"], tmp_path)
    result = check(cli, "--strict", path)
    assert result.returncode == 1
    assert "warning: " in result.stdout and "reviews_v9" in result.stdout


def test_with_cds_a_cluster_missing_from_the_file_is_only_noted(cli, tmp_path):
    path = bootstrap_file(MISSPELT, ["reviews_v1"], tmp_path,
                          dynamic_resources={"cds_config": {"ads": {}}})
    result = check(cli, "--strict", path)
    assert result.returncode == 0
    assert "warning" not in result.stdout
    assert re.search(r"^note: .*cluster \"reviews_v9\".*CDS.*cannot see", result.stdout, re.M), \
        result.stdout


def test_ecds_resource_file_and_ecds_bootstrap_are_found(cli, tmp_path):
    good = test_reload.plugin({"a": 1, "b": 0})
    test_reload.publish(tmp_path, 2, good)
    bootstrap = harness.write_yaml(test_reload.ecds_bootstrap(tmp_path, {"a": 1, "b": 2}, good),
                                   tmp_path)
    result = check(cli, tmp_path / "meshsplit.json", bootstrap)
    summary = "ok: 1 service (svc: weighted, 2 upstreams, 1 drained)"
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'meshsplit.json'}: resources[0] meshsplit: {summary}",
        f"{bootstrap}: listeners[0] default_config meshsplit: {summary}",
    ]
    assert result.returncode == 0


def test_shipped_envoy_filter_is_found(cli):
    path = harness.ENVOY_DIR / "istio" / "meshsplit-filter.yaml"
    result = check(cli, path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: EnvoyFilter default/meshsplit configPatches[0] meshsplit: ok: ")


WASM_PLUGIN = """\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: meshsplit, namespace: shop}
spec:
  url: oci://registry.example/meshsplit:1
  pluginConfig:
    services:
    - name: cart
      strategy: sticky
      hash_on: {cookie: session}
      upstreams:
      - {name: v1, cluster: 'outbound|8080|v1|cart.shop.svc.cluster.local', weight: 90}
      - {name: v2, cluster: 'outbound|8080|v2|cart.shop.svc.cluster.local', weight: 10}
"""

TRAFFIC_EXTENSION = """\
apiVersion: extensions.istio.io/v1alpha1
kind: TrafficExtension
metadata: {name: meshsplit-canary, namespace: shop}
spec:
  wasm:
    url: oci://registry.example/meshsplit:1
    pluginConfig:
      services:
      - name: cart
        upstreams:
        - {name: v1, cluster: 'outbound|8080|v1|cart.shop.svc.cluster.local', weight: 2000000}
"""


def test_wasm_plugin_config_is_checked(cli, tmp_path):
    path = write(tmp_path / "wasmplugin.yaml", WASM_PLUGIN)
    result = check(cli, path)
    assert (result.returncode, result.stdout) == (
        0, f"{path}: WasmPlugin shop/meshsplit: ok: 1 service (cart: sticky on cookie session, 2 upstreams)\n")


def test_every_document_of_a_multi_document_file_is_reported(cli, tmp_path):
    shipped = (harness.ENVOY_DIR / "istio" / "meshsplit-filter.yaml").read_text()
    rule = (harness.ENVOY_DIR / "istio" / "reviews-destinationrule.yaml").read_text()
    plain = json.dumps(test_reload.plugin({"a": 1}))
    path = write(tmp_path / "all.yaml", "\n---\n".join([WASM_PLUGIN, rule, shipped, TRAFFIC_EXTENSION, plain]))
    result = check(cli, path)
    assert result.returncode == 1
    assert [line.split(": ok: ")[0] for line in result.stdout.splitlines()] == [
        f"{path}: WasmPlugin shop/meshsplit",
        f"{path}: EnvoyFilter default/meshsplit configPatches[0] meshsplit",
        f"{path}: TrafficExtension shop/meshsplit-canary: {INVALID}"
        "services[0].upstreams[0].weight: must be at most 1000000, got 2000000",
        f"{path}: document 5",
    ]


def test_missing_file_is_exit_2(cli, tmp_path):
    result = check(cli, tmp_path / "absent.json")
    assert result.returncode == 2
    assert "cannot read" in result.stderr


def test_file_without_a_meshsplit_config_is_exit_2(cli):
    result = check(cli, harness.ENVOY_DIR / "istio" / "reviews-destinationrule.yaml")
    assert result.returncode == 2
    assert "no meshsplit config found" in result.stderr


def test_file_that_is_neither_json_nor_yaml_is_exit_2(cli, tmp_path):
    result = check(cli, write(tmp_path / "x.yaml", "a: [1\nb: {\n"))
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr


def test_skip_unrelated_passes_over_files_without_configs(cli):
    istio = harness.ENVOY_DIR / "istio"
    result = check(cli, "--skip-unrelated", istio / "meshsplit-filter.yaml", istio / "reviews-destinationrule.yaml")
    assert result.returncode == 0, result.stderr
    assert f"{istio / 'reviews-destinationrule.yaml'}: skipped: no meshsplit config found" in result.stdout
    # With nothing at all to check it is still an error.
    assert check(cli, "--skip-unrelated", istio / "reviews-destinationrule.yaml").returncode == 2


def test_usage_errors_are_exit_2_and_every_command_has_help(cli):
    assert check(cli).returncode == 2
    assert subprocess.run([str(cli), "frobnicate"], capture_output=True).returncode == 2
    for args in ([], ["check"]):
        result = subprocess.run([str(cli), *args, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "Usage: meshsplit" in result.stdout


def line_of(path, number):
    return pathlib.Path(path).read_text().splitlines()[number - 1]


def test_an_error_in_a_yaml_config_is_placed_at_the_files_line(cli, tmp_path):
    config = write(tmp_path / "meshsplit.yaml", """\
# The reviews split: 90 % to v1.
services:
- name: reviews
  upstreams:
  - name: v1
    cluster: reviews_v1
    weight: 90
  - name: v2
    cluster: reviews_v2
    wieght: 10
""")
    result = check(cli, config)
    assert result.returncode == 1, result.stderr
    assert result.stdout.endswith(" at line 10 column 5\n"), result.stdout
    assert "services[0].upstreams[1].wieght: unknown field" in result.stdout
    # The shipped WasmPlugin, with a typo on its line 70.
    shipped = (harness.ENVOY_DIR / "istio" / "wasmplugin.yaml").read_text().splitlines(keepends=True)
    assert '"weight": 15' in shipped[69]
    shipped[69] = shipped[69].replace('"weight"', '"wieght"')
    manifest = write(tmp_path / "wasmplugin.yaml", "".join(shipped))
    result = check(cli, manifest)
    assert result.returncode == 1, result.stderr
    found = re.search(r" at line (\d+) column (\d+)$", result.stdout.rstrip("\n"))
    assert found and found.group(1) == "70", result.stdout
    assert line_of(manifest, 70)[int(found.group(2)) - 1:].startswith('"wieght"'), result.stdout


def test_an_error_in_an_embedded_config_gives_the_strings_line_and_the_files(cli, tmp_path):
    shipped = (harness.ENVOY_DIR / "envoy.yaml").read_text().splitlines(keepends=True)
    number = next(i for i, line in enumerate(shipped, 1) if '"name": "v2"' in line)
    shipped[number - 1] = shipped[number - 1].replace('"weight"', '"wieght"')
    path = write(tmp_path / "envoy.yaml", "".join(shipped))
    result = check(cli, path)
    assert result.returncode == 1, result.stderr
    first = next(i for i, line in enumerate(shipped, 1) if line.rstrip().endswith("value: |"))
    assert result.stdout.endswith(
        f" at line {number - first} column 56 inside the embedded JSON string "
        f"(line {number} of the file)\n"), result.stdout


GOOD = '{"services": [{"name": "a", "upstreams": [{"name": "v1", "cluster": "c", "weight": 1}]}]}'

# JSON mistakes, each with the hint it gets: every one is a syntax error, exit 2.
MISTAKES = {
    "comment": (GOOD.replace('{"services"', '{\n  # the split\n  "services"'),
                "JSON has no comments: remove the # comment"),
    "slash comment": (GOOD.replace('"weight": 1', '"weight": 1 // v1 only'),
                      "JSON has no comments: remove the // or /* */ comment"),
    "single quotes": (GOOD.replace('"name": "a"', "'name': 'a'"), "not single quotes"),
    "unquoted key": (GOOD.replace('"services"', "services"), "JSON keys need double quotes"),
    "unquoted string": (GOOD.replace('"c"', "c"), "JSON strings need double quotes"),
    "trailing comma": (GOOD.replace('"weight": 1}', '"weight": 1,}'),
                       "JSON allows no comma after the last item"),
    "missing comma": (GOOD.replace('"cluster": "c",', '"cluster": "c"'),
                      "a comma is missing before this item"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_every_json_syntax_error_is_exit_2_with_a_hint(cli, tmp_path, mistake):
    text, hint = MISTAKES[mistake]
    path = write(tmp_path / "meshsplit.json", text)
    result = check(cli, path)
    assert (result.returncode, result.stdout) == (2, ""), result.stderr
    assert result.stderr.startswith(f"error: {path}: not valid JSON: "), result.stderr
    assert hint in result.stderr, result.stderr
    # The same mistake in the plugin config embedded in a bootstrap: the same status and hint.
    shipped = (harness.ENVOY_DIR / "envoy.yaml").read_text()
    plugin = json.loads(GOOD)
    block = "\n".join(" " * 20 + line for line in text.splitlines())
    embedded = re.sub(r"value: \|\n(?: {20}.*\n)+", lambda m: f"value: |\n{block}\n", shipped, count=1)
    assert embedded != shipped and plugin
    bootstrap = write(tmp_path / "envoy.yaml", embedded)
    result = check(cli, bootstrap)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{bootstrap}: listeners[0] meshsplit: not valid JSON: " in result.stdout, result.stdout
    assert "inside the embedded JSON string (line " in result.stdout
    assert hint in result.stdout, result.stdout


def test_a_yaml_file_in_flow_style_is_read_as_yaml(cli, tmp_path):
    text = "{services: [{name: a, upstreams: [{name: v1, cluster: c, weight: 1}]}]}  # flow style\n"
    result = check(cli, write(tmp_path / "meshsplit.yaml", text))
    assert (result.returncode, result.stdout) == (
        0, f"{tmp_path / 'meshsplit.yaml'}: ok: 1 service (a: weighted, 1 upstream)\n"), result.stderr
    result = check(cli, write(tmp_path / "meshsplit.json", text))
    assert result.returncode == 2
    assert "JSON keys need double quotes" in result.stderr
    assert "a file named .yaml or .yml is read as YAML" in result.stderr
