"""Clients that give up before the upstream answers, through real Envoy (both filter builds): a
version that hangs is ejected although no request to it ever gets a response (Istio's default
route has no timeout, so only the clients give up), by the latency condition and by the error
condition alone; clients that reset their own requests quickly, before a healthy answer, eject
nothing."""
import http.client
import socket
import threading
import time

import pytest

import harness
from test_guard import plugin, stat

WINDOW_S = 2


def impatient_load(port, timeout_s, seconds, connections=6, patient_every=0):
    """Requests to service `svc` from `connections` threads for `seconds`, each abandoned (its
    connection closed, as a client's timeout does) when no answer came within `timeout_s`;
    every `patient_every`-th request of a thread (0: none) waits for its answer instead. Returns
    (answers by upstream, abandoned count). Bounded in time."""
    answers, abandoned, lock = {}, [0], threading.Lock()
    deadline = time.monotonic() + seconds

    def run():
        n = 0
        while time.monotonic() < deadline:
            n += 1
            patient = patient_every and n % patient_every == 0
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10 if patient else timeout_s)
            try:
                conn.request("GET", "/", headers={"Host": "svc"})
                response = conn.getresponse()
                body = response.read()
                key = harness.answer_key(response.status, body)
                with lock:
                    answers[key] = answers.get(key, 0) + 1
            except (socket.timeout, TimeoutError):
                with lock:
                    abandoned[0] += 1
            finally:
                conn.close()

    threads = [threading.Thread(target=run) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, abandoned[0]


# A latency condition alone: its threshold is 200 ms and clients give up after 500 ms, 300 ms of
# margin either way. The error condition alone counts a request abandoned after 500 ms
# (abandoned_after_ms, default) as a failure: clients give up after 1 s, 500 ms of margin.
CASES = {
    "latency-only": ({"error_rate": None, "latency": {"percentile": 90, "threshold_ms": 200}}, 0.5),
    "errors-only": ({"error_rate": 0.2}, 1.0),
}


@pytest.mark.builds("wasm", "native")
@pytest.mark.parametrize("case", list(CASES))
def test_a_version_that_hangs_is_ejected_when_clients_give_up_first(build, wasm, tmp_path, case):
    guard, client_timeout = CASES[case]
    with harness.upstream_servers("v1", "v2", delays={"v2": 2.0}) as servers:
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(
            plugin({"v1": 50, "v2": 50}, min_requests=10, window_s=WINDOW_S, eject_s=30, **guard),
            ports, harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            # Twelve clients for 8 s: each abandons about one request to v2 a second (it hangs
            # for as long as the client waits, up to 1 s), about 24 in a 2 s window against
            # min_requests 10, spread over two workers that file them every half second; the
            # window plus ticks is under 3 s, so 8 s leaves 5 s for a loaded machine.
            answers, abandoned = impatient_load(envoy.port, client_timeout, 8, connections=12)
            assert abandoned > 0 and answers.get("v2", 0) == 0, (answers, abandoned)
            assert stat(envoy, "v2.ejections_total") == 1, (answers, abandoned, envoy.log()[-3000:])
            assert stat(envoy, "v2.ejected") == 1
            assert stat(envoy, "v1.ejections_total") == 0
            # Ejected: every request now reaches v1, answered.
            seen = harness.send(envoy.port, 40, {"Host": "svc"})
            assert seen == {"v1": 40}, seen
    reason = "latency" if case == "latency-only" else "errors"
    assert f"reason {reason}, ejection 1 in a row" in envoy.log()


@pytest.mark.builds("wasm", "native")
def test_clients_that_reset_quickly_before_a_healthy_answer_eject_nothing(build, wasm, tmp_path):
    """Both versions answer in 100 ms; clients give up after 20 ms on three requests of four
    (the fourth waits). The abandoned requests waited far less than the latency threshold
    (400 ms) and abandoned_after_ms (500 ms): they say nothing, and nothing is ejected. The
    answers that are waited for stay 300 ms under the threshold, and the resets as much, however
    late a loaded machine lets a client close."""
    guard = {"error_rate": 0.2, "latency": {"percentile": 90, "threshold_ms": 400}}
    with harness.upstream_servers("v1", "v2", delay=0.1) as servers:
        ports = {n: s.server_port for n, s in servers.items()}
        config = harness.bootstrap(
            plugin({"v1": 50, "v2": 50}, min_requests=10, window_s=WINDOW_S, eject_s=30, **guard),
            ports, harness.free_port(), harness.free_port())
        with harness.Envoy(config, tmp_path) as envoy:
            answers, abandoned = impatient_load(envoy.port, 0.02, 6, patient_every=4)
            # Both kinds of request happened, enough of each for min_requests many times over.
            assert abandoned > 100 and answers.get("v1", 0) > 20 and answers.get("v2", 0) > 20, \
                (answers, abandoned)
            # One more window and tick for any late decision.
            time.sleep(WINDOW_S + 1)
            assert stat(envoy, "v1.ejections_total") == 0 and stat(envoy, "v2.ejections_total") == 0, \
                envoy.log()[-3000:]
