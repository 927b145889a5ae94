"""Pool metrics as CloudWatch embedded metric format (EMF) lines: the format, the values, the thread."""

import io
import json
import os
import threading
import time

import jsonschema
import pytest
import requests

from app.config import load_settings
from app.credentials import StaticPassword
from app.db import Database, PoolTimeout
from app.db.connection import ConnectionOpener
from app.db.pool import ConnectionPool
from app.metrics import MetricsEmitter, PoolMetrics
from conftest import ROOT, load_script

# The JSON schema AWS publishes with the specification ("Embedded metric format example and JSON
# schema", https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/
# CloudWatch_Embedded_Metric_Format_Specification.html), $id and examples left out.
_NAME = {"type": "string", "pattern": "^(.*)$", "minLength": 1, "maxLength": 255}
EMF_SCHEMA = {
    "type": "object", "required": ["_aws"],
    "properties": {"_aws": {
        "type": "object", "required": ["Timestamp", "CloudWatchMetrics"],
        "properties": {
            "Timestamp": {"type": "integer"},
            "CloudWatchMetrics": {"type": "array", "items": {
                "type": "object", "required": ["Namespace", "Dimensions", "Metrics"],
                "properties": {
                    "Namespace": _NAME,
                    "Dimensions": {"type": "array", "minItems": 1, "items": {
                        "type": "array", "minItems": 0, "maxItems": 9, "items": _NAME}},
                    "Metrics": {"type": "array", "items": {
                        "type": "object", "required": ["Name"],
                        "properties": {"Name": _NAME, "Unit": {"type": "string", "pattern": (
                            r"^(Seconds|Microseconds|Milliseconds|Bytes|Kilobytes|Megabytes|Gigabytes|"
                            r"Terabytes|Bits|Kilobits|Megabits|Gigabits|Terabits|Percent|Count|"
                            r"Bytes\/Second|Kilobytes\/Second|Megabytes\/Second|Gigabytes\/Second|"
                            r"Terabytes\/Second|Bits\/Second|Kilobits\/Second|Megabits\/Second|"
                            r"Gigabits\/Second|Terabits\/Second|Count\/Second|None)$")}}}},
                }}},
        }}},
}


def parse_emf(line: str) -> dict:
    """One log event checked against the specification's rules, returned as {metric: value}."""
    doc = json.loads(line)  # the whole event is one JSON object, nothing before or after it
    assert isinstance(doc, dict)
    jsonschema.validate(doc, EMF_SCHEMA)
    timestamp = doc["_aws"]["Timestamp"]
    assert abs(timestamp - time.time() * 1000) < 60_000  # milliseconds since the epoch, now
    values = {}
    for directive in doc["_aws"]["CloudWatchMetrics"]:
        assert len(directive["Metrics"]) <= 100
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:  # dimension targets: root members with string values
                assert isinstance(doc.get(key), str) and doc[key].strip(), key
        for metric in directive["Metrics"]:
            value = doc[metric["Name"]]  # metric targets: root members holding a number
            assert isinstance(value, (int, float)) and not isinstance(value, bool), metric
            values[metric["Name"]] = value
    return {"doc": doc, **values}


def make_pool(env, **options):
    settings = load_settings(env)
    credentials = StaticPassword(settings.user, settings.password.get_secret_value())
    params = dict(size=2, timeout=0.3, max_lifetime=1800, idle_ping=30)
    params.update(options)
    return ConnectionPool(ConnectionOpener(settings, credentials), **params)


