"""The shipped native config: both modes load from one libmeshsplit.so (tests/test_shipped_configs.py
starts it and sends traffic to both listeners)."""
import pytest

import harness


@pytest.mark.builds("native")
def test_envoy_native_yaml_validates_with_both_modes(build):
    proc = harness.validate(harness.ENVOY_DIR / "envoy-native.yaml")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "Dynamic module ABI version v0.2.0 matched." in proc.stdout
    # One accepted configuration per mode: the HTTP filter's and the cluster specifier's.
    assert proc.stdout.count("accepted for meshsplit: 1 service, 3 upstreams") == 2, proc.stdout[-5000:]

