"""The per-process pool against a real server: waiting, replacement, recycling, clean returns."""

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time

import mysql.connector
import pytest

from app import create_app
from app.config import load_settings
from app.credentials import StaticPassword
from app.db import Database, DatabaseUnavailable, PoolTimeout
from app.db.errors import DatabaseMisconfigured, StatementTimeout
from app.db.connection import ConnectionOpener
from app.db.pool import ConnectionPool
from conftest import ROOT


class CountingPassword(StaticPassword):
    """The static provider, counting how often the pool asks for credentials."""

    def __init__(self, user, password):
        object.__setattr__(self, "calls", 0)
        super().__init__(user, password)

    def candidates(self):
        object.__setattr__(self, "calls", self.calls + 1)
        return super().candidates()


def make_pool(env, credentials=None, **options):
    settings = load_settings(env)
    credentials = credentials or StaticPassword(settings.user, settings.password.get_secret_value())
    params = dict(size=2, timeout=0.5, max_lifetime=1800, idle_ping=30)
    params.update(options)
    return ConnectionPool(ConnectionOpener(settings, credentials), **params)


def kill(mysql_server, connection_id):
    mysql_server.sql([f"KILL CONNECTION {connection_id}"])


def test_borrow_waits_for_a_connection_to_come_back(db_env):
    pool = make_pool(db_env, size=1, timeout=5)
    first = pool.borrow()
    threading.Timer(0.3, first.release).start()
    started = time.monotonic()
    second = pool.borrow()  # mysql-connector's own pool would raise "pool exhausted" here
    waited = time.monotonic() - started
    assert 0.2 < waited < 4
    assert second.query("SELECT 1 AS one") == [{"one": 1}]
    second.release()
    assert pool.stats()["borrow_timeouts"] == 0


def test_borrow_gives_up_after_the_timeout(db_env):
    pool = make_pool(db_env, size=2, timeout=2)
    held = [pool.borrow(), pool.borrow()]
    waiting = []

    def probe():  # the borrow below is counted as waiting while it waits (2 s to see it)
        deadline = time.monotonic() + 1.5
        while not waiting and time.monotonic() < deadline:
            if pool.stats()["waiting"] == 1:
                waiting.append(1)
            time.sleep(0.01)

    watcher = threading.Thread(target=probe)
    started = time.monotonic()
    watcher.start()
    with pytest.raises(PoolTimeout):
        pool.borrow()
    assert time.monotonic() - started >= 2
    watcher.join()
    assert waiting == [1]
    stats = pool.stats()
    assert stats["borrow_timeouts"] == 1 and stats["in_use"] == 2 and stats["waiting"] == 0
    for lease in held:
        lease.release()
    assert pool.stats()["idle"] == 2


def test_many_threads_share_a_small_pool_without_errors(db_env):
    pool = make_pool(db_env, size=2, timeout=5)
    errors, done = [], []

    def work():
        try:
            lease = pool.borrow()
            try:
                lease.query("SELECT SLEEP(0.02)")
            finally:
                lease.release()
            done.append(1)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(done) == 16
    assert pool.stats()["opened"] == 2


def test_idle_connection_that_died_is_replaced_on_borrow(db_env, mysql_server):
    pool = make_pool(db_env, size=1, idle_ping=0.2)
    lease = pool.borrow()
    old_id = lease.connection_id
    lease.release()
    kill(mysql_server, old_id)
    time.sleep(0.3)
    lease = pool.borrow()  # the ping fails, QueuePool opens a new connection
    assert lease.connection_id != old_id
    assert lease.query("SELECT 1 AS one") == [{"one": 1}]
    lease.release()
    stats = pool.stats()
    assert stats["opened"] == 2 and stats["closed"] == 1


def test_recently_used_connection_that_died_is_retried_for_reads(db_env, mysql_server):
    pool = make_pool(db_env, size=1, idle_ping=3600)
    lease = pool.borrow()
    old_id = lease.connection_id
    lease.release()
    kill(mysql_server, old_id)
    lease = pool.borrow()  # not idle long enough to be pinged
    assert lease.query("SELECT CONNECTION_ID() AS id")[0]["id"] != old_id
    lease.release()


