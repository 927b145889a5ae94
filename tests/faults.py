"""Steady load against the API while a test breaks the database, and what the clients saw.

The resilience tests use it to assert behaviour; a fault report can reuse the same numbers:
requests sent, 2xx, 503 (JSON with Retry-After), anything else, time to recover after the
fault ended, and the peak number of server connections.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer (connection refused/reset, client timeout)
    code: str | None = None  # the JSON error code, when there is one
    retry_after: str | None = None
    content_type: str | None = None
    failure: str | None = None  # what went wrong when there was no answer

    @property
    def is_clean_503(self) -> bool:
        """The only acceptable failure: 503 JSON with Retry-After."""
        return (self.status == 503 and self.retry_after is not None and self.code is not None
                and (self.content_type or "").startswith("application/json"))


def send(method: str, url: str, timeout: float = 30, **kwargs) -> Outcome:
    started = time.monotonic()
    try:
        response = requests.request(method, url, timeout=timeout, **kwargs)
    except requests.RequestException as err:
        return Outcome(started, time.monotonic(), None, failure=type(err).__name__)
    ended = time.monotonic()
    code = None
    if response.headers.get("Content-Type", "").startswith("application/json"):
        try:
            code = (response.json().get("error") or {}).get("code")
        except (ValueError, AttributeError):
            code = None
    return Outcome(started, ended, response.status_code, code, response.headers.get("Retry-After"),
                   response.headers.get("Content-Type"))


class Load:
    """`threads` clients, each sending `request(n)` back to back until stop()."""

    def __init__(self, request: Callable[[int], Outcome], threads: int = 4):
        self._request = request
        self._counter = itertools.count()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcomes: list[Outcome] = []
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            outcome = self._request(next(self._counter))
            with self._lock:
                self.outcomes.append(outcome)

    def count(self, predicate: Callable[[Outcome], bool], since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.started >= since and predicate(o))

    def wait_for(self, predicate: Callable[[Outcome], bool], n: int, since: float = 0.0,
                 timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while self.count(predicate, since) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {n} such answers within {timeout}s: {summary(self.outcomes)}")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(60)


def ok(o: Outcome) -> bool:
    return o.status is not None and 200 <= o.status < 300


class ConnectionSampler:
    """Polls the server's PROCESSLIST for one database and keeps the peak (a fault report's
    "peak server connections"). `sql` runs statements as an administrator (LocalServer.sql)."""

    def __init__(self, sql: Callable[[list[str]], list], database: str, interval: float = 0.02):
        self._query = [f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{database}'"]
        self._sql = sql
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, int(self._sql(self._query)[0][0]))
            except Exception:  # noqa: BLE001 - the server may be down on purpose
                pass
            self._stop.wait(self._interval)


def summary(outcomes: list[Outcome], fault_ended: float | None = None,
            peak_connections: int | None = None) -> dict:
    """The numbers a fault report prints for one scenario."""
    others = [o for o in outcomes if not ok(o) and not o.is_clean_503]
    result = {
        "sent": len(outcomes),
        "2xx": sum(1 for o in outcomes if ok(o)),
        "503": sum(1 for o in outcomes if o.is_clean_503),
        "other": len(others),
        "other_examples": sorted({f"{o.status} {o.code or o.failure}" for o in others})[:5],
    }
    if fault_ended is not None:
        result["recovered_after_s"] = recovery_time(outcomes, fault_ended)
    if peak_connections is not None:
        result["peak_server_connections"] = peak_connections
    return result


def recovery_time(outcomes: list[Outcome], fault_ended: float) -> float | None:
    """Seconds from the end of the fault to the start of the first request after which
    every answer was 2xx; None if the API never recovered."""
    after = sorted((o for o in outcomes if o.ended >= fault_ended), key=lambda o: o.started)
    last_bad = max((o.started for o in after if not ok(o)), default=None)
    good = [o.started for o in after if ok(o) and (last_bad is None or o.started > last_bad)]
    if not good:
        return None
    return max(0.0, good[0] - fault_ended)
