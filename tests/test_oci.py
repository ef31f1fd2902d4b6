"""`make oci`: the module as a Wasm OCI image (envoy/oci.py), read back with skopeo, the tool the
docs (docs/istio.md) push it with."""
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile

import pytest

import harness
from test_bundle import require_tool

OCI_SCRIPT = harness.ENVOY_DIR / "oci.py"
ARCHIVE = harness.ROOT / "target" / "meshsplit-oci.tar"
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"


def pack(*args):
    proc = subprocess.run([sys.executable, str(OCI_SCRIPT), *map(str, args)], cwd=harness.ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


@pytest.fixture(scope="module")
def image(wasm):
    """(printed image digest, printed module sha256) of target/meshsplit-oci.tar, written as
    `make oci` writes it."""
    out = pack()
    image_digest = re.search(r"^image digest:\s+sha256:([0-9a-f]{64})", out, re.M).group(1)
    module_sha = re.search(r"^module sha256:\s+([0-9a-f]{64})", out, re.M).group(1)
    return image_digest, module_sha


def skopeo(*args):
    binary = shutil.which("skopeo")
    require_tool(binary, "skopeo (Debian package skopeo; the OCI archive is not checked)")
    proc = subprocess.run([binary, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def raw_manifest():
    return skopeo("inspect", "--raw", f"oci-archive:{ARCHIVE}")


def test_printed_module_sha256_is_the_modules(image, wasm):
    assert image[1] == hashlib.sha256(wasm.read_bytes()).hexdigest()


def test_image_is_a_wasm_artifact_with_the_module_as_its_wasm_layer(image, wasm):
    manifest = json.loads(raw_manifest())
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == WASM_CONFIG
    (layer,) = [l for l in manifest["layers"] if l["mediaType"] == WASM_LAYER]
    # The layer is the raw module, so its digest is the module's sha256.
    assert layer["digest"] == "sha256:" + image[1]
    assert layer["size"] == wasm.stat().st_size
    # Istio reads this variant only with exactly two layers: the module and its runtime config.
    assert [l["mediaType"] for l in manifest["layers"]] == [WASM_CONFIG, WASM_LAYER]
    assert manifest["layers"][0]["digest"] == manifest["config"]["digest"]


def test_runtime_config_names_envoy_and_the_root_id():
    config = json.loads(skopeo("inspect", "--raw", "--config", f"oci-archive:{ARCHIVE}"))
    assert config["type"] == "envoy_proxy"
    assert config["config"]["root_ids"] == ["meshsplit"]


def test_printed_image_digest_is_the_manifest_digest(image):
    """The digest a WasmPlugin's sha256 must hold for an oci:// url."""
    assert hashlib.sha256(raw_manifest()).hexdigest() == image[0]


def test_image_copies_to_another_transport_unchanged(image, wasm, tmp_path):
    """skopeo copies the archive the way it pushes it to a registry: every blob verified on the way."""
    target = tmp_path / "copy"
    skopeo("copy", "--quiet", f"oci-archive:{ARCHIVE}", f"dir:{target}")
    manifest = (target / "manifest.json").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == image[0]
    assert (target / image[1]).read_bytes() == wasm.read_bytes()


def test_archive_names_the_image_by_the_crate_version(image):
    with tarfile.open(ARCHIVE) as tar:
        index = json.load(tar.extractfile("index.json"))
        assert json.load(tar.extractfile("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
    (entry,) = index["manifests"]
    tag = entry["annotations"]["org.opencontainers.image.ref.name"]
    version = re.search(r'^version\s*=\s*"([^"]+)"', (harness.ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert tag == version
    assert skopeo("inspect", "--raw", f"oci-archive:{ARCHIVE}:{tag}") == raw_manifest()


def test_archive_is_reproducible(wasm, tmp_path):
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    pack("--out", first)
    pack("--out", second)
    assert first.read_bytes() == second.read_bytes()
