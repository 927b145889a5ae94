"""What a failover, an RDS Proxy switchover or a cut network does to the requests in flight.

RDS moves a Multi-AZ instance's endpoint to the standby by DNS, and existing connections must
be opened anew (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/Concepts.MultiAZ.Failover.html);
an Aurora writer can be demoted to a read-only reader with its connections still open; RDS Proxy
keeps the client's connections through the failover and answers a statement it cannot place on
a database connection within its borrow timeout with error 9501
(https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy.troubleshooting.html). The
network faults are made by a relay of the test's own between the app and a real server, the
way a client meets them: an answer that never comes back, an endpoint that now leads elsewhere.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest

import localdb
from app import create_app, migrate
from app.config import load_settings
from app.credentials import StaticPassword
from app.db import DatabaseUnavailable
from app.db.connection import ConnectionOpener
from app.db.errors import StatementTimeout, WriteOutcomeUnknown
from app.db.pool import ConnectionPool
from conftest import connect, fresh_database


class Relay:
    """A TCP relay to a database server, standing for the network and the endpoint's DNS name.

    `lose_answer_to(marker)`: the next client packet holding `marker` reaches the server, which
    runs it and answers; the answer is dropped and both sides are closed, as a failover or a
    cut network leaves a client that sent a COMMIT. `retarget(port)`: new connections go to
    another server, as the endpoint's DNS name does after a failover.
    """

    def __init__(self, port: int):
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen: list[bytes] = []  # every client packet holding the marker
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_answer_to(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker

    def retarget(self, port: int) -> None:
        self.target = port

    def close(self) -> None:
        """Stop accepting and end every relayed connection (their threads close the sockets)."""
        self.listener.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed by its thread
                    pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [])
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (server if source is client else client).sendall(data)
                    if source is client and self._lose(data):
                        server.settimeout(10)
                        server.recv(65536)  # the server's answer: it ran the statement
                        return
        except OSError:
            return
        finally:
            client.close()
            server.close()

    def _lose(self, data: bytes) -> bool:
        with self._lock:
            if self._marker is None or self._marker not in data:
                return False
            self.seen.append(data)
            self._marker = None
            return True


@pytest.fixture
def relayed(db_env, mysql_server):
    """db_env reached through a Relay."""
    relay = Relay(int(db_env["RDS_PORT"]))
    yield relay, {**db_env, "RDS_PORT": str(relay.port)}
    relay.close()


def logged(out: str, event: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()
            if line.startswith("{") and f'"{event}"' in line]


@pytest.mark.parametrize("use_pure", [False, True], ids=["c-extension", "pure-python"])
def test_a_lost_answer_leaves_a_write_unknown_only_when_it_may_have_committed(relayed, use_pure):
    """The answer to a COMMIT, or to a write outside a transaction, may be lost after the server
    applied it: WriteOutcomeUnknown, never retried. One lost inside a transaction before its
    COMMIT was rolled back by the server: a plain DatabaseUnavailable. On both protocols, since
    the decision reads the transaction flag of a connection that has just failed."""
    relay, env = relayed
    settings = load_settings(env)
    opener = ConnectionOpener(settings, StaticPassword(settings.user,
                                                       settings.password.get_secret_value()),
                              use_pure=use_pure)
    pool = ConnectionPool(opener, size=1, timeout=1, max_lifetime=1800, idle_ping=30)
    cases = [  # (statements, the one whose answer is lost, outcome unknown?, row stored?)
        (["START TRANSACTION", "INSERT INTO users (email, name) VALUES ('c@example.com', 'C')",
          "COMMIT"], b"COMMIT", True, True),
        (["INSERT INTO users (email, name) VALUES ('a@example.com', 'A')"], b"'a@example.com'",
         True, True),
        (["START TRANSACTION", "INSERT INTO users (email, name) VALUES ('t@example.com', 'T')",
          "COMMIT"], b"'t@example.com'", False, False),
    ]
    try:
        for statements, marker, unknown, stored in cases:
            relay.lose_answer_to(marker)
            lease = pool.borrow()
            with pytest.raises(DatabaseUnavailable) as raised:
                for statement in statements:
                    lease.execute(statement)
            lease.release()
            assert isinstance(raised.value, WriteOutcomeUnknown) is unknown, (marker, raised.value)
            email = marker.strip(b"'").decode() if b"@" in marker else "c@example.com"
            other = connect(env)  # the server's view, past the relay
            try:
                cur = other.cursor()
                cur.execute("SELECT COUNT(*) FROM users WHERE email = %s", (email,))
                assert cur.fetchone()[0] == int(stored), marker
            finally:
                other.close()
        assert len(relay.seen) == 3  # each statement sent once: none was retried
        lease = pool.borrow()  # and the pool serves again, on a fresh connection
        assert lease.query("SELECT COUNT(*) AS n FROM users") == [{"n": 2}]
        lease.release()
    finally:
        pool.dispose()


def test_a_write_past_db_read_timeout_is_a_timeout_whose_outcome_is_unknown(db_env):
    """DB_READ_TIMEOUT ran out on a write outside a transaction: the server may still apply it.
    Still a StatementTimeout to the pool's callers, answered as write_outcome_unknown."""
    app = create_app({**db_env, "DB_READ_TIMEOUT": "1", "DB_POOL_SIZE": "1"})
    database = app.extensions["database"]
    lease = database.borrow()
    try:
        with pytest.raises(StatementTimeout) as raised:
            lease.execute("DO SLEEP(2)")
        assert isinstance(raised.value, WriteOutcomeUnknown) and raised.value.timed_out
    finally:
        lease.release()
        database.dispose()


