"""`meshsplit apply`: checks a plugin config and writes it into the ECDS file a running Envoy
watches; `--watch` does it on every save. Swaps under load, through real Envoy."""
import json
import os
import re
import signal
import subprocess
import threading
import time

import harness
import test_reload
from test_cli import check, cli  # noqa: F401  (cli: the session fixture that builds the command)

# Swaps per test; each new split must be the only one answering 1.5 s after it was applied
# (Envoy reads the ECDS file and every worker takes the new config in a few hundred ms on a
# quiet machine; the rest is for a loaded one).
SWAPS = 10
SETTLE_S = 1.5
# Time between swaps: the settle time plus a window in which every answer is checked.
SWAP_EVERY_S = 1.9
LOAD_THREADS = 8
LOAD_LIMIT_S = 40
LOAD_LIMIT_REQUESTS = 150_000
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def ecds_envoy(ecds, names, first, workdir):
    """An Envoy whose meshsplit filter comes from ECDS file ecds/meshsplit.json (default config
    `first`), with one answering upstream per name."""
    ports = {name: harness.free_port() for name in names}
    config = test_reload.ecds_bootstrap(ecds, ports, first)
    config["static_resources"]["listeners"] += [harness.answering_listener(n, p) for n, p in ports.items()]
    return harness.Envoy(config, workdir)


