"""The JSON Schema of the plugin configuration (docs/meshsplit.schema.json, printed by
`meshsplit schema` from the config types): committed as generated, with the field reference of
docs/configuration.md generated from it; a valid draft 2020-12 schema every shipped configuration
satisfies; and in agreement with the plan on the table of malformed configurations
(src/config_error_cases.json): the schema refuses each case it can express and accepts the rest,
whose rule only the plan checks."""
import json
import pathlib
import subprocess
import sys

import jsonschema
import pytest

import sync_configs  # envoy/sync_configs.py (harness puts envoy/ on the path)
import test_docs

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "docs" / "meshsplit.schema.json"
CASES = ROOT / "src" / "config_error_cases.json"
REFERENCE = ROOT / "tools" / "config_reference.py"
CLI = ROOT / "target" / "release" / "meshsplit"


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_what_meshsplit_schema_prints():
    assert CLI.exists(), "build the CLI first (make cli)"
    printed = subprocess.run([str(CLI), "schema"], check=True, capture_output=True, text=True).stdout
    assert SCHEMA.read_text() == printed, \
        "docs/meshsplit.schema.json is stale: run `make schema` and commit it"
    assert json.loads(printed)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_field_reference_is_generated_from_the_schema():
    sys.path.insert(0, str(REFERENCE.parent))
    try:
        import config_reference
    finally:
        sys.path.pop(0)
    page = config_reference.PAGE.read_text()
    assert page == config_reference.page(json.loads(SCHEMA.read_text()), page), \
        "the field table of docs/configuration.md is stale: run `make schema` and commit it"
    # Every field of the schema has a row and a description.
    table = config_reference.table(json.loads(SCHEMA.read_text()))
    for row in table.splitlines()[2:]:
        assert row.split(" | ")[3].strip(" |"), row
    for field in ("`services[].guard.latency.percentile`", "`services[].assign_cookie.same_site`",
                  "`services[].rules[].match.headers[].present`", "`services[].upstreams[].weight`"):
        assert field in table, field


def shipped_configurations():
    """(where, configuration) of every plugin configuration the project ships: the JSON files,
    the ones embedded in the Envoy configs and Istio manifests, and the whole ones in the docs."""
    for path in sorted((ROOT / "envoy").glob("*.json")):
        yield path.name, json.loads(path.read_text())
    for path in sorted([*(ROOT / "envoy").glob("*.yaml"), *(ROOT / "envoy" / "istio").glob("*.yaml")]):
        plugin = sync_configs.embedded_plugin(path.read_text())
        if plugin is not None:
            yield path.relative_to(ROOT).as_posix(), plugin
    for n, (page, block) in enumerate(test_docs.CONFIGURATIONS):
        yield f"{page}:{n}", json.loads(block)


SHIPPED = list(shipped_configurations())


@pytest.mark.parametrize("where,config", SHIPPED, ids=[w for w, _ in SHIPPED])
def test_every_shipped_configuration_satisfies_the_schema(validator, where, config):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
    assert not errors, errors


def test_shipped_configurations_include_the_envoy_and_istio_ones():
    names = {w for w, _ in SHIPPED}
    assert {"meshsplit.json", "envoy/envoy.yaml", "envoy/istio/wasmplugin.yaml",
            "envoy/istio/trafficextension.yaml"} <= names, names


def damaged(table, case):
    base = table["base"]
    if "document" in case:
        return case["document"]
    if "cut_before" in case:
        return base[:base.index(case["cut_before"])]
    if "append" in case:
        return base + case["append"]
    for find, replace in case["patches"]:
        assert base.count(find) == 1, (case["what"], find)
        base = base.replace(find, replace, 1)
    return base


TABLE = json.loads(CASES.read_text())


def test_the_schema_accepts_the_tables_base(validator):
    assert not list(validator.iter_errors(json.loads(TABLE["base"])))


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["what"] for c in TABLE["cases"]])
def test_the_schema_agrees_with_the_plan_on_each_malformed_configuration(validator, case):
    text = damaged(TABLE, case)
    if case["schema"] == "not JSON":
        with pytest.raises(ValueError):
            json.loads(text)
        return
    errors = list(validator.iter_errors(json.loads(text)))
    if case["schema"] == "refuses":
        assert errors, f"the plan refuses {case['what']!r} at {case['path']}; the schema accepts it"
    else:
        assert case["schema"].startswith("plan only: "), case["schema"]
        assert not errors, (f"{case['what']!r} is marked as checked by the plan only, but the "
                            f"schema refuses it: {[e.message for e in errors]}; mark it \"refuses\"")


