"""Conflicting writes on the same rows and emails, through gunicorn: what clients get back and
what the database holds afterwards.

One database and one gunicorn (2 workers x 8 threads, a pool as large as the threads) serve
the whole module; each test works on emails of its own. Where a race decides the outcome, a
connection of the test holds a row lock and lets go once the requests are queued behind it,
so the order is the server's lock queue's, not the scheduler's.
"""

from __future__ import annotations

import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import Gunicorn, connect, fresh_database

THREADS = 8


@pytest.fixture(scope="module")
def env(mysql_server):
    with fresh_database(mysql_server) as env:
        yield env


@pytest.fixture(scope="module")
def api(env, tmp_path_factory):
    server = Gunicorn({**env, "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": str(THREADS),
                       "DB_POOL_SIZE": str(THREADS)},
                      tmp_path_factory.mktemp("concurrency") / "gunicorn.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clients():
    with ThreadPoolExecutor(2 * THREADS) as pool:
        yield pool


@pytest.fixture
def locker(env):
    """A session of the test's own, to hold row locks while requests queue behind them."""
    conn = connect(env)
    yield conn
    conn.close()


def wait_for_lock_waits(server, database: str, count: int, statement: str,
                        timeout: float = 10) -> None:
    """Return once `count` transactions in `database` wait for a row lock in a statement LIKE
    `statement`.

    InnoDB refreshes INNODB_TRX only for a read more than 0.1 s after the previous one, and
    serves the last copy otherwise: polls come further apart than that, and the statement
    tells this test's waits from any an earlier test's last copy still shows.
    """
    deadline = time.monotonic() + timeout
    while True:
        [(waiting,)] = server.sql([
            "SELECT COUNT(*) FROM information_schema.INNODB_TRX t "
            "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
            f"WHERE t.trx_state = 'LOCK WAIT' AND p.DB = '{database}' "
            f"AND t.trx_query LIKE '{statement}'"])
        if waiting >= count:
            return
        assert time.monotonic() < deadline, f"{waiting} of {count} lock waits in {database}"
        time.sleep(0.15)


def rows_with_email_key(env, email: str) -> list[tuple]:
    conn = connect(env)
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, email, name FROM users WHERE email_key = LOWER(%s) ORDER BY id",
                    (email,))
        return cur.fetchall()
    finally:
        conn.close()


def create(api, email: str, name: str = "n") -> dict:
    response = requests.post(api.url + "/api/users", json={"email": email, "name": name}, timeout=20)
    assert response.status_code == 201, response.text
    return response.json()


def code(response) -> str | None:
    return response.json()["error"]["code"] if response.status_code >= 400 else None


def test_creates_deadlocked_after_a_delete_of_their_email_are_retried(
        api, env, mysql_server, locker, clients):
    """Two POSTs of an address whose holder was just deleted, while the deleted row is still
    in the index (purge has not removed it): each locks it and the next key (shared) to check
    for duplicates, then both wait to insert before that next key, each for the other:
    InnoDB rolls one back entirely (1213, "Deadlock found"). That create runs again once on
    the server: its client gets 409 email_taken (the address is the other POST's by then),
    not a 503 for a conflict the server already resolved.

    The test's session keeps a snapshot open (purge keeps the deleted row for it) and holds
    the next key, so both POSTs get past their first lock before either tries to insert."""
    email = "Race.Delete@example.org"
    holder = create(api, email)
    cur = locker.cursor()
    cur.execute("INSERT INTO users (email, name) VALUES (%s, 'neighbour')", (email + "a",))
    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
    cur.execute("SELECT id FROM users WHERE email_key = LOWER(%s) FOR UPDATE", (email + "a",))
    cur.fetchall()
    deleted = requests.delete(f"{api.url}/api/users/{holder['id']}", timeout=20)
    assert deleted.status_code == 204, deleted.text
    posts = [clients.submit(requests.post, api.url + "/api/users",
                            json={"email": address, "name": "new"}, timeout=20)
             for address in (email, email.lower())]
    wait_for_lock_waits(mysql_server, env["RDS_DB_NAME"], 2, f"INSERT INTO users %{email}%")
    locker.rollback()
    responses = [post.result() for post in posts]
    assert sorted((r.status_code, code(r)) for r in responses) == [(201, None), (409, "email_taken")], \
        [r.text for r in responses]
    [created] = [r.json() for r in responses if r.status_code == 201]
    assert rows_with_email_key(env, email) == [(created["id"], created["email"], "new")]
    assert "db_deadlock_retried" in api.output()


def forms_of(local: str, domain: str) -> list[str]:
    """One address as clients may spell it: cases, Unicode NFD, the domain in punycode. The
    validator folds the domain's case, NFD and punycode; the local part's case is for the
    email key (LOWER) to compare."""
    ace = domain.encode("idna").decode("ascii")
    return [f"{local}@{domain}", f"{local.upper()}@{domain.upper()}", f"{local.lower()}@{ace}",
            unicodedata.normalize("NFD", f"{local.title()}@{domain}"), f"{local}@{ace.upper()}"]


def test_every_spelling_of_one_address_racing_gets_one_201(api, env, clients):
    """Concurrent POSTs of one address in every spelling: one 201, all the others 409
    email_taken, never a 5xx, and the database holds exactly the row the 201 returned."""
    addresses = [(f"zoë{i}", "exämple.org") for i in range(8)]
    sends = [(address, form) for address in addresses for form in forms_of(*address) * 2]
    responses = list(clients.map(
        lambda send: requests.post(api.url + "/api/users", json={"email": send[1], "name": "n"},
                                   timeout=20), sends))
    for (local, domain) in addresses:
        answers = [r for (address, _), r in zip(sends, responses) if address == (local, domain)]
        assert sorted((r.status_code, code(r)) for r in answers) == \
            [(201, None)] + [(409, "email_taken")] * (len(answers) - 1), [r.text for r in answers]
        [created] = [r.json() for r in answers if r.status_code == 201]
        assert rows_with_email_key(env, created["email"]) == [(created["id"], created["email"], "n")]

