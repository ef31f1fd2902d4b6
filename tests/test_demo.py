"""`make demo` (envoy/demo.py) against the real Envoy: it prints each service's split and then
`meshsplit status` of its Envoy, a table per service whose request counts are those it sent."""
import json
import subprocess
import sys

import harness


def test_the_demo_ends_with_the_status_table(wasm):
    cli = harness.ROOT / "target" / "release" / "meshsplit"
    assert cli.exists(), "build the CLI first (make cli)"
    out = subprocess.run([sys.executable, str(harness.ENVOY_DIR / "demo.py"), "--requests", "200"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "$ meshsplit status --admin http://127.0.0.1:" in text, text
    table = text[text.index("$ meshsplit status"):]
    assert "meshsplit status of http://127.0.0.1:" in table and "plugin meshsplit:" in table, table
    assert "0 refused configurations" in table, table
    plugin = json.loads((harness.ENVOY_DIR / "meshsplit.json").read_text())
    for service in plugin["services"]:
        rules = sum(1 for r in service.get("rules", []) if set(r["match"]) == {"headers"})
        block = table[table.index(f"\n  {service['name']}\n"):]
        rows = {line.split()[0]: line.split() for line in block.splitlines()[2:]
                if line.startswith("    ") and not line.strip().startswith("rule hits")}
        # Columns: upstream, weight, share, observed, requests, ...; the weight as configured.
        counts = {}
        for upstream in service["upstreams"]:
            row = rows.get(upstream["name"])
            assert row and row[1] == str(upstream["weight"]), (upstream["name"], block)
            counts[upstream["name"]] = int(row[4])
        # Every request the demo sent to the service (200, plus 100 per header rule) is counted.
        assert sum(counts.values()) == 200 + 100 * rules, (service["name"], counts, block)
