"""The database extension: one pool per worker process, one lease per request.

Like Flask's tutorial `get_db()`, a request borrows a connection lazily on first use and
the teardown callback gives it back on every path, errors included.
"""

from __future__ import annotations

import logging
import os
import threading

import mysql.connector
from flask import Flask, current_app, g

from app import metrics
from app.config import Settings
from app.credentials import CredentialProvider
from app.db.budget import Budget
from app.db.connection import ConnectionOpener
from app.db.errors import DatabaseBusy, DatabaseUnavailable, PoolTimeout
from app.db.pool import ConnectionPool, Lease

__all__ = ["Database", "DatabaseBusy", "DatabaseUnavailable", "PoolTimeout", "Lease", "get_db",
           "init_app"]

log = logging.getLogger(__name__)


class Database:
    """Owns the pool of the current process and makes a new one after a fork.

    A pool inherited from a parent process holds sockets the parent still uses; the child
    never uses it (the pool disarms those connections at fork, see app/db/pool.py) and
    builds its own on first use.
    """

    def __init__(self, settings: Settings, credentials: CredentialProvider,
                 budget: Budget | None = None):
        self.settings = settings
        self.opener = ConnectionOpener(settings, credentials)
        self.budget = budget
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pid: int | None = None
        self._metrics: metrics.MetricsEmitter | None = None
        self._budget_checked_pid: int | None = None

    @property
    def pool(self) -> ConnectionPool:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = self._new_pool()
                self._pid = os.getpid()
                s = self.settings  # this process's pool, this process's metrics thread
                self._metrics = metrics.start_emitter(
                    self._pool, interval=s.metrics_interval, namespace=s.metrics_namespace,
                    environment=s.metrics_environment)
            return self._pool

    def _new_pool(self) -> ConnectionPool:
        s = self.settings
        return ConnectionPool(self._open, size=s.pool_size, timeout=s.pool_timeout,
                              max_lifetime=s.pool_max_lifetime, idle_ping=s.pool_idle_ping)

    def _open(self):
        """The pool's creator: the opener; on this process's first connection, the server's
        max_connections is read once to log the fleet's budget against it (startup itself
        never touches the database)."""
        conn = self.opener()
        if self.budget is not None and self._budget_checked_pid != os.getpid():
            with self._lock:
                first = self._budget_checked_pid != os.getpid()
                self._budget_checked_pid = os.getpid()
            if first:
                _log_server_budget(conn, self.budget)
        return conn

    def borrow(self) -> Lease:
        return self.pool.borrow()

    def dispose(self) -> None:
        """Close this process's idle connections and stop its metrics thread (tests use it; at
        a worker's exit the metrics thread stops through atexit)."""
        if self._pool is not None and self._pid == os.getpid():
            if self._metrics is not None:
                self._metrics.stop()
            self._pool.dispose()


def _log_server_budget(conn, budget: Budget) -> None:
    """One line with the fleet's connections against max_connections; a warning above 75%.

    Skipped through RDS Proxy, whose own limit is not the server's. A failure here is logged
    and never fails the connection the pool asked for.
    """
    if budget.proxy:
        return
    try:
        cursor = conn.cursor()
        try:
            cursor.execute("SELECT @@global.max_connections")
            (limit,) = cursor.fetchone()
        finally:
            cursor.close()
        limit = int(limit)
    except (mysql.connector.Error, TypeError, ValueError) as err:
        log.warning("could not read the server's max_connections: %s", err,
                    extra={"event": "db_budget_unknown"})
        return
    verdict = budget.verdict(limit)
    log.log(logging.INFO if verdict == "ok" else logging.WARNING,
            "connection budget: %s of max_connections %d", budget.formula(), limit,
            extra={"event": "db_budget_checked", **budget.describe(), "max_connections": limit,
                   "share": budget.share(limit), "verdict": verdict})


def get_db() -> Lease:
    """The connection lease of the current request, borrowed on first use."""
    lease = g.get("db_lease")
    if lease is None:
        lease = g.db_lease = current_app.extensions["database"].borrow()
    return lease


def release_db(_error: BaseException | None = None) -> None:
    """Teardown: give the request's connection back, on every path.

    The app's error handlers answer every exception, so `_error` is always None here; a
    transaction a failed request left open is rolled back by the pool on return.
    """
    lease = g.pop("db_lease", None)
    if lease is not None:
        lease.release()


def init_app(app: Flask, database: Database) -> None:
    app.extensions["database"] = database
    app.teardown_appcontext(release_db)
