"""scripts/faults refuses arguments it cannot run with at once, as argparse errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_hiding


@pytest.mark.parametrize("args, says", [
    (["--workers", "0"], "argument --workers: 0 is not a whole number of at least 1"),
    (["--pool-size", "-1"], "argument --pool-size: -1 is not a whole number of at least 1"),
    (["--clients", "0"], "argument --clients: 0 is not a whole number of at least 1"),
    (["--json", "/nonexistent-dir/report.json"],
     "argument --json: /nonexistent-dir is not a directory: create it or write elsewhere"),
    (["--json", "/"], "argument --json: / is a directory: name a file in it"),
])
def test_bad_arguments_are_refused_before_anything_starts(args, says):
    """Before, --workers 0 started a database and gunicorn, then ended in a NotHealthy
    traceback; --clients 0 in an AssertionError; --json into a missing folder in a
    FileNotFoundError after the whole run."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.monotonic()
    result = subprocess.run([str(ROOT / "scripts" / "faults"), "--quick", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "database ready" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"faults: error: {says}", result.stderr
    assert time.monotonic() - started < 30


def run_without_a_server_binary(command: list[str]) -> subprocess.CompletedProcess:
    """`command` on this machine as one without mariadbd/mysqld: /usr/sbin (and /usr/local/sbin,
    /usr/libexec) are empty."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin"}
    return run_hiding(["/usr/sbin", "/usr/local/sbin", "/usr/libexec"], command, env=env,
                      probe="! command -v mariadbd mysqld")


@pytest.mark.parametrize("command, prefix", [
    (["./scripts/faults", "--quick"], "faults: could not start a local database: "),
    ([sys.executable, "scripts/localdb.py"], "localdb.py: "),
])
def test_no_server_binary_is_one_line_naming_what_to_install(command, prefix):
    """Before: a RuntimeError traceback (faults after 'database server log tail:' with nothing
    under it), whose message said 'or set RDS_HOSTNAME', which neither of them reads."""
    result = run_without_a_server_binary(command)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"{prefix}no mariadbd or mysqld found on PATH or in /usr/sbin, /usr/local/sbin or /usr/libexec: "
        "install mariadb-server (README, Quick start)"), result.stderr
