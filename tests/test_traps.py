"""What a trap in the wasm build costs, through real Envoy with a test build of the module that
traps on request (`make wasm-test-hooks`): the request it happened in, and the counts its VM
gathered since its last tick; everything flushed before stays."""
import subprocess
import time

import harness

PLUGIN = {"services": [{"name": "svc", "upstreams": [
    {"name": "v1", "cluster": "t_v1", "weight": 1}, {"name": "v2", "cluster": "t_v2", "weight": 1}]}]}
TRAP_MODULE = harness.ROOT / "target" / "test-hooks" / "meshsplit.wasm"
# The tick is every 500 ms; the waits return once the counts are in, so their bound only has to
# outlast a busy machine.
FLUSH_S = 15.0


def total(envoy):
    prefix = "wasmcustom.meshsplit.meshsplit.svc."
    return sum(v for k, v in envoy.stats(prefix).items() if k.endswith(".requests_total"))


def test_a_trap_loses_at_most_the_counts_since_the_vms_last_tick(tmp_path):
    subprocess.run(["make", "--no-print-directory", "-s", "wasm-test-hooks"], cwd=harness.ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    with harness.upstreams("t_v1", "t_v2") as ports:
        config = harness.bootstrap(PLUGIN, ports, harness.free_port(), harness.free_port(),
                                   build="wasm")
        wasm = harness.wasm_filter(config)["typed_config"]["config"]
        wasm["vm_config"]["code"]["local"]["filename"] = str(TRAP_MODULE)
        assert wasm["failure_policy"] == "FAIL_RELOAD"
        # One worker: every request goes through the VM that traps.
        with harness.Envoy(config, tmp_path, concurrency=1) as envoy:
            client = harness.Client(envoy.port)
            try:
                flushed = sum(client.get("/", {"Host": "svc"})[0] == 200 for _ in range(60))
                assert harness.wait_for(lambda: total(envoy) == 60, timeout=FLUSH_S)
                assert total(envoy) == flushed == 60
                pending = sum(client.get("/", {"Host": "svc"})[0] == 200 for _ in range(20))
                status, _, _ = client.get("/", {"Host": "svc", "x-meshsplit-test-hook": "panic"})
                assert status == 503
                # FAIL_RELOAD recreates the VM after 0.2 s (later on a busy machine): the first
                # request it answers counts among those after the trap.
                assert harness.wait_for(
                    lambda: client.get("/", {"Host": "svc"})[0] == 200, timeout=FLUSH_S)
                after = 1 + sum(client.get("/", {"Host": "svc"})[0] == 200 for _ in range(9))
            finally:
                client.close()
            harness.wait_for(lambda: total(envoy) >= flushed + after, timeout=FLUSH_S)
            time.sleep(1.0)  # two more ticks: nothing more is counted
            counted = total(envoy)
    lost = flushed + pending + after - counted
    print(f"\na trap lost {lost} of the {pending} counts gathered since the VM's last tick")
    assert (pending, after) == (20, 10)
    # Whatever was flushed before the trap and everything after it is counted; only what the
    # VM gathered since its last tick may be lost.
    assert flushed + after <= counted <= flushed + pending + after, counted
