"""Database failures the API turns into responses, independent of the driver's classes."""

from __future__ import annotations

import mysql.connector
from mysql.connector import errorcode


class DatabaseUnavailable(Exception):
    """No connection could be opened or an open one broke: the client should retry later."""


class DatabaseMisconfigured(DatabaseUnavailable):
    """The database or the credential source refused this configuration: retrying won't help.

    Access denied, an unknown database, a missing privilege, a secret that cannot be read.
    The client still gets a generic 503 (its request was fine); operators get `reason`, a
    stable code for the log event and /health/ready, and a message that never holds a secret.
    """

    def __init__(self, message: str, *, reason: str, errno: int | None = None):
        super().__init__(message)
        self.reason = reason
        self.errno = errno


def misconfiguration(error: BaseException) -> DatabaseMisconfigured | None:
    """The DatabaseMisconfigured a driver error stands for, or None if it is no such error.

    The message is the server's own ("Access denied for user 'app'@'10.0.1.5' (using
    password: YES)"): it may name the user and host, never a password. It is for the log.
    """
    errno = getattr(error, "errno", None)
    reason = _MISCONFIGURED.get(errno)
    if reason is None:
        return None
    return DatabaseMisconfigured(f"{errno}: {getattr(error, 'msg', None) or error}",
                                 reason=reason, errno=errno)


# Server codes that mean "fix the configuration or the grants", never "retry later".
_MISCONFIGURED = {
    1044: "missing_privilege",  # ER_DBACCESS_DENIED_ERROR: no grant on this database (or no such database)
    1045: "access_denied",  # ER_ACCESS_DENIED_ERROR: wrong user or password, expired token
    1049: "unknown_database",  # ER_BAD_DB_ERROR
    1142: "missing_privilege",  # ER_TABLEACCESS_DENIED_ERROR: e.g. INSERT command denied
    1143: "missing_privilege",  # ER_COLUMNACCESS_DENIED_ERROR
    1227: "missing_privilege",  # ER_SPECIFIC_ACCESS_DENIED_ERROR
    1370: "missing_privilege",  # ER_PROCACCESS_DENIED_ERROR
    1698: "access_denied",  # ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    # ER_TOO_BIG_SELECT: a max_join_size (a DB parameter group's) below the rows the optimizer
    # estimates a read examines: the list's keyset page on a table larger than it. Raise it
    # there; SET SQL_BIG_SELECTS in each session would pin it behind RDS Proxy.
    1104: "max_join_size",
}


class StatementTimeout(DatabaseUnavailable):
    """No answer within DB_READ_TIMEOUT: the driver closed the session, and the server may
    still be running the statement (a write may yet be applied), so it is never retried."""


class WriteOutcomeUnknown(DatabaseUnavailable):
    """The answer to a statement that commits (a COMMIT, or a write outside a transaction)
    never came: the connection was lost, or DB_READ_TIMEOUT ran out, after it was sent. The
    server may have applied it (a failover or a cut network takes the answer, not the commit),
    so it is never retried, and the client is told its write may have been applied rather
    than that the database is unavailable, which reads as "nothing happened, send it again"."""

    timed_out = False


class WriteTimedOut(WriteOutcomeUnknown, StatementTimeout):
    """DB_READ_TIMEOUT ran out on a statement that commits: a timeout whose write is unknown."""

    timed_out = True


class PoolTimeout(Exception):
    """Every pooled connection stayed busy for the whole borrow timeout."""


class DatabaseBusy(Exception):
    """The server gave up on a statement it could not finish in time; the session is fine.

    A lock wait timeout, a deadlock, a statement time limit, a query an operator killed: the
    server rolled the statement (a deadlock: the transaction) back, and the lease rolls back
    whatever transaction is left, so nothing was applied and the client may retry shortly.
    """

    def __init__(self, message: str, *, errno: int):
        super().__init__(message)
        self.errno = errno

    @property
    def rolled_back(self) -> bool:
        """True for a deadlock (1213): the server rolled the whole transaction back (MySQL and
        MariaDB alike), so the transaction may be run again from its start. A lock wait
        timeout (1205) rolls back only the statement, and a second try would wait as long."""
        return self.errno == errorcode.ER_LOCK_DEADLOCK


def gave_up(error: BaseException) -> DatabaseBusy | None:
    """The DatabaseBusy a driver error stands for, or None if it is no such error."""
    errno = getattr(error, "errno", None)
    if errno not in _GAVE_UP_ERRNOS:
        return None
    return DatabaseBusy(f"{errno}: {getattr(error, 'msg', None) or error}", errno=errno)


