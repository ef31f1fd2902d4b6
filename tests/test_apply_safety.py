"""`meshsplit apply` and `check` where operators get hurt: saves written line by line under
`--watch`, ECDS files Envoy rejects, two applies at once, broken manifests, owners, modes and
symlinks, a closed standard output, a byte order mark. Through real Envoy where Envoy decides."""
import json
import os
import random
import re
import signal
import subprocess
import time

import yaml

import harness
import test_reload
from test_apply import TIMESTAMP, Load, Watch, ecds_config, ecds_envoy, fresh_ecds, meshsplit
from test_cli import check, cli  # noqa: F401  (cli: the session fixture that builds the command)

ECDS_STATS = "extension_config_discovery.http_filter.meshsplit."
EXTENSION_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
LUA_TYPE = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"

# The line-by-line writer: saves, the pause after each line, and one longer pause mid-file
# (over the 100 ms poll, under the 300 ms settle time).
SAVES = 40
LINE_PAUSE_S = 0.02
LONG_PAUSE_S = 0.15
LOAD_LIMIT_S = 120
LOAD_LIMIT_REQUESTS = 200_000


def ecds_stat(envoy, name):
    return envoy.stats(ECDS_STATS + name).get(ECDS_STATS + name, 0)


def canary_yaml(target):
    """A plugin config as an operator writes it in YAML: everything to `target` (a or b), and
    requests with x-canary to c. Cut off after any line it is still a valid config or nearly
    (an upstream or the canary rule missing): what a half-written save looks like."""
    weights = {"a": 100 if target == "a" else 0, "b": 100 if target == "b" else 0, "c": 0}
    lines = ["services:", "- name: svc", "  upstreams:"]
    for name, weight in weights.items():
        lines += [f"  - name: {name}", f"    cluster: {name}", f"    weight: {weight}"]
    lines += ["  rules:", "  - match:", "      headers:", "      - name: x-canary",
              "        present: true", "    upstream: c"]
    return "\n".join(lines) + "\n"


def write_line_by_line(path, text, long_pause_at):
    """Truncates `path` and writes `text` one line at a time, flushed, pausing after each line
    (longer after line `long_pause_at`), as `envsubst > file` or a slow paste does."""
    with open(path, "w") as f:
        for i, line in enumerate(text.splitlines(keepends=True)):
            f.write(line)
            f.flush()
            time.sleep(LONG_PAUSE_S if i == long_pause_at else LINE_PAUSE_S)


class CanaryLoad(Load):
    """Two keep-alive connections, the second with x-canary, each recording (monotonic time,
    answer) until stopped (or the time or request limit)."""

    def __init__(self, port):
        super().__init__(port, threads=2)

    def run(self, records):
        canary = records is self.records[1]
        client = harness.Client(self.port)
        headers = {"Host": "svc", **({"x-canary": "1"} if canary else {})}
        deadline = time.monotonic() + LOAD_LIMIT_S
        try:
            for _ in range(LOAD_LIMIT_REQUESTS):
                if self.stopping.is_set() or time.monotonic() > deadline:
                    break
                status, _, body = client.get("/", headers)
                records.append((time.monotonic(), harness.answer_key(status, body)))
        finally:
            client.close()


