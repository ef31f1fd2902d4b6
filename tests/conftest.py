import contextlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import stats  # noqa: E402


@pytest.fixture(scope="session")
def wasm():
    """The release module, built (or found up to date) once per test session."""
    return harness.build_wasm()


def pytest_addoption(parser):
    parser.addoption("--build", default=",".join(harness.BUILDS),
                     help="comma-separated builds to test: wasm, native, specifier (default: all)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "builds(*names): the builds a test applies to (default: wasm only); tests that "
        "use the `build` fixture (or `deploy`) run once per build")


def pytest_generate_tests(metafunc):
    """Runs every test that deploys Envoy once per build its `builds` marker names (the closest
    marker wins: a test's own over its module's), restricted to --build."""
    if "build" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("builds")
    wanted = metafunc.config.getoption("--build").split(",")
    builds = [b for b in (marker.args if marker else ("wasm",)) if b in wanted]
    metafunc.parametrize("build", builds, indirect=True, scope="module")


_BUILT = {}


@pytest.fixture(scope="module")
def build(request):
    """The build under test ("wasm", "native" or "specifier"), built once per session."""
    name = request.param
    artifact = "wasm" if name == "wasm" else "native"
    if artifact not in _BUILT:
        _BUILT[artifact] = harness.build_wasm() if artifact == "wasm" else harness.build_native()
    return name


@pytest.fixture(autouse=True)
def _use_build(request):
    """harness.bootstrap deploys the build of the running test."""
    if "build" in request.fixturenames:
        harness.BUILD = request.getfixturevalue("build")
    yield
    harness.BUILD = "wasm"


@pytest.fixture(scope="module")
def deploy(build, tmp_path_factory):
    """deploy(plugin_config, upstream_names) -> running harness.Envoy with one loopback upstream
    per name, each also the name of its Envoy cluster, running `build`. Everything stops when
    the module ends."""
    with contextlib.ExitStack() as stack:
        def start(plugin, upstream_names, delay=0.0, delays=None):
            ports = stack.enter_context(harness.upstreams(*upstream_names, delay=delay, delays=delays))
            config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port(),
                                       build=build)
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


def pytest_sessionfinish(session):
    """Fail the run when its chi-square checks together may fail a correct build more often than
    the suite's budget allows (tests/stats.py)."""
    spent = stats.CHECKS * stats.P_MIN
    if spent > stats.FALSE_FAILURE_BUDGET:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print(f"\nerror: {stats.CHECKS} statistical checks at p < {stats.P_MIN:g} each may fail a "
              f"correct build in {spent:.1e} of runs, over the budget of "
              f"{stats.FALSE_FAILURE_BUDGET:g}: lower P_MIN in tests/stats.py (and check power)")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter):
    """End the report (after pytest's short summary) with a banner naming every check that was
    skipped, so a green run that left checks out says so."""
    result = yield
    if stats.CHECKS:
        terminalreporter.write_line(
            f"{stats.CHECKS} statistical checks at p < {stats.P_MIN:g}: a correct build fails this "
            f"run by chance in at most {stats.CHECKS * stats.P_MIN:.1e} of runs "
            f"(budget {stats.FALSE_FAILURE_BUDGET:g})")
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
