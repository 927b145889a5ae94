"""A per-process connection pool: SQLAlchemy's QueuePool driving raw mysql-connector connections.

QueuePool gives what mysql-connector's own pool lacks: a borrow that waits (up to a timeout)
instead of failing at once, recycling by age, and invalidation of broken connections. This
module adds an idle-time ping, a clean return (rollback only when a transaction or a failure
needs it, so a plain read costs no extra round trip), statistics, and the translation of
driver failures into DatabaseUnavailable / PoolTimeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import mysql.connector
from sqlalchemy import event, exc as sa_exc
from sqlalchemy.pool import QueuePool

from app.db.errors import DatabaseUnavailable, PoolTimeout, is_connection_error

log = logging.getLogger(__name__)

_RETURNED_AT = "returned_at"
_CURSOR = "cursor"
_DIRTY = "dirty"


class ConnectionPool:
    """Connections for the threads of one process; never use it in a forked child."""

    def __init__(self, creator: Callable[[], Any], *, size: int, timeout: float,
                 max_lifetime: float, idle_ping: float):
        self.size = size
        self.timeout = timeout
        self.idle_ping = idle_ping
        self._creator = creator
        self._pool = QueuePool(
            self._open, pool_size=size, max_overflow=0, timeout=timeout,
            recycle=max_lifetime, reset_on_return=None, pre_ping=False,  # seconds, fractions kept
        )
        self._lock = threading.Lock()
        self._waiting = 0
        self._borrow_timeouts = 0
        self._opened = 0
        self._closed = 0
        event.listen(self._pool, "checkout", self._on_checkout)
        event.listen(self._pool, "checkin", self._on_checkin)
        event.listen(self._pool, "reset", self._on_reset)
        event.listen(self._pool, "close", self._on_close)
        event.listen(self._pool, "close_detached", self._on_close_detached)

    # -- borrowing ---------------------------------------------------------------------
    def borrow(self) -> Lease:
        """Return a lease on a healthy connection, waiting up to the pool timeout.

        Raises PoolTimeout when all connections stayed busy, DatabaseUnavailable when no
        connection could be opened.
        """
        with self._lock:
            self._waiting += 1
        try:
            return Lease(self, self._pool.connect())
        except sa_exc.TimeoutError:
            with self._lock:
                self._borrow_timeouts += 1
            raise PoolTimeout(f"no free connection within {self.timeout:g}s") from None
        except (mysql.connector.Error, sa_exc.InvalidRequestError) as err:
            raise DatabaseUnavailable("cannot open a database connection") from err
        finally:
            with self._lock:
                self._waiting -= 1

    def stats(self) -> dict[str, int]:
        """A snapshot for /health/ready and operators; counters are since process start."""
        idle = self._pool.checkedin()
        in_use = self._pool.checkedout()
        return {
            "size": self.size, "open": idle + in_use, "in_use": in_use, "idle": idle,
            "waiting": self._waiting, "borrow_timeouts": self._borrow_timeouts,
            "opened": self._opened, "closed": self._closed,
        }

    def dispose(self) -> None:
        """Close idle connections (connections in use close when returned)."""
        self._pool.dispose()

    # -- pool events -------------------------------------------------------------------
    def _open(self):
        conn = self._creator()
        with self._lock:
            self._opened += 1
        return conn

    def _on_checkout(self, dbapi_conn, record, _proxy) -> None:
        """Ping a connection that sat idle long enough for a firewall or the server to drop it."""
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at < self.idle_ping:
            return
        try:
            dbapi_conn.ping(reconnect=False)
        except mysql.connector.Error as err:
            log.info("idle connection failed its ping; replacing it", extra={"event": "db_stale"})
            raise sa_exc.DisconnectionError() from err  # QueuePool invalidates it and retries

    def _on_checkin(self, _dbapi_conn, record) -> None:
        if record is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    def _on_reset(self, dbapi_conn, record, _state) -> None:
        """Give the connection back clean: roll back an open or failed transaction.

        In autocommit mode a read leaves no transaction, so the common path sends nothing;
        the server's status flag (no round trip) tells whether a transaction is still open.
        """
        dirty = record.info.pop(_DIRTY, False) if record is not None else False
        if dirty or dbapi_conn.in_transaction:
            dbapi_conn.rollback()  # if this raises, QueuePool invalidates the connection

    def _on_close(self, _dbapi_conn, record) -> None:
        if record is not None:
            record.info.clear()
        with self._lock:
            self._closed += 1

    def _on_close_detached(self, _dbapi_conn) -> None:
        with self._lock:
            self._closed += 1


class Lease:
    """One borrowed connection; give it back with release() exactly once."""

    __slots__ = ("_pool", "_fairy")

    def __init__(self, pool: ConnectionPool, fairy):
        self._pool = pool
        self._fairy = fairy

    @property
    def connection(self):
        """The raw mysql-connector connection, for callers that need the DB-API directly."""
        return self._fairy.dbapi_connection

    @property
    def connection_id(self) -> int:
        return self._fairy.dbapi_connection.connection_id

    def _cursor(self):
        # One buffered cursor per physical connection: creating a cursor pings the server
        # with the C extension, and buffering leaves no unread result behind.
        info = self._fairy.info
        cursor = info.get(_CURSOR)
        if cursor is None:
            cursor = info[_CURSOR] = self._fairy.dbapi_connection.cursor(buffered=True)
        return cursor

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read and return its rows as dicts.

        Outside a transaction a read is retried once on a fresh connection when the
        connection turns out to be broken, so a dropped idle connection costs no request.
        """
        try:
            return self._query(sql, params)
        except mysql.connector.Error as err:
            if not is_connection_error(err) or self._in_transaction():
                self._raise(err)
        self._replace()
        try:
            return self._query(sql, params)
        except mysql.connector.Error as err:
            self._raise(err)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> tuple[int, int | None]:
        """Run a write; return (rowcount, lastrowid). Never retried: it may have been applied."""
        try:
            cursor = self._cursor()
            cursor.execute(sql, params)
        except mysql.connector.Error as err:
            self._raise(err)
        return cursor.rowcount, cursor.lastrowid

    def begin(self) -> None:
        try:
            self._fairy.dbapi_connection.start_transaction()
        except mysql.connector.Error as err:
            self._raise(err)

    def commit(self) -> None:
        try:
            self._fairy.dbapi_connection.commit()
        except mysql.connector.Error as err:
            self._raise(err)

    def rollback(self) -> None:
        try:
            self._fairy.dbapi_connection.rollback()
        except mysql.connector.Error as err:
            self._raise(err)

    def release(self, failed: bool = False) -> None:
        """Return the connection; after a failure it is rolled back before anyone reuses it."""
        fairy, self._fairy = self._fairy, None
        if fairy is None:  # already released, or invalidated after a connection error
            return
        if failed:
            fairy.info[_DIRTY] = True
        fairy.close()

    # -- internals ---------------------------------------------------------------------
    def _query(self, sql, params):
        cursor = self._cursor()
        cursor.execute(sql, params)
        rows = cursor.fetchall()
        # Tuples zipped with the column names once: the driver's dict cursor recomputes
        # the names for every row, which cost more than the rest of a request's Python.
        names = cursor.column_names
        return [dict(zip(names, row)) for row in rows]

    def _in_transaction(self) -> bool:
        try:
            return self._fairy.dbapi_connection.in_transaction
        except Exception:  # noqa: BLE001 - a broken connection may not even answer that
            return False

    def _discard(self) -> None:
        """Close a broken connection; its pool slot is free for a new one at once."""
        fairy, self._fairy = self._fairy, None
        if fairy is not None:
            fairy.invalidate()  # also returns the (now empty) slot to the pool

    def _replace(self) -> None:
        """Swap a broken connection for a new one from the same pool."""
        self._discard()
        self._fairy = self._pool.borrow()._fairy

    def _raise(self, err: mysql.connector.Error):
        if is_connection_error(err):
            self._discard()
            raise DatabaseUnavailable("the database connection failed") from err
        raise err