def test_watch_applies_each_line_by_line_yaml_save_once_with_its_final_content(cli, wasm, tmp_path, capsys):  # noqa: F811
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    split = tmp_path / "split.yaml"
    split.write_text(canary_yaml("a"))
    created = meshsplit(cli, "apply", split, "--to", ecds / "meshsplit.json", "--module", wasm)
    assert created.returncode == 0, created.stderr
    rng = random.Random(7)
    with ecds_envoy(ecds, ["a", "b", "c"], yaml.safe_load(canary_yaml("a")), tmp_path) as envoy:
        assert harness.wait_for(lambda: ecds_stat(envoy, "config_reload") == 1)
        watch = Watch(cli, split, ecds / "meshsplit.json")
        try:
            watch.wait_for_line(rf"^{TIMESTAMP} unchanged: .* \(version 1\)$")
            reloads = ecds_stat(envoy, "config_reload")
            with CanaryLoad(envoy.port) as load:
                for i in range(SAVES):
                    target = "b" if i % 2 == 0 else "a"
                    text = canary_yaml(target)
                    mark = len(watch.lines)
                    write_line_by_line(split, text, rng.randrange(3, 15))
                    watch.wait_for_line(rf"^{TIMESTAMP} applied .* \(version {i + 1} → {i + 2}\)",
                                        after=mark, timeout=15)
                    # The ECDS file holds the whole save, and Envoy serves it.
                    config, version = ecds_config(ecds / "meshsplit.json")
                    assert (config, version) == (yaml.safe_load(text), str(i + 2))
                    assert harness.wait_for(
                        lambda: harness.send(envoy.port, 8, {"Host": "svc"}) == {target: 8}, 15)
            applied = [line for line in watch.lines if " applied " in line]
            others = [line for line in watch.lines if " refused: " in line or " error: " in line]
            assert (len(applied), others) == (SAVES, []), watch.lines
            # Exactly one update per save reached Envoy, and none was rejected.
            assert harness.wait_for(lambda: ecds_stat(envoy, "config_reload") == reloads + SAVES)
            time.sleep(0.3)
            assert ecds_stat(envoy, "config_reload") == reloads + SAVES
            assert (ecds_stat(envoy, "update_rejected"), ecds_stat(envoy, "config_fail")) == (0, 0)
        finally:
            status = watch.stop()
        assert status == 0, watch.lines
    # No truncated config was ever served: every canary request went to c (a cut before the
    # rule would have sent some elsewhere), and every other one to a or b.
    plain, canary = ([answer for _, answer in records] for records in load.records)
    assert len(canary) > 200 and len(plain) > 200, (len(canary), len(plain))
    assert set(canary) == {"c"}, [a for a in canary if a != "c"][:10]
    assert set(plain) <= {"a", "b"}, [a for a in plain if a not in ("a", "b")][:10]
    with capsys.disabled():
        print(f"\napply --watch, line by line: {SAVES} saves, {len(applied)} applies, "
              f"{len(plain) + len(canary)} requests (0 misrouted), update_rejected 0")


def two_resources(wasm):
    """An ECDS file with a Lua filter's resource before meshsplit's."""
    return {"version_info": "7", "resources": [
        {"@type": EXTENSION_TYPE, "name": "lua",
         "typed_config": {"@type": LUA_TYPE, "default_source_code": {"inline_string": ""}}},
        {"@type": EXTENSION_TYPE, "name": "meshsplit",
         "typed_config": test_reload.wasm_config(test_reload.plugin({"a": 1, "b": 0}))}]}


def one_resource(name, typed_config):
    return {"version_info": "7", "resources": [
        {"@type": EXTENSION_TYPE, "name": name, "typed_config": typed_config}]}