@pytest.mark.parametrize("use_pure", [False, True], ids=["c-extension", "pure-python"])
def test_a_connection_killed_before_its_first_parameter_is_replaced_not_a_500(db_env, mysql_server, use_pure):
    """A connection that served only statements without parameters (/health/ready's read, say)
    and then died: its first statement with parameters reads as a lost connection on both
    protocols. The pure-Python cursor (DB_SSL_MODE=verify-ca) looked the session's sql_mode up
    right then, through a cursor whose ping failed, and raised ProgrammingError ("Failed
    processing format-parameters; MySQL Connection not available"): a 500, and the dead
    connection went back to the pool for the next request to fail the same way."""
    settings = load_settings(db_env)
    opener = ConnectionOpener(settings, StaticPassword(settings.user, settings.password.get_secret_value()),
                              use_pure=use_pure)
    pool = ConnectionPool(opener, size=1, timeout=0.5, max_lifetime=1800, idle_ping=3600)
    try:
        lease = pool.borrow()
        assert lease.query("SELECT 1 AS one") == [{"one": 1}]
        kill(mysql_server, lease.connection_id)
        with pytest.raises(DatabaseUnavailable):  # a write is not retried
            lease.execute("INSERT INTO users (email, name) VALUES (%s, %s)", ("k@example.com", "K"))
        lease.release()
        assert pool.stats()["closed"] == 1  # discarded, not pooled
        lease = pool.borrow()  # a new connection: it has run no statement of its own yet
        kill(mysql_server, lease.connection_id)
        assert lease.query("SELECT %s AS n", (5,)) == [{"n": 5}]  # a read is retried
        lease.release()
        assert pool.stats()["opened"] == 3 and pool.stats()["closed"] == 2
    finally:
        pool.dispose()


@pytest.mark.parametrize("use_pure", [False, True], ids=["c-extension", "pure-python"])
def test_a_connection_lost_while_the_pool_sets_it_up_is_replaced_not_handed_out(db_env, mysql_server,
                                                                                use_pure):
    """The server drops a new connection between its login and the pool's first query on it
    (a restart, a failover): that query fails, and the connection was handed out all the same,
    dead, to fail the request it was borrowed for (the pure-Python protocol: with a 500)."""
    settings = load_settings(db_env)
    opener = ConnectionOpener(settings, StaticPassword(settings.user, settings.password.get_secret_value()),
                              use_pure=use_pure)
    killed = []

    def creator():  # the real opener; the first connection is killed right after its login
        conn = opener()
        if not killed:
            killed.append(conn.connection_id)
            kill(mysql_server, conn.connection_id)
        return conn

    pool = ConnectionPool(creator, size=1, timeout=0.5, max_lifetime=1800, idle_ping=3600)
    try:
        lease = pool.borrow()
        assert lease.connection_id != killed[0]
        lease.execute("INSERT INTO users (email, name) VALUES (%s, %s)", ("s@example.com", "S"))
        assert lease.query("SELECT name FROM users WHERE email = %s", ("s@example.com",)) == [{"name": "S"}]
        lease.release()
        assert pool.stats()["opened"] == 2 and pool.stats()["closed"] == 1
    finally:
        pool.dispose()


def test_write_on_a_dead_connection_is_not_retried(db_env, mysql_server):
    pool = make_pool(db_env, size=1, idle_ping=3600)
    lease = pool.borrow()
    kill(mysql_server, lease.connection_id)
    with pytest.raises(DatabaseUnavailable):
        lease.execute("INSERT INTO users (email, name) VALUES ('w@example.com', 'W')")
    lease.release()
    lease = pool.borrow()  # the broken connection was discarded, not returned
    assert lease.query("SELECT COUNT(*) AS n FROM users") == [{"n": 0}]
    lease.release()


