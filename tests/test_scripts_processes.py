"""The scripts' process handling: what they start, they stop, also when starting fails."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import mysql.connector
import pytest

import localdb
from conftest import ROOT, load_script


def processes_matching(text: str) -> str:
    """`pgrep -af` lines of live processes whose command line contains `text` (zombies aside)."""
    found = subprocess.run(["pgrep", "-af", text], capture_output=True, text=True).stdout
    live = []
    for line in found.splitlines():
        pid = line.split()[0]
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.append(line)
    return "\n".join(live)


def open_in_this_process(path: Path) -> bool:
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


# -- LocalServer.start() that fails -------------------------------------------------------
def test_a_server_whose_port_is_taken_is_stopped_and_its_directory_removed():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = localdb.LocalServer(port=port)
        with pytest.raises(RuntimeError) as failed:
            server.start(timeout=30)
    message = str(failed.value)
    assert f"127.0.0.1:{port}" in message and "exited with code" in message, message
    assert "Address already in use" in message or "Bind on TCP/IP port" in message, message
    assert server.basedir is not None and not server.basedir.exists()
    assert processes_matching(str(server.basedir)) == ""
    assert server.process is None
    # Fault reports print error_log() after a failure: the directory is gone, its tail is not.
    assert "Address already in use" in server.error_log() or "Bind on TCP/IP port" in server.error_log()


def test_a_server_that_fails_after_it_is_ready_says_why_with_its_log_and_is_removed():
    """Creating the users is the last step of start(): with --skip-grant-tables the server runs
    and listens, then refuses CREATE USER. The caller gets a RuntimeError naming the cause, with
    the log tail, and nothing is left behind (before, the driver's error went up bare and the
    fault report's "database server log tail" was empty)."""
    if localdb.find_server()[0] == "mysql":
        pytest.skip("MySQL's --skip-grant-tables also turns networking off: start() never gets ready")
    server = localdb.LocalServer(extra_args=["--skip-grant-tables"])
    with pytest.raises(RuntimeError) as failed:
        server.start(timeout=60)
    assert server.port  # chosen before the failure, and named in the message
    message = str(failed.value)
    assert message.startswith(f"setting up the server on 127.0.0.1:{server.port} failed: "), message
    assert "skip-grant-tables" in message and "its error log ends:" in message, message
    assert "ready for connections" in message, message  # the tail of the server's own log
    assert isinstance(failed.value.__cause__, mysql.connector.Error)
    assert "ready for connections" in server.error_log()
    assert not server.basedir.exists()
    assert processes_matching(str(server.basedir)) == ""


def test_a_server_that_never_gets_ready_is_stopped_and_its_directory_removed():
    # --skip-networking: mariadbd runs, but never listens on the TCP port start() waits for.
    server = localdb.LocalServer(extra_args=["--skip-networking"])
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not accept connections on 127\.0\.0\.1:\d+ within 2 s"):
        server.start(timeout=2)
    assert time.monotonic() - started < 60
    assert not server.basedir.exists()
    assert processes_matching(str(server.basedir)) == ""


def test_a_server_is_ready_only_once_its_unix_socket_listens():
    """A socket file appears when the server binds it, before it listens on it; in between, a
    connection through it is refused (111). Ready means the port and the file take connections."""
    basedir = Path(tempfile.mkdtemp(prefix="localdb-ready-"))  # short: AF_UNIX paths are limited
    with socket.socket() as tcp, socket.socket(socket.AF_UNIX) as unix:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        server = localdb.LocalServer(basedir=basedir, port=tcp.getsockname()[1])
        unix.bind(str(server.socket_path))  # the file exists; nothing listens on it yet
        server.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            with pytest.raises(RuntimeError, match="did not accept connections"):
                server._wait_ready(0.5)
            unix.listen()
            server._wait_ready(10)
        finally:
            server.process.kill()
            server.process.wait()
            shutil.rmtree(basedir)


def test_a_server_given_a_directory_keeps_it_but_not_the_process(tmp_path):
    """The caller's directory is the caller's; the process is always the server's to stop."""
    server = localdb.LocalServer(basedir=tmp_path / "db", extra_args=["--no-such-option"])
    with pytest.raises(RuntimeError, match="exited with code"):
        server.start(timeout=30)
    assert (tmp_path / "db" / "data").is_dir()
    assert processes_matching(str(tmp_path / "db")) == ""


def test_a_starting_server_leaves_other_servers_temp_files_alone():
    """A server deletes every #sql* file in its tmpdir at startup: with the shared /tmp, one test's
    server starting broke another's bootstrap ("Could not remove temporary table ... error: 2")."""
    canary = Path(tempfile.gettempdir()) / f"#sql-canary-{uuid.uuid4().hex}.MAD"
    canary.write_text("a temp table of another server")
    try:
        server = localdb.LocalServer().start()
        try:
            assert server.sql(["SELECT @@tmpdir"]) == [(str(server.tmpdir),)]
        finally:
            server.remove()
        assert canary.exists()
    finally:
        canary.unlink(missing_ok=True)


# -- one way to stop a process and one way to wait for it --------------------------------------
def test_stop_process_kills_a_process_group_that_ignores_sigterm(tmp_path):
    marker = f"stubborn-{uuid.uuid4().hex}"
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:  # a child in the same group, like a gunicorn worker
            os.execv(sys.executable, [sys.executable, "-c",
                     "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
                     "{marker}"])
        print("ready", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, marker], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout.readline() == "ready\n"
    started = time.monotonic()
    assert localdb.stop_process(proc, timeout=0.5) == -9
    assert time.monotonic() - started < 10
    proc.stdout.close()
    deadline = time.monotonic() + 10
    while processes_matching(marker) and time.monotonic() < deadline:
        time.sleep(0.05)  # the orphaned child is reparented, then reaped by init
    assert processes_matching(marker) == ""


def test_stop_process_returns_the_exit_code_of_a_clean_stop():
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    assert localdb.stop_process(proc, timeout=10) == -15
    assert localdb.stop_process(proc, timeout=10) == -15  # a second stop is harmless
    proc.stdout.close()


def test_wait_until_healthy_fails_fast_with_the_output_of_a_process_that_exits(tmp_path):
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "import sys; print('cannot load the app'); sys.exit(3)"],
                                stdout=out, stderr=subprocess.STDOUT)
    started = time.monotonic()
    with pytest.raises(localdb.NotHealthy, match=r"(?s)exited with code 3 .*cannot load the app"):
        localdb.wait_until_healthy(f"http://127.0.0.1:{localdb.free_port()}/health", timeout=60,
                                   process=proc, output=log)
    assert time.monotonic() - started < 10


