#!/usr/bin/env python3
"""Packs the module as a Wasm OCI image, the format Istio's WasmPlugin and TrafficExtension pull
with `url: oci://...`, into an OCI image layout archive.

    oci.py [--module FILE] [--out FILE] [--tag TAG]      (`make oci` runs it; standard library only)

The archive (target/meshsplit-oci.tar by default) is a tar of an OCI image layout: `oci-layout`,
`index.json` and `blobs/sha256/...`. Push it with
`skopeo copy oci-archive:target/meshsplit-oci.tar docker://REGISTRY/meshsplit:TAG`.

The image follows the "oci" variant of the Wasm image specification
(github.com/solo-io/wasm, spec/spec.md), which Istio's fetcher (pkg/wasm/imagefetcher.go) reads:
- manifest `application/vnd.oci.image.manifest.v1+json`;
- config `application/vnd.module.wasm.config.v1+json`: the runtime config
  (`{"type": "envoy_proxy", "abiVersions": [...], "config": {"root_ids": ["meshsplit"]}}`);
- two layers: that runtime config again (Istio requires exactly two layers for this variant and
  answers "number of layers must be 2" otherwise), and the module itself as
  `application/vnd.module.wasm.content.layer.v1+wasm`. The module layer is the raw .wasm file, not
  a tar, so its digest is the module's sha256.

Two digests matter, and the script prints both:
- the image digest, the sha256 of the manifest: what WasmPlugin's `sha256` means with an `oci://`
  url (Istio compares it with the digest of the manifest it pulled);
- the module's sha256: what `sha256` means with `file://`, `http://` and `https://` urls.

The archive is byte-for-byte reproducible: the same module gives the same archive and digests
(fixed modification times, owners and modes, entries in a fixed order, JSON with sorted keys)."""
import argparse
import hashlib
import io
import json
import re
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "target" / "wasm32-wasip1" / "release" / "meshsplit.wasm"
ARCHIVE = ROOT / "target" / "meshsplit-oci.tar"

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.module.wasm.config.v1+json"
WASM_LAYER_TYPE = "application/vnd.module.wasm.content.layer.v1+wasm"
TITLE = "org.opencontainers.image.title"
REF_NAME = "org.opencontainers.image.ref.name"
# The proxy-wasm ABI the module exports (its proxy_abi_version_0_2_1 function).
ABI_VERSION = "0.2.1"
ROOT_ID = "meshsplit"


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type, blob, annotations=None):
    d = {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
         "size": len(blob)}
    if annotations:
        d["annotations"] = annotations
    return d


def crate_version():
    """The package version in Cargo.toml: the default tag."""
    match = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    return match.group(1) if match else "latest"


def image(module, tag):
    """(blobs {digest: bytes}, index.json bytes, manifest digest) of the image holding `module`."""
    if module[:4] != b"\0asm":
        raise ValueError("not a WebAssembly module (no \\0asm header)")
    config = canonical_json({"type": "envoy_proxy", "abiVersions": [ABI_VERSION],
                             "config": {"root_ids": [ROOT_ID]}})
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, config),
        "layers": [
            descriptor(CONFIG_TYPE, config, {TITLE: "runtime-config.json"}),
            descriptor(WASM_LAYER_TYPE, module, {TITLE: "meshsplit.wasm"}),
        ],
    })
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        # The ref name lets `oci-archive:FILE:TAG` name the image; with a single image, `oci-archive:FILE`
        # works as well.
        "manifests": [descriptor(MANIFEST_TYPE, manifest, {REF_NAME: tag})],
    })
    blobs = {}
    for blob in (config, module, manifest):
        blobs[hashlib.sha256(blob).hexdigest()] = blob
    return blobs, index, hashlib.sha256(manifest).hexdigest()


def write_archive(path, blobs, index):
    entries = [("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})), ("index.json", index)]
    entries += [(f"blobs/sha256/{digest}", blob) for digest, blob in sorted(blobs.items())]
    directories = ["blobs", "blobs/sha256"]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in directories:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for name, blob in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(blob), 0o644, 0
            tar.addfile(info, io.BytesIO(blob))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", type=Path, default=MODULE, help="the .wasm file (default: the release build)")
    parser.add_argument("--out", type=Path, default=ARCHIVE, help="the archive to write (default: target/meshsplit-oci.tar)")
    parser.add_argument("--tag", default=None, help="the image's ref name in index.json (default: the crate version)")
    args = parser.parse_args(argv)
    try:
        module = args.module.read_bytes()
        blobs, index, image_digest = image(module, args.tag or crate_version())
        write_archive(args.out, blobs, index)
    except (OSError, ValueError) as e:
        print(f"oci: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"image digest:  sha256:{image_digest}   (WasmPlugin sha256 with url oci://...)")
    print(f"module sha256: {hashlib.sha256(module).hexdigest()}   (WasmPlugin sha256 with url file:// or https://)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
