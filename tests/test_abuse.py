"""What a hostile or careless client can do through the stack a Beanstalk instance runs: nginx
with .platform/nginx in front of gunicorn with gunicorn.conf.py (the Procfile's command), on a
real database.

tests/test_hostile.py sends malformed input to the app and to gunicorn alone, and
tests/test_nginx.py nginx's limits; this file covers what only the whole stack shows: whose
resources a slow client holds, and the answers nginx makes up itself (never HTML, never a
redirect to a host the client named).
"""

from __future__ import annotations

import contextlib
import json
import socket

import pytest
import requests

import conftest
from app import create_app
from test_hostile import exchange, parse, table
from test_nginx import nginx_in_front_of

SEED = {"email": "ada@example.com", "name": "Ada"}  # id 1
THREADS = 2  # gunicorn's threads here: fewer slow clients than on Beanstalk (8) show the same


@pytest.fixture(scope="module")
def module_env(mysql_server):
    with conftest.fresh_database(mysql_server, seed=[(SEED["email"], SEED["name"])]) as env:
        yield {**env, "DB_POOL_TIMEOUT": "0.5", "DB_CONNECT_TIMEOUT": "2"}


@pytest.fixture(scope="module")
def stack(module_env, tmp_path_factory):
    """One gunicorn worker with THREADS threads, behind nginx with our config: (nginx URL, its
    working directory, the database's environ)."""
    work = tmp_path_factory.mktemp("abuse")
    server = conftest.Gunicorn({**module_env, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": str(THREADS)},
                               work / "gunicorn.log")
    try:
        with nginx_in_front_of(server.port, work / "nginx") as base:
            yield base, work / "nginx", module_env
    finally:
        server.stop()


def json_error(answer: bytes, status: int, code: str, *, head: bool = False) -> dict[str, str]:
    got, headers, body = parse(answer)
    assert got == status, (got, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:300])
    if not head:
        assert json.loads(body)["error"]["code"] == code, body[:300]
    return headers