def test_apply_and_check_refuse_every_ecds_file_envoy_rejects(cli, wasm, tmp_path):  # noqa: F811
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    first = test_reload.plugin({"a": 1, "b": 0})
    test_reload.publish(ecds, 1, first)
    split = tmp_path / "split.json"
    split.write_text(json.dumps(test_reload.plugin({"a": 0, "b": 1})))
    lua = {"@type": LUA_TYPE, "default_source_code": {"inline_string": ""}}
    # What Envoy gets, the flags apply gets with the same file, and why apply refuses it.
    rejected = {
        "two resources": (two_resources(wasm), [], "Unexpected number of resources in "
                                                   "ExtensionConfigDS response: 2"),
        # The listener's filter is named meshsplit.
        "another name": (one_resource("split", test_reload.wasm_config(first)),
                         ["--name", "meshsplit"], 'resources[0].name: "split", not "meshsplit"'),
        "another filter": (one_resource("meshsplit", lua), [],
                           f'resources[0].typed_config.@type: "{LUA_TYPE}"'),
    }
    with harness.upstreams("a", "b") as ports, \
            harness.Envoy(test_reload.ecds_bootstrap(ecds, ports, first), tmp_path) as envoy:
        assert harness.wait_for(lambda: ecds_stat(envoy, "config_reload") == 1)
        for what, (response, args, reason) in rejected.items():
            # Envoy rejects the file ...
            before = ecds_stat(envoy, "update_rejected")
            tmp = ecds / ".next.json"
            tmp.write_text(json.dumps(response))
            os.rename(tmp, ecds / "meshsplit.json")
            assert harness.wait_for(lambda: ecds_stat(envoy, "update_rejected") == before + 1), what
            assert harness.send(envoy.port, 10, {"Host": "svc"}) == {"a": 10}, what
            # ... and so does apply.
            path = tmp_path / f"{what.replace(' ', '-')}.json"
            path.write_text(json.dumps(response))
            written = path.read_bytes()
            result = meshsplit(cli, "apply", split, "--to", path, "--module", wasm, *args)
            assert result.returncode == 1, (what, result.stdout, result.stderr)
            assert result.stdout.startswith(
                f"{path}: Envoy would reject this ECDS file, nothing written: "), result.stdout
            assert reason in result.stdout, result.stdout
            assert path.read_bytes() == written
        # check: the file with two resources is invalid, whatever its configs say.
        path = tmp_path / "two.json"
        path.write_text(json.dumps(two_resources(wasm)))
        result = check(cli, path)
        assert result.returncode == 1, result.stdout
        assert result.stdout.splitlines()[0] == (
            f"{path}: ECDS file Envoy would reject: resources: 2 resources; Envoy takes exactly "
            "one per ECDS file and rejects this one (\"Unexpected number of resources in "
            "ExtensionConfigDS response: 2\"): give each filter a file of its own")
        # A file apply writes is one Envoy takes.
        test_reload.publish(ecds, 20, first)
        result = meshsplit(cli, "apply", split, "--to", ecds / "meshsplit.json", "--name", "meshsplit")
        assert result.returncode == 0, result.stderr
        rejected_before = ecds_stat(envoy, "update_rejected")
        assert harness.wait_for(lambda: harness.send(envoy.port, 10, {"Host": "svc"}) == {"b": 10})
        assert ecds_stat(envoy, "update_rejected") == rejected_before
        assert check(cli, ecds / "meshsplit.json").returncode == 0


PAIRS = 30


def test_two_applies_at_once_never_lose_an_update(cli, tmp_path):  # noqa: F811
    _, ecds_file = fresh_ecds(cli, tmp_path, test_reload.plugin({"a": 1, "b": 1}))
    ecds = ecds_file.parent
    version = 1
    for i in range(PAIRS):
        configs = [test_reload.plugin({"a": 2 * i + 2 + k, "b": 1}) for k in (0, 1)]
        paths = [tmp_path / f"pair-{k}.json" for k in (0, 1)]
        for path, config in zip(paths, configs):
            path.write_text(json.dumps(config))
        procs = [subprocess.Popen([str(cli), "apply", str(p), "--to", str(ecds_file)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for p in paths]
        outputs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        steps = []
        for k, (out, _) in enumerate(outputs):
            match = re.match(r"applied .* version (\d+) → (\d+)\n", out)
            assert match, out
            steps.append((int(match.group(1)), int(match.group(2)), k))
        steps.sort()
        # One after the other: each read the version the other wrote, none was lost.
        assert [(a, b) for a, b, _ in steps] == [(version, version + 1), (version + 1, version + 2)]
        version += 2
        config, held = ecds_config(ecds_file)
        assert (config, held) == (configs[steps[-1][2]], str(version))
    assert sorted(os.listdir(ecds)) == [".meshsplit.json.lock", "meshsplit.json"]


def broken_envoy_filter(configuration, name="meshsplit", filename="/etc/envoy/meshsplit.wasm"):
    return yaml.safe_dump({
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": "split", "namespace": "default"},
        "spec": {"configPatches": [{"applyTo": "HTTP_FILTER", "patch": {
            "operation": "INSERT_BEFORE", "value": {"name": name, "typed_config": {
                "@type": harness.WASM_TYPE, "config": {
                    "root_id": "split", "vm_config": {
                        "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": filename}}},
                    "configuration": configuration}}}}}]}})


