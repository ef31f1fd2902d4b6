"""`meshsplit preview` of services with a rollout or a guard: the schedule as a timeline, the
split the filter's own code makes at any moment (`--at`), edits compared at one moment, and the
guard's settings in `preview` and `check`."""
import datetime
import json
import re
import time

import pytest

import stats

from stats import chi_square
from test_apply import meshsplit
from test_cli import cli  # noqa: F401  (the session fixture that builds the command)

P_MIN = stats.P_MIN
REQUESTS = 10000
CONFIGURED = {"v1": 90, "v2": 10, "v3": 0}
STEPS = [(0, {"v1": 70, "v2": 20, "v3": 10}),
         (600, {"v1": 40, "v2": 30, "v3": 30}),
         (1800, {"v2": 50, "v3": 50})]
NAMES = list(CONFIGURED)


def rfc3339(seconds):
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def plugin(start, strategy="weighted", interpolate=False, steps=STEPS, guard=None):
    service = {"name": "svc", "strategy": strategy,
               "upstreams": [{"name": n, "cluster": f"svc_{n}", "weight": w}
                             for n, w in CONFIGURED.items()],
               "rollout": {"start": rfc3339(start), "interpolate": interpolate,
                           "steps": [{"at_s": at, "weights": w} for at, w in steps]}}
    if strategy == "sticky":
        service["hash_on"] = {"header": "x-user-id"}
    if guard:
        service["guard"] = guard
    return {"services": [service]}


def write(tmp_path, name, config):
    path = tmp_path / name
    path.write_text(json.dumps(config))
    return path