def test_connections_are_recycled_after_their_max_lifetime(db_env):
    credentials = CountingPassword(db_env["RDS_USERNAME"], db_env["RDS_PASSWORD"])
    pool = make_pool(db_env, credentials, size=1, max_lifetime=1)
    lease = pool.borrow()
    first = lease.connection_id
    lease.release()
    time.sleep(1.2)
    lease = pool.borrow()
    assert lease.connection_id != first
    lease.release()
    assert credentials.calls == 2  # credentials are asked for each new physical connection


def test_a_sub_second_max_lifetime_is_honoured_not_truncated(db_env):
    """DB_POOL_MAX_LIFETIME=0.5 keeps a connection for half a second, not for no time at all."""
    pool = make_pool(db_env, size=1, max_lifetime=0.5)
    lease = pool.borrow()
    first = lease.connection_id
    lease.release()
    lease = pool.borrow()
    assert lease.connection_id == first  # reused at once
    lease.release()
    time.sleep(0.7)
    lease = pool.borrow()
    assert lease.connection_id != first  # replaced after its lifetime
    lease.release()
    assert pool.stats()["opened"] == 2


@pytest.mark.parametrize("use_pure", [False, True], ids=["c-extension", "pure-python"])
def test_a_statement_past_the_read_timeout_is_not_retried_and_costs_only_its_connection(db_env, use_pure):
    """DB_READ_TIMEOUT ran out: the server is slow, not gone. One wait, not two (a read is
    otherwise retried on a fresh connection), and the pool's other connections stay."""
    settings = load_settings({**db_env, "DB_READ_TIMEOUT": "1"})
    opener = ConnectionOpener(settings, StaticPassword(settings.user, settings.password.get_secret_value()),
                              use_pure=use_pure)
    pool = ConnectionPool(opener, size=3, timeout=0.5, max_lifetime=1800, idle_ping=30)
    lease, *others = [pool.borrow() for _ in range(3)]
    for method, statement in [("query", "SELECT SLEEP(3) AS slept"), ("execute", "DO SLEEP(3)")]:
        started = time.monotonic()
        with pytest.raises(StatementTimeout):
            getattr(lease, method)(statement)
        assert time.monotonic() - started >= 1  # it waited the read timeout out (once: the counts below)
        lease.release()
        lease = pool.borrow()  # the others are held: this opens a connection for the lost one
    ids = {other.connection_id for other in others}
    for held in [lease, *others]:
        held.release()
    assert pool.stats()["opened"] == 5 and pool.stats()["closed"] == 2
    held = [pool.borrow() for _ in range(3)]
    assert ids <= {h.connection_id for h in held}  # not replaced: they did nothing wrong
    for h in held:
        h.release()
    pool.dispose()


def test_open_transaction_is_rolled_back_on_return(db_env):
    pool = make_pool(db_env, size=1)
    lease = pool.borrow()
    conn_id = lease.connection_id
    lease.execute("START TRANSACTION")
    lease.execute("INSERT INTO users (email, name) VALUES ('tx@example.com', 'Tx')")
    assert lease.connection.in_transaction
    lease.release()  # no commit
    lease = pool.borrow()
    assert lease.connection_id == conn_id and not lease.connection.in_transaction
    assert lease.query("SELECT COUNT(*) AS n FROM users") == [{"n": 0}]
    lease.release()


def test_a_lease_dropped_unreleased_is_rolled_back_before_reuse(db_env):
    """Lease.release rolls back; a lease dropped without it goes back through QueuePool's
    finalizer, and the next checkout rolls its transaction back before handing it out."""
    pool = make_pool(db_env, size=1)
    lease = pool.borrow()
    conn_id = lease.connection_id
    lease.execute("START TRANSACTION")
    lease.execute("INSERT INTO users (email, name) VALUES ('dropped@example.com', 'Dropped')")
    del lease  # no release(): CPython finalizes the fairy at once
    lease = pool.borrow()
    try:
        assert lease.connection_id == conn_id and not lease.connection.in_transaction
        assert lease.query("SELECT COUNT(*) AS n FROM users") == [{"n": 0}]
    finally:
        lease.release()
        pool.dispose()