def test_check_skip_unrelated_fails_broken_meshsplit_manifests(cli, tmp_path):  # noqa: F811
    config = test_reload.plugin({"a": 1})
    as_map = broken_envoy_filter({"@type": harness.STRING_VALUE, "value": config})
    misspelled = broken_envoy_filter(
        {"@type": "type.googleapis.com/google.protobuf.Stringvalue", "value": json.dumps(config)},
        name="split")
    unrelated = broken_envoy_filter({"@type": "type.googleapis.com/google.protobuf.Struct",
                                     "value": {"a": 1}}, name="other", filename="/other.wasm")
    expected = {
        "map.yaml": (as_map, "EnvoyFilter default/split configPatches[0]: broken meshsplit "
                             "config, cannot be read: configuration: value is a map, not a string"),
        "misspelled.yaml": (misspelled, "EnvoyFilter default/split configPatches[0]: broken "
                                        "meshsplit config, cannot be read: configuration: @type is "
                                        "\"type.googleapis.com/google.protobuf.Stringvalue\""),
    }
    good = tmp_path / "good.json"
    good.write_text(json.dumps(config))
    other = tmp_path / "other.yaml"
    other.write_text(unrelated)
    for name, (text, line) in expected.items():
        path = tmp_path / name
        path.write_text(text)
        for flags in (["--skip-unrelated"], []):
            result = check(cli, *flags, good, path, other)
            assert result.returncode == (1 if flags else 2), (flags, result.stdout, result.stderr)
            lines = result.stdout.splitlines()
            assert lines[1].startswith(f"{path}: {line}"), lines
            assert "skipped" not in lines[1] and str(path) not in result.stderr
        # Neither does apply take it.
        result = meshsplit(cli, "apply", path, "--to", tmp_path / "ecds.json", "--module", "/m")
        assert result.returncode == 1 and result.stdout.startswith(f"{path}: {line}"), result
    # A wasm filter that is not meshsplit's, with a config of its own, is still unrelated.
    result = check(cli, "--skip-unrelated", good, other)
    assert (result.returncode, result.stdout.splitlines()[1]) == (
        0, f"{other}: skipped: no meshsplit config found")


def test_apply_keeps_owner_group_and_mode_and_writes_through_symlinks(cli, tmp_path):  # noqa: F811
    split = tmp_path / "split.json"
    split.write_text(json.dumps(test_reload.plugin({"a": 1, "b": 0})))
    # A ConfigMap volume: FILE -> ..data/FILE, ..data -> ..2026_12_01.
    volume = tmp_path / "volume"
    (volume / "..2026_12_01").mkdir(parents=True)
    real = volume / "..2026_12_01" / "meshsplit.json"
    test_reload.publish(volume / "..2026_12_01", 1, test_reload.plugin({"a": 0, "b": 1}))
    os.symlink("..2026_12_01", volume / "..data")
    os.symlink("..data/meshsplit.json", volume / "meshsplit.json")
    os.chmod(real, 0o600)
    owner = (os.getuid(), os.getgid())
    if os.getuid() == 0:
        owner = (65534, 65534)
        os.chown(real, *owner)
    result = meshsplit(cli, "apply", split, "--to", volume / "meshsplit.json")
    assert result.returncode == 0, result.stderr
    assert os.path.islink(volume / "meshsplit.json") and os.path.islink(volume / "..data")
    assert ecds_config(real) == (test_reload.plugin({"a": 1, "b": 0}), "2")
    st = os.stat(real)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (*owner, 0o600)
    assert sorted(os.listdir(volume / "..2026_12_01")) == [".meshsplit.json.lock", "meshsplit.json"]


