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


# Skip reasons that start with this mean a check could not run because a tool is not installed
# (test_bundle.require_tool); with CI=true those checks fail instead of skipping.
TOOL_MISSING = "tool missing: "


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """End the report (after pytest's short summary) with a banner naming every check that was
    skipped, so a green run that left checks out says so."""
    result = yield
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return result
    lines = []
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        lines.append((report.nodeid, reason))
    missing = [(n, r) for n, r in lines if r.startswith(TOOL_MISSING)]
    other = [(n, r) for n, r in lines if not r.startswith(TOOL_MISSING)]
    write = terminalreporter.write_sep
    if missing:
        write("!", f"SKIPPED CHECKS (tool missing): {len(missing)}", red=True, bold=True)
        for nodeid, reason in missing:
            terminalreporter.write_line(f"  {nodeid}: {reason.removeprefix(TOOL_MISSING)}", red=True)
    if other:
        write("!", f"SKIPPED CHECKS: {len(other)}", yellow=True, bold=True)
        for nodeid, reason in other:
            terminalreporter.write_line(f"  {nodeid}: {reason}", yellow=True)
    write("!", f"{len(lines)} skipped: the result below does not cover them", bold=True)
    return result