def test_api_without_its_slash_is_a_json_404_not_a_redirect_to_the_clients_host(stack):
    """nginx answered /api, the name of its `location /api/` without the slash, itself: an HTML
    301 to http://<Host header>/api/, a permanent, cacheable redirect to whatever host the client
    named (`Host: evil.example` gave `Location: http://evil.example:<port>/api/`). The app
    answers /api with 404, and every answer is JSON."""
    base, _, env = stack
    before = table(env)
    for method in ("GET", "HEAD", "POST", "DELETE"):
        for target in ("/api", "/api?limit=1", "//api"):
            request = (f"{method} {target} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n"
                       "Connection: close\r\n\r\n").encode()
            answer = exchange(base, request)
            headers = json_error(answer, 404, "not_found", head=method == "HEAD")
            assert "location" not in headers and b"evil.example" not in answer, answer[:400]
    absolute = exchange(base, b"GET http://evil.example/api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    json_error(absolute, 404, "not_found")
    assert b"evil.example" not in absolute
    # The paths under it still reach the app.
    assert requests.get(base + "/api/users?limit=1", timeout=10).json()["data"][0]["email"] == SEED["email"]
    assert table(env) == before


def test_nginxs_own_500_is_json(stack):
    """nginx writes a body larger than client_body_buffer_size (16k) to its temp directory
    before it proxies it; when it cannot (a full disk), it answered its HTML 500. Its own errors
    are JSON, with the app's code for a 500; the same request normally gets the app's 413."""
    base, work, env = stack
    body = b'{"email": "temp@example.com", "name": "x"}'.ljust(20_000)
    request = (b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    temp = work / "body"
    temp.rename(work / "body.saved")
    try:
        temp.write_text("")  # a file where the directory was: open() fails as on a full disk
        headers = json_error(exchange(base, request), 500, "internal_error")
        assert "x-request-id" not in headers  # nginx's answer: the app never saw it
    finally:
        temp.unlink()
        (work / "body.saved").rename(temp)
    headers = json_error(exchange(base, request), 413, "payload_too_large")
    assert "x-request-id" in headers  # the app's answer
    assert not any(row[1] == "temp@example.com" for row in table(env))


SLOW_REQUESTS = {
    # Headers sent, the body's first byte of 100 promised.
    "body": b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{",
    # A first chunk, then nothing: no length tells nginx how much is left.
    "chunked": b"PATCH /api/users/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
    # The request line and part of the headers.
    "headers": b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: appl",
}


def test_slow_clients_hold_nginx_connections_not_gunicorns_threads(stack):
    """gthread gives each request a thread for as long as it reads the request: a client that
    sends its body slowly, straight to gunicorn, holds one of a worker's few threads for as long
    as it likes. Behind nginx (proxy_request_buffering, 01_api.conf) it holds an nginx
    connection: with three times as many slow clients as gunicorn has threads, others are
    served, and the slow requests never reach the app."""
    base, _, env = stack
    before = table(env)
    host, port = base.removeprefix("http://").split(":")
    with contextlib.ExitStack() as stack_:
        for kind, start in [*SLOW_REQUESTS.items()] * THREADS:
            sock = stack_.enter_context(socket.create_connection((host, int(port)), timeout=10))
            sock.sendall(start)
        with requests.Session() as session:
            listed = session.get(base + "/api/users", timeout=10)
            created = session.post(base + "/api/users", json={"email": "fast@example.com", "name": "Fast"},
                                   timeout=10)
            changed = session.patch(base + created.headers["Location"], json={"name": "Faster"}, timeout=10)
        assert listed.status_code == 200 and listed.json()["data"][0]["email"] == SEED["email"]
        assert created.status_code == 201 and changed.json()["name"] == "Faster", created.text
    # The slow clients left without finishing: nothing they sent was applied.
    after = table(env)
    assert after[:len(before)] == before and [row[1:3] for row in after[len(before):]] == [
        ("fast@example.com", "Faster")]


INVISIBLE_NAMES = [
    pytest.param("\u200b", id="zero-width-space"),
    pytest.param("\ufeff", id="byte-order-mark"),
    pytest.param("\u200d\u200c", id="zwj-and-zwnj"),
    pytest.param("\u2060\u2063", id="word-joiner-invisible-separator"),
    pytest.param(" \u200b \u200b ", id="spaces-around-zero-width-spaces"),
    pytest.param("\u0301\u0308", id="combining-marks-alone"),
    pytest.param("\u3164", id="hangul-filler"),
    pytest.param("\U000e0041\U000e0042", id="tag-characters"),
]


@pytest.fixture(scope="module")
def app_client(module_env):
    app = create_app(module_env)
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["database"].dispose()


@pytest.mark.parametrize("name", INVISIBLE_NAMES)
def test_a_name_that_shows_nothing_is_refused(app_client, module_env, name):
    """min_length counts characters, not what shows: a name of zero-width spaces, a BOM or
    bare combining marks was stored, and listed as a blank."""
    before = table(module_env)
    for method, path, body in (("POST", "/api/users", {"email": "blank@example.com", "name": name}),
                               ("PATCH", "/api/users/1", {"name": name})):
        response = app_client.open(path, method=method, json=body)
        assert response.status_code == 422, (method, response.get_json())
        assert response.get_json()["error"]["details"] == [
            {"field": "name", "message": "must contain a visible character"}]
    assert table(module_env) == before


@pytest.mark.parametrize("name", [
    pytest.param("Zoe\u200b", id="letter-and-zero-width-space"),
    pytest.param("\u0915\u094d\u200d\u0937", id="devanagari-with-zwj"),
    pytest.param("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", id="persian-with-zwnj"),
    pytest.param("\U0001f469\u200d\U0001f4bb", id="zwj-emoji"),
    pytest.param("\u2800", id="braille-blank-is-a-symbol"),
])
def test_names_with_format_characters_and_something_to_show_are_kept(app_client, name):
    response = app_client.post("/api/users", json={"email": f"v{len(name)}{ord(name[-1])}@example.com",
                                                   "name": name})
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["name"] == name
    assert app_client.delete(response.headers["Location"]).status_code == 204


def test_method_override_headers_and_parameters_change_no_method(app_client, module_env):
    """No middleware turns a POST into a DELETE: a proxy or firewall that allows POST and
    refuses DELETE means it."""
    before = table(module_env)
    overrides = {name: "DELETE" for name in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")}
    response = app_client.post("/api/users/1?_method=DELETE", headers=overrides, json={"name": "x"})
    assert response.status_code == 405 and response.get_json()["error"]["code"] == "method_not_allowed"
    response = app_client.get("/api/users/1?_method=DELETE", headers=overrides)
    assert response.status_code == 200 and response.get_json()["email"] == SEED["email"]
    assert table(module_env) == before


def test_an_error_lists_a_bounded_number_of_problems_whatever_the_request_holds(stack):
    """Every unknown key of a body, and every repeated query parameter, was a detail of its
    own: a 14 KB body of 1,500 short keys came back as 65 KB of details. An error now
    lists validation.MAX_DETAILS problems and counts the rest, so no answer is much larger
    than a small one, through nginx and gunicorn as a client sees it."""
    from app.validation import MAX_DETAILS

    base, _, env = stack
    before = table(env)
    keys = 1500
    body = json.dumps({f"k{i}": 0 for i in range(keys)}, separators=(",", ":"))
    assert len(body) < 16 * 1024
    response = requests.post(base + "/api/users", data=body, headers={"Content-Type": "application/json"},
                             timeout=10)
    assert response.status_code == 422, response.text[:300]
    details = response.json()["error"]["details"]
    listed = details[:MAX_DETAILS]
    assert {d["message"] for d in listed} <= {"unknown field", "Field required"}, listed
    # Two missing fields (email, name) and 1,500 unknown ones.
    assert details[MAX_DETAILS:] == [{"field": "", "message": f"{keys + 2 - MAX_DETAILS} more problem(s) not listed"}]
    assert len(response.content) < 2048, len(response.content)

    query = "&".join(f"p{i}=1&p{i}=2" for i in range(300))
    response = requests.get(f"{base}/api/users?{query}", timeout=10)
    assert response.status_code == 400, response.text[:300]
    details = response.json()["error"]["details"]
    assert details[:2] == [{"field": "p0", "message": "given more than once"},
                           {"field": "p1", "message": "given more than once"}]
    assert details[MAX_DETAILS:] == [{"field": "", "message": f"{300 - MAX_DETAILS} more problem(s) not listed"}]

    # A request with a few problems still gets each of them.
    response = requests.get(f"{base}/api/users?limit=0&after=-1&x=1", timeout=10)
    assert [d["field"] for d in response.json()["error"]["details"]] == ["limit", "after", "x"]
    assert table(env) == before
