"""The pool's numbers as CloudWatch metrics, without an agent: one JSON line per worker and interval.

Each line is a CloudWatch embedded metric format (EMF) document: CloudWatch Logs extracts the
metrics from a log event that is such a JSON object, so the stdout that Beanstalk already streams
is the whole transport (no PutMetricData call, no credentials, nothing on the request path).
Names follow RDS Proxy's metrics where they mean the same thing, so the two read alike on one
dashboard; see the README's "Metrics" for the table and the Beanstalk caveat.

The lines are written to stdout directly, not through the JSON log formatter: EMF needs `_aws`
and the metric values as top-level members, and metrics must not depend on LOG_LEVEL.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from app.db.pool import ConnectionPool

log = logging.getLogger(__name__)
DIMENSION = "EnvironmentName"  # as in AWS/ElasticBeanstalk's own metrics
COUNT = "Count"
MICROSECONDS = "Microseconds"  # RDS Proxy's unit for DatabaseConnectionsBorrowLatency


class PoolMetrics:
    """Turns a pool's counters into EMF documents: gauges as a snapshot, counters as the change
    since the previous document, borrow waits as the interval's mean and maximum."""

    def __init__(self, pool: ConnectionPool, *, namespace: str, environment: str):
        self.namespace = namespace
        self.environment = environment
        self._pool = weakref.ref(pool)  # a discarded pool is not kept alive by its metrics
        self._last = {"borrow_timeouts": 0, "opened": 0, "closed": 0, "open_failures": 0}

    def document(self) -> dict | None:
        """The next EMF document, or None once the pool is gone."""
        pool = self._pool()
        if pool is None:
            return None
        stats = pool.stats()
        stats["open_failures"] = pool.open_failures
        borrows, wait_total, wait_max = pool.take_borrow_waits()
        delta = {key: stats[key] - last for key, last in self._last.items()}
        self._last = {key: stats[key] for key in self._last}
        values: list[tuple[str, str, float]] = [
            ("DatabaseConnections", COUNT, stats["open"]),
            ("DatabaseConnectionsCurrentlyBorrowed", COUNT, stats["in_use"]),
            ("DatabaseConnectionsIdle", COUNT, stats["idle"]),
            ("MaxDatabaseConnectionsAllowed", COUNT, stats["size"]),
            ("DatabaseConnectionBorrowsWaiting", COUNT, stats["waiting"]),
            ("DatabaseConnectionBorrows", COUNT, borrows),
            ("DatabaseConnectionsBorrowTimeouts", COUNT, delta["borrow_timeouts"]),
            ("DatabaseConnectionsSetupSucceeded", COUNT, delta["opened"]),
            ("DatabaseConnectionsSetupFailed", COUNT, delta["open_failures"]),
            ("DatabaseConnectionsClosed", COUNT, delta["closed"]),
        ]
        if borrows:  # no borrow, no latency: a 0 would drag the average down
            values += [
                ("DatabaseConnectionsBorrowLatency", MICROSECONDS,
                 round(wait_total / borrows * 1e6, 1)),
                ("DatabaseConnectionsBorrowLatencyMax", MICROSECONDS, round(wait_max * 1e6, 1)),
            ]
        doc: dict = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": [[DIMENSION]],
                    "Metrics": [{"Name": name, "Unit": unit} for name, unit, _ in values],
                }],
            },
            DIMENSION: self.environment,
            "event": "pool_metrics",
            "pid": os.getpid(),  # a property, not a dimension: a metric per worker would cost per pid
        }
        doc.update({name: value for name, _, value in values})
        return doc


class MetricsEmitter:
    """A daemon thread that writes one EMF line every `interval` seconds, and at stop a last one
    with the counters of the unfinished interval (if it wrote any before). A line that fails is
    skipped with a warning, not the thread's end: the next interval writes again.

    Started in the process that owns the pool (a gunicorn worker, after fork), never in the
    master: the pool, and so the emitter, is made on first use. Stopped at interpreter exit,
    before daemon threads are frozen, so a worker's shutdown prints no thread errors.
    """

    def __init__(self, metrics: PoolMetrics, interval: float, stream: TextIO | None = None):
        self.metrics = metrics
        self.interval = interval
        self._stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pool-metrics", daemon=True)

    def start(self) -> MetricsEmitter:
        self._thread.start()
        atexit.register(self.stop)
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """End the thread, after a last line if it wrote any (the counters since the previous)."""
        if self._stop.is_set():
            return
        self._stop.set()
        atexit.unregister(self.stop)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def emit(self) -> bool:
        """Write one line now; False once the pool is gone."""
        doc = self.metrics.document()
        if doc is None:
            return False
        stream = self._stream or sys.stdout  # gunicorn and pytest may swap sys.stdout
        stream.write(json.dumps(doc, separators=(",", ":")) + "\n")  # one write: one line
        stream.flush()
        return True

    def _run(self) -> None:
        wrote = failing = False
        while True:
            stopping = self._stop.wait(self.interval)
            if stopping and not wrote:  # a process shorter than one interval (a CLI command)
                return
            try:
                if not self.emit():
                    return
                wrote, failing = True, False
            except Exception as err:  # noqa: BLE001 - metrics must never take a worker down
                if not failing:  # one warning per run of failures; each interval tries again
                    log.warning("pool metrics failed: %s; trying again every interval",
                                type(err).__name__, extra={"event": "pool_metrics_failed"})
                failing = True
            if stopping:
                return


def start_emitter(pool: ConnectionPool, *, interval: float, namespace: str,
                  environment: str) -> MetricsEmitter | None:
    """The emitter for a new pool, running; None when METRICS_INTERVAL is 0."""
    if interval <= 0:
        return None
    return MetricsEmitter(PoolMetrics(pool, namespace=namespace, environment=environment),
                          interval).start()