def test_a_create_or_delete_whose_answer_was_lost_says_it_may_have_been_applied(relayed, capsys):
    """POST /api/users whose COMMIT reached the server but whose answer did not come back: the
    user exists. Answering 503 database_unavailable ("retry later") told the client its write
    was lost; its retry then got 409 email_taken for its own address. Now 503
    write_outcome_unknown, with Retry-After, logged as db_write_unconfirmed; the same for a
    DELETE (autocommitted). Nothing is retried, and the next request succeeds."""
    relay, env = relayed
    app = create_app({**env, "DB_POOL_SIZE": "2"})
    client = app.test_client()
    try:
        capsys.readouterr()
        relay.lose_answer_to(b"COMMIT")
        response = client.post("/api/users", json={"email": "lost@example.com", "name": "L"})
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert response.get_json()["error"]["code"] == "write_outcome_unknown", response.get_json()
        [user] = client.get("/api/users").get_json()["data"]  # applied, as the answer warned
        assert user["email"] == "lost@example.com"

        relay.lose_answer_to(b"DELETE")
        response = client.delete(f"/api/users/{user['id']}")
        assert response.status_code == 503
        assert response.get_json()["error"]["code"] == "write_outcome_unknown"
        assert client.get("/api/users").get_json()["data"] == []
        assert len(relay.seen) == 2

        created = client.post("/api/users", json={"email": "next@example.com", "name": "N"})
        assert created.status_code == 201  # no restart needed
        out = capsys.readouterr().out
        assert [r["errno"] for r in logged(out, "db_write_unconfirmed")] == [2013, 2013]
        assert "Traceback" not in out
    finally:
        app.extensions["database"].dispose()


PROXY_TIMEOUT = ("SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = 9501, "
                 "MESSAGE_TEXT = 'Timed-out waiting to acquire database connection'")


