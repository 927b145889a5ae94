"""The fault report (scripts/faults): the README's command, run for real, holds every promise;
and its verdicts catch what they should.

The four scenarios (idle drops, failover, outage, exhaustion) run against real gunicorn and
a throwaway server that the script starts itself; the faults are made on that server
(SET GLOBAL wait_timeout, SET GLOBAL read_only, a stop and start on the same port, a table
lock held by another session). --quick keeps each fault short: tests/test_resilience.py and
tests/test_gunicorn.py make the same faults with finer assertions, using the same module.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time

import pytest

from conftest import ROOT, connect, load_script, readme_lines

faults = load_script("faults")


def test_fault_report_holds_every_promise(tmp_path):
    [command] = readme_lines("scripts/faults")
    out = tmp_path / "faults.json"
    result = subprocess.run(shlex.split(command) + ["--quick", "--json", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=240)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    outcomes = {o["name"]: o for o in json.loads(out.read_text())}
    assert list(outcomes) == ["idle", "failover", "outage", "exhaustion"], report
    for name, o in outcomes.items():
        assert o["problems"] == [] and o["other"] == 0, report
        assert 0 < o["peak_connections"] <= o["connection_limit"] == 4, report
        assert o["busy_after"] == 0 and o["probe_failures"] == 0, report
    # The faults really happened: clients saw them (a 503 with Retry-After, nothing worse)...
    for name in ("failover", "outage", "exhaustion"):
        assert outcomes[name]["unavailable"] > 0, report
        assert outcomes[name]["recovery_s"] <= 1.0, report
    # ...except where the app must absorb them: a write after the server dropped idle sessions.
    assert outcomes["idle"]["unavailable"] == 0 and outcomes["idle"]["ok"] == 32, report
    table = result.stdout.splitlines()
    assert table[0].startswith("# fault report") and len(table) == 3 + 4, report
    assert all(line.endswith("  ok") for line in table[3:]), report


def answer(status, code=None, retry_after=None, content_type="application/json",
           started=0.0, ended=0.1):
    return faults.Outcome(started, ended, status, code, retry_after, content_type,
                          request="GET /api/users")


def test_only_the_apis_own_503_counts_as_a_clean_failure():
    assert answer(503, "database_unavailable", "5").is_clean_503
    assert answer(503, "database_busy", "1").is_clean_503
    assert not answer(503, "database_busy", None).is_clean_503  # no Retry-After
    assert not answer(503, "internal_error", "5").is_clean_503  # not the API's 503 code
    assert not answer(503, "database_busy", "1", "text/html").is_clean_503  # a proxy's page
    assert not answer(502).is_clean_503 and not answer(500, "internal_error").is_clean_503
    assert not faults.Outcome(0, 1, None, failure="ConnectionError").is_clean_503


def test_recovery_counts_to_the_first_request_followed_only_by_2xx():
    timeline = [answer(503, "database_unavailable", "5", started=9.5, ended=10.2),  # ended after
                answer(200, started=10.1, ended=10.2),
                answer(503, "database_unavailable", "5", started=10.4, ended=10.5),
                answer(200, started=10.7, ended=10.8), answer(200, started=11.0, ended=11.1)]
    assert faults.recovery_time(timeline, fault_ended=10.0) == pytest.approx(0.7)
    assert faults.recovery_time(timeline[:3], fault_ended=10.0) is None  # never recovered


def test_verdict_fails_a_scenario_that_breaks_a_promise():
    clean = answer(503, "database_unavailable", "5")
    assert faults.summary([answer(200), clean], name="x").problems() == []
    assert "neither 2xx" in faults.summary([answer(200), answer(500, "internal_error")]).problems()[0]

    unseen = faults.summary([answer(200)] * 3, fault_ended=0.0)
    unseen.fault_must_show = True
    assert unseen.problems() == ["no client saw the fault (no 503): the scenario tested nothing"]

    late = answer(503, "database_unavailable", "5", started=0.6, ended=0.7)
    never = faults.summary([answer(200, started=0, ended=0.1), late], fault_ended=0.5)
    assert never.never_recovered and "no request after" in never.problems()[0]

    slow = faults.summary([answer(200), answer(503, "database_busy", "1", started=0, ended=4)])
    assert "a 503 took 4.00 s" in slow.problems()[0]
    slow.bound_503_time = False  # where clients queue in gunicorn's backlog
    assert slow.problems() == []

    absorbed = faults.summary([answer(201), clean], name="idle")
    absorbed.every_request_must_succeed = True
    assert absorbed.problems() == ["1 request(s) failed with 503"]

    crowded = faults.summary([answer(200)], peak_connections=5)
    crowded.connection_limit = 4
    assert crowded.problems() == ["5 server connections, above 4"]
    report = faults.report([crowded], workers=2, pool_size=2)
    assert report.splitlines()[-1].endswith("FAIL: 5 server connections, above 4")


def test_a_worker_that_dies_fails_the_report_which_keeps_its_crash_report(tmp_path):
    """A worker that crashed in C code (as one did in a CI run's idle scenario: "was sent
    SIGSEGV!") fails the scenario even when no client was hurt, and its faulthandler stacks
    reach the operator; before, the report printed only the clients' ConnectionErrors and the
    app's log was removed with the work directory."""
    rig = faults.Rig(workers=1, pool_size=1, work=tmp_path).start()
    try:
        rig.start_app()
        assert rig.worker_deaths() == []
        [worker] = [int(pid) for pid in subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(rig.gunicorn.pid)],
            capture_output=True, text=True).stdout.split()]
        os.kill(worker, signal.SIGSEGV)  # as a fault in C code raises it in the worker
        deadline = time.monotonic() + 10
        deaths = rig.worker_deaths()
        while not deaths:
            assert time.monotonic() < deadline, rig.logs[-1].read_text()
            time.sleep(0.05)
            deaths = rig.worker_deaths()
        assert deaths == [f"Worker (pid:{worker}) was sent SIGSEGV!"]
        assert rig.worker_deaths() == []  # each death is reported once
        assert "Fatal Python error: Segmentation fault" in rig.crash_reports()
    finally:
        rig.stop()
    crashed = faults.summary([answer(200)], name="idle")
    crashed.worker_deaths = deaths
    assert crashed.problems() == [f"a worker died: Worker (pid:{worker}) was sent SIGSEGV!"]


def test_sampler_counts_no_session_its_client_already_closed(mysql_server, db_env):
    """The server lists a closed session until its thread reads the COM_QUIT: a pool that
    swaps a broken connection for a new one looks one over its size for that moment. Rows
    read before a close are exactly what such a lagging PROCESSLIST shows."""
    held = [connect(db_env) for _ in range(3)]
    try:
        query = ["SELECT HOST, @@port FROM information_schema.PROCESSLIST "
                 f"WHERE DB = '{db_env['RDS_DB_NAME']}'"]
        listed = mysql_server.sql(query)
        assert len(listed) == 3
        with faults.ConnectionSampler(mysql_server.sql, db_env["RDS_DB_NAME"]) as sampler:
            while sampler.peak < 3:
                time.sleep(0.01)
        held.pop().close()
        with faults.ConnectionSampler(lambda _: listed, db_env["RDS_DB_NAME"]) as lagging:
            deadline = time.monotonic() + 5
            while lagging.peak < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.1)  # several more polls of the same three rows
        assert lagging.peak == 2, (listed, faults.closed_client_ports(int(listed[0][1])))
    finally:
        for conn in held:
            conn.close()
