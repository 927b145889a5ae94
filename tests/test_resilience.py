"""How requests fail, and what they leave behind, when code or the database misbehaves."""

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import mysql.connector
import pytest
import requests
from flask import Blueprint, jsonify

import localdb
from app import create_app
from app.config import load_settings
from app.credentials import StaticPassword
from app.db import DatabaseUnavailable, get_db
from app.db.connection import ConnectionOpener
from app.db.pool import ConnectionPool
from conftest import connect, fresh_database, load_script

faults = load_script("faults")  # the fault report's load machinery


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A server of this module's own: its tests stop it and change its global variables."""
    server = localdb.LocalServer(basedir=tmp_path_factory.mktemp("own-db")).start()
    yield server
    server.remove()


@pytest.fixture
def own_env(own_server):
    """A fresh migrated database on own_server, used by localdb's APP_USER, which (unlike
    root or the admin user) has no SUPER / READ ONLY ADMIN: read_only applies to it."""
    with fresh_database(own_server) as env:
        yield {**env, "DB_CONNECT_TIMEOUT": "2"}


def gunicorn_log(server, event):
    return [json.loads(line) for line in server.output().splitlines()
            if line.startswith("{") and f'"{event}"' in line]


def fault_routes(seen: list) -> Blueprint:
    """Test-only routes: never part of the production app."""
    bp = Blueprint("faults", __name__, url_prefix="/_test")

    @bp.post("/fail-mid-transaction")
    def fail_mid_transaction():
        db = get_db()
        seen.append(db.connection_id)
        db.execute("START TRANSACTION")
        db.execute("INSERT INTO users (email, name) VALUES ('locked@example.com', 'L')")
        db.query("SELECT id FROM users WHERE email = 'locked@example.com' FOR UPDATE")
        raise RuntimeError("a bug after the write, before any commit")

    @bp.get("/session")
    def session():
        db = get_db()
        [row] = db.query("SELECT CONNECTION_ID() AS id, (SELECT COUNT(*) FROM users) AS users")
        # The server's status flag, as the OK packet of that query carried it.
        return jsonify(connection_id=row["id"], users=row["users"],
                       in_transaction=db.connection.in_transaction)

    return bp


@pytest.fixture
def faulty_app(db_env):
    seen: list[int] = []
    app = create_app({**db_env, "DB_POOL_SIZE": "1"})
    app.register_blueprint(fault_routes(seen))
    app.config["SEEN"] = seen
    yield app
    app.extensions["database"].dispose()


def test_failed_request_leaves_no_transaction_or_locks_on_its_connection(faulty_app, db_env):
    client = faulty_app.test_client()
    response = client.post("/_test/fail-mid-transaction")
    assert response.status_code == 500 and response.get_json()["error"]["code"] == "internal_error"

    after = client.get("/_test/session").get_json()
    assert after["connection_id"] == faulty_app.config["SEEN"][0]  # the same, returned connection
    assert after == {"connection_id": after["connection_id"], "users": 0, "in_transaction": False}

    other = connect(db_env)  # the row lock is gone: another session writes that row at once
    try:
        cur = other.cursor()
        cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cur.execute("INSERT INTO users (email, name) VALUES ('locked@example.com', 'Other')")
    finally:
        other.close()
    assert client.get("/_test/session").get_json()["users"] == 1


def test_write_refused_as_read_only_is_retried_once_on_a_fresh_connection(own_server, own_env):
    settings = load_settings(own_env)
    pool = ConnectionPool(ConnectionOpener(settings, StaticPassword(settings.user, settings.password.get_secret_value())),
                          size=2, timeout=1, max_lifetime=1800, idle_ping=30)
    lease = pool.borrow()
    first = lease.connection_id
    own_server.sql(["SET GLOBAL read_only = 1"])
    try:
        with pytest.raises(DatabaseUnavailable) as err:
            lease.execute("INSERT INTO users (email, name) VALUES ('ro@example.com', 'R')")
        assert err.value.__cause__.errno == 1290  # what MariaDB 10.11 answers a user without READ ONLY ADMIN
        lease.release()
        stats = pool.stats()
        assert stats["opened"] == 2 and stats["closed"] == 2 and stats["open"] == 0  # both discarded
    finally:
        own_server.sql(["SET GLOBAL read_only = 0"])
    lease = pool.borrow()
    assert lease.connection_id != first
    assert lease.execute("INSERT INTO users (email, name) VALUES ('ro@example.com', 'R')")[0] == 1
    lease.release()
    pool.dispose()