def plan_path(error):
    """A schema error's place in the plan's words: `services[0].hash_on`."""
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path


# The strategy's requirements (src/plan.rs, compile_strategy): `hash_on` with "sticky" and only
# there, whether the strategy is missing, null or another one, and `hash_on` null counting as none.
STRATEGY_CASES = [c for c in TABLE["cases"]
                  if c["path"].endswith(".hash_on") and "with strategy" in c["message"]]


@pytest.mark.parametrize("case", STRATEGY_CASES, ids=[c["what"] for c in STRATEGY_CASES])
def test_the_schema_refuses_what_the_strategy_forbids_where_and_as_the_plan_does(validator, case):
    errors = list(validator.iter_errors(json.loads(damaged(TABLE, case))))
    assert errors, case["what"]
    placed = [e for e in errors if plan_path(e) == case["path"]]
    missing = [e for e in errors if e.validator == "required"
               and f"{plan_path(e)}.hash_on" == case["path"] and "'hash_on'" in e.message]
    assert placed or missing, [(plan_path(e), e.message) for e in errors]
    # Where the schema points at the field, editors show the plan's own words (`errorMessage`,
    # which the VS Code and YAML language servers show for a type mismatch).
    for error in placed:
        assert error.schema.get("errorMessage", "").startswith(case["message"]), error.schema


def test_the_table_covers_every_strategy_requirement():
    assert {c["message"] for c in STRATEGY_CASES} == {
        'only allowed with strategy "sticky"',
        'required with strategy "sticky": {"header": NAME}, {"cookie": NAME} or {"query": NAME}'}
    assert len(STRATEGY_CASES) >= 6, [c["what"] for c in STRATEGY_CASES]


def test_most_of_the_table_is_expressed_in_the_schema():
    verdicts = [c["schema"] for c in TABLE["cases"]]
    refused = sum(v == "refuses" for v in verdicts)
    plan_only = sum(v.startswith("plan only") for v in verdicts)
    print(f"{refused} cases refused by the schema, {plan_only} checked by the plan only, "
          f"{len(verdicts) - refused - plan_only} not JSON")
    assert refused > 2 * plan_only, (refused, plan_only)


# Valid configurations with `null` where a field is optional (YAML's `key:` with no value gives
# them): the plan accepts each, so the schema must too, or editors would flag valid files.
NULLS = [
    {"cluster_header": None},
    {"service_from": None, "on_unknown_service": None},
    {"services[0]": {"strategy": None, "hash_on": None, "hosts": None, "guard": None,
                     "rollout": None, "assign_cookie": None}},
    {"rule": {"name": "x-user", "exact": "a", "prefix": None, "present": None}},
    {"rule": {"name": "x-user", "exact": None, "prefix": "a"}},
    {"guard": {"error_rate": None, "failure_codes": None, "relative_margin": None,
               "latency": {"percentile": 95, "threshold_ms": 250}}},
    {"cookie": {"max_age_s": None, "path": None, "secure": None, "http_only": None,
                "same_site": None}},
]


def with_nulls(change):
    config = {"services": [{"name": "web", "upstreams": [
        {"name": "v1", "cluster": "web_v1", "weight": 90, "authority": None},
        {"name": "v2", "cluster": "web_v2", "weight": 10}]}]}
    service = config["services"][0]
    for key, value in change.items():
        if key == "services[0]":
            service.update(value)
        elif key == "rule":
            service["rules"] = [{"match": {"headers": [value]}, "upstream": "v2"}]
        elif key == "guard":
            service["guard"] = value
        elif key == "cookie":
            service.update(strategy="sticky", hash_on={"cookie": "mesh"}, assign_cookie=value)
        else:
            config[key] = value
    return config


@pytest.mark.parametrize("change", NULLS, ids=[",".join(c) for c in NULLS])
def test_nulls_the_plan_accepts_the_schema_accepts(validator, change, tmp_path):
    config = with_nulls(change)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    out = subprocess.run([str(CLI), "check", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, (config, out.stdout, out.stderr)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]
    assert not errors, (config, errors)
