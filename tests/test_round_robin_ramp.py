"""Round robin under an interpolating rollout, through real Envoy (wasm and native): the weights
in force change on almost every 500 ms tick, and a quiet service picks about once per change.
The lighter upstream must still get its share over the ramp (when round robin started afresh at
every change, the heavier upstream won every first pick and a 90/10 → 10/90 ramp gave the
canary about half its share).

One worker (a round-robin rotation is per worker), one request every 0.6 s for 30 s of a
30 s ramp. Expected: the sum of b's share at each request's moment. Margin: 3 requests (round
robin keeps within one pick of the share it is given; the rest covers where a request falls
between two ticks, 0.5 s of a ramp that moves 0.8 in 30 s: under 0.014 a request)."""
import datetime
import time

import pytest

import harness

pytestmark = pytest.mark.builds("wasm", "native")

RAMP_S = 30
REQUESTS = 50
GAP_S = 0.6


def test_round_robin_gives_the_canary_its_share_over_an_interpolating_ramp(build, tmp_path):
    # The ramp starts a few seconds ahead, so that Envoy is ready when it does.
    start = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=4)
    plugin = {"services": [{"name": "svc", "strategy": "round_robin",
                            "upstreams": [{"name": "a", "cluster": "a", "weight": 90},
                                          {"name": "b", "cluster": "b", "weight": 10}],
                            "rollout": {"start": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "interpolate": True,
                                        "steps": [{"at_s": 0, "weights": {"a": 90, "b": 10}},
                                                  {"at_s": RAMP_S, "weights": {"a": 10, "b": 90}}]}}]}
    with harness.upstreams("a", "b") as ports:
        config = harness.bootstrap(plugin, ports, harness.free_port(), harness.free_port(), build=build)
        with harness.Envoy(config, tmp_path, concurrency=1) as envoy:
            client = harness.Client(envoy.port)
            begin = start.timestamp()
            time.sleep(max(0.0, begin - time.time()))
            b = 0
            expected = 0.0
            try:
                for n in range(REQUESTS):
                    at = time.time()
                    share = 0.1 + 0.8 * min(max((at - begin) / RAMP_S, 0.0), 1.0)
                    expected += share
                    status, _, body = client.get("/", {"Host": "svc"})
                    assert status == 200
                    b += harness.answer_key(status, body) == "b"
                    time.sleep(max(0.0, begin + (n + 1) * GAP_S - time.time()))
            finally:
                client.close()
    assert abs(b - expected) <= 3, (b, expected)