def test_a_connection_that_cannot_roll_back_is_discarded_on_release(db_env):
    """The session died mid-transaction (a failover, KILL): release() cannot roll it back, so
    the connection is closed, not pooled, and the next borrow gets a new one."""
    pool = make_pool(db_env, size=1)
    lease = pool.borrow()
    doomed = lease.connection_id
    lease.execute("START TRANSACTION")
    lease.execute("INSERT INTO users (email, name) VALUES ('killed@example.com', 'Killed')")
    admin = make_pool(db_env, size=1).borrow()
    admin.execute(f"KILL {doomed}")
    admin.release()
    lease.release()
    assert pool.stats()["closed"] == 1
    lease = pool.borrow()
    try:
        assert lease.connection_id != doomed
        assert lease.query("SELECT COUNT(*) AS n FROM users") == [{"n": 0}]
    finally:
        lease.release()
        pool.dispose()


def test_read_leaves_no_transaction_and_costs_no_rollback(db_env, monkeypatch):
    pool = make_pool(db_env, size=1)
    lease = pool.borrow()
    lease.query("SELECT 1")
    conn = lease.connection
    calls = []
    monkeypatch.setattr(conn, "rollback", lambda: calls.append("rollback"))
    lease.release()
    assert calls == []  # autocommit read: nothing to roll back, no extra round trip


HOSTILE_VALUES = ["O'Brien", 'say "hi"', "back\\slash", "%s and %d", "NUL\x00byte", "zoë 🙂",
                  "'; DROP TABLE users; --", "", None, 0, -7, 18446744073709551615, 2.5]


@pytest.mark.parametrize("use_pure", [False, True], ids=["c-extension", "pure-python"])
def test_reads_bind_parameters_as_the_driver_does_on_both_protocols(db_env, use_pure):
    """Lease.query reads the C extension's connection directly (cmd_query, get_rows) and the
    pure-Python one (DB_SSL_MODE=verify-ca) through a cursor: both give the same rows for the
    same parameters, however hostile, and a placeholder count that does not match is refused."""
    settings = load_settings(db_env)
    opener = ConnectionOpener(settings, StaticPassword(settings.user,
                                                       settings.password.get_secret_value()),
                              use_pure=use_pure)
    pool = ConnectionPool(opener, size=1, timeout=0.5, max_lifetime=1800, idle_ping=30)
    lease = pool.borrow()
    try:
        assert type(lease.connection).__name__ == ("MySQLConnection" if use_pure
                                                   else "CMySQLConnection")
        names = ", ".join(f"%s AS v{i}" for i in range(len(HOSTILE_VALUES)))
        (row,) = lease.query(f"SELECT {names}", HOSTILE_VALUES)
        got = list(row.values())
        assert got[:9] == HOSTILE_VALUES[:9]  # strings and NULL, byte for byte
        assert [int(v) for v in got[9:12]] == HOSTILE_VALUES[9:12]
        assert float(got[12]) == 2.5
        lease.execute("INSERT INTO users (email, name) VALUES (%s, %s)",
                      ("q@example.com", "O'Brien %s \\"))
        rows = lease.query("SELECT name FROM users WHERE name = %s AND id > %s",
                           ("O'Brien %s \\", 0))
        assert rows == [{"name": "O'Brien %s \\"}]
        assert lease.query("SELECT name FROM users WHERE id > %s", (10**6,)) == []
        for params in [(), (1, 2)]:
            with pytest.raises(mysql.connector.ProgrammingError):
                lease.query("SELECT id FROM users WHERE id = %s", params)
        # The connection is still in step with the server after the refusals.
        assert lease.query("SELECT %s AS n", (5,)) == [{"n": 5}]
    finally:
        lease.release()
        pool.dispose()


TYPED_READ = ("SELECT 1 AS i, NULL AS n, 'zoë 🙂' AS s, CAST(2.50 AS DECIMAL(5,2)) AS d, "
              "TIMESTAMP'2026-01-02 03:04:05' AS t, DATE'2026-01-02' AS day, x'00ff' AS b, "
              "1.5e0 AS f, 18446744073709551615 AS big, id, email FROM users ORDER BY id")