def emitter_for(pool, stream, interval=3600.0):
    return MetricsEmitter(PoolMetrics(pool, namespace="FlaskRdsApp", environment="test-env"),
                          interval, stream)


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_each_line_is_an_emf_document_with_the_pools_real_numbers(db_env):
    pool = make_pool(db_env, size=2, timeout=0.3)
    out = io.StringIO()
    emitter = emitter_for(pool, out)

    held = [pool.borrow(), pool.borrow()]
    emitter.emit()
    first = parse_emf(lines_of(out)[-1])
    doc = first["doc"]
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "FlaskRdsApp"
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["EnvironmentName"]]
    assert doc["EnvironmentName"] == "test-env" and doc["pid"] == os.getpid()
    assert first["DatabaseConnectionsCurrentlyBorrowed"] == 2
    assert first["DatabaseConnections"] == 2 and first["DatabaseConnectionsIdle"] == 0
    assert first["MaxDatabaseConnectionsAllowed"] == 2
    assert first["DatabaseConnectionsSetupSucceeded"] == 2 and first["DatabaseConnectionBorrows"] == 2
    assert first["DatabaseConnectionsBorrowTimeouts"] == 0
    assert 0 < first["DatabaseConnectionsBorrowLatency"] <= first["DatabaseConnectionsBorrowLatencyMax"]

    with pytest.raises(PoolTimeout):  # both connections held: the third borrow times out
        pool.borrow()
    emitter.emit()
    second = parse_emf(lines_of(out)[-1])
    assert second["DatabaseConnectionsBorrowTimeouts"] == 1
    assert second["DatabaseConnectionsSetupSucceeded"] == 0  # counters are per line, not totals
    assert second["DatabaseConnectionBorrows"] == 0
    assert "DatabaseConnectionsBorrowLatency" not in second  # no borrow: no latency, not a 0

    for lease in held:
        lease.release()
    pool.dispose()  # closes the two idle connections
    emitter.emit()
    third = parse_emf(lines_of(out)[-1])
    assert third["DatabaseConnectionsBorrowTimeouts"] == 0
    assert third["DatabaseConnectionsClosed"] == 2
    assert third["DatabaseConnections"] == 0 and third["DatabaseConnectionsCurrentlyBorrowed"] == 0


def test_a_borrow_that_waited_shows_in_the_latency(db_env):
    pool = make_pool(db_env, size=1, timeout=5)
    out = io.StringIO()
    emitter = emitter_for(pool, out)
    first = pool.borrow()
    threading.Timer(0.3, first.release).start()
    pool.borrow().release()  # waits about 0.3 s for the first to come back
    emitter.emit()
    line = parse_emf(lines_of(out)[-1])
    assert line["DatabaseConnectionBorrows"] == 2
    assert line["DatabaseConnectionsBorrowLatencyMax"] >= 200_000  # microseconds
    assert line["DatabaseConnectionsBorrowLatency"] >= 100_000


def test_failed_connection_attempts_are_counted(db_env):
    import localdb

    pool = make_pool({**db_env, "RDS_PORT": str(localdb.free_port())})
    out = io.StringIO()
    emitter = emitter_for(pool, out)
    with pytest.raises(Exception):
        pool.borrow()
    emitter.emit()
    line = parse_emf(lines_of(out)[-1])
    assert line["DatabaseConnectionsSetupFailed"] >= 1 and line["DatabaseConnectionsSetupSucceeded"] == 0