def preview(cli, *args):  # noqa: F811
    result = meshsplit(cli, "preview", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def full(weights):
    return [weights.get(n, 0) for n in NAMES]


def interpolated(a, b, done, span):
    """The filter's interpolation: each weight moves its change times done/span, rounded half
    away from zero."""
    def one(x, y):
        moved = (y - x) * done
        sign = (moved > 0) - (moved < 0)
        return x + int((2 * moved + sign * span) / (2 * span))
    return [one(x, y) for x, y in zip(a, b)]


def row_pattern(step, seconds, offset, weights):
    """A timeline row: step, time, offset, then `weight (share)` per upstream."""
    total = sum(weights)
    cells = r" +".join(re.escape(f"{w} ({w / total * 100:.1f} %)") for w in weights)
    return rf"^    {step} +{re.escape(rfc3339(seconds))} +{re.escape(offset)} +{cells}"


def test_the_timeline_lists_every_step_and_marks_the_one_in_force(cli, tmp_path):  # noqa: F811
    # Started 15 minutes ago: step 1 (from +10m) is in force, step 2 comes at +30m.
    start = int(time.time()) - 900
    config = write(tmp_path, "rollout.json", plugin(start))
    text = preview(cli, config)
    offsets = {0: "+0s", 600: "+10m", 1800: "+30m"}
    for index, (at, weights) in enumerate(STEPS):
        pattern = row_pattern(index, start + at, offsets[at], full(weights))
        line = re.search(pattern + r".*$", text, re.M)
        assert line, (pattern, text)
        assert line.group(0).endswith("  ← now") == (index == 1), line.group(0)
    assert f"  rollout: 3 steps from {rfc3339(start)}\n" in text, text
    assert re.search(rf"^  now \S+ \(\+15m\d*s?\): step 1, until step 2 at "
                     rf"{re.escape(rfc3339(start + 1800))}$", text, re.M), text
    # The table still simulates the configured weights.
    assert re.search(r"^  v1 +svc_v1 +90 +90\.0 %", text, re.M), text
    assert "the table above simulates the configured weights" in text, text

    out = json.loads(preview(cli, config, "--json"))
    rollout = out["configs"][0]["services"][0]["rollout"]
    assert [(r["step"], r["offset_s"], r["time"]) for r in rollout["timeline"]] == [
        (i, float(at), rfc3339(start + at)) for i, (at, _) in enumerate(STEPS)]
    assert [list(r["weights"].values()) for r in rollout["timeline"]] == [
        full(w) for _, w in STEPS]
    assert rollout["timeline"][1]["expected"] == {"v1": 0.4, "v2": 0.3, "v3": 0.3}
    assert (rollout["now"]["state"], rollout["now"]["step"]) == ("step", 1)
    assert rollout["at"] is None


def test_not_started_and_finished_rollouts_say_so(cli, tmp_path):  # noqa: F811
    future = int(time.time()) + 86400
    text = preview(cli, write(tmp_path, "future.json", plugin(future)))
    assert re.search(rf"^  now \S+ \(-\S+\): not started; the configured weights apply until "
                     rf"{re.escape(rfc3339(future))}$", text, re.M), text
    assert "← now" not in text
    past = int(time.time()) - 86400
    text = preview(cli, write(tmp_path, "past.json", plugin(past)))
    assert re.search(r"^  now \S+ \(\+1d\S*\): finished \(step 2\), whose weights stay$",
                     text, re.M), text
    assert re.search(r"^    2 .*  ← now$", text, re.M), text


@pytest.mark.parametrize("strategy", ["weighted", "sticky"])
@pytest.mark.parametrize("at, state, weights", [
    ("-5m", "not_started", CONFIGURED),
    ("+0s", "step", STEPS[0][1]),
    ("+20m", "step", STEPS[1][1]),
    ("+2h", "finished", STEPS[2][1]),
])
def test_at_simulates_the_split_in_force_at_that_moment(cli, tmp_path, strategy, at, state,  # noqa: F811
                                                        weights):
    start = 1_796_119_200  # 2026-12-01T10:00:00Z
    config = write(tmp_path, "rollout.json", plugin(start, strategy))
    # An offset from the start and the absolute time it names give the same run.
    seconds = {"-5m": -300, "+0s": 0, "+20m": 1200, "+2h": 7200}[at]
    runs = [json.loads(preview(cli, config, "--at", when, "--json", "--seed", "3"))
            for when in (at, rfc3339(start + seconds))]
    services = [run["configs"][0]["services"][0] for run in runs]
    assert services[0]["upstreams"] == services[1]["upstreams"]
    service = services[0]
    assert (service["rollout"]["at"]["state"], service["rollout"]["at"]["time"]) == (
        state, rfc3339(start + seconds))
    expected = full(weights)
    assert [u["weight"] for u in service["upstreams"]] == expected
    assert [u["configured_weight"] for u in service["upstreams"]] == full(CONFIGURED)
    counts = [u["count"] for u in service["upstreams"]]
    assert sum(counts) == REQUESTS
    assert all(c == 0 for c, w in zip(counts, expected) if w == 0), counts
    stat, p = chi_square(counts, expected)
    assert p > P_MIN, (counts, expected, stat)
    # The text says which moment it simulates.
    text = preview(cli, config, "--at", at)
    assert f"(seed 1), at {at} from the start\n" in text, text
    assert re.search(rf"^  --at {re.escape(rfc3339(start + seconds))} \({re.escape(at)}\): "
                     rf".*; simulated in the table above$", text, re.M), text


def test_interpolated_rollouts_show_the_midpoints_and_simulate_between_steps(cli, tmp_path):  # noqa: F811
    start = 1_796_119_200
    config = write(tmp_path, "rollout.json", plugin(start, interpolate=True))
    text = preview(cli, config, "--at", "+20m")
    assert (f"  rollout: 3 steps from {rfc3339(start)}; weights move linearly between steps "
            "(midway: halfway)\n") in text, text
    steps = [(at, full(w)) for at, w in STEPS]
    midpoints = []
    for (a_at, a), (b_at, b) in zip(steps, steps[1:]):
        span = b_at - a_at
        mid = a_at + span // 2
        midpoints.append((mid, interpolated(a, b, span // 2, span)))
    assert midpoints == [(300, [55, 25, 20]), (1200, [20, 40, 40])]
    for mid, weights in midpoints:
        offset = {300: "+5m", 1200: "+20m"}[mid]
        assert re.search(row_pattern("midway", start + mid, offset, weights), text, re.M), text
    # +20m is the second midpoint: between step 1 and step 2, at its weights.
    assert re.search(r"^  --at \S+ \(\+20m\): between step 1 and step 2, weights v1 20, v2 40, "
                     r"v3 40; simulated in the table above$", text, re.M), text

    for at, weights in [("+20m", midpoints[1][1]),
                        ("+15m", interpolated(steps[1][1], steps[2][1], 300, 1200))]:
        out = json.loads(preview(cli, config, "--at", at, "--json"))
        service = out["configs"][0]["services"][0]
        assert service["rollout"]["at"]["state"] == "between"
        assert list(service["rollout"]["at"]["weights"].values()) == weights
        counts = [u["count"] for u in service["upstreams"]]
        stat, p = chi_square(counts, weights)
        assert p > P_MIN, (at, counts, weights, stat)
    timeline = json.loads(preview(cli, config, "--json"))["configs"][0]["services"][0][
        "rollout"]["timeline"]
    assert [(r["step"], r["offset_s"]) for r in timeline] == [
        (0, 0.0), (None, 300.0), (1, 600.0), (None, 1200.0), (2, 1800.0)]


def test_against_compares_the_splits_at_one_moment(cli, tmp_path):  # noqa: F811
    start = 1_796_119_200
    old = write(tmp_path, "old.json", plugin(start))
    steps = [STEPS[0], (600, {"v1": 10, "v2": 45, "v3": 45}), STEPS[2]]
    new = write(tmp_path, "new.json", plugin(start, steps=steps))
    result = meshsplit(cli, "preview", new, "--against", old, "--at", rfc3339(start + 900))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "svc (weighted): v1 40.0 % → 10.0 %, v2 30.0 % → 45.0 %, v3 30.0 % → 45.0 %",
        f"svc: shares at {rfc3339(start + 900)}: old step 1, new step 1",
    ]
    # By default now: before the start both are at the configured weights.
    future = int(time.time()) + 86400
    old, new = (write(tmp_path, f"{name}-future.json", plugin(future, steps=s))
                for name, s in [("old", STEPS), ("new", steps)])
    before = meshsplit(cli, "preview", new, "--against", old).stdout.splitlines()
    assert before[0] == "svc (weighted): v1 90.0 %, v2 10.0 %, v3 0.0 % (shares unchanged; " \
                        "other fields edited)", before
    assert re.fullmatch(r"svc: shares at now \(\S+\): old not started, new not started",
                        before[1]), before
    # An offset from the start names each side's own moment.
    out = json.loads(meshsplit(cli, "preview", new, "--against", old, "--at", "+15m",
                               "--json").stdout)
    rollout = out["services"][0]["rollout"]
    assert (rollout["old"]["weights"], rollout["new"]["weights"]) == ([40, 30, 30], [10, 45, 45])


def test_guard_settings_show_in_preview_and_check(cli, tmp_path):  # noqa: F811
    guard = {"error_rate": 0.05, "window_s": 20, "eject_s": 60}
    config = write(tmp_path, "guarded.json", plugin(1_796_119_200, guard=guard))
    text = preview(cli, config)
    assert ("  guard: ejects an upstream above 5 % errors over 20 s (at least 20 requests) for "
            "60 s, doubling on repeat; at most 50 % of the weight (not simulated: no simulated "
            "request fails)\n") in text, text
    service = json.loads(preview(cli, config, "--json"))["configs"][0]["services"][0]
    assert service["guard"] == {"error_rate": 0.05, "min_requests": 20, "window_s": 20,
                                "eject_s": 60, "max_ejected_percent": 50, "latency": None}
    result = meshsplit(cli, "check", config)
    assert result.stdout == (f"{config}: ok: 1 service (svc: weighted, 3 upstreams, 1 drained, "
                             "guard 5 % over 20 s, rollout 3 steps)\n"), result.stdout


def test_bad_at_values_are_usage_errors(cli, tmp_path):  # noqa: F811
    config = write(tmp_path, "rollout.json", plugin(1_796_119_200))
    for bad in ["yesterday", "2026-12-01 10:00", "+10 parsecs"]:
        result = meshsplit(cli, "preview", config, "--at", bad)
        assert result.returncode == 2 and "--at" in result.stderr, (bad, result.stderr)