def test_rows_read_from_the_c_extension_equal_the_drivers_own(db_env):
    """Lease.query takes the rows from the C extension's session rather than get_rows (which
    walks each value in Python): every type it reads comes out as the driver's own path gives
    it, and a connection with a converter class still goes through get_rows."""
    from mysql.connector.conversion import MySQLConverter

    pool = make_pool(db_env, size=1)
    lease = pool.borrow()
    try:
        lease.execute("INSERT INTO users (email, name) VALUES ('a@example.com', 'A'), "
                      "('b@example.com', 'B')")
        conn = lease.connection
        assert type(conn).__name__ == "CMySQLConnection"
        got = lease.query(TYPED_READ)
        result = conn.cmd_query(TYPED_READ)
        names = [c[0] for c in result["columns"]]
        rows, _ = conn.get_rows()
        assert got == [dict(zip(names, row)) for row in rows] and len(got) == 2
        assert not conn.unread_result  # the result was freed: the session is ready
        assert lease.query("SELECT %s AS n", (7,)) == [{"n": 7}]
        with pytest.raises(mysql.connector.ProgrammingError, match="return rows"):
            lease.query("DO 1")  # a statement without rows is not a read
        assert lease.query("SELECT %s AS n", (8,)) == [{"n": 8}]
        conn.converter_class = MySQLConverter  # values now come raw and are converted in Python
        assert lease.query(TYPED_READ) == got
    finally:
        lease.release()
        pool.dispose()


def _outcome(read, conn, stmt):
    try:
        return ("rows", read(conn, stmt))
    except mysql.connector.Error as err:
        return (type(err).__name__, err.errno)


def test_the_direct_read_fails_as_the_drivers_cmd_query_does(db_env):
    """_read_cext sends a read straight to the C extension's session, skipping cmd_query: in
    every state a read can meet it returns what the driver's own path returns, or raises the
    same exception class with the same errno (Lease.query's retry decisions read both)."""
    from app.db import pool as pool_module

    pool = make_pool(db_env, size=1)
    lease = pool.borrow()
    conn = lease.connection
    direct, driver = pool_module._read_cext, pool_module._read_cmd_query
    try:
        for stmt in [b"SELECT 1 AS one, 'zo\xc3\xab' AS s", b"SELECT id FROM users",
                     b"DO 1", b"SELEC 1", b"SELECT * FROM no_such_table"]:
            assert _outcome(direct, conn, stmt) == _outcome(driver, conn, stmt), stmt
        conn.cmd_query("SELECT 1")  # a result left unread, as an unbuffered cursor leaves it
        assert _outcome(direct, conn, b"SELECT 2") == ("InternalError", -1)
        conn.can_consume_results = True  # the driver's option: consume it instead
        assert _outcome(direct, conn, b"SELECT 2") == ("rows", (["2"], [(2,)]))
        conn.can_consume_results = False
        calls = []
        real = conn.cmd_query

        def counting(*args, **kwargs):
            calls.append(args[0])
            return real(*args, **kwargs)

        conn.cmd_query = counting
        direct(conn, b"SELECT 3")
        assert calls == []
        pool_module.OTEL_ENABLED = True  # OpenTelemetry installed: traceparent goes out
        try:
            assert direct(conn, b"SELECT 3") == (["3"], [(3,)]) and calls == [b"SELECT 3"]
        finally:
            pool_module.OTEL_ENABLED = False
            del conn.cmd_query
        conn.close()
        assert _outcome(direct, conn, b"SELECT 1") == _outcome(driver, conn, b"SELECT 1")
    finally:
        lease.release()
        pool.dispose()


def test_unreachable_database_is_reported_quickly(db_env):
    import localdb

    env = {**db_env, "RDS_PORT": str(localdb.free_port())}
    pool = make_pool(env)
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable):
        pool.borrow()
    assert time.monotonic() - started < 2
    assert pool.stats()["open"] == 0


