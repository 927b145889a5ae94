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


def queue_behind_row_lock(api, env, mysql_server, locker, clients, user_id, requests_):
    """Send `requests_` (method, json) for one user one after the other, each once the
    previous one waits on the test's lock on the row; then let the row go. The server's
    lock queue hands the row to them in that order. Returns their responses."""
    cur = locker.cursor()
    cur.execute("START TRANSACTION")
    cur.execute("SELECT id FROM users WHERE id = %s FOR UPDATE", (user_id,))
    cur.fetchall()
    pending = []
    for method, body in requests_:
        pending.append(clients.submit(requests.request, method, f"{api.url}/api/users/{user_id}",
                                      json=body, timeout=20))
        wait_for_lock_waits(mysql_server, env["RDS_DB_NAME"], len(pending),
                            f"%users% WHERE id = {user_id}")
    locker.rollback()
    return [p.result() for p in pending]


def test_patch_answers_its_own_write_when_another_patch_follows_it(
        api, env, mysql_server, locker, clients):
    """A PATCH answers the user as it left it: a PATCH of the same user that comes next
    (queued on the row) waits for the first one's answer; it used to land between the
    first's UPDATE and its read, and the first client got 200 with the second's name."""
    user = create(api, "patch.order@example.org", "Before")
    first, second = queue_behind_row_lock(api, env, mysql_server, locker, clients, user["id"],
                                          [("PATCH", {"name": "First"}), ("PATCH", {"name": "Second"})])
    assert first.status_code == 200 and first.json()["name"] == "First", first.text
    assert second.status_code == 200 and second.json()["name"] == "Second", second.text
    assert rows_with_email_key(env, user["email"]) == [(user["id"], user["email"], "Second")]


def test_patch_applied_before_a_delete_answers_200_not_404(api, env, mysql_server, locker, clients):
    """A PATCH whose UPDATE is applied, followed at once by a DELETE of the user, answers 200
    with what it wrote: it used to read the row back after the DELETE and answer 404
    user_not_found for a change it had made."""
    user = create(api, "patch.delete@example.org", "Before")
    patch, delete = queue_behind_row_lock(api, env, mysql_server, locker, clients, user["id"],
                                          [("PATCH", {"name": "Patched"}), ("DELETE", None)])
    assert patch.status_code == 200 and patch.json()["name"] == "Patched", patch.text
    assert delete.status_code == 204, delete.text
    assert rows_with_email_key(env, user["email"]) == []


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


def test_conflicting_writes_under_load_answer_what_they_did(api, env, clients):
    """Rounds of conflicting writes from many clients at once: creates of an address racing
    the delete of its holder, two users swapping emails, PATCHes racing a DELETE and GETs of
    one user. Every answer is one of the API's (a 503 only as database_busy with Retry-After),
    every 2xx body is the request's own write, and the database agrees with the answers."""
    url = api.url + "/api/users"
    unexpected = []

    def check(response, allowed):
        if response.status_code == 503:  # a second deadlock in a row: clean, and retryable
            ok = code(response) == "database_busy" and response.headers.get("Retry-After") == "1"
        else:
            ok = (response.status_code, code(response)) in allowed
        if not ok:
            unexpected.append((response.request.method, response.status_code, response.text))
        return response

    for i in range(6):
        # Creates racing a delete of the address's holder.
        email = f"Churn{i}@example.org"
        holder = create(api, email)
        delete = clients.submit(requests.delete, f"{url}/{holder['id']}", timeout=20)
        posts = [clients.submit(requests.post, url, json={"email": form, "name": f"c{k}"}, timeout=20)
                 for k, form in enumerate([email, email.lower(), email.upper()] * 3)]
        check(delete.result(), {(204, None)})
        created = [check(p.result(), {(201, None), (409, "email_taken")}) for p in posts]
        created = [r.json() for r in created if r.status_code == 201]
        assert len(created) <= 1, created
        assert rows_with_email_key(env, email) == [(c["id"], c["email"], c["name"]) for c in created]

        # Two users swapping emails: never both stored, each refused while the other holds it.
        a, b = create(api, f"swap.a{i}@example.org"), create(api, f"swap.b{i}@example.org")
        swaps = [clients.submit(requests.patch, f"{url}/{x['id']}", json={"email": y["email"]}, timeout=20)
                 for x, y in ((a, b), (b, a))]
        for s in swaps:
            check(s.result(), {(409, "email_taken")})
        assert rows_with_email_key(env, a["email"]) == [(a["id"], a["email"], "n")]
        assert rows_with_email_key(env, b["email"]) == [(b["id"], b["email"], "n")]

        # PATCHes, a DELETE and GETs of one user.
        user = create(api, f"target{i}@example.org")
        patches = [clients.submit(requests.patch, f"{url}/{user['id']}",
                                  json={"name": f"p{k}", "email": f"target{i}.{k}@example.org"},
                                  timeout=20) for k in range(4)]
        delete = clients.submit(requests.delete, f"{url}/{user['id']}", timeout=20)
        gets = [clients.submit(requests.get, f"{url}/{user['id']}", timeout=20) for _ in range(3)]
        for k, p in enumerate(patches):
            r = check(p.result(), {(200, None), (404, "user_not_found")})
            if r.status_code == 200:
                assert (r.json()["name"], r.json()["email"]) == (f"p{k}", f"target{i}.{k}@example.org")
        check(delete.result(), {(204, None)})
        for g in gets:
            check(g.result(), {(200, None), (404, "user_not_found")})
        assert requests.get(f"{url}/{user['id']}", timeout=20).status_code == 404

    assert unexpected == []
    assert "Traceback" not in api.output()
