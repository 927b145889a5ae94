"""The tutorial a newcomer follows: what the README claims is what the code does.

The README's shell blocks, in order, on a fresh clone (test_fresh_clone_walk); every block is
run by some test or marked as needing an AWS account; every path, script and setting the
README names exists and is read; every executable script runs as its shebang says.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import ROOT, procfile_command

import localdb


def test_gunicorns_own_lines_are_json_like_the_apps(tmp_path):
    """web.stdout.log gets gunicorn's own lines too (starting, booting, a worker's exit): each is
    a JSON object, so one log query reads all of them. A bad setting stops the app: its message
    stays plain text for the operator, everything around it is JSON."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "LOG_"))}
    env.update(RDS_HOSTNAME="db.invalid", RDS_DB_NAME="ebdb", RDS_USERNAME="app", RDS_PASSWORD="x",
               DB_POOL_SIZE="lots", WEB_CONCURRENCY="1", PORT=str(localdb.free_port()),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(procfile_command(), cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert not [line for line in lines if re.match(r"\[\d{4}-\d\d-\d\d ", line)], lines
    records = [json.loads(line) for line in lines if line.startswith("{")]
    gunicorn = [r for r in records if r.get("logger") == "gunicorn.error"]
    assert {"time", "level", "message", "pid"} <= set(gunicorn[0])
    assert any(r["message"].startswith("Booting worker") for r in gunicorn)
    assert {"level": "ERROR", "message": "Reason: App failed to load."}.items() <= gunicorn[-1].items()
