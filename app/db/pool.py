"""A per-process connection pool: SQLAlchemy's QueuePool driving raw mysql-connector connections.

QueuePool gives what mysql-connector's own pool lacks: a borrow that waits (up to a timeout)
instead of failing at once, recycling by age, and invalidation of broken connections. This
module adds an idle-time ping, a clean return (rollback only when a transaction is open, so a
plain read costs no extra round trip), fork safety, statistics, and the translation of driver
failures into DatabaseUnavailable / PoolTimeout.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import mysql.connector
from mysql.connector.constants import FieldType
from mysql.connector.errors import get_mysql_exception
from mysql.connector.opentelemetry.constants import OTEL_ENABLED
from sqlalchemy import event, exc as sa_exc
from sqlalchemy.pool import QueuePool

try:  # the C extension, when it loaded (mysql.connector.HAVE_CEXT)
    import _mysql_connector
    from _mysql_connector import MySQLInterfaceError
    from mysql.connector.connection_cext import CMySQLConnection
except ImportError:  # pragma: no cover - the pinned driver ships it for this platform
    CMySQLConnection = None

from app.db.errors import (DatabaseUnavailable, PoolTimeout, StatementTimeout, WriteOutcomeUnknown,
                           WriteTimedOut, gave_up, is_connection_error, is_out_of_space,
                           is_read_only, is_unreachable_behind_proxy, misconfiguration, timed_out,
                           was_not_applied)

log = logging.getLogger(__name__)

_RETURNED_AT = "returned_at"
_OPENED_AT = "opened_at"
_IDLE_LIMIT = "idle_limit"
_CURSOR = "cursor"

# A connection idle longer than this share of the server's wait_timeout is pinged before use:
# the ping restarts the server's idle clock, so what is handed out has at least half of it left.
WAIT_TIMEOUT_SHARE = 0.5

# Every pool of this process, so that a forked child can disarm the connections it inherits.
_POOLS: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


def _initialize_client_library() -> None:
    """Initialize the MySQL client library inside the C extension now, before any thread
    connects.

    mysql_init() initializes the library on a process's first connection, which is not
    thread-safe: "You must either call mysql_library_init() prior to spawning any threads, or
    else use a mutex to protect the call"
    (https://dev.mysql.com/doc/c-api/9.5/en/mysql-library-init.html). The driver (9.7.0) never
    calls it, and calls mysql_init() with the GIL released, so a fresh worker's threads opening
    their first connections together ran it together. The library marks itself initialized
    before it is, and the other thread goes on into a half-initialized library: its connection
    fails (2059, "Authentication plugin 'mysql_native_password' cannot be loaded: not
    initialized"), or, with other timings, it crashes: a worker under scripts/faults died of
    SIGSEGV on its first requests, its core showing one thread in mysql_real_connect while
    another was still in my_init under mysql_init (by its symptoms, the crash that cost a CI
    run's fault report two requests). tests/test_pool.py holds a thread inside the
    initialization with gdb. mysqlclient fixed the same in its module init
    (PyMySQL/mysqlclient#377). Called at import, which a gunicorn worker runs
    before its threads start; PyDLL keeps the GIL held during the call. mysql_library_init is
    a macro for mysql_server_init, the symbol the extension exports.
    """
    if CMySQLConnection is None:  # pragma: no cover - no C extension, no C library
        return
    library = ctypes.PyDLL(_mysql_connector.__file__)  # the loaded extension, not a second copy
    if library.mysql_server_init(0, None, None) != 0:
        raise RuntimeError("the MySQL client library (mysql_library_init) could not initialize")


_initialize_client_library()


def _disarm_inherited_connections() -> None:
    for pool in list(_POOLS):
        pool._disarm()


os.register_at_fork(after_in_child=_disarm_inherited_connections)


def _close_at_exit() -> None:
    """Close this process's idle connections with COM_QUIT as it exits (a gunicorn worker, once
    it has drained its requests after SIGTERM). A socket the exiting process merely drops is an
    aborted client to the server: Aborted_clients, and one "Aborted connection" warning in its
    log per pooled connection, on every deploy and scale-in. Pools a forked child inherited
    belong to its parent and are left alone."""
    for pool in list(_POOLS):
        if pool._pid == os.getpid():
            try:
                pool.dispose()
            except Exception:  # noqa: BLE001 - an exiting process has no one to tell
                pass


atexit.register(_close_at_exit)


def _disarm(dbapi_conn) -> None:
    """Make a connection inherited through fork unable to touch the parent's session.

    The child shares the parent's sockets. Whatever closes the connection object in the child
    (the pool, the garbage collector, interpreter exit after a gunicorn worker's sys.exit)
    would send COM_QUIT, and the server would end the parent's session. So the driver's
    session object (C extension) or socket (pure Python) is detached from the connection and
    kept alive for good: it is never closed, its memory is the child's copy anyway, and the
    connection object left behind is closed for every use.
    """
    for attr in ("_cmysql", "_socket"):
        session = getattr(dbapi_conn, attr, None)
        if session is not None:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(session))  # never deallocated
            setattr(dbapi_conn, attr, None)


@functools.lru_cache(maxsize=256)
def _statement_parts(sql: str) -> tuple[bytes, ...]:
    """A statement encoded once and split at its %s placeholders, as the driver's cursor
    splits it (its parameter pattern is exactly b"%s"); statements are the repository's
    constants, so the cache stays small."""
    return tuple(sql.encode("utf-8").split(b"%s"))


def _bind(conn, sql: str, params: Sequence[Any]) -> bytes:
    """The statement with each %s replaced by its parameter converted, escaped and quoted by
    the connection itself (prepare_for_mysql, what the C extension's cursor calls)."""
    parts = _statement_parts(sql)
    if len(parts) - 1 != len(params):
        raise mysql.connector.ProgrammingError(
            f"the statement has {len(parts) - 1} placeholder(s) for {len(params)} parameter(s)")
    if not params:
        return parts[0]
    pieces = [parts[0]]
    for value, part in zip(conn.prepare_for_mysql(params), parts[1:]):
        pieces += (value, part)
    return b"".join(pieces)


def _driver_error(err: MySQLInterfaceError) -> mysql.connector.Error:
    """The driver's exception for a C extension error, as its own methods raise it."""
    if hasattr(err, "errno"):
        return get_mysql_exception(err.errno, msg=err.msg, sqlstate=err.sqlstate)
    return mysql.connector.InterfaceError(str(err))


def _read_cext(conn, stmt: bytes) -> tuple[list[str], list[tuple]]:
    """Run a read on the C extension's connection: (column names, rows).

    The statement goes straight to the C extension's session (`_cmysql`, the attribute the
    fork-safety code above relies on too; the driver is pinned), which reads the whole result
    into client memory (buffered). The driver's cmd_query would also build a 9-field
    description per column and read the warning count, and its get_rows would walk every value
    in Python looking for VECTOR columns and a converter class, which these connections never
    have: together half of a list query's CPU in this process (docs/request-budget.md). What
    cmd_query does that a read needs is kept: a pending result is consumed or refused first,
    query attributes are sent, errors become the driver's exceptions; with OpenTelemetry's
    trace propagation on, and for a converter or a VECTOR column, the driver's own path runs.
    tests/test_pool.py compares both paths.
    """
    if OTEL_ENABLED and conn.otel_context_propagation:
        return _read_cmd_query(conn, stmt)
    session = conn._cmysql
    if session is None:  # closed: as cmd_query reports it
        raise mysql.connector.OperationalError(errno=2055, msg="Connection not available.")
    try:
        if session.have_result_set:
            conn.handle_unread_result()  # consumes it, or raises "Unread result found"
        session.query(stmt, raw=False, buffered=True, raw_as_string=False,
                      query_attrs=conn.query_attrs)
        if not session.have_result_set:
            raise mysql.connector.ProgrammingError("query() is for statements that return rows")
        fields = session.fetch_fields()
        if conn.converter is not None or any(field[8] == FieldType.VECTOR for field in fields):
            session.free_result()
            return _read_cmd_query(conn, stmt)
        names = [field[4] for field in fields]
        fetch_row = session.fetch_row
        rows = []
        try:
            row = fetch_row()
            while row:
                rows.append(row)
                row = fetch_row()
        finally:
            session.free_result()
    except MySQLInterfaceError as err:
        raise _driver_error(err) from err
    return names, rows


def _read_cmd_query(conn, stmt: bytes) -> tuple[list[str], list[tuple]]:
    """The driver's own read: cmd_query, then get_rows."""
    result = conn.cmd_query(stmt, raw=False, buffered=True)
    columns = result.get("columns")  # absent when the statement returned no rows
    if columns is None:
        raise mysql.connector.ProgrammingError("query() is for statements that return rows")
    rows, _eof = conn.get_rows(raw=False)  # frees the result, on errors too
    return [column[0] for column in columns], rows


class ConnectionPool:
    """Connections for the threads of one process; a forked child must build its own."""

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
        self._open_failures = 0
        # Borrows since take_borrow_waits() last ran: count, total and longest wait (seconds).
        self._borrows = 0
        self._wait_total = 0.0
        self._wait_max = 0.0
        self._suspect_before = 0.0  # connections opened before this are replaced on checkout
        self._pid = os.getpid()
        self._connections: weakref.WeakSet = weakref.WeakSet()  # open DB-API connections
        _POOLS.add(self)
        event.listen(self._pool, "connect", self._on_connect)
        event.listen(self._pool, "checkout", self._on_checkout)
        event.listen(self._pool, "close", self._on_close)
        event.listen(self._pool, "close_detached", self._on_close_detached)

    # -- borrowing ---------------------------------------------------------------------
    def borrow(self) -> Lease:
        """Return a lease on a healthy connection, waiting up to the pool timeout.

        Raises PoolTimeout when all connections stayed busy, DatabaseUnavailable when no
        connection could be opened (DatabaseMisconfigured when the server refused the
        configuration: credentials, database name, grants).
        """
        if self._pid != os.getpid():
            raise RuntimeError("this pool belongs to the parent process; build a new one after fork")
        started = time.perf_counter()
        with self._lock:
            self._waiting += 1
        fairy = None
        try:
            fairy = self._pool.connect()
            return Lease(self, fairy)
        except sa_exc.TimeoutError:
            with self._lock:
                self._borrow_timeouts += 1
            raise PoolTimeout(f"no free connection within {self.timeout:g}s") from None
        except (mysql.connector.Error, sa_exc.InvalidRequestError) as err:
            raise (misconfiguration(err)
                   or DatabaseUnavailable("cannot open a database connection")) from err
        finally:
            # The wait is recorded under the lock taken anyway: no extra lock per borrow.
            waited = time.perf_counter() - started
            with self._lock:
                self._waiting -= 1
                if fairy is not None:
                    self._borrows += 1
                    self._wait_total += waited
                    if waited > self._wait_max:
                        self._wait_max = waited

    def stats(self) -> dict[str, int]:
        """A snapshot for /health/ready and operators; counters are since process start.

        `open` counts physical connections: a slot whose connection was discarded stays in
        QueuePool's queue, empty, until the next borrow opens a new one.
        """
        with self._lock:
            opened, closed = self._opened, self._closed
        in_use = self._pool.checkedout()
        open_ = max(opened - closed, in_use)
        return {
            "size": self.size, "open": open_, "in_use": in_use, "idle": open_ - in_use,
            "waiting": self._waiting, "borrow_timeouts": self._borrow_timeouts,
            "opened": opened, "closed": closed,
        }

    def take_borrow_waits(self) -> tuple[int, float, float]:
        """Successful borrows since the previous call: (count, total wait, longest wait) in
        seconds, for app/metrics.py. Resets them: one reader per pool."""
        with self._lock:
            taken = (self._borrows, self._wait_total, self._wait_max)
            self._borrows, self._wait_total, self._wait_max = 0, 0.0, 0.0
        return taken

    @property
    def open_failures(self) -> int:
        """Connection attempts that failed (server down, refused, misconfigured), since start."""
        return self._open_failures

    def dispose(self) -> None:
        """Close idle connections (connections in use close when returned)."""
        self._pool.dispose()

    def suspect_all(self) -> None:
        """Replace, on their next checkout, every connection opened until now.

        One broken or read-only connection says the others are probably in the same state:
        a restarted server dropped them all, a failover left them all on the old writer
        (a fresh connection resolves the endpoint anew and reaches the new one).
        """
        self._suspect_before = time.monotonic()

    def _disarm(self) -> None:
        """In a forked child: leave every inherited connection to the parent (see _disarm)."""
        for dbapi_conn in list(self._connections):
            _disarm(dbapi_conn)

    # -- pool events -------------------------------------------------------------------
    def _open(self):
        try:
            conn = self._creator()
        except BaseException:
            with self._lock:
                self._open_failures += 1
            raise
        with self._lock:
            self._opened += 1
        return conn

    def _on_connect(self, dbapi_conn, record) -> None:
        """Learn how long the server lets this session idle (@@wait_timeout) before it closes it,
        and its sql_mode.

        The server, not DB_POOL_IDLE_PING, decides when an idle session dies; a connection
        the server closed would fail the next write (writes are not retried). The pure-Python
        cursor escapes parameters by the session's sql_mode, which the driver otherwise looks
        up at the connection's first statement with parameters, through a cursor of its own:
        on a connection lost by then that lookup fails as ProgrammingError ("Failed processing
        format-parameters"), which is no connection error, so the dead connection would answer
        500 and go back to the pool. Read here, it is known from the start (`_sql_mode`, the
        attribute the driver caches it in; the driver is pinned). The buffered cursor made here
        is the one Lease reuses, so this costs one round trip per connection, not per borrow.
        """
        self._connections.add(dbapi_conn)
        record.info[_OPENED_AT] = record.info[_RETURNED_AT] = time.monotonic()
        limit = self.idle_ping
        try:
            cursor = record.info[_CURSOR] = dbapi_conn.cursor(buffered=True)
            cursor.execute("SELECT @@session.wait_timeout, @@session.sql_mode")
            wait_timeout, sql_mode = cursor.fetchone()
            dbapi_conn._sql_mode = sql_mode
            limit = min(limit, float(wait_timeout) * WAIT_TIMEOUT_SHARE)
        except (mysql.connector.Error, TypeError, ValueError) as err:
            if isinstance(err, mysql.connector.Error) and is_connection_error(err):
                # Lost between its login and this query (a restart, a failover): never handed
                # out. Stamped as opened before any suspect_all, the checkout replaces it.
                log.info("new connection lost before use; replacing it", extra={"event": "db_stale"})
                record.info[_OPENED_AT] = float("-inf")
            else:
                log.warning("could not read the server's wait_timeout: %s", err,
                            extra={"event": "db_wait_timeout_unknown"})
        record.info[_IDLE_LIMIT] = limit

    def _on_checkout(self, dbapi_conn, record, _proxy) -> None:
        """Replace a suspect connection; ping one idle long enough to have been dropped:
        longer than DB_POOL_IDLE_PING (firewalls, proxies) or half the server's wait_timeout.

        Lease.release (or the open) stamps the connection; one that came back without it (a
        lease dropped unreleased, returned by QueuePool's finalizer) may still be inside a
        transaction, which is rolled back before anyone uses it.
        """
        info = record.info
        if info.get(_OPENED_AT, 0.0) <= self._suspect_before:
            raise sa_exc.DisconnectionError()  # QueuePool closes it and opens a new one
        returned_at = info.pop(_RETURNED_AT, None)
        if returned_at is None:
            try:
                if dbapi_conn.in_transaction:
                    dbapi_conn.rollback()
            except Exception as err:  # noqa: BLE001 - as in Lease.release
                raise sa_exc.DisconnectionError() from err  # replaced by a new one
            return
        if time.monotonic() - returned_at < info.get(_IDLE_LIMIT, self.idle_ping):
            return
        try:
            dbapi_conn.ping(reconnect=False)
        except mysql.connector.Error as err:
            log.info("idle connection failed its ping; replacing it", extra={"event": "db_stale"})
            raise sa_exc.DisconnectionError() from err  # QueuePool invalidates it and retries

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
        connection turns out to be broken, so a dropped idle connection costs no request; not
        after DB_READ_TIMEOUT ran out, which a second try would only wait out again.
        """
        started = time.monotonic()
        try:
            return self._query(sql, params)
        except mysql.connector.Error as err:
            if (not is_connection_error(err) or self._in_transaction()
                    or self._timed_out(err, started)):
                self._raise(err, started)
        self._replace()
        started = time.monotonic()
        try:
            return self._query(sql, params)
        except mysql.connector.Error as err:
            self._raise(err, started)

    def execute(self, sql: str, params: Sequence[Any] = (), *,
                idempotent: bool = False) -> tuple[int, int | None]:
        """Run a write; return (rowcount, lastrowid).

        A write that may have been applied is never retried. One the server refused before
        running it (a writer turned read-only by a failover, a session it had already closed
        for idleness) is retried once on a fresh connection, outside a transaction only.
        `idempotent`: the statement changes nothing when sent twice (START TRANSACTION), so a
        broken connection is retried as a read's is: a pooled connection that died while idle
        (a failover, a restart) costs a write no request either.
        """
        started = time.monotonic()
        try:
            return self._execute(sql, params)
        except mysql.connector.Error as err:
            refused = was_not_applied(err)
            retry = refused or (idempotent and is_connection_error(err)
                                and not self._timed_out(err, started))
            if not retry or self._in_transaction():
                self._raise(err, started, commits=self._commits(sql, idempotent))
            if refused:
                log.warning("the database refused a write without applying it (errno %s); "
                            "retrying once on a fresh connection", err.errno,
                            extra={"event": "db_write_refused", "errno": err.errno})
        self._replace()
        started = time.monotonic()
        try:
            return self._execute(sql, params)
        except mysql.connector.Error as err:
            self._raise(err, started, commits=self._commits(sql, idempotent))

    def release(self) -> None:
        """Return the connection clean: a transaction left open is rolled back first.

        A request that fails mid-transaction is answered by the app's error handler, so
        nothing downstream knows it failed; the server's status flag, which every OK packet
        carries (no round trip), says whether a transaction is still open, and the rollback
        releases its row locks before anyone reuses the session. In autocommit mode a read
        leaves no transaction, so the common path sends nothing. Done here rather than in
        QueuePool's reset and checkin events: their dispatch cost 20k instructions per
        request, a sixth of the borrow and return (docs/request-budget.md); a lease dropped
        without release is still caught at the next checkout (_on_checkout).
        """
        fairy, self._fairy = self._fairy, None
        if fairy is None:  # already released, or invalidated after a connection error
            return
        conn = fairy.dbapi_connection
        try:
            if conn.in_transaction:
                conn.rollback()
        except Exception:  # noqa: BLE001 - the C extension's rollback raises its own error type
            fairy.invalidate()  # a session that cannot roll back is not given to anyone
            return
        fairy.info[_RETURNED_AT] = time.monotonic()
        fairy.close()

    # -- internals ---------------------------------------------------------------------
    def _execute(self, sql, params):
        cursor = self._cursor()
        cursor.execute(sql, params)
        return cursor.rowcount, cursor.lastrowid

    def _query(self, sql, params):
        conn = self._fairy.dbapi_connection
        if CMySQLConnection is not None and isinstance(conn, CMySQLConnection):
            # Not through a cursor: its execute also splits the statement looking for
            # multi-statements, resets and re-reads its own state, about a third of a list
            # query's CPU in this process (docs/request-budget.md).
            names, rows = _read_cext(conn, _bind(conn, sql, params))
        else:  # the pure-Python protocol (DB_SSL_MODE=verify-ca): through the cursor
            cursor = self._cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall()
            names = cursor.column_names
        # Tuples zipped with the column names once: the driver's dict cursor recomputes
        # the names for every row, which cost more than the rest of a request's Python.
        return [dict(zip(names, row)) for row in rows]

    def _commits(self, sql: str, idempotent: bool) -> bool:
        """Whether the statement that just failed may have committed: a COMMIT, or a write sent
        outside a transaction (autocommit). One inside a transaction never does: a session
        lost before its COMMIT is rolled back by the server. Asked after the failure: the
        transaction flag is the one the last answer the server sent carried."""
        if idempotent:
            return False
        return sql.lstrip()[:6].upper() == "COMMIT" or not self._in_transaction()

    def _in_transaction(self) -> bool:
        try:
            return self._fairy.dbapi_connection.in_transaction
        except Exception:  # noqa: BLE001 - a broken connection may not even answer that
            return False

    def _timed_out(self, err: mysql.connector.Error, started: float) -> bool:
        conn = self._fairy.dbapi_connection if self._fairy is not None else None
        return timed_out(err, time.monotonic() - started, getattr(conn, "read_timeout", None))

    def _discard(self, *, suspect_others: bool = True) -> None:
        """Close a broken connection; its pool slot is free for a new one at once."""
        fairy, self._fairy = self._fairy, None
        if fairy is not None:
            fairy.invalidate()  # also returns the (now empty) slot to the pool
        if suspect_others:
            self._pool.suspect_all()

    def _replace(self) -> None:
        """Swap a broken connection for a new one from the same pool."""
        self._discard()
        self._fairy = self._pool.borrow()._fairy

    def _raise(self, err: mysql.connector.Error, started: float, *, commits: bool = False):
        """`commits`: the statement may have committed on its own (see _commits); a connection
        lost under it leaves its outcome unknown, unless the server refused it unrun."""
        if is_connection_error(err):
            unknown = commits and not was_not_applied(err)
            if self._timed_out(err, started):  # the server is slow: only this session is lost
                self._discard(suspect_others=False)
                if unknown:
                    raise WriteTimedOut("no answer to a write within DB_READ_TIMEOUT") from err
                raise StatementTimeout("no answer within DB_READ_TIMEOUT") from err
            self._discard()
            if unknown:
                raise WriteOutcomeUnknown("the database connection failed before the write "
                                          "was confirmed") from err
            raise DatabaseUnavailable("the database connection failed") from err
        if is_read_only(err):  # connected to a reader, or a writer mid-failover
            self._discard()
            raise DatabaseUnavailable("the database is read-only") from err
        if is_out_of_space(err):  # storage full: the connection is fine, the write is not stored
            raise DatabaseUnavailable("the database is out of space") from err
        if is_unreachable_behind_proxy(err):  # RDS Proxy mid-failover: the session is fine
            raise DatabaseUnavailable("RDS Proxy got no database connection in time") from err
        misconfigured = misconfiguration(err)  # a missing grant: the connection itself is fine
        if misconfigured is not None:
            raise misconfigured from err
        busy = gave_up(err)  # a lock wait or time limit: the connection is fine too
        if busy is not None:
            raise busy from err
        raise err
