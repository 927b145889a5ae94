"""The database extension: one pool per worker process, one lease per request.

Like Flask's tutorial `get_db()`, a request borrows a connection lazily on first use and
the teardown callback gives it back on every path, errors included.
"""

from __future__ import annotations

import os
import threading

from flask import Flask, current_app, g

from app import metrics
from app.config import Settings
from app.credentials import CredentialProvider
from app.db.connection import ConnectionOpener
from app.db.errors import DatabaseUnavailable, PoolTimeout
from app.db.pool import ConnectionPool, Lease

__all__ = ["Database", "DatabaseUnavailable", "PoolTimeout", "Lease", "get_db", "init_app"]


class Database:
    """Owns the pool of the current process and makes a new one after a fork.

    A pool inherited from a parent process holds sockets the parent still uses; the child
    never uses it (the pool disarms those connections at fork, see app/db/pool.py) and
    builds its own on first use.
    """

    def __init__(self, settings: Settings, credentials: CredentialProvider):
        self.settings = settings
        self.opener = ConnectionOpener(settings, credentials)
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pid: int | None = None
        self._metrics: metrics.MetricsEmitter | None = None

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
        return ConnectionPool(self.opener, size=s.pool_size, timeout=s.pool_timeout,
                              max_lifetime=s.pool_max_lifetime, idle_ping=s.pool_idle_ping)

    def borrow(self) -> Lease:
        return self.pool.borrow()

    def dispose(self) -> None:
        """Close this process's idle connections and stop its metrics thread (used at shutdown
        and by tests)."""
        if self._pool is not None and self._pid == os.getpid():
            if self._metrics is not None:
                self._metrics.stop()
            self._pool.dispose()


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
