"""The README's first command: scripts/run-local serves sample data, and Ctrl-C cleans up.

With RDS_* naming a database it did not start, it asks before migrating and seeding it.
"""

import contextlib
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import localdb
from conftest import ROOT, connect, run_hiding


_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _stop_what_the_test_started():
    """A test that fails midway leaves no run-local behind: SIGTERM lets it stop its gunicorn
    and its throwaway server as it does on Ctrl-C, SIGKILL follows if it does not."""
    yield
    while _started:
        localdb.stop_process(_started.pop(), 30)


def start_run_local(tmp_path: Path, extra_env: dict[str, str], args=(), stdin=subprocess.DEVNULL):
    """./scripts/run-local as its shebang runs it, output to a file; returns (process, port, log)."""
    port = localdb.free_port()
    venv = Path(sys.executable).parent.parent  # reuse the test venv instead of building one
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_"))}
    env.update({"PORT": str(port), "VENV": str(venv), **extra_env})
    log = tmp_path / "run-local.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["scripts/run-local", *args], cwd=ROOT, env=env, stdin=stdin, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _started.append(proc)
    return proc, port, log


def serves_sample_users_then_stops(proc, port: int, log: Path) -> str:
    """Waits for /api/users, checks the sample users, Ctrl-C; returns run-local's output."""
    try:
        localdb.wait_until_healthy(f"http://127.0.0.1:{port}/api/users", 120, process=proc, output=log)
        body = requests.get(f"http://127.0.0.1:{port}/api/users", timeout=10).json()
        assert {u["email"] for u in body["data"]} >= {"ada@example.com", "grace@example.com"}
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
        proc.wait(60)
    output = log.read_text()
    assert proc.returncode == 0, output
    assert "run-local: stopped" in output
    # No worker left for the master to kill after graceful_timeout (gunicorn.conf.py's
    # _stop_gracefully_on_interrupt).
    assert "SIGKILL" not in output and "WORKER TIMEOUT" not in output, output
    return output


def tables(env: dict[str, str]) -> list:
    conn = connect(env)
    try:
        cur = conn.cursor()
        cur.execute("SHOW TABLES")
        return cur.fetchall()
    finally:
        conn.close()


def test_run_local_serves_sample_users_and_stops_cleanly(tmp_path):
    # Nothing configured and no terminal: no question, a throwaway server.
    proc, port, log = start_run_local(tmp_path, {})
    output = serves_sample_users_then_stops(proc, port, log)
    assert "started a throwaway" in output and "[y/N]" not in output
    datadir = next(line.split("data in ")[1].split(",")[0] for line in output.splitlines()
                   if "data in " in line)
    assert not Path(datadir).exists()  # the throwaway server and its data are gone
    leftover = subprocess.run(["pgrep", "-f", datadir], capture_output=True, text=True)
    assert leftover.stdout == ""


def test_run_local_pressing_ctrl_c_again_while_stopping_still_cleans_up(tmp_path):
    proc, port, log = start_run_local(tmp_path, {})
    localdb.wait_until_healthy(f"http://127.0.0.1:{port}/api/users", 120, process=proc, output=log)
    os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while "Handling signal: int" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    while proc.poll() is None and time.monotonic() < deadline:
        # Ctrl-C again and again while it stops gunicorn and the database server (only
        # run-local's: gunicorn answers a storm of them with a RecursionError of its own).
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.01)
    proc.wait(60)
    output = log.read_text()
    datadir = next(line.split("data in ")[1].split(",")[0] for line in output.splitlines()
                   if "data in " in line)
    leftover = subprocess.run(["pgrep", "-f", datadir], capture_output=True, text=True).stdout
    left_dir = Path(datadir).exists()
    for pid in leftover.split():  # the old code's leftovers: not left for the next test
        os.kill(int(pid), signal.SIGKILL)
    shutil.rmtree(datadir, ignore_errors=True)
    assert leftover == "" and not left_dir, output
    assert "Traceback" not in output and "run-local: stopped" in output


def test_run_local_refuses_a_configured_database_without_a_terminal(tmp_path, make_database):
    env = make_database(migrated=False)
    proc, _, log = start_run_local(tmp_path, env)
    assert proc.wait(120) == 1
    output = log.read_text()
    where = f"database '{env['RDS_DB_NAME']}' on {env['RDS_HOSTNAME']}:{env['RDS_PORT']} as '{env['RDS_USERNAME']}'"
    assert f"run-local: not touching the configured {where}" in output, output
    assert "Pass --yes" in output and "unset RDS_HOSTNAME" in output
    assert env["RDS_PASSWORD"] not in output
    assert tables(env) == []  # neither migrated nor seeded