def test_read_only_writer_answers_503_only_while_read_only(own_server, own_env, start_gunicorn):
    """A failover leaves the writer read-only for a while: clean 503s, then writes at once."""
    env = {**own_env, "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4", "DB_POOL_SIZE": "2"}
    server = start_gunicorn(env)
    url = server.url + "/api/users"
    write = lambda n: faults.send("POST", url, json={"email": f"w{n}@example.com", "name": "W"})
    refused = lambda o: o.status == 503

    with faults.Load(write, threads=4) as load:
        load.wait_for(faults.ok, 20)
        read_only_from = time.monotonic()
        own_server.sql(["SET GLOBAL read_only = 1"])
        try:
            load.wait_for(refused, 10, since=read_only_from)
        finally:
            own_server.sql(["SET GLOBAL read_only = 0"])
        writable_from = time.monotonic()
        load.wait_for(faults.ok, 20, since=writable_from + 1)
    outcomes = load.outcomes
    print(faults.summary(outcomes, writable_from))

    assert all(faults.ok(o) or o.is_clean_503 for o in outcomes), faults.summary(outcomes)
    for o in outcomes:
        if o.status == 503:  # only while read-only
            assert o.code == "database_unavailable" and o.retry_after == "5"
            assert o.ended >= read_only_from and o.started <= writable_from
    assert all(faults.ok(o) for o in outcomes if o.started >= writable_from + 1)
    assert {r["errno"] for r in gunicorn_log(server, "db_write_refused")} == {1290}
    assert "Traceback" not in server.output()


