"""Static security check: bandit finds nothing of high severity in the code that ships or runs.

Scanned: app/, application.py, gunicorn.conf.py and scripts/ (with the Python scripts that have
no .py suffix, which `bandit -r` would skip). Tests are not scanned: their asserts and
throwaway passwords are the point. The settings live here, as arguments, rather than in a
config file that would ride along in the deployed bundle.

Medium and low findings are printed (pytest -rA shows them) but do not fail: today they are
B608 (f-strings in app/users/repository.py that join constant column names, values stay
%s parameters), B113 (a request without timeout in scripts/bench), subprocess use in scripts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BANDIT = [sys.executable, "-m", "bandit", "--quiet", "--format", "json"]


def targets() -> list[str]:
    extensionless = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").iterdir()
                           if p.is_file() and p.suffix == ""
                           and p.read_text(errors="replace").startswith("#!/usr/bin/env python"))
    return ["app", "application.py", "gunicorn.conf.py", "scripts", *extensionless]


def bandit(*paths: str, cwd: Path = ROOT) -> dict:
    result = subprocess.run([*BANDIT, "--recursive", *paths], cwd=cwd, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode in (0, 1), result.stderr  # 1: findings; anything else: it broke
    return json.loads(result.stdout)


def test_no_high_severity_findings():
    report = bandit(*targets())
    scanned = {Path(name).as_posix().removeprefix("./") for name in report["metrics"]} - {"_totals"}
    assert {"app/users/routes.py", "app/db/pool.py", "gunicorn.conf.py", "scripts/provision"} <= scanned
    assert report["errors"] == [], report["errors"]
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_severity']}: {r['issue_text']}"
                for r in report["results"]]
    print("\n".join(findings))
    high = [f for f, r in zip(findings, report["results"]) if r["issue_severity"] == "HIGH"]
    assert high == []


def test_the_check_sees_a_high_severity_finding(tmp_path):
    """The same command flags what it should, so a clean report means something."""
    (tmp_path / "bad.py").write_text("import subprocess\n\n"
                                     "def run(command):\n"
                                     "    return subprocess.call(command, shell=True)\n")
    report = bandit("bad.py", cwd=tmp_path)
    assert [(r["test_id"], r["issue_severity"]) for r in report["results"]
            if r["issue_severity"] == "HIGH"] == [("B602", "HIGH")]