def test_required_tls_refuses_a_server_without_tls(db_env):
    pool = make_pool({**db_env, "DB_SSL_MODE": "required"})
    with pytest.raises(DatabaseUnavailable) as err:
        pool.borrow()
    assert isinstance(err.value.__cause__, mysql.connector.Error)


def _child_connection_id(database, queue):
    lease = database.borrow()
    queue.put((lease.connection_id, lease.query("SELECT 1 AS one")))
    lease.release()


def test_forked_child_builds_its_own_pool(db_env):
    settings = load_settings(db_env)
    database = Database(settings, StaticPassword(settings.user, settings.password.get_secret_value()))
    lease = database.borrow()
    parent_id = lease.connection_id
    lease.release()  # idle in the parent's pool when the child forks
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_connection_id, args=(database, queue))
    child.start()
    child_id, rows = queue.get(timeout=20)
    child.join(20)
    assert child.exitcode == 0 and rows == [{"one": 1}]
    assert child_id != parent_id
    lease = database.borrow()  # the child neither used nor closed the parent's connection
    assert lease.connection_id == parent_id
    assert lease.query("SELECT 1 AS one") == [{"one": 1}]
    lease.release()
    database.dispose()


def test_misconfiguration_raised_by_the_creator_comes_out_of_borrow_unchanged():
    """The ConnectionOpener raises DatabaseMisconfigured when its credential source fails."""
    refused = DatabaseMisconfigured("the secret cannot be read", reason="secret_unreadable")

    def creator():
        raise refused

    pool = ConnectionPool(creator, size=1, timeout=0.5, max_lifetime=1800, idle_ping=30)
    with pytest.raises(DatabaseMisconfigured) as raised:
        pool.borrow()
    assert raised.value is refused
    assert pool.stats()["open"] == 0 and pool.stats()["in_use"] == 0


def test_server_refusals_are_classified_as_misconfiguration(db_env):
    pool = make_pool({**db_env, "RDS_PASSWORD": "not-the-password"})
    with pytest.raises(DatabaseMisconfigured) as raised:
        pool.borrow()
    assert (raised.value.reason, raised.value.errno) == ("access_denied", 1045)
    assert "not-the-password" not in str(raised.value)


def test_an_idempotent_statement_on_a_dead_connection_is_retried_on_a_fresh_one(db_env, mysql_server):
    """START TRANSACTION changes nothing: on a pooled connection that died while idle (a
    failover, a restart) it is sent again on a fresh one, as a read is, so the write that
    follows succeeds; a write itself still is not retried (the test above)."""
    pool = make_pool(db_env, size=1, idle_ping=3600)
    lease = pool.borrow()
    kill(mysql_server, lease.connection_id)
    lease.execute("START TRANSACTION READ WRITE", idempotent=True)
    assert lease.execute("INSERT INTO users (email, name) VALUES ('i@example.com', 'I')")[0] == 1
    lease.execute("COMMIT")
    lease.release()
    assert pool.stats()["opened"] == 2 and pool.stats()["closed"] == 1
    lease = pool.borrow()
    assert lease.query("SELECT email FROM users") == [{"email": "i@example.com"}]
    lease.release()
    pool.dispose()


def test_a_create_after_its_pooled_connection_died_while_idle_succeeds(db_env, mysql_server):
    """Through the app: POST /api/users on a pooled connection the server dropped (a failover,
    a restart) is a 201, as a GET's retry makes it 200; it was a 503 (the START's 2013)."""
    app = create_app({**db_env, "DB_POOL_SIZE": "1", "DB_POOL_IDLE_PING": "3600"})
    client = app.test_client()
    assert client.get("/api/users").status_code == 200
    lease = app.extensions["database"].borrow()
    idle = lease.connection_id
    lease.release()
    kill(mysql_server, idle)
    response = client.post("/api/users", json={"email": "after@example.com", "name": "A"})
    assert response.status_code == 201, response.get_json()
    assert client.get("/api/users").get_json()["data"][-1]["email"] == "after@example.com"
    app.extensions["database"].dispose()