def connection_running(server, database, where: str, timeout=10, count=1):
    """The id of the connection in `database` whose statement matches `where` (a condition on
    information_schema.PROCESSLIST), once there are `count` such connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = server.sql([f"SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{database}' "
                           f"AND {where}"])
        if len(rows) >= count:
            return rows[0][0]
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} statements in {database} where {where}")


def test_health_waits_while_every_thread_waits_on_the_database(db_env, mysql_server, slow_gunicorn):
    """README Health checks: /health never touches the database, but it is answered by a worker
    thread like any request, so a database that holds every thread holds it too, and the load
    balancer sees the instance as unable to serve until a thread is free."""
    env = {**db_env, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2", "DB_POOL_SIZE": "2"}
    server = slow_gunicorn(env)
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    with faults.Load(lambda n: faults.send("GET", server.url + "/_test/sleep?s=6"), threads=2) as load:
        connection_running(mysql_server, env["RDS_DB_NAME"], "INFO LIKE 'SELECT SLEEP%'", count=2)
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(server.url + "/health", timeout=1.5)
        load.wait_for(faults.ok, 2)  # the two held requests end well
    assert all(faults.ok(o) for o in load.outcomes)
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    assert "Traceback" not in server.output()


def test_connection_killed_mid_query_is_never_handed_out_again(db_env, mysql_server, slow_gunicorn):
    env = {**db_env, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2", "DB_POOL_SIZE": "1"}
    server = slow_gunicorn(env)
    with faults.Load(lambda n: faults.send("GET", server.url + "/_test/sleep?s=1.5"), threads=1) as load:
        killed = connection_running(mysql_server, env["RDS_DB_NAME"], "INFO LIKE 'SELECT SLEEP%'")
        mysql_server.sql([f"KILL CONNECTION {killed}"])
        load.wait_for(lambda o: True, 1)
    [victim] = load.outcomes[:1]
    assert faults.ok(victim) or victim.is_clean_503  # a read is retried once on a fresh connection
    used = [requests.get(server.url + "/_test/sleep?s=0", timeout=10).json()["connection_id"]
            for _ in range(10)]
    assert killed not in used and len(set(used)) == 1  # one new connection, reused from then on
    # Handing the dead one out again would show as a second replacement (a read retries on a
    # fresh connection, so no request would fail): exactly one closed, one opened after it.
    pool = requests.get(server.url + "/health/ready", timeout=10).json()["pool"]
    assert pool["opened"] == 2 and pool["closed"] == 1, pool
    assert "Traceback" not in server.output()


def test_writes_after_the_server_dropped_idle_connections_succeed(own_server, own_env):
    """wait_timeout 2 s, connections idle 4 s: the pool must not hand out what the server closed."""
    own_server.sql(["SET GLOBAL wait_timeout = 2"])  # sessions opened from now on
    try:
        app = create_app(own_env)  # DB_POOL_IDLE_PING left at its default, 30 s
        database = app.extensions["database"]
        leases = [database.borrow() for _ in range(3)]  # three idle connections in the pool
        ids = {lease.connection_id for lease in leases}
        for lease in leases:
            lease.release()
        deadline = time.monotonic() + 15
        while ids & {row[0] for row in own_server.sql(["SELECT ID FROM information_schema.PROCESSLIST"])}:
            assert time.monotonic() < deadline, "the server kept the idle connections"
            time.sleep(0.1)
        client = app.test_client()
        statuses = [client.post("/api/users", json={"email": f"idle{n}@example.com", "name": "I"}).status_code
                    for n in range(6)]
        assert statuses == [201] * 6
        database.dispose()
    finally:
        own_server.sql(["SET GLOBAL wait_timeout = DEFAULT"])


def test_exhausted_pools_answer_503_after_the_borrow_timeout_and_leak_nothing(db_env, mysql_server, slow_gunicorn):
    """256 clients at once, 2 workers with a pool of 2 each, a slow query."""
    workers, pool_size, borrow_timeout = 2, 2, 0.3
    env = {**db_env, "WEB_CONCURRENCY": str(workers), "DB_POOL_SIZE": str(pool_size),
           "DB_POOL_TIMEOUT": str(borrow_timeout),  # gunicorn.conf.py's 8 threads per worker
           # Opening a connection on a loaded machine may take a while: this test is about
           # waiting for a busy pool, not about connect timeouts (test_gunicorn's outage is).
           "DB_CONNECT_TIMEOUT": "10"}
    server = slow_gunicorn(env)
    database = env["RDS_DB_NAME"]
    url = server.url + "/_test/sleep?s=0.2"
    with faults.ConnectionSampler(mysql_server.sql, database) as sampler, \
            ThreadPoolExecutor(256) as clients:
        outcomes = list(clients.map(lambda _: faults.send("GET", url, timeout=60), range(256)))
    print(faults.summary(outcomes, peak_connections=sampler.peak))

    assert all(faults.ok(o) or (o.is_clean_503 and o.code == "database_busy" and o.retry_after == "1")
               for o in outcomes), (faults.summary(outcomes),
                                    sorted({(o.status, o.code) for o in outcomes}))
    assert any(faults.ok(o) for o in outcomes) and any(o.status == 503 for o in outcomes)
    assert 0 < sampler.peak <= workers * pool_size  # never more server connections than pools hold
    # Queued behind gunicorn's threads the client waits longer; in the app a 503 comes only
    # after the borrow timeout (the access log times the request inside the worker).
    busy = [json.loads(line) for line in server.output().splitlines()
            if line.startswith("{") and '"access"' in line and '"status": 503' in line]
    assert busy and all(entry["duration_ms"] >= borrow_timeout * 1000 for entry in busy)

    # Afterwards every connection is idle and back in its pool.
    rows = mysql_server.sql([f"SELECT COMMAND FROM information_schema.PROCESSLIST WHERE DB = '{database}'"])
    assert 0 < len(rows) <= workers * pool_size and {r[0] for r in rows} == {"Sleep"}
    seen = {}
    deadline = time.monotonic() + 15
    while len(seen) < workers:
        assert time.monotonic() < deadline, seen
        body = requests.get(server.url + "/health/ready", timeout=10).json()
        seen[body["pid"]] = body["pool"]
    for stats in seen.values():
        assert stats["in_use"] == 0 and stats["waiting"] == 0 and stats["open"] <= pool_size


def test_statements_the_database_gives_up_on_answer_503_busy_on_the_same_connection(
        own_server, own_env, start_gunicorn):
    """A lock wait timeout (1205), a statement time limit (MariaDB's max_statement_time, 1969)
    and KILL QUERY (1317) abandon the statement, not the session: 503 database_busy with
    Retry-After 1, nothing applied, and the pool's one connection serves what follows."""
    mariadb = localdb.find_server()[0] == "mariadb"
    names = ["innodb_lock_wait_timeout"] + (["max_statement_time"] if mariadb else [])
    saved = own_server.sql([f"SELECT {', '.join(f'@@GLOBAL.{n}' for n in names)}"])[0]
    locker = None
    try:
        # Sessions copy these at connect: set before gunicorn opens its connection. The lock
        # wait (1 s) ends well before the time limit (3 s); a table lock is waited for up to
        # the time limit.
        own_server.sql(["SET GLOBAL innodb_lock_wait_timeout = 1"]
                       + (["SET GLOBAL max_statement_time = 3"] if mariadb else []))
        locker = connect(own_env)
        server = start_gunicorn({**own_env, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2",
                                 "DB_POOL_SIZE": "1"})
        created = requests.post(server.url + "/api/users", json={"email": "l@example.com", "name": "Before"},
                                timeout=10)
        assert created.status_code == 201, created.text
        user = created.json()["id"]
        cur = locker.cursor()

        def assert_busy(response):
            assert response.status_code == 503, response.text
            assert response.json() == {"error": {"code": "database_busy",
                                                 "message": "The database is busy; retry shortly."}}
            assert response.headers["Retry-After"] == "1"

        cur.execute("START TRANSACTION")
        cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user,))
        cur.fetchall()
        assert_busy(requests.patch(f"{server.url}/api/users/{user}", json={"name": "After"}, timeout=10))
        cur.execute("ROLLBACK")
        expected = [1205]

        cur.execute("LOCK TABLES users WRITE, schema_migrations WRITE")
        with ThreadPoolExecutor(1) as client:
            pending = client.submit(requests.get, server.url + "/api/users", timeout=10)
            waiting = connection_running(own_server, own_env["RDS_DB_NAME"],
                                         "STATE LIKE '%lock%' AND INFO LIKE 'SELECT%'")
            cur.execute(f"KILL QUERY {waiting}")
            assert_busy(pending.result())
        expected.append(1317)
        if mariadb:
            assert_busy(requests.get(server.url + "/api/users", timeout=10))
            ready = requests.get(server.url + "/health/ready", timeout=10)  # its read is stopped too
            assert ready.status_code == 200 and ready.json()["database"] == "busy", ready.text
            expected.append(1969)
        cur.execute("UNLOCK TABLES")

        got = requests.get(f"{server.url}/api/users/{user}", timeout=10)
        assert got.status_code == 200 and got.json()["name"] == "Before"  # the PATCH applied nothing
        pool = requests.get(server.url + "/health/ready", timeout=10).json()["pool"]
        assert pool["opened"] == 1 and pool["closed"] == 0  # the same connection all along
        assert [r["errno"] for r in gunicorn_log(server, "db_busy")] == expected
        assert "Traceback" not in server.output()
    finally:
        if locker is not None:
            locker.close()
        own_server.sql([f"SET GLOBAL {n} = {v}" for n, v in zip(names, saved)])


