"""The README's first command: scripts/run-local serves sample data, and Ctrl-C cleans up."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

import localdb
from conftest import ROOT


def test_run_local_serves_sample_users_and_stops_cleanly():
    port = localdb.free_port()
    venv = Path(sys.executable).parent.parent  # reuse the test venv instead of building one
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_"))}
    env.update({"PORT": str(port), "VENV": str(venv)})
    proc = subprocess.Popen(["scripts/run-local"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        body = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/api/users", timeout=2)
                if response.status_code == 200:
                    body = response.json()
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        assert body is not None, "run-local did not serve /api/users"
        assert {u["email"] for u in body["data"]} >= {"ada@example.com", "grace@example.com"}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "started a throwaway" in output and "run-local: stopped" in output
    datadir = next(line.split("data in ")[1].split(",")[0] for line in output.splitlines()
                   if "data in " in line)
    assert not Path(datadir).exists()  # the throwaway server and its data are gone
    leftover = subprocess.run(["pgrep", "-f", datadir], capture_output=True, text=True)
    assert leftover.stdout == ""