# Server codes for a statement abandoned, not a session lost (none is in _CONNECTION_ERRNOS).
_GAVE_UP_ERRNOS = {
    1205,  # ER_LOCK_WAIT_TIMEOUT: innodb_lock_wait_timeout (the statement is rolled back)
    1213,  # ER_LOCK_DEADLOCK: the transaction is rolled back
    1317,  # ER_QUERY_INTERRUPTED: KILL QUERY
    1969,  # ER_STATEMENT_TIMEOUT (MariaDB): max_statement_time
    3024,  # ER_QUERY_TIMEOUT (MySQL 8): max_execution_time, SELECTs only
}


def is_connection_error(error: BaseException) -> bool:
    """True when the error means the connection (not the statement) failed.

    InterfaceError covers a lost socket (2013, 2055), OperationalError a server gone away
    or shutting down; errors such as a duplicate key come as IntegrityError and keep the
    connection usable.
    """
    return isinstance(error, (mysql.connector.errors.InterfaceError,
                              mysql.connector.errors.OperationalError, *_TIMEOUTS)) or (
        isinstance(error, mysql.connector.errors.DatabaseError)
        and getattr(error, "errno", None) in _CONNECTION_ERRNOS
    )


def timed_out(error: BaseException, elapsed: float, read_timeout: float | None) -> bool:
    """True when the driver gave up waiting for the server (DB_READ_TIMEOUT), which is slow,
    not gone: the other connections are fine, and sending the statement again on a fresh
    connection would only wait as long again.

    The pure-Python protocol says so (ReadTimeoutError, WriteTimeoutError; their errno 3024 is
    also MySQL's max_execution_time). The C extension reports a lost connection (2013), like a
    dropped socket, but only once its wait has lasted the whole read timeout.
    """
    if isinstance(error, _TIMEOUTS):
        return True
    return (getattr(error, "errno", None) == 2013 and read_timeout is not None
            and elapsed >= read_timeout)


def is_read_only(error: BaseException) -> bool:
    """True when the server refused a write because it is read-only.

    What a writer says after an Aurora or Multi-AZ failover demoted it, or a reader
    endpoint: MySQL and MariaDB 1290 (ER_OPTION_PREVENTS_STATEMENT, "running with the
    --read-only option"; MariaDB 10.11 answers that to a user without READ ONLY ADMIN,
    measured here with SET GLOBAL read_only=1), MariaDB 1836 (ER_READ_ONLY_MODE).
    """
    return getattr(error, "errno", None) in _READ_ONLY_ERRNOS


def was_not_applied(error: BaseException) -> bool:
    """True when the server refused the statement before running it: safe to send again.

    A read-only server refuses a write before executing it; MySQL 8 sends 4031
    (ER_CLIENT_INTERACTION_TIMEOUT) on a session it closed for idleness, and the statement
    that reads that error never reached it. A lost connection (2013) proves nothing either way.
    """
    return getattr(error, "errno", None) in _READ_ONLY_ERRNOS | {4031}


_READ_ONLY_ERRNOS = {1290, 1836}


def is_unreachable_behind_proxy(error: BaseException) -> bool:
    """True when RDS Proxy answered that it got no database connection in time (9501, "Timed-out
    waiting to acquire database connection", after its ConnectionBorrowTimeout): a failover in
    progress, or the database at max_connections. The statement never reached the database and
    the client's session with the proxy is fine. Documented in
    https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.troubleshooting.html
    """
    return getattr(error, "errno", None) == _PROXY_BORROW_TIMEOUT


_PROXY_BORROW_TIMEOUT = 9501


def is_out_of_space(error: BaseException) -> bool:
    """True when the server could not store a write for want of space: its storage is full.

    RDS's allocated storage filled up (an instance left running long enough, binary logs, a
    temporary table): InnoDB refuses with 1114 (ER_RECORD_FILE_FULL, "The table 'users' is
    full"; measured here on a fixed-size tablespace), MariaDB's engines with 1021
    (ER_DISK_FULL), a file write with 1026 (ER_ERROR_ON_WRITE). The statement is rolled back
    and the session is fine; nothing the client sent, nor the code, is at fault.
    """
    return getattr(error, "errno", None) in _OUT_OF_SPACE_ERRNOS


_OUT_OF_SPACE_ERRNOS = {1021, 1026, 1114}

# The pure-Python protocol's own timeouts: it closes the session after either.
_TIMEOUTS = (mysql.connector.errors.ReadTimeoutError, mysql.connector.errors.WriteTimeoutError)

# Client and server codes that mean "this session is gone" whatever class the driver picks.
_CONNECTION_ERRNOS = {
    1053,  # ER_SERVER_SHUTDOWN
    1927,  # ER_CONNECTION_KILLED (MariaDB)
    2002, 2003, 2005, 2006, 2013, 2026, 2055,
    4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
}