def test_a_read_past_db_read_timeout_answers_503_after_one_wait(db_env, mysql_server, start_gunicorn):
    """A read stuck behind LOCK TABLES: DB_READ_TIMEOUT (1 s) runs out once, not twice (a
    broken connection's read is retried, a slow server's is not), db_timeout is logged, and
    only that request's connection is replaced."""
    server = start_gunicorn({**db_env, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2",
                             "DB_POOL_SIZE": "2", "DB_READ_TIMEOUT": "1"})
    locker = connect(db_env)
    try:
        cur = locker.cursor()
        cur.execute("LOCK TABLES users WRITE")
        started = time.monotonic()
        response = requests.get(server.url + "/api/users", timeout=10)
        waited = time.monotonic() - started
        cur.execute("UNLOCK TABLES")
    finally:
        locker.close()
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "database_unavailable"
    assert waited >= 1, waited  # the read timeout, waited once: a retry would close a second connection
    assert [r["errno"] for r in gunicorn_log(server, "db_timeout")] == [2013]
    assert gunicorn_log(server, "db_unavailable") == []
    assert requests.get(server.url + "/api/users", timeout=10).status_code == 200
    pool = requests.get(server.url + "/health/ready", timeout=10).json()["pool"]
    assert pool["closed"] == 1  # the timed-out session only
    assert "Traceback" not in server.output()