def test_rds_proxy_borrow_timeout_answers_503_and_keeps_the_connection(db_env, mysql_server, capsys):
    """RDS Proxy's 9501 (no database connection within its ConnectionBorrowTimeout: a failover
    in progress, or max_connections reached) answered as a statement's error, sent here by the
    real server from a trigger and a function: it was a 500 internal_error with a traceback.
    Now 503 database_unavailable with Retry-After, for a write and a read, and the session,
    which is fine, stays pooled."""
    admin = [f"USE `{db_env['RDS_DB_NAME']}`"]
    mysql_server.sql(admin + [f"CREATE TRIGGER proxy_timeout BEFORE INSERT ON users FOR EACH ROW "
                              f"{PROXY_TIMEOUT}",
                              f"CREATE FUNCTION proxy_timeout() RETURNS INT BEGIN {PROXY_TIMEOUT}; "
                              "RETURN 0; END"])
    app = create_app({**db_env, "DB_POOL_SIZE": "1"})
    client = app.test_client()
    database = app.extensions["database"]
    try:
        assert client.get("/api/users").status_code == 200
        capsys.readouterr()
        response = client.post("/api/users", json={"email": "p@example.com", "name": "P"})
        assert response.status_code == 503 and response.headers["Retry-After"] == "5", response.text
        assert response.get_json()["error"]["code"] == "database_unavailable"
        lease = database.borrow()
        try:
            with pytest.raises(DatabaseUnavailable):
                lease.query("SELECT proxy_timeout() AS n")
        finally:
            lease.release()
        out = capsys.readouterr().out
        assert [r["errno"] for r in logged(out, "db_unavailable")] == [9501]
        assert "Traceback" not in out and "unhandled_error" not in out
        assert client.get("/api/users").status_code == 200
        stats = database.pool.stats()
        assert stats["opened"] == 1 and stats["closed"] == 0  # the same connection all along
    finally:
        database.dispose()


@pytest.fixture(scope="module")
def old_writer(tmp_path_factory):
    """A server of this module's own, to turn read-only: the writer a failover demotes."""
    server = localdb.LocalServer(basedir=tmp_path_factory.mktemp("old-writer")).start()
    yield server
    server.remove()


def test_a_demoted_writer_and_a_moved_endpoint_leave_no_request_on_the_old_writer(
        old_writer, mysql_server):
    """An Aurora failover demotes the writer to a read-only reader, its connections still open,
    and the cluster endpoint's name moves to the new writer. The create's refused START (1290)
    is sent again on a fresh connection, which reaches the new writer (201); the pool's other
    connection to the old writer is replaced before any read uses it, so the list that follows
    shows the new user (a read on the old writer would not)."""
    with fresh_database(mysql_server) as env:
        name = env["RDS_DB_NAME"]
        old_writer.create_database(name)
        old_env = old_writer.environ(name)
        conn = connect(old_env)
        try:
            migrate.apply(conn)
        finally:
            conn.close()
        relay = Relay(old_writer.port)
        app = create_app({**env, "RDS_PORT": str(relay.port), "DB_POOL_SIZE": "2"})
        database = app.extensions["database"]
        try:
            leases = [database.borrow(), database.borrow()]  # both connections to the old writer
            for lease in leases:
                lease.release()
            old_writer.sql(["SET GLOBAL read_only = 1"])
            relay.retarget(mysql_server.port)
            client = app.test_client()
            created = client.post("/api/users", json={"email": "new@example.com", "name": "N"})
            assert created.status_code == 201, created.get_json()
            listed = [u["email"] for u in client.get("/api/users").get_json()["data"]]
            assert listed == ["new@example.com"]
            deadline = time.monotonic() + 10  # a closed session leaves the list once its thread sees it
            while old_writer.sql([f"SELECT ID FROM information_schema.PROCESSLIST WHERE DB = '{name}'"]):
                assert time.monotonic() < deadline, "the app kept a connection to the old writer"
                time.sleep(0.05)
        finally:
            old_writer.sql(["SET GLOBAL read_only = 0"])
            database.dispose()
            relay.close()
            old_writer.sql([f"DROP DATABASE IF EXISTS `{name}`"])
