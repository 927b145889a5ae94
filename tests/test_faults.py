"""The fault report (scripts/faults), run as its shebang says: every promise held.

The four scenarios (failover, outage, idle drops, exhaustion) run against real gunicorn and
a throwaway server that the script starts itself; the faults are made on that server
(SET GLOBAL read_only, a stop and start on the same port, SET GLOBAL wait_timeout, a table
lock held by another session).
"""

from __future__ import annotations

import json
import subprocess

from conftest import ROOT


def test_fault_report_holds_every_promise(tmp_path):
    out = tmp_path / "faults.json"
    result = subprocess.run([str(ROOT / "scripts" / "faults"), "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    outcomes = {o["name"]: o for o in json.loads(out.read_text())}
    assert set(outcomes) == {"failover", "outage", "idle", "exhaustion"}, report
    for name, o in outcomes.items():
        assert o["problems"] == [] and o["other"] == 0, report
        assert o["peak_connections"] <= o["connection_limit"], report
        assert o["busy_after"] == 0 and o["probe_failures"] == 0, report
    # The faults really happened: clients saw them (a 503 with Retry-After, nothing worse)...
    for name in ("failover", "outage", "exhaustion"):
        assert outcomes[name]["unavailable"] > 0, report
        assert outcomes[name]["recovery_s"] <= 1.0, report
    # ...except where the app must absorb them: a write after the server dropped idle sessions.
    assert outcomes["idle"]["unavailable"] == 0 and outcomes["idle"]["ok"] > 0, report
    assert "# fault report" in result.stdout