def test_wait_until_healthy_names_the_last_answer_when_time_runs_out(tmp_path):
    port = localdb.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with pytest.raises(localdb.NotHealthy, match=r"did not answer 200 within 3 s \(last: HTTP 404\)"):
            localdb.wait_until_healthy(f"http://127.0.0.1:{port}/health", timeout=3, process=proc)
        (tmp_path / "health").write_text("ok")
        assert localdb.wait_until_healthy(f"http://127.0.0.1:{port}/health", timeout=10, process=proc) == 200
    finally:
        localdb.stop_process(proc)


# -- bench's gunicorn ---------------------------------------------------------------------------
@pytest.fixture
def bench():
    return load_script("bench")


def bench_env(tmp_path: Path, module: str, body: str) -> dict[str, str]:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "WEB_CONCURRENCY": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_bench_stops_a_gunicorn_that_never_gets_ready_and_closes_its_log(bench, tmp_path, monkeypatch):
    module = f"never_ready_{uuid.uuid4().hex[:8]}"
    env = bench_env(tmp_path, module, """
        def application(environ, start_response):
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"not yet"]
    """)
    monkeypatch.setitem(bench.APPS, "never-ready", f"{module}:application")
    with pytest.raises(RuntimeError, match=r"(?s)never-ready did not start.*last: HTTP 503"):
        bench.start_app("never-ready", env, localdb.free_port(), tmp_path, timeout=3)
    assert processes_matching(module) == ""
    assert not open_in_this_process(tmp_path / "never-ready.log")


def test_bench_reports_a_gunicorn_that_cannot_load_the_app_and_closes_its_log(bench, tmp_path, monkeypatch):
    module = f"broken_{uuid.uuid4().hex[:8]}"
    env = bench_env(tmp_path, module, "raise ImportError('the bench app is broken')\n")
    monkeypatch.setitem(bench.APPS, "broken", f"{module}:application")
    with pytest.raises(RuntimeError, match="(?s)broken .*exited.*the bench app is broken"):
        bench.start_app("broken", env, localdb.free_port(), tmp_path, timeout=60)
    assert processes_matching(module) == ""
    assert not open_in_this_process(tmp_path / "broken.log")


# -- the start_gunicorn fixture ------------------------------------------------------------------
def test_start_gunicorn_stops_a_server_that_never_answers_health(start_gunicorn, monkeypatch):
    import conftest

    monkeypatch.setattr(conftest.Gunicorn, "ready_timeout", 3)
    elsewhere = f"127.0.0.1:{localdb.free_port()}"  # listens, but not where /health is asked
    with pytest.raises(AssertionError, match=r"gunicorn did not come up: .* within 3 s"):
        start_gunicorn({"WEB_CONCURRENCY": "1", "RDS_HOSTNAME": "127.0.0.1", "RDS_DB_NAME": "unused",
                        "RDS_USERNAME": "unused", "RDS_PASSWORD": "unused"}, extra_args=["--bind", elsewhere])
    assert processes_matching(elsewhere) == ""


def test_localdb_says_its_usage_without_starting_a_server():
    """`python scripts/localdb.py --help` prints its usage; it used to start a server instead."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "localdb.py"), "--help"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("usage: localdb.py"), result.stderr
    assert "RDS_HOSTNAME" not in result.stdout