def test_the_thread_writes_every_interval_and_a_last_line_when_stopped(db_env):
    pool = make_pool(db_env)
    out = io.StringIO()
    emitter = emitter_for(pool, out, interval=0.05).start()
    deadline = time.monotonic() + 10
    while len(lines_of(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(lines_of(out)) >= 2
    pool.borrow().release()
    emitter.stop()
    assert not emitter.running
    count = len(lines_of(out))
    time.sleep(0.15)
    assert len(lines_of(out)) == count  # stopped for good
    assert sum(parse_emf(line)["DatabaseConnectionBorrows"] for line in lines_of(out)) == 1


def test_a_failed_line_does_not_stop_the_thread(db_env, caplog):
    """A write that fails once (stdout's pipe, say) costs that line, not the worker's metrics."""

    class FailingOnce(io.StringIO):
        failed = False

        def write(self, text):
            if not FailingOnce.failed:
                FailingOnce.failed = True
                raise OSError("resource temporarily unavailable")
            return super().write(text)

    out = FailingOnce()
    emitter = emitter_for(make_pool(db_env), out, interval=0.05).start()
    deadline = time.monotonic() + 10
    while len(lines_of(out)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    emitter.stop()
    assert FailingOnce.failed and len(lines_of(out)) >= 2
    assert [r.event for r in caplog.records if r.name == "app.metrics"] == ["pool_metrics_failed"]


def test_the_database_starts_one_emitter_per_pool_and_none_when_off(db_env, capsys):
    settings = load_settings({**db_env, "METRICS_INTERVAL": "0"})
    off = Database(settings, StaticPassword(settings.user, settings.password.get_secret_value()))
    off.pool.borrow().release()
    assert off._metrics is None
    off.dispose()

    settings = load_settings({**db_env, "METRICS_INTERVAL": "30"})
    on = Database(settings, StaticPassword(settings.user, settings.password.get_secret_value()))
    pool = on.pool
    assert on.pool is pool and on._metrics.running and on._metrics.interval == 30
    on.pool.borrow().release()
    on.dispose()
    assert not on._metrics.running
    assert '"_aws"' not in capsys.readouterr().out  # shorter than one interval: no line at all


def test_gunicorn_workers_emit_metrics_and_the_master_does_not(db_env, start_gunicorn):
    server = start_gunicorn({**db_env, "METRICS_INTERVAL": "0.2", "METRICS_ENVIRONMENT": "ci-env",
                             "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "2"})
    workers = server.worker_pids(expect=2)
    for _ in range(20):  # reach both workers' pools
        assert requests.get(server.url + "/api/users", timeout=10).status_code == 200
    seen: dict[int, list[dict]] = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        seen = {}
        for line in server.output().splitlines():
            if '"_aws"' in line:
                parsed = parse_emf(line)
                seen.setdefault(parsed["doc"]["pid"], []).append(parsed)
        if seen and all(len(v) >= 2 for v in seen.values()):  # a worker that served: 2 lines
            break
        time.sleep(0.1)
    assert seen and set(seen) <= workers, (seen.keys(), workers)
    assert server.process.pid not in seen  # never in the master
    for parsed in seen.values():
        assert parsed[0]["doc"]["EnvironmentName"] == "ci-env"
    assert sum(p["DatabaseConnectionBorrows"] for lines in seen.values() for p in lines) >= 1
    server.stop()
    output = server.output()
    for noise in ("Exception in thread", "Traceback", "Fatal Python error", "pool_metrics_failed"):
        assert noise not in output


def test_ebextensions_name_the_environment_dimension_after_the_beanstalk_environment():
    """01 sets METRICS_ENVIRONMENT with Beanstalk's backtick syntax: `Ref AWSEBEnvironmentName` is
    the environment's name, evaluated when Beanstalk builds the stack (as 04's policy name uses it)."""
    import yaml

    rehearsal = load_script("rehearse-deploy")
    doc = yaml.safe_load((ROOT / ".ebextensions/01-environment.config").read_text())
    env = doc["option_settings"]["aws:elasticbeanstalk:application:environment"]
    assert env["METRICS_ENVIRONMENT"] == '`{"Ref" : "AWSEBEnvironmentName"}`'
    value = rehearsal.evaluate_option(env["METRICS_ENVIRONMENT"], "01")
    assert value == rehearsal.PSEUDO["AWSEBEnvironmentName"]
    settings = load_settings({"RDS_HOSTNAME": "h", "RDS_DB_NAME": "d", "RDS_USERNAME": "u",
                              "RDS_PASSWORD": "p", "METRICS_ENVIRONMENT": value,
                              "METRICS_INTERVAL": env["METRICS_INTERVAL"]})
    assert settings.metrics_environment == value and settings.metrics_interval == 60


def test_the_benchmarks_metrics_variants_differ_only_in_the_metrics_thread(db_env, tmp_path):
    """scripts/bench --apps metrics-1s,metrics-off compares the same app with and without the
    thread: one must write lines, the other none."""
    import sys

    import localdb

    bench = load_script("bench")
    env = {**os.environ, **db_env, "WEB_CONCURRENCY": "1"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"
    started = []
    try:
        for name in ("metrics-off", "metrics-1s"):  # each answered GET /api/users: pools exist
            started.append(bench.start_app(name, env, localdb.free_port(), tmp_path))
        deadline = time.monotonic() + 15
        while '"_aws"' not in (tmp_path / "metrics-1s.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        for proc in started:
            bench.stop_app(proc)
    on = [line for line in (tmp_path / "metrics-1s.log").read_text().splitlines() if '"_aws"' in line]
    assert on and all(parse_emf(line)["MaxDatabaseConnectionsAllowed"] >= 1 for line in on)
    assert '"_aws"' not in (tmp_path / "metrics-off.log").read_text()