def meshsplit(cli, *args, timeout=60):  # noqa: F811
    return subprocess.run([str(cli), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def write_atomically(path, text):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.rename(tmp, path)


def ecds_config(path):
    """The plugin config and version in an ECDS file."""
    response = json.loads(path.read_text())
    value = response["resources"][0]["typed_config"]["config"]["configuration"]["value"]
    return json.loads(value), response["version_info"]


def all_to(name, names=("a", "b")):
    return test_reload.plugin({n: 100 if n == name else 0 for n in names})


class Load:
    """Steady load: `threads` keep-alive connections sending `GET /` with `Host: svc` until
    stopped (or the time or request limit). Each thread records (monotonic time the response
    was complete, upstream or (status, body))."""

    def __init__(self, port, threads=LOAD_THREADS):
        self.port = port
        self.stopping = threading.Event()
        self.records = [[] for _ in range(threads)]
        self.threads = [threading.Thread(target=self.run, args=(r,)) for r in self.records]
        self.started = self.stopped = None

    def run(self, records):
        client = harness.Client(self.port)
        deadline = time.monotonic() + LOAD_LIMIT_S
        limit = LOAD_LIMIT_REQUESTS // len(self.records)
        try:
            while not self.stopping.is_set() and time.monotonic() < deadline and len(records) < limit:
                status, _, body = client.get("/", {"Host": "svc"})
                records.append((time.monotonic(), harness.answer_key(status, body)))
        finally:
            client.close()

    def __enter__(self):
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for t in self.threads:
            t.join()
        self.stopped = time.monotonic()
        return False

    def responses(self):
        return sorted(r for records in self.records for r in records)

    def rate(self):
        return sum(map(len, self.records)) / (self.stopped - self.started)


def check_swaps(load, swaps, capsys, what):
    """Every answer came from an upstream; after each swap (time it was made, upstream it sends
    to, time of the next swap) every answer from SETTLE_S on came from the new upstream.
    Reports the load rate and how long the old upstream kept answering."""
    responses = load.responses()
    failures = [r for r in responses if r[1] not in ("a", "b")]
    assert failures == [], failures[:10]
    latencies, firsts = [], []
    for made, upstream, until in swaps:
        window = [(t, u) for t, u in responses if made <= t < until]
        late = [(t - made, u) for t, u in window if t >= made + SETTLE_S and u != upstream]
        assert late == [], f"{what}: {upstream!r} not alone {SETTLE_S} s after the swap: {late[:5]}"
        checked = [u for t, u in window if t >= made + SETTLE_S]
        assert len(checked) > 50, f"{what}: too few answers after the swap to check: {len(checked)}"
        firsts.append(next(t for t, u in window if u == upstream) - made)
        latencies.append(max([t - made for t, u in window if u != upstream], default=0.0))
    with capsys.disabled():
        print(f"\n{what}: {len(responses)} requests at {load.rate():.0f} requests/s over "
              f"{LOAD_THREADS} connections, 0 failed; after each of {len(swaps)} swaps the new "
              f"upstream answered first after {max(firsts) * 1000:.0f} ms at most and the old one "
              f"last after {max(latencies) * 1000:.0f} ms at most")
    return load.rate()


def applied_to_a(cli, wasm, tmp_path):
    """A plugin config sending everything to `a`, applied with `apply --module` to a new ECDS
    file (which apply creates); returns (ECDS directory, plugin config file)."""
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    split = tmp_path / "split.json"
    split.write_text(json.dumps(all_to("a")))
    created = meshsplit(cli, "apply", split, "--to", ecds / "meshsplit.json", "--module", wasm)
    assert created.returncode == 0, created.stdout + created.stderr
    return ecds, split


def test_apply_swaps_the_split_under_load_without_failed_requests(cli, wasm, tmp_path, capsys):  # noqa: F811
    ecds, split = applied_to_a(cli, wasm, tmp_path)
    assert ecds_config(ecds / "meshsplit.json") == (all_to("a"), "1")
    with ecds_envoy(ecds, ["a", "b"], all_to("b"), tmp_path) as envoy:
        assert harness.wait_for(lambda: harness.send(envoy.port, 20, {"Host": "svc"}) == {"a": 20})
        swaps = []
        with Load(envoy.port) as load:
            time.sleep(0.3)
            for i in range(SWAPS):
                upstream = "b" if i % 2 == 0 else "a"
                split.write_text(json.dumps(all_to(upstream)))
                start = time.monotonic()
                if swaps:
                    swaps[-1][2] = start
                result = meshsplit(cli, "apply", split, "--to", ecds / "meshsplit.json")
                made = time.monotonic()
                assert result.returncode == 0, result.stdout + result.stderr
                assert result.stdout.startswith(
                    f"applied {split} to {ecds / 'meshsplit.json'}: version {i + 1} → {i + 2}\n")
                assert re.search(rf"^svc \(weighted\): .*{upstream} 0\.0 % → 100\.0 %", result.stdout,
                                 re.M), result.stdout
                swaps.append([made, upstream, float("inf")])
                time.sleep(max(0.0, SWAP_EVERY_S - (time.monotonic() - made)))
            swaps[-1][2] = time.monotonic()
        rate = check_swaps(load, swaps, capsys, "apply")
    assert rate > 500, f"load too low to mean anything: {rate:.0f} requests/s"
    assert ecds_config(ecds / "meshsplit.json") == (all_to("a"), str(SWAPS + 1))


class Watch:
    """`meshsplit apply --watch` in the background; its lines, as they come."""

    def __init__(self, cli, config, ecds_file):  # noqa: F811
        self.proc = subprocess.Popen([str(cli), "apply", str(config), "--to", str(ecds_file),
                                      "--watch"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines = []
        self.reader = threading.Thread(target=self.read)
        self.reader.start()

    def read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern, after=0, timeout=5.0):
        found = harness.wait_for(
            lambda: any(re.search(pattern, line) for line in self.lines[after:]), timeout)
        assert found, f"no line matching {pattern!r} in {self.lines[after:]}"

    def stop(self):
        """Ctrl-C; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=10)
        finally:
            self.proc.kill()
            self.reader.join()


def test_watch_applies_every_save_under_load_and_refuses_an_invalid_one(cli, wasm, tmp_path, capsys):  # noqa: F811
    ecds, split = applied_to_a(cli, wasm, tmp_path)
    with ecds_envoy(ecds, ["a", "b"], all_to("a"), tmp_path) as envoy:
        watch = Watch(cli, split, ecds / "meshsplit.json")
        try:
            # The file already holds what split.json says: nothing to write.
            watch.wait_for_line(rf"^{TIMESTAMP} unchanged: .* \(version 1\)$")
            swaps = []
            with Load(envoy.port) as load:
                time.sleep(0.3)
                for i in range(SWAPS):
                    upstream = "b" if i % 2 == 0 else "a"
                    text = json.dumps(all_to(upstream), indent=1)
                    start = time.monotonic()
                    if swaps:
                        swaps[-1][2] = start
                    # Half the saves as editors that rename a new file over the old one, half
                    # written in place (truncate, then write).
                    if i % 2 == 0:
                        write_atomically(split, text)
                    else:
                        split.write_text(text)
                    swaps.append([time.monotonic(), upstream, float("inf")])
                    watch.wait_for_line(
                        rf"^{TIMESTAMP} applied .* \(version {i + 1} → {i + 2}\): "
                        rf"svc: .*{upstream} 0\.0 % → 100\.0 %", timeout=SETTLE_S)
                    time.sleep(max(0.0, SWAP_EVERY_S - (time.monotonic() - swaps[-1][0])))

                # An invalid save is refused: the ECDS file and the traffic stay as they were.
                before = (ecds / "meshsplit.json").read_bytes()
                mark = len(watch.lines)
                swaps[-1][2] = time.monotonic()
                split.write_text(json.dumps(test_reload.plugin({"a": 5000000, "b": 0})))
                swaps.append([time.monotonic() - SETTLE_S, "a", float("inf")])
                watch.wait_for_line(
                    rf"^{TIMESTAMP} refused: {re.escape(str(split))}: invalid configuration: "
                    r"services\[0\]\.upstreams\[0\]\.weight: must be at most 1000000, got 5000000; "
                    "the previous config keeps serving$", after=mark)
                time.sleep(0.5)
                swaps[-1][2] = time.monotonic()
            assert (ecds / "meshsplit.json").read_bytes() == before
            assert not [line for line in watch.lines if "error" in line], watch.lines
            rate = check_swaps(load, swaps, capsys, "apply --watch")
        finally:
            status = watch.stop()
        assert status == 0, watch.lines
        assert watch.lines[-1].endswith(f"stopped watching {split}"), watch.lines
    assert rate > 500, f"load too low to mean anything: {rate:.0f} requests/s"
    applied = [line for line in watch.lines if " applied " in line]
    assert len(applied) == SWAPS, watch.lines


def fresh_ecds(cli, tmp_path, plugin):  # noqa: F811
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    split = tmp_path / "split.json"
    split.write_text(json.dumps(plugin))
    result = meshsplit(cli, "apply", split, "--to", ecds / "meshsplit.json", "--module", "/m.wasm")
    assert result.returncode == 0, result.stderr
    return split, ecds / "meshsplit.json"


def test_invalid_config_is_exit_1_with_the_check_line_and_the_ecds_file_untouched(cli, tmp_path):  # noqa: F811
    _, ecds_file = fresh_ecds(cli, tmp_path, all_to("a"))
    before = ecds_file.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(test_reload.plugin({"a": 5000000, "b": 0})))
    result = meshsplit(cli, "apply", bad, "--to", ecds_file)
    assert result.returncode == 1
    assert result.stdout == check(cli, bad).stdout
    assert result.stdout == (f"{bad}: invalid configuration: services[0].upstreams[0].weight: "
                             "must be at most 1000000, got 5000000\n")
    assert ecds_file.read_bytes() == before
    # No temporary file left; the lock file of the first apply stays (see LOCK below).
    assert sorted(os.listdir(ecds_file.parent)) == [".meshsplit.json.lock", "meshsplit.json"]


def test_applying_the_same_config_again_writes_nothing(cli, tmp_path):  # noqa: F811
    split, ecds_file = fresh_ecds(cli, tmp_path, all_to("a"))
    before = ecds_file.read_bytes()
    result = meshsplit(cli, "apply", split, "--to", ecds_file)
    assert (result.returncode, result.stdout) == (
        0, f"unchanged: {ecds_file} already holds this config (version 1)\n")
    assert ecds_file.read_bytes() == before


def test_apply_keeps_the_rest_of_the_resource_and_bumps_the_version(cli, tmp_path):  # noqa: F811
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    response = {"version_info": "41", "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        "name": "split",
        "typed_config": test_reload.wasm_config(all_to("a"))}]}
    response["resources"][0]["typed_config"]["config"]["fail_open"] = True
    (ecds / "meshsplit.json").write_text(json.dumps(response))
    split = tmp_path / "split.json"
    split.write_text(json.dumps(all_to("b")))
    result = meshsplit(cli, "apply", split, "--to", ecds / "meshsplit.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["svc (weighted): a 100.0 % → 0.0 %, b 0.0 % → 100.0 %"]
    response["version_info"] = "42"
    response["resources"][0]["typed_config"]["config"]["configuration"]["value"] = split.read_text()
    assert json.loads((ecds / "meshsplit.json").read_text()) == response


def test_without_an_ecds_file_or_module_apply_is_exit_2_and_creates_nothing(cli, tmp_path):  # noqa: F811
    split = tmp_path / "split.json"
    split.write_text(json.dumps(all_to("a")))
    result = meshsplit(cli, "apply", split, "--to", tmp_path / "ecds.json")
    assert result.returncode == 2
    assert "no such file; give --module PATH" in result.stderr
    assert not (tmp_path / "ecds.json").exists()
    # Neither with --watch.
    assert meshsplit(cli, "apply", split, "--to", tmp_path / "ecds.json", "--watch").returncode == 2


def test_an_empty_ecds_file_or_one_without_a_resource_gets_one_with_module(cli, tmp_path):  # noqa: F811
    split = tmp_path / "split.json"
    split.write_text(json.dumps(all_to("a")))
    empty = tmp_path / "empty.json"
    empty.write_text("")
    result = meshsplit(cli, "apply", split, "--to", empty)
    assert (result.returncode, empty.read_text()) == (2, ""), result.stderr
    assert "is empty; give --module PATH" in result.stderr
    assert meshsplit(cli, "apply", split, "--to", empty, "--module", "/m.wasm").returncode == 0
    assert ecds_config(empty) == (all_to("a"), "1")

    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"version_info": "0", "resources": []}))
    assert meshsplit(cli, "apply", split, "--to", bare, "--module", "/m.wasm").returncode == 0
    assert ecds_config(bare) == (all_to("a"), "1")
    resource = json.loads(bare.read_text())["resources"][0]
    assert resource["typed_config"]["config"]["vm_config"]["code"] == {"local": {"filename": "/m.wasm"}}


COOKIE_PLUGIN = {"services": [{"name": "web", "strategy": "sticky", "hash_on": {"cookie": "mesh-web"},
                               "assign_cookie": {}, "upstreams": [
                                   {"name": "a", "cluster": "a", "weight": 1}]}]}


def test_apply_never_reports_success_for_a_cookie_config_the_module_in_force_refuses(cli, wasm, tmp_path):  # noqa: F811
    """An ECDS file whose resource runs meshsplit.wasm (no response callback): a config with
    assign_cookie is refused by apply (exit 1, file untouched), as Envoy's filter would refuse
    it; with meshsplit-cookie.wasm it is applied."""
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    split = tmp_path / "split.json"
    split.write_text(json.dumps(all_to("a")))
    target = ecds / "meshsplit.json"
    for module, applied in ((harness.WASM, False), (harness.WASM_COOKIE, True)):
        target.unlink(missing_ok=True)
        assert meshsplit(cli, "apply", split, "--to", target, "--module", module).returncode == 0
        before = target.read_bytes()
        cookie = tmp_path / "cookie.json"
        cookie.write_text(json.dumps(COOKIE_PLUGIN))
        result = meshsplit(cli, "apply", cookie, "--to", target)
        if applied:
            assert result.returncode == 0, result.stdout + result.stderr
        else:
            assert result.returncode == 1, result.stdout + result.stderr
            assert "the module this resource runs would refuse the configuration" in result.stdout
            assert "meshsplit-cookie.wasm" in result.stdout
            assert target.read_bytes() == before


def test_check_sees_the_module_a_versioned_or_remote_name_stands_for(cli, tmp_path):  # noqa: F811
    """The lean module under the names the install page and `make oci` give it (a version, an
    OCI image, an https URL) refuses assign_cookie; the cookie module's names do not."""
    for url, refused in (("oci://REGISTRY/meshsplit:TAG", True),
                         ("https://example.com/meshsplit-0.2.0.wasm", True),
                         ("file:///var/local/lib/wasm/meshsplit-0.2.0.wasm", True),
                         ("oci://REGISTRY/meshsplit-cookie:TAG", False)):
        manifest = {"apiVersion": "extensions.istio.io/v1alpha1", "kind": "WasmPlugin",
                    "metadata": {"name": "m", "namespace": "default"},
                    "spec": {"url": url, "pluginConfig": json.loads(json.dumps(COOKIE_PLUGIN))}}
        manifest["spec"]["pluginConfig"]["services"][0]["upstreams"][0]["cluster"] = \
            "outbound|9080|a|web.default.svc.cluster.local"
        path = tmp_path / "wasmplugin.json"
        path.write_text(json.dumps(manifest))
        result = check(cli, path)
        assert result.returncode == (1 if refused else 0), (url, result.stdout)
        assert ("services[0].assign_cookie" in result.stdout) == refused, (url, result.stdout)