def aborted_clients(server) -> int:
    return int(server.sql(["SHOW GLOBAL STATUS LIKE 'Aborted_clients'"])[0][1])


def test_a_stopped_gunicorn_drains_its_requests_and_says_goodbye_to_the_database(
        own_server, own_env, slow_gunicorn):
    """SIGTERM, as a deploy or a scale-in sends it: the request in flight is answered, and every
    pooled connection is closed with COM_QUIT. A socket dropped at exit is an aborted client to
    the server (Aborted_clients, and an "Aborted connection ... Got an error reading
    communication packets" warning in its log per connection, on every deploy)."""
    server = slow_gunicorn({**own_env, "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4",
                            "DB_POOL_SIZE": "4"})
    database = own_env["RDS_DB_NAME"]
    with ThreadPoolExecutor(8) as clients:  # both workers open several connections
        assert set(clients.map(lambda _: requests.get(server.url + "/_test/sleep?s=0.05",
                                                      timeout=30).status_code, range(64))) == {200}
    opened = own_server.sql([f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = '{database}'"])
    assert opened[0][0] >= 2
    before = aborted_clients(own_server)
    with ThreadPoolExecutor(1) as client:
        in_flight = client.submit(requests.get, server.url + "/_test/sleep?s=1.5", timeout=30)
        connection_running(own_server, database, "INFO LIKE 'SELECT SLEEP%'")
        server.process.send_signal(signal.SIGTERM)
        assert in_flight.result().status_code == 200  # drained, not cut off
    assert server.process.wait(60) == 0
    deadline = time.monotonic() + 10  # the server ends a session once its thread reads the close
    while own_server.sql([f"SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{database}'"]):
        assert time.monotonic() < deadline, "the workers' connections outlived them"
        time.sleep(0.05)
    assert aborted_clients(own_server) - before == 0
    assert "Traceback" not in server.output()


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A server whose storage is a fixed 12 MB (no autoextend, tables inside it): it fills up,
    as an RDS instance's allocated storage does."""
    server = localdb.LocalServer(basedir=tmp_path_factory.mktemp("small-db"), extra_args=[
        "--innodb-data-file-path=ibdata1:12M", "--innodb-file-per-table=0"]).start()
    yield server
    server.remove()


def fill(env) -> int:
    """Insert rows until the server refuses for want of space; returns that errno.

    Keys ascend (ids, and emails below the probe's "zz..."), so each insert goes to the last
    page of each index: once a row of the smallest size is refused, no larger row at a later
    key fits either.
    """
    conn = connect(env)
    refused = None
    try:
        cur = conn.cursor()
        for name in ("F" * 100, "F"):
            for batch in (200, 20, 1):  # a refused batch is rolled back: then smaller ones
                try:
                    while True:
                        cur.executemany("INSERT INTO users (email, name) VALUES (%s, %s)",
                                        [(f"fill-{time.time_ns()}-{n:03d}@example.com", name)
                                         for n in range(batch)])
                except mysql.connector.Error as err:
                    refused = err.errno
        return refused
    finally:
        conn.close()


def test_a_database_out_of_space_answers_503_and_keeps_the_connection(small_server, capsys):
    """Storage full (MySQL/MariaDB 1114, "The table 'users' is full"): a write cannot be stored,
    which is the database's state, not the client's request nor a bug: 503 with Retry-After,
    logged with its errno; the session is fine and stays pooled; reads go on."""
    with fresh_database(small_server) as env:
        app = create_app(env)
        client = app.test_client()
        assert client.get("/api/users").status_code == 200  # the pool's connection, before
        assert fill(env) == 1114
        capsys.readouterr()
        response = client.post("/api/users", json={"email": "zz-full-1@example.com", "name": "Full"})
        assert response.status_code == 503 and response.headers["Retry-After"] == "5", response.text
        assert response.get_json()["error"]["code"] == "database_unavailable"
        out = capsys.readouterr().out
        logged = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert [r["errno"] for r in logged if r.get("event") == "db_unavailable"] == [1114]
        assert "Traceback" not in out and "unhandled_error" not in out
        assert client.get("/api/users?limit=1").status_code == 200
        pool = app.extensions["database"].pool.stats()
        assert pool["opened"] == 1 and pool["closed"] == 0  # the same connection all along
        app.extensions["database"].dispose()