def test_a_closed_stdout_neither_panics_nor_stops_a_watch(cli, tmp_path):  # noqa: F811
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    ecds_file = ecds / "meshsplit.json"
    split = tmp_path / "split.json"
    split.write_text(json.dumps(test_reload.plugin({"a": 1, "b": 0})))

    def closed_pipe():
        read, write = os.pipe()
        os.close(read)
        return write

    write = closed_pipe()
    try:
        result = subprocess.run([str(cli), "apply", str(split), "--to", str(ecds_file), "--module",
                                 "/m.wasm"], stdout=write, stderr=subprocess.PIPE, text=True,
                                timeout=60)
    finally:
        os.close(write)
    assert (result.returncode, result.stderr) == (0, "")
    assert ecds_config(ecds_file) == (test_reload.plugin({"a": 1, "b": 0}), "1")
    # In a shell pipeline too.
    split.write_text(json.dumps(test_reload.plugin({"a": 0, "b": 1})))
    shell = subprocess.run(f"'{cli}' apply '{split}' --to '{ecds_file}' | true; "
                           "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                           capture_output=True, text=True, timeout=60)
    assert (shell.stdout, shell.stderr) == ("0\n", "")
    assert ecds_config(ecds_file)[1] == "2"

    write = closed_pipe()
    try:
        proc = subprocess.Popen([str(cli), "apply", str(split), "--to", str(ecds_file), "--watch"],
                                stdout=write, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write)
    try:
        for i in range(3):
            split.write_text(json.dumps(test_reload.plugin({"a": i + 1, "b": 1})))
            assert harness.wait_for(lambda: ecds_config(ecds_file)[1] == str(3 + i), 5.0), i
            assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
        assert (proc.returncode, stderr) == (0, "")
    finally:
        proc.kill()
        proc.wait()


BOM = "\ufeff"


def test_a_byte_order_mark_changes_no_verdict_and_no_output(cli, tmp_path):  # noqa: F811
    config = json.dumps(test_reload.plugin({"a": 1, "b": 0}), indent=2)
    trailing = config[:-1] + ",}"
    for text in (config, trailing):
        plain, marked = tmp_path / "plain.json", tmp_path / "marked.json"
        plain.write_text(text)
        marked.write_text(BOM + text)
        results = [check(cli, p) for p in (plain, marked)]
        # A trailing comma is a JSON syntax error: an input error, exit 2.
        assert results[0].returncode == results[1].returncode == (0 if text == config else 2)
        assert results[1].stderr == results[0].stderr.replace(str(plain), str(marked))
        assert results[1].stdout == results[0].stdout.replace(str(plain), str(marked))
        previews = [meshsplit(cli, "preview", p, "--requests", "100") for p in (plain, marked)]
        assert previews[1].returncode == previews[0].returncode
        assert previews[1].stdout == previews[0].stdout.replace(str(plain), str(marked))
        ecds = [tmp_path / f"ecds-{name}.json" for name in ("plain", "marked")]
        applies = [meshsplit(cli, "apply", p, "--to", e, "--module", "/m.wasm")
                   for p, e in zip((plain, marked), ecds)]
        assert applies[0].returncode == applies[1].returncode == (0 if text == config else 2)
        if text == config:
            # The file's text, as without the mark.
            assert ecds[0].read_bytes() == ecds[1].read_bytes()
            value = json.loads(ecds[1].read_text())["resources"][0]["typed_config"]["config"][
                "configuration"]["value"]
            assert value == config
    # An ECDS file with a mark is read as one without.
    marked_ecds = tmp_path / "ecds-marked.json"
    marked_ecds.write_text(BOM + marked_ecds.read_text())
    (tmp_path / "plain.json").write_text(json.dumps(test_reload.plugin({"a": 0, "b": 1})))
    result = meshsplit(cli, "apply", tmp_path / "plain.json", "--to", marked_ecds)
    assert result.returncode == 0, result.stderr
    assert ecds_config(marked_ecds)[1] == "2"


def test_watch_names_a_read_error_and_waits_out_a_pausing_writer(cli, tmp_path):  # noqa: F811
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    split = tmp_path / "split.json"
    split.write_text(json.dumps(test_reload.plugin({"a": 1, "b": 0})))
    assert meshsplit(cli, "apply", split, "--to", ecds / "meshsplit.json", "--module",
                     "/m.wasm").returncode == 0
    split.unlink()
    split.mkdir()
    watch = Watch(cli, split, ecds / "meshsplit.json")
    try:
        watch.wait_for_line(rf"^{TIMESTAMP} refused: {re.escape(str(split))}: cannot read: .*"
                            r"[Ii]s a directory")
        assert not [line for line in watch.lines if "missing" in line], watch.lines
        split.rmdir()
        mark = len(watch.lines)
        watch.wait_for_line(r"no such file \(missing\?\)", after=mark)
        # A JSON save with a 150 ms pause in the middle: no refusal of the first half.
        text = json.dumps(test_reload.plugin({"a": 0, "b": 1}), indent=1)
        mark = len(watch.lines)
        with open(split, "w") as f:
            f.write(text[:len(text) // 2])
            f.flush()
            time.sleep(LONG_PAUSE_S)
            f.write(text[len(text) // 2:])
        watch.wait_for_line(r" applied .* \(version 1 → 2\)", after=mark)
        assert not [line for line in watch.lines[mark:] if "refused" in line], watch.lines
    finally:
        status = watch.stop()
    assert status == 0, watch.lines


def test_preview_shows_every_filter_of_a_bootstrap_and_follows_a_renamed_service(cli, tmp_path):  # noqa: F811
    good = test_reload.plugin({"a": 3, "b": 1})
    bad = test_reload.plugin({"a": 5000000, "b": 0})
    config = harness.bootstrap(bad, {"a": harness.free_port(), "b": harness.free_port()},
                               harness.free_port(), harness.free_port(), build="wasm")
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    second = json.loads(json.dumps(hcm["http_filters"][0]))
    second["typed_config"]["config"]["name"] = "second"
    second["typed_config"]["config"]["configuration"]["value"] = json.dumps(good)
    hcm["http_filters"].insert(1, second)
    path = harness.write_yaml(config, tmp_path)
    result = meshsplit(cli, "preview", path, "--requests", "400")
    assert result.returncode == 1, result.stderr
    assert f"{path}: listeners[0] " in result.stdout
    assert "invalid configuration: services[0].upstreams[0].weight: must be at most 1000000" \
        in result.stdout
    assert re.search(r"second: 400 simulated requests per service", result.stdout), result.stdout
    assert re.search(r"^  a +a +3 +75\.0 %", result.stdout, re.M), result.stdout

    old = {"services": [{"name": "reviews", "hosts": ["reviews"], "strategy": "sticky",
                         "hash_on": {"header": "x-user"}, "upstreams": [
                             {"name": "v1", "cluster": "a", "weight": 80},
                             {"name": "v2", "cluster": "b", "weight": 20}]}]}
    new = json.loads(json.dumps(old))
    new["services"][0]["name"] = "reviews-v2"
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    result = meshsplit(cli, "preview", tmp_path / "new.json", "--against", tmp_path / "old.json")
    assert (result.returncode, result.stdout.splitlines()) == (0, [
        "reviews-v2 (renamed from reviews, same hosts; sticky on header x-user): unchanged: "
        "v1 80.0 %, v2 20.0 %",
        "reviews-v2: no key moves (10000 sample keys)"]), result.stdout