@pytest.mark.parametrize("answer", [b"\n", b"n\n", b"y\n"])
def test_run_local_asks_on_a_terminal_before_touching_a_configured_database(tmp_path, make_database, answer):
    env = make_database(migrated=False)
    terminal, stdin = pty.openpty()
    try:
        proc, port, log = start_run_local(tmp_path, env, stdin=stdin)
        os.close(stdin)
        deadline = time.monotonic() + 60
        while "[y/N]" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert f"RDS_* name the database '{env['RDS_DB_NAME']}' on {env['RDS_HOSTNAME']}:" in log.read_text()
        os.write(terminal, answer)
        if answer == b"y\n":
            serves_sample_users_then_stops(proc, port, log)
            assert len(tables(env)) > 0
        else:
            assert proc.wait(60) == 1
            assert "run-local: not touching the configured database" in log.read_text()
            assert tables(env) == []
    finally:
        os.close(terminal)


def test_run_local_yes_migrates_and_seeds_a_configured_database_without_asking(tmp_path, make_database):
    env = make_database(migrated=False)
    proc, port, log = start_run_local(tmp_path, env, args=["--yes"])
    output = serves_sample_users_then_stops(proc, port, log)
    assert f"--yes: migrating and seeding the configured database '{env['RDS_DB_NAME']}'" in output
    assert "[y/N]" not in output and "started a throwaway" not in output


def test_run_local_says_which_port_to_use_when_its_port_is_taken(tmp_path):
    """Port 8000 held by something else: one line with the fix, at once, before any database."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc, _, log = start_run_local(tmp_path, {"PORT": str(port)})
        try:
            assert proc.wait(30) != 0
        finally:
            localdb.stop_process(proc, 5)
    output = log.read_text()
    assert f"run-local: 127.0.0.1:{port} is already in use" in output, output
    assert re.search(r"PORT=\d+ \./scripts/run-local", output), output
    assert "serving on" not in output and "started a throwaway" not in output


@pytest.mark.parametrize("port", ["abc", "0", "70000"])
def test_run_local_refuses_an_invalid_port_before_starting_anything(tmp_path, port):
    """Before, an invalid PORT started the throwaway server, migrated, seeded, printed "serving
    on http://127.0.0.1:abc" and only then failed in gunicorn.conf.py."""
    proc, _, log = start_run_local(tmp_path, {"PORT": port})
    assert proc.wait(60) == 1
    output = log.read_text()
    assert (f"run-local: PORT='{port}' is invalid: expected an integer from 1 to 65535 (unset it for "
            "the default 8000)") in output, output
    assert "started a throwaway" not in output and "serving on" not in output


def test_run_local_reads_port_as_gunicorn_does_spaces_and_all(tmp_path):
    """gunicorn.conf.py strips PORT and takes one of only spaces as unset (8000); run-local
    refused that one as invalid, and served a padded one as "http://127.0.0.1: 8001 "."""
    port = localdb.free_port()
    proc, _, log = start_run_local(tmp_path, {"PORT": f" {port} "})
    output = serves_sample_users_then_stops(proc, port, log)
    assert f"serving on http://127.0.0.1:{port}  (try" in output, output

    with socket.socket() as holder:  # 8000 held here, or already by something else
        with contextlib.suppress(OSError):
            holder.bind(("127.0.0.1", 8000))
            holder.listen()
        proc, _, log = start_run_local(tmp_path, {"PORT": "   "})
        assert proc.wait(60) == 1
    output = log.read_text()
    assert "run-local: 127.0.0.1:8000 is already in use" in output, output


PLUGIN_DIRS = ["/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
               "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins"]


def test_run_local_with_docker_but_no_compose_plugin_says_what_to_install(tmp_path):
    """A machine without mariadbd/mysqld whose Docker has no compose plugin (Debian's docker.io):
    run-local announced 'starting the db service with docker compose', then docker's own
    'unknown command' and 'docker compose up -d --wait db failed with exit code 1', no fix.

    The machine is made for real in a mount namespace: /usr/sbin (mariadbd, mysqld) and Docker's
    plugin directories are empty there, HOME has no ~/.docker."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("needs the docker CLI")
    venv = Path(sys.executable).parent.parent
    env = {"PATH": f"{os.path.dirname(docker)}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "VENV": str(venv), "PORT": str(localdb.free_port())}
    result = run_hiding(["/usr/sbin", *PLUGIN_DIRS], ["./scripts/run-local"], env=env,
                        probe="! command -v mariadbd mysqld && ! docker compose version")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "run-local: no mariadbd/mysqld found, and `docker compose` does not run here (Docker's compose "
        "plugin is missing): install mariadb-server (README, Quick start) or the compose plugin "
        "(docker-compose-plugin), or set the RDS_* variables"), result.stderr
    assert "starting the db service" not in result.stderr


@pytest.mark.parametrize("auth", ["iam", "secretsmanager"])
def test_run_local_serves_its_throwaway_database_whatever_db_auth_the_shell_has(tmp_path, auth):
    """DB_AUTH left in the shell (from trying scripts/doctor, say) without RDS_HOSTNAME: run-local
    started its throwaway server, then the migration refused the settings ('DB_SECRET_ID is
    required...; for a local database run scripts/run-local, which sets them for you')."""
    proc, port, log = start_run_local(tmp_path, {"DB_AUTH": auth})
    output = serves_sample_users_then_stops(proc, port, log)
    assert "started a throwaway" in output
