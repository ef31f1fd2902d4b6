import contextlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402


@pytest.fixture(scope="session")
def wasm():
    """The release module, built (or found up to date) once per test session."""
    return harness.build_wasm()


@pytest.fixture(scope="module")
def deploy(wasm, tmp_path_factory):
    """deploy(plugin_config, upstream_names) -> running harness.Envoy with one loopback upstream
    per name, each also the name of its Envoy cluster. Everything stops when the module ends."""
    with contextlib.ExitStack() as stack:
        def start(plugin, upstream_names, delay=0.0, delays=None):
            ports = stack.enter_context(harness.upstreams(*upstream_names, delay=delay, delays=delays))
            config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port())
            return stack.enter_context(harness.Envoy(config, tmp_path_factory.mktemp("envoy")))
        yield start


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log of every Envoy still running to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for envoy in harness.RUNNING:
            report.sections.append((f"envoy log {envoy.log_path}", envoy.log()[-20000:]))