# Run in a fresh interpreter: what the C extension's client library holds before and after a
# gunicorn worker's import of the app (application.py), which runs before its threads start.
# my_init_done and mysql_port are globals the library sets in mysql_library_init; the
# extension exports both.
LIBRARY_STATE = """
import ctypes, json, _mysql_connector
library = ctypes.PyDLL(_mysql_connector.__file__)
def state():
    return [ctypes.c_bool.in_dll(library, "my_init_done").value,
            ctypes.c_uint.in_dll(library, "mysql_port").value]
before = state()
import application
print(json.dumps([before, state()]))
"""


def test_loading_the_app_initializes_the_client_library_before_any_thread_connects(db_env):
    """mysql_library_init is not thread-safe, and mysql_init() runs it on a process's first
    connection: the driver does so with the GIL released, so a fresh worker's threads
    connecting together raced in it, and a CI run lost a worker to SIGSEGV on its first
    requests (app/db/pool.py, _initialize_client_library). Loading the app now initializes it,
    before any connection; on the old code the library was still uninitialized ([False, 0])."""
    env = {k: v for k, v in os.environ.items() if k != "MYSQL_TCP_PORT"}
    result = subprocess.run([sys.executable, "-c", LIBRARY_STATE], cwd=ROOT, env={**env, **db_env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    before, after = json.loads(result.stdout.splitlines()[-1])
    assert before == [False, 0]  # nothing had initialized it before the app loaded
    assert after[0] is True and after[1] > 0, (after, result.stderr)


# Two threads of a loaded app borrow at once from an empty pool, so each opens the process's
# first connections, as a fresh gunicorn worker's threads do on its first requests.
FIRST_CONNECTIONS = """
import json, sys, threading
from app import create_app
database = create_app(json.loads(sys.argv[1])).extensions["database"]
start, leases, outcomes = threading.Barrier(2), [], []
def borrow():
    start.wait()
    try:
        leases.append(database.borrow())
        outcomes.append("connected")
    except Exception as err:
        outcomes.append(f"{type(err).__name__}: {err.__cause__ or err}")
threads = [threading.Thread(target=borrow) for _ in range(2)]
for t in threads: t.start()
for t in threads: t.join()
for lease in leases: lease.release()
with open(sys.argv[2], "w") as out:  # not stdout, where gdb's own lines interleave
    json.dump(sorted(outcomes), out)
"""

# gdb holds whichever thread initializes the client library inside that initialization for
# half a second (a thread the scheduler preempts there, as on a busy instance), while the
# other thread goes on; the machine and CI have gdb (the env library's python-svc.md).
HOLD_LIBRARY_INIT = """
set pagination off
set breakpoint pending on
handle SIGPIPE nostop noprint
break mysql_client_plugin_init
commands
silent
call (int)usleep(500000)
continue
end
run
"""


@pytest.mark.skipif(shutil.which("gdb") is None, reason="needs gdb to hold a thread in the library's init")
def test_first_connections_opened_together_all_succeed_while_one_thread_is_slow_in_library_init(
        db_env, tmp_path):
    """The race itself, made certain: on the old code the second thread's connection failed
    while the first initialized the library ("Authentication plugin 'mysql_native_password'
    cannot be loaded: not initialized", 2059); other timings crash the worker instead. Now
    the library is initialized when the app loads, before any thread starts."""
    commands = tmp_path / "hold.gdb"
    commands.write_text(HOLD_LIBRARY_INIT)
    outcomes = tmp_path / "outcomes.json"
    result = subprocess.run(["gdb", "-nx", "-batch", "-x", str(commands), "--args", sys.executable,
                             "-c", FIRST_CONNECTIONS, json.dumps(db_env), str(outcomes)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert outcomes.exists(), result.stdout + result.stderr  # the process died (SIGSEGV?)
    assert json.loads(outcomes.read_text()) == ["connected", "connected"], result.stdout
