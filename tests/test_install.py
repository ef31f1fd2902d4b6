"""docs/install.md followed literally, on the files of a fresh `make dist`: the page's table is what
dist/ holds, its checksum command passes, and each command block runs as written in the directory
it names (a copy of dist/, or a scratch repository root holding dist/ and envoy/), with only these
substitutions, which a reader makes too:

- `VERSION` and `linux-x86_64`: the version and this machine's platform (the page says so);
- `/usr/local/bin` and `/opt/meshsplit`: the same paths under the scratch directory;
- `docker://REGISTRY/`: an OCI layout directory in the scratch directory (no registry here).

`envoy` on the PATH is Envoy 1.40 with `--use-dynamic-base-id`, and envoy-native.yaml has its
ports and upstreams moved to the test's (harness.shipped) after the checksums were checked. The
command checks the shipped configs, the native module answers on both listeners of the shipped
native config, the wasm module answers in docs/deploying.md's plain Envoy config pointed at it
as the page says, and a configuration that references the schema the way the README does finds
it next to itself."""
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys

import jsonschema
import pytest
import yaml

import harness
import test_shipped_configs as shipped
from test_bundle import require_tool
from test_compose import ready

ROOT = harness.ROOT
PAGE = ROOT / "docs" / "install.md"
VERSION = re.search(r'^version = "(.*)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
PLATFORM = f"{platform.system().lower()}-{platform.machine()}"
WHERE = {"# in dist/": "dist", "# at the root of the repository": "."}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A fresh `make dist`, into a directory of its own (the repository's dist/ is left alone)."""
    out = tmp_path_factory.mktemp("made") / "dist"
    subprocess.run(["make", "--no-print-directory", "-s", "dist", f"DIST={out}"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, timeout=1800)
    return out


@pytest.fixture
def scratch(built, tmp_path):
    """A scratch repository root: dist/ as make dist wrote it, the repository's envoy/, and the
    page's system directories; `envoy` on the PATH."""
    shutil.copytree(built, tmp_path / "dist")
    shutil.copytree(harness.ENVOY_DIR, tmp_path / "envoy", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "usr" / "local" / "bin").mkdir(parents=True)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "envoy").write_text(f'#!/bin/sh\nexec {harness.envoy_bin()} --use-dynamic-base-id "$@"\n')
    (tools / "envoy").chmod(0o755)
    return tmp_path


def env(root):
    return dict(os.environ, PATH=f"{root}/usr/local/bin:{root}/tools:{os.environ['PATH']}")


def substitute(text, root):
    for placeholder, value in [("VERSION", VERSION), ("linux-x86_64", PLATFORM),
                               ("/usr/local/bin", f"{root}/usr/local/bin"),
                               ("/opt/meshsplit", f"{root}/opt/meshsplit"),
                               ("docker://REGISTRY/", f"oci:{root}/registry/")]:
        text = text.replace(placeholder, value)
    return text


def page():
    return PAGE.read_text()


def section(heading):
    text = page()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def blocks(heading):
    """The command blocks of a section: (directory, [command lines]). Every block says where it
    runs on its first line."""
    out = []
    for body in re.findall(r"^```sh\n(.*?)^```", section(heading), re.S | re.M):
        first, *lines = body.splitlines()
        assert first in WHERE, f"install.md, {heading}: a command block that does not say where it runs"
        out.append((WHERE[first], [line for line in lines if line.strip()]))
    assert out, heading
    return out


def run(line, cwd, root):
    proc = subprocess.run(["bash", "-c", substitute(line, root)], cwd=cwd, env=env(root),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (line, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def table():
    """{file name: (what it is, use it with)} of the page's table."""
    rows = re.findall(r"^\| `([^`]+)` \| (.*) \| (.*) \|$", page(), re.M)
    return {name: (what, use) for name, what, use in rows}


def test_dist_holds_the_pages_table_and_its_checksums_pass(scratch):
    rows = table()
    assert {substitute(name, scratch) for name in rows} == set(os.listdir(scratch / "dist"))
    (command,) = re.findall(r"`([^`]+)`", rows["SHA256SUMS"][1])
    out = run(command, scratch, scratch)
    assert out.count(": OK") == len(rows) - 1, out
    # The size the page quotes for the module, with or without wasm-opt as this machine built it.
    with_opt, without = map(int, re.search(r"about (\d+) KB; about (\d+) KB without wasm-opt",
                                           rows["meshsplit-VERSION.wasm"][0]).groups())
    size = (scratch / "dist" / f"meshsplit-{VERSION}.wasm").stat().st_size / 1000
    quoted = with_opt if shutil.which("wasm-opt") else without
    assert abs(size - quoted) <= quoted * 0.05, (size, quoted)


def test_the_command_installs_and_checks_the_shipped_configs(scratch):
    outputs = []
    for where, lines in blocks("The command"):
        outputs += [run(line, scratch / where, scratch) for line in lines]
    assert (scratch / "usr" / "local" / "bin" / "meshsplit").exists()
    assert any(o.strip() == f"meshsplit {VERSION}" for o in outputs), outputs
    checked = "".join(outputs)
    for name in ["envoy-native.yaml: listeners[0]", "envoy-native.yaml: listeners[1]",
                 "envoy.yaml: listeners[0]", "istio/wasmplugin.yaml", "istio/reviews-destinationrule.yaml: skipped"]:
        assert name in checked, (name, checked)


def test_the_native_module_answers_on_both_listeners_of_the_shipped_config(scratch):
    ((where, lines),) = blocks("The native module")
    *setup, start = lines
    assert re.search(r"\benvoy -c envoy-native\.yaml$", start), start
    path = scratch / where / "envoy-native.yaml"
    config = yaml.safe_load(path.read_text())
    with harness.upstreams(*shipped.CLUSTERS) as ports:
        listeners = harness.shipped(config, ports)
        path.write_text(yaml.safe_dump(config))
        for line in setup:
            run(line, scratch / where, scratch)
        log = scratch / "envoy.log"
        with open(log, "w") as out:
            envoy = subprocess.Popen(["bash", "-c", substitute(start, scratch)], cwd=scratch / where,
                                     env=env(scratch), stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        try:
            admin = config["admin"]["address"]["socket_address"]["port_value"]
            assert harness.wait_for(lambda: envoy.poll() is None and ready(admin), timeout=30), log.read_text()
            assert "Dynamic module ABI version v0.2.0 matched." in log.read_text()
            assert set(listeners) == {"meshsplit", "meshsplit_specifier"}, listeners
            shipped.assert_serves(listeners["meshsplit"], "dist meshsplit", shipped.FALLBACK)
            shipped.assert_serves(listeners["meshsplit_specifier"], "dist meshsplit_specifier",
                                  shipped.SPECIFIER_NOT_FOUND)
        except BaseException:
            print(log.read_text()[-6000:], file=sys.stderr)
            raise
        finally:
            harness.terminate(envoy)


def test_the_wasm_module_in_the_deploying_pages_config(scratch, tmp_path):
    """docs/deploying.md's filter entry in envoy.yaml (as test_shipped_configs starts it), its
    vm_config the one install.md shows, pointed at dist's module: `/etc/envoy/` is where the
    page's reader put the file; here it is dist/."""
    config, unknown = shipped.deploying_filter(tmp_path)
    vm_config = yaml.safe_load(section("The wasm filter").split("```yaml\n")[1].split("```")[0])["vm_config"]
    module = substitute(vm_config["code"]["local"]["filename"], scratch).replace("/etc/envoy/", f"{scratch}/dist/")
    assert module == f"{scratch}/dist/meshsplit-{VERSION}.wasm", module
    vm_config["code"]["local"]["filename"] = module
    filters = shipped.hcm(config)["http_filters"]
    (wasm,) = [f for f in filters if f["name"] == "envoy.filters.http.wasm"]
    wasm["typed_config"]["config"]["vm_config"] = vm_config
    with harness.upstreams(*shipped.CLUSTERS) as ports:
        listeners = harness.shipped(config, ports, wasm=module)
        with harness.Envoy(config, tmp_path):
            for name, port in listeners.items():
                shipped.assert_serves(port, f"dist wasm {name}", unknown[name])


def test_the_oci_archive_copies_with_skopeo(scratch):
    require_tool(shutil.which("skopeo"), "skopeo (Debian package skopeo; the OCI archive is not copied)")
    ((where, lines),) = blocks("The OCI image")
    (scratch / "registry").mkdir()  # the stand-in registry, present as a real one is
    for line in lines:
        run(line, scratch / where, scratch)
    index = json.loads((scratch / "registry" / "meshsplit" / "index.json").read_text())
    (manifest,) = index["manifests"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"] == VERSION
    blobs = scratch / "registry" / "meshsplit" / "blobs" / "sha256"
    module = hashlib.sha256((scratch / "dist" / f"meshsplit-{VERSION}.wasm").read_bytes()).hexdigest()
    assert (blobs / module).exists(), sorted(os.listdir(blobs))


def test_a_configuration_finds_the_schema_as_the_readme_references_it(scratch):
    """The README's configuration, saved in dist/ beside meshsplit.schema.json: its `$schema`
    names the shipped schema, which accepts it, refuses it broken, and `meshsplit check` passes it."""
    block = next(b for b in re.findall(r"```json\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
                 if '"$schema"' in b)
    path = scratch / "dist" / "meshsplit.json"
    path.write_text(block)
    config = json.loads(block)
    schema_path = (path.parent / config["$schema"]).resolve()
    assert schema_path == (scratch / "dist" / "meshsplit.schema.json").resolve()
    schema = json.loads(schema_path.read_text())
    assert schema == json.loads((ROOT / "docs" / "meshsplit.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(config))
    config["services"][0]["upstreams"][0]["weight"] = "80"
    assert list(validator.iter_errors(config))
    cli = scratch / "dist" / f"meshsplit-{VERSION}-{PLATFORM}"
    out = subprocess.run([str(cli), "check", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
