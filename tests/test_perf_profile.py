"""scripts/profile-request prints the per-request budget: every stage, each with a number.

Behaviour only (no timing is asserted): the script runs against the test server's database,
finds every hook it times (a renamed hook would make it stop, not silently misattribute), and
prints one numeric row per stage.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT, load_script


def test_profile_request_prints_every_stage_with_a_number(make_database):
    env = {**os.environ, **make_database()}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "profile-request"), "--requests", "200",
         "--use-environ"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    module = load_script("profile-request")
    labels = [label for _, label in module.STAGES] + [module.STAGED, module.TOTAL, module.CPU, module.ACCESS,
                                                      module.CEILING]
    out = result.stdout
    for label in labels:
        match = re.search(re.escape(label) + r"\s+(-?[0-9]+\.[0-9])\b", out)
        assert match, f"no number for {label!r} in:\n{out}"
    assert "200 requests" in out and "API_AUTH=all" in out, out
