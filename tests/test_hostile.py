"""Hostile input, table by table: never a 5xx, every error JSON with a stable code, and a
rejected request leaves the users table exactly as it was (read over a direct connection).

The in-process cases use the real app on a real database; what only an HTTP server can be
sent (raw header bytes, chunked bodies, lying Content-Length) goes through real gunicorn.
Choices these tests pin down (README, "Errors"):
- names: control characters (C0/C1, NUL, DEL), surrogates and line/paragraph separators are
  refused (422); format characters such as ZWJ stay allowed; names are stored in NFC;
- a JSON key given twice is refused (400 invalid_json); so is a query parameter given twice;
- ids in paths and numbers in query strings are ASCII digits only, within BIGINT UNSIGNED.
"""

from __future__ import annotations

import gzip
import json
import re
import socket

import pytest

import conftest
from app import create_app
from conftest import connect

SEED = {"email": "ada@example.com", "name": "Ada"}  # always id 1 in a fresh database
BIG = 16 * 1024  # app.MAX_BODY_BYTES


def table(env) -> list[tuple]:
    """Every row, with the name's bytes as the server holds them."""
    conn = connect(env)
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, email, name, HEX(name), created_at, updated_at FROM users ORDER BY id")
        return cur.fetchall()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def module_env(mysql_server):
    """One migrated database for the module, holding SEED as user 1.

    Shared on purpose: every case that uses it is a request that must change nothing, and
    each one checks that it did not.
    """
    with conftest.fresh_database(mysql_server, seed=[(SEED["email"], SEED["name"])]) as env:
        yield env


@pytest.fixture(scope="module")
def seeded(module_env):
    app = create_app({**module_env, "DB_POOL_TIMEOUT": "0.5", "DB_CONNECT_TIMEOUT": "2"})
    app.config["TESTING"] = True
    assert table(module_env)[0][:3] == (1, SEED["email"], SEED["name"])
    yield app.test_client(), module_env
    app.extensions["database"].dispose()


def assert_json_error(status: int, content_type: str, body: bytes, expected_status: int, code: str):
    assert status == expected_status, (status, body[:300])
    assert content_type.split(";")[0] == "application/json", content_type
    document = json.loads(body)
    assert set(document) == {"error"}, document
    assert document["error"]["code"] == code, document
    assert isinstance(document["error"]["message"], str) and document["error"]["message"]


# (method, path, body, content type, expected status, expected code). A str body is sent as
# its UTF-8 bytes as it stands (so JSON escapes like \ud800 reach the parser), a dict as JSON.
R = pytest.param
REJECTED = [
    # Paths: one user, one URL; ids are ASCII digits within BIGINT UNSIGNED.
    R("GET", "/api/users/١", None, None, 404, "not_found", id="arabic-indic-digit-id"),
    R("GET", "/api/users/１", None, None, 404, "not_found", id="fullwidth-digit-id"),
    R("DELETE", "/api/users/١", None, None, 404, "not_found", id="delete-by-unicode-digit"),
    R("PATCH", "/api/users/٠١", {"name": "Mallory"}, "application/json", 404, "not_found",
      id="patch-by-unicode-digits"),
    R("GET", "/api/users/01", None, None, 404, "not_found", id="leading-zero-id"),
    R("DELETE", "/api/users/001", None, None, 404, "not_found", id="delete-leading-zeros"),
    R("GET", "/api/users/0", None, None, 404, "not_found", id="zero-id"),
    R("GET", "/api/users/-1", None, None, 404, "not_found", id="negative-id"),
    R("GET", "/api/users/+1", None, None, 404, "not_found", id="plus-sign-id"),
    R("GET", "/api/users/1.0", None, None, 404, "not_found", id="float-id"),
    R("GET", "/api/users/1e0", None, None, 404, "not_found", id="exponent-id"),
    R("GET", "/api/users/0x1", None, None, 404, "not_found", id="hex-id"),
    R("GET", "/api/users/1_0", None, None, 404, "not_found", id="underscore-id"),
    R("GET", "/api/users/18446744073709551616", None, None, 404, "not_found", id="id-beyond-bigint"),
    R("DELETE", "/api/users/18446744073709551616", None, None, 404, "not_found",
      id="delete-id-beyond-bigint"),
    R("PATCH", "/api/users/99999999999999999999", {"name": "x"}, "application/json", 404, "not_found",
      id="patch-id-beyond-bigint"),
    R("DELETE", "/api/users/" + "9" * 5000, None, None, 404, "not_found", id="5000-digit-id"),
    R("GET", "/api/users/1%20OR%201=1", None, None, 404, "not_found", id="sql-in-path"),
    R("GET", "/api/users/1%00", None, None, 404, "not_found", id="nul-in-path"),
    R("GET", "/api/users/../health", None, None, 404, "not_found", id="dot-dot"),
    R("GET", "/api/users/%2e%2e/health", None, None, 404, "not_found", id="encoded-dot-dot"),
    R("GET", "//api//users", None, None, 404, "not_found", id="double-slashes"),
    R("GET", "/api/users//1", None, None, 404, "not_found", id="double-slash-before-id"),
    # Query strings: each parameter once, plain digits.
    R("GET", "/api/users?limit=1&limit=1000", None, None, 400, "invalid_parameter", id="repeated-limit"),
    R("GET", "/api/users?limit=1000&limit=1", None, None, 400, "invalid_parameter", id="repeated-limit-reversed"),
    R("GET", "/api/users?after=5&after=0", None, None, 400, "invalid_parameter", id="repeated-after"),
    R("GET", "/api/users?limit=1_0", None, None, 400, "invalid_parameter", id="underscore-limit"),
    R("GET", "/api/users?limit=%201", None, None, 400, "invalid_parameter", id="space-before-limit"),
    R("GET", "/api/users?limit=+5", None, None, 400, "invalid_parameter", id="plus-limit"),
    R("GET", "/api/users?limit=١٠", None, None, 400, "invalid_parameter", id="unicode-digit-limit"),
    R("GET", "/api/users?limit=1.5", None, None, 400, "invalid_parameter", id="float-limit"),
    R("GET", "/api/users?limit=1e1", None, None, 400, "invalid_parameter", id="exponent-limit"),
    R("GET", "/api/users?limit=0x10", None, None, 400, "invalid_parameter", id="hex-limit"),
    R("GET", "/api/users?limit=", None, None, 400, "invalid_parameter", id="empty-limit"),
    R("GET", "/api/users?limit=true", None, None, 400, "invalid_parameter", id="bool-limit"),
    R("GET", "/api/users?limit=%00", None, None, 400, "invalid_parameter", id="nul-limit"),
    R("GET", "/api/users?limit=10;DROP%20TABLE%20users", None, None, 400, "invalid_parameter", id="sql-limit"),
    R("GET", "/api/users?after=0%20OR%201=1", None, None, 400, "invalid_parameter", id="sql-after"),
    R("GET", "/api/users?after=18446744073709551616", None, None, 400, "invalid_parameter", id="after-beyond-bigint"),
    R("GET", "/api/users?after=" + "9" * 5000, None, None, 400, "invalid_parameter", id="5000-digit-after"),
    R("GET", "/api/users?id=1%20OR%201=1", None, None, 400, "invalid_parameter", id="unknown-parameter"),
    # Names: no control characters, NUL, surrogates or line breaks inside.
    R("POST", "/api/users", {"email": "n1@example.com", "name": "a\x00b"}, "application/json", 422,
      "validation_error", id="nul-in-name"),
    R("POST", "/api/users", {"email": "n2@example.com", "name": "Eve\x1b[2J\x1b[31m"}, "application/json",
      422, "validation_error", id="ansi-escape-in-name"),
    R("POST", "/api/users", {"email": "n3@example.com", "name": "Eve\r\nX-Admin: 1"}, "application/json",
      422, "validation_error", id="crlf-in-name"),
    R("POST", "/api/users", {"email": "n4@example.com", "name": "a\tb"}, "application/json", 422,
      "validation_error", id="tab-in-name"),
    R("POST", "/api/users", {"email": "n5@example.com", "name": "a\x7fb"}, "application/json", 422,
      "validation_error", id="del-in-name"),
    R("POST", "/api/users", {"email": "n6@example.com", "name": "a\x85b"}, "application/json", 422,
      "validation_error", id="c1-next-line-in-name"),
    R("POST", "/api/users", {"email": "n7@example.com", "name": "a\u2028b"}, "application/json", 422,
      "validation_error", id="line-separator-in-name"),
    R("PATCH", "/api/users/1", {"name": "Ada\x00Lovelace"}, "application/json", 422, "validation_error",
      id="patch-nul-in-name"),
    R("POST", "/api/users", {"email": "n8@example.com", "name": "\u0958" * 60}, "application/json", 422,
      "validation_error", id="name-longer-than-100-after-nfc"),
    R("POST", "/api/users", {"email": "n9@example.com", "name": "😀" * 101}, "application/json", 422,
      "validation_error", id="101-emoji-name"),
    # Unicode the JSON parser must refuse without a 500.
    R("POST", "/api/users", '{"email": "s1@example.com", "name": "\\ud800"}', "application/json", 400,
      "invalid_json", id="lone-high-surrogate"),
    R("POST", "/api/users", '{"email": "s2@example.com", "name": "x\\udc00y"}', "application/json", 400,
      "invalid_json", id="lone-low-surrogate"),
    R("POST", "/api/users", '{"email": "\\ud83d@example.com", "name": "x"}', "application/json", 400,
      "invalid_json", id="surrogate-in-email"),
    R("POST", "/api/users", b'{"email": "u1@example.com", "name": "\xff\xfe"}', "application/json", 400,
      "invalid_json", id="invalid-utf8"),
    R("POST", "/api/users", b'{"email": "u2@example.com", "name": "\xed\xa0\x80"}', "application/json",
      400, "invalid_json", id="utf8-encoded-surrogate"),
    R("POST", "/api/users", b'\xef\xbb\xbf{"email": "u3@example.com", "name": "x"}', "application/json",
      400, "invalid_json", id="utf8-bom"),
    R("POST", "/api/users", '{"email": "u4@example.com", "name": "x"}'.encode("utf-16"),
      "application/json", 400, "invalid_json", id="utf16-body"),
    # Duplicate keys: parsers disagree on which one wins.
    R("POST", "/api/users", '{"email": "d1@example.com", "name": "x", "name": "y"}', "application/json",
      400, "invalid_json", id="duplicate-name-key"),
    R("POST", "/api/users", '{"email": "d2@example.com", "email": "d3@example.com", "name": "x"}',
      "application/json", 400, "invalid_json", id="duplicate-email-key"),
    R("POST", "/api/users", '{"email": "d4@example.com", "name": [1, {"a": 1}], "name": "y"}',
      "application/json", 400, "invalid_json", id="duplicate-key-over-nested-value"),
    R("PATCH", "/api/users/1", '{"name": "Eve", "name": "Ada"}', "application/json", 400, "invalid_json",
      id="patch-duplicate-key"),
    # Deep and large JSON: no RecursionError, no 500.
    R("POST", "/api/users", "[" * 8000 + "]" * 8000, "application/json", 400, "invalid_json",
      id="8000-nested-arrays"),
    R("POST", "/api/users", '{"a":' * 2500 + "1" + "}" * 2500, "application/json", 400, "invalid_json",
      id="2500-nested-objects"),
    R("POST", "/api/users", '{"email": "deep@example.com", "name": ' + "[" * 5000 + "]" * 5000 + "}",
      "application/json", 400, "invalid_json", id="deep-value-in-valid-object"),
    R("POST", "/api/users", "[" * 10_000 + "]" * 10_000, "application/json", 413, "payload_too_large",
      id="10000-nested-arrays-over-limit"),
    R("POST", "/api/users", '{"email": "big@example.com", "name": "x"}'.ljust(BIG + 1), "application/json",
      413, "payload_too_large", id="one-byte-over-16KiB"),
    # Wrong types: strict mode, no coercion.
    R("POST", "/api/users", {"email": "t1@example.com", "name": 7}, "application/json", 422,
      "validation_error", id="int-name"),
    R("POST", "/api/users", '{"email": "t2@example.com", "name": ' + "9" * 400 + "}", "application/json",
      422, "validation_error", id="400-digit-int-name"),
    R("POST", "/api/users", '{"email": "t3@example.com", "name": 1e400}', "application/json", 422,
      "validation_error", id="float-overflow-name"),
    R("POST", "/api/users", '{"email": "t4@example.com", "name": NaN}', "application/json", 422,
      "validation_error", id="nan-name"),
    R("POST", "/api/users", {"email": "t5@example.com", "name": True}, "application/json", 422,
      "validation_error", id="bool-name"),
    R("POST", "/api/users", {"email": "t6@example.com", "name": {"first": "A"}}, "application/json", 422,
      "validation_error", id="object-name"),
    R("POST", "/api/users", {"email": 12345, "name": "x"}, "application/json", 422, "validation_error",
      id="int-email"),
    R("POST", "/api/users", "null", "application/json", 422, "validation_error", id="null-body"),
    R("POST", "/api/users", '"ada@example.com"', "application/json", 422, "validation_error",
      id="string-body"),
    R("POST", "/api/users", "1", "application/json", 422, "validation_error", id="number-body"),
    R("POST", "/api/users", {"email": "t7@example.com", "name": "x", "__proto__": {"admin": True}},
      "application/json", 422, "validation_error", id="proto-key"),
    R("PATCH", "/api/users/1", {"id": 2}, "application/json", 422, "validation_error", id="patch-id"),
    R("PATCH", "/api/users/1", {"created_at": "2000-01-01T00:00:00Z"}, "application/json", 422,
      "validation_error", id="patch-created-at"),
    # Emails.
    R("POST", "/api/users", {"email": '"x"@example.com', "name": "x"}, "application/json", 422,
      "validation_error", id="quoted-local-part"),
    R("POST", "/api/users", {"email": "x'; DROP TABLE users;--", "name": "x"}, "application/json", 422,
      "validation_error", id="sql-as-email"),
    R("POST", "/api/users", {"email": "a\x00@example.com", "name": "x"}, "application/json", 422,
      "validation_error", id="nul-in-email"),
    R("POST", "/api/users", {"email": "ADA@example.com", "name": "x"}, "application/json", 409,
      "email_taken", id="seed-email-other-case"),
    # A name with the address (RFC 5322's name-addr): pydantic's EmailStr keeps the address and
    # drops the rest; '<' and '>' are never part of an address, so the whole is refused.
    R("POST", "/api/users", {"email": "Mallory <mallory@example.com>", "name": "x"}, "application/json",
      422, "validation_error", id="name-and-address-as-email"),
    R("POST", "/api/users", {"email": '"Ada Lovelace" <ada@example.com>', "name": "x"}, "application/json",
      422, "validation_error", id="quoted-name-and-seed-address-as-email"),
    R("POST", "/api/users", {"email": "<angle@example.com>", "name": "x"}, "application/json", 422,
      "validation_error", id="angle-brackets-around-email"),
    R("PATCH", "/api/users/1", {"email": "Eve <eve@example.com>"}, "application/json", 422,
      "validation_error", id="patch-name-and-address-as-email"),
    # Content types.
    R("POST", "/api/users", '{"email": "c1@example.com", "name": "x"}', "text/plain", 415,
      "unsupported_media_type", id="text-plain"),
    R("POST", "/api/users", '{"email": "c2@example.com", "name": "x"}', "application/json-patch+json",
      415, "unsupported_media_type", id="json-patch-type"),
    R("POST", "/api/users", '{"email": "c3@example.com", "name": "x"}', None, 415,
      "unsupported_media_type", id="no-content-type"),
    R("POST", "/api/users", "", "application/json", 400, "invalid_json", id="empty-body"),
    R("PUT", "/api/users/1", {"name": "x"}, "application/json", 405, "method_not_allowed", id="put"),
]


@pytest.mark.parametrize("method, path, body, content_type, status, code", REJECTED)
def test_rejected_requests_answer_json_and_change_nothing(seeded, method, path, body, content_type,
                                                          status, code):
    client, env = seeded
    before = table(env)
    data = json.dumps(body) if isinstance(body, dict) else body
    response = client.open(path, method=method, data=data, content_type=content_type)
    assert_json_error(response.status_code, response.headers["Content-Type"], response.get_data(),
                      status, code)
    assert table(env) == before


ACCEPTED = [
    R("Robert'); DROP TABLE users;--", id="bobby-tables"),
    R("' OR '1'='1", id="or-1-eq-1"),
    R("1; SELECT SLEEP(10)", id="stacked-sleep"),
    R("x' UNION SELECT user, password FROM mysql.user --", id="union"),
    R('" OR ""="', id="double-quotes"),
    R("\\'; --", id="backslash-quote"),
    R("100% _wild_ %", id="like-wildcards"),
    R("`id`", id="backticks"),
    R("<script>alert(1)</script>", id="html"),
    R("😀" * 100, id="100-four-byte-emoji"),
    R("👩‍👩‍👧‍👦 family", id="zwj-emoji-sequence"),
    R("محمد بن موسى", id="arabic"),
    R("\u202eevil", id="bidi-override"),
    R("n" * 100, id="exactly-100"),
    R("null", id="null-string"),
]


@pytest.mark.parametrize("name", ACCEPTED)
def test_hostile_but_valid_names_are_stored_and_returned_verbatim(client, db_env, name):
    response = client.post("/api/users", json={"email": "v@example.com", "name": name})
    assert response.status_code == 201, response.get_json()
    user = response.get_json()
    assert user["name"] == name
    assert client.get(f"/api/users/{user['id']}").get_json()["name"] == name
    [(_, email, stored, stored_hex, _, _)] = table(db_env)
    assert (email, stored) == ("v@example.com", name)
    assert bytes.fromhex(stored_hex).decode("utf-8") == name  # utf8mb4: 4-byte emoji intact


def test_names_and_emails_are_stored_in_nfc(client, db_env):
    """'José' typed as J-o-s-e + combining acute is the same name, and the same address."""
    created = client.post("/api/users", json={"email": "jose\u0301@example.com", "name": "Jose\u0301"})
    assert created.status_code == 201
    assert created.get_json()["name"] == "Jos\u00e9" and created.get_json()["email"] == "jos\u00e9@example.com"
    before = table(db_env)
    assert before[0][2] == "Jos\u00e9"
    again = client.post("/api/users", json={"email": "jos\u00e9@example.com", "name": "x"})
    assert_json_error(again.status_code, again.headers["Content-Type"], again.get_data(), 409, "email_taken")
    assert table(db_env) == before


def test_a_body_of_exactly_the_limit_is_accepted(client, db_env):
    body = '{"email": "edge@example.com", "name": "x"}'.ljust(BIG)
    response = client.post("/api/users", data=body, content_type="application/json")
    assert response.status_code == 201, response.get_json()


# Through gunicorn: what only a real HTTP server can be sent.

def exchange(url: str, request: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the server closes. b'' if it closed without an answer."""
    host, port = url.removeprefix("http://").split(":")
    chunks = []
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):  # refused mid-send: what came back counts
            pass
    return b"".join(chunks)


class NoAnswer(AssertionError):
    """The server closed the connection without a response."""


def parse(response: bytes) -> tuple[int, dict[str, str], bytes]:
    if not response:
        raise NoAnswer("the server closed the connection without answering")
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def http(method: str, path: str, headers: dict[str, str] | list[tuple[str, str]] = (),
         body: bytes = b"") -> bytes:
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


JSON = {"Content-Type": "application/json"}
PADDED = b'{"email": "chunk@example.com", "name": "x"}' + b" " * (20 * 1024)  # valid if cut at 16 KiB
GZIPPED = gzip.compress(b'{"email": "gzip@example.com", "name": "x"}')


# (request bytes, expected status, expected code: None where gunicorn refuses the request
# before the app sees it and answers with its own HTML page. On Beanstalk nginx refuses these
# in front, its 400/414/431 as JSON: tests/test_nginx.py.)
SERVER_REJECTED = [
    R(http("GET", "/api/users", {"X-Big": "a" * 9000}), 431, None, id="9000-byte-header"),
    R(http("GET", "/api/users", [(f"X-H{i}", "1") for i in range(16_385)]), 431, None,
      id="16385-headers"),
    R(http("GET", "/api/users?x=" + "a" * 9000), 400, None, id="9000-byte-request-line"),
    # gunicorn.conf.py's limits sit above nginx's (01_api.conf), so what nginx passes, it parses.
    R(http("GET", "/api/users/0", [(f"X-H{i}", "1") for i in range(200)]), 404, "not_found",
      id="200-headers-reach-the-app"),
    R(http("GET", "/api/users/" + "9" * (8190 - len("GET /api/users/ HTTP/1.1"))), 404, "not_found",
      id="8190-byte-request-line-reaches-the-app"),
    R(b"GET /api/users HTTP/1.1\r\nHost: x\r\nX-Request-Id: a\rSet-Cookie: s=1\r\n\r\n", 400, None,
      id="bare-cr-in-header"),
    R(b"GET /api/users\r\n\r\n", 400, None, id="http-0.9-request-line"),
    R(http("G@T", "/api/users"), 400, None, id="invalid-method"),
    R(http("POST", "/api/users", {**JSON, "Content-Length": "-1"}, b"{}"), 400, None,
      id="negative-content-length"),
    R(http("POST", "/api/users", [("Content-Type", "application/json"), ("Content-Length", "2"),
                                  ("Content-Length", "40")], b'{"email": "cl@example.com", "name": "x"}'),
      400, None, id="two-content-lengths"),
    R(http("POST", "/api/users", {**JSON, "Content-Length": "5", "Transfer-Encoding": "chunked"},
           chunked(b'{"email": "smuggle@example.com", "name": "x"}')), 400, None,
      id="content-length-and-chunked"),
    # RFC 9112 6.1: an unknown transfer coding gets 501 (nginx answers the same in front).
    R(http("POST", "/api/users", {**JSON, "Transfer-Encoding": "rot13"}, b"{}"), 501, None,
      id="unknown-transfer-coding"),
    # gunicorn takes gzip, deflate and compress before chunked, removes only the chunking and
    # passes the rest on still coded: the app answers as nginx does in front.
    R(http("POST", "/api/users", {**JSON, "Transfer-Encoding": "gzip, chunked"},
           chunked(b'{"email": "te-gzip@example.com", "name": "x"}')), 501, "not_implemented",
      id="gzip-transfer-coding-on-plain-json"),
    R(http("PATCH", "/api/users/1", {**JSON, "Transfer-Encoding": "deflate, chunked"},
           chunked(b'{"name": "Eve"}')), 501, "not_implemented", id="deflate-transfer-coding-patch"),
    R(http("POST", "/api/users", {**JSON, "Transfer-Encoding": "gzip, chunked"}, chunked(GZIPPED)), 501,
      "not_implemented", id="gzip-transfer-coding"),
    R(http("GET", "/api/users%0d%0aSet-Cookie:%20s=1"), 404, "not_found", id="encoded-crlf-in-path"),
    R(http("GET", "/api/users/%ED%A0%80"), 404, "not_found", id="encoded-surrogate-in-path"),
    R(http("GET", "/api/users?limit=%ff"), 400, "invalid_parameter", id="invalid-utf8-in-query"),
    R(http("GET", "/api/users?\xff=1"), 400, "invalid_parameter", id="raw-non-utf8-byte-in-query-name"),
    R(http("GET", "/api/users?limit=1\xff"), 400, "invalid_parameter", id="raw-non-utf8-byte-in-query-value"),
    R(http("GET", "/api/users/\xff"), 404, "not_found", id="raw-non-utf8-byte-in-path"),
    R(http("GET", "//api//users", {"X-Forwarded-Host": "evil.example"}).replace(
        b"Host: 127.0.0.1", b"Host: evil.example"), 404, "not_found", id="double-slash-with-foreign-host"),
    # Werkzeug's router strips leading slashes: without the app's check these three answer 200.
    R(http("GET", "//api/users"), 404, "not_found", id="leading-double-slash"),
    R(http("GET", "///api/users/1"), 404, "not_found", id="leading-triple-slash-before-id"),
    R(http("GET", "//health"), 404, "not_found", id="leading-double-slash-health"),
    R(http("POST", "/api/users", {**JSON, "Content-Length": "99999999999999999999"},
           b'{"email": "cl@example.com", "name": "x"}'), 413, "payload_too_large", id="giant-content-length"),
    R(http("POST", "/api/users", {**JSON, "Transfer-Encoding": "chunked"}, chunked(PADDED)), 413,
      "payload_too_large", id="chunked-over-16KiB-valid-if-cut"),
    R(http("POST", "/api/users", {**JSON, "Transfer-Encoding": "chunked"},
           chunked(*[PADDED[i:i + 1000] for i in range(0, len(PADDED), 1000)])), 413,
      "payload_too_large", id="many-chunks-over-16KiB"),
    R(http("POST", "/api/users", {**JSON, "Transfer-Encoding": "chunked"}, b"zz\r\nabc\r\n0\r\n\r\n"),
      400, "bad_request", id="malformed-chunk-size"),
    R(http("POST", "/api/users", {**JSON, "Transfer-Encoding": "chunked"},
           chunked(b'{"email": "dup@example.com", "name": "a",', b' "name": "b"}')), 400, "invalid_json",
      id="chunked-duplicate-key"),
    # A content coding the app does not decode: the body is not read as if it had none (RFC 9110
    # 8.4: 415), whether it is compressed (which read as invalid JSON) or not (which was stored).
    R(http("POST", "/api/users", {**JSON, "Content-Encoding": "br", "Content-Length": "40"},
           b'{"email": "br@example.com", "name": "x"}'), 415, "unsupported_media_type",
      id="content-encoding-br-on-plain-json"),
    R(http("PATCH", "/api/users/1", {**JSON, "Content-Encoding": "deflate", "Content-Length": "15"},
           b'{"name": "Eve"}'), 415, "unsupported_media_type", id="content-encoding-deflate-patch"),
    R(http("POST", "/api/users", {**JSON, "Content-Encoding": "gzip", "Content-Length": str(len(GZIPPED))},
           GZIPPED), 415, "unsupported_media_type", id="content-encoding-gzip"),
]


@pytest.fixture(scope="module")
def served(module_env, tmp_path_factory):
    """One gunicorn (the Procfile command) for the module's raw-HTTP cases."""
    server = conftest.Gunicorn({**module_env, "WEB_CONCURRENCY": "1", "GUNICORN_THREADS": "2"},
                               tmp_path_factory.mktemp("gunicorn") / "gunicorn.log")
    yield server, module_env
    server.stop()


@pytest.mark.parametrize("request_bytes, status, code", SERVER_REJECTED)
def test_hostile_http_through_gunicorn(served, request_bytes, status, code):
    server, env = served
    before = table(env)
    got_status, headers, body = parse(exchange(server.url, request_bytes))
    if code is None:  # gunicorn's own refusal: the app never saw it
        assert got_status == status, body[:300]
        assert "x-request-id" not in headers
    else:
        assert_json_error(got_status, headers.get("content-type", ""), body, status, code)
        assert "set-cookie" not in headers and "location" not in headers
    assert table(env) == before
    # The worker still serves, and every line it logged is JSON or gunicorn's own.
    ok, _, _ = parse(exchange(server.url, http("GET", "/health")))
    assert ok == 200
    assert "Traceback" not in server.output()


def test_chunked_bodies_within_the_limit_work_through_gunicorn(served):
    server, env = served
    body = b'{"email": "chunked@example.com", "name": "Chunked"}'
    status, headers, response = parse(exchange(server.url, http(
        "POST", "/api/users", {**JSON, "Transfer-Encoding": "chunked"}, chunked(body[:10], body[10:]))))
    assert status == 201, response
    assert json.loads(response)["name"] == "Chunked"
    assert any(row[1] == "chunked@example.com" for row in table(env))
    exact = b'{"email": "exact@example.com", "name": "x"}'.ljust(BIG)  # the limit itself is fine
    status, _, response = parse(exchange(server.url, http(
        "POST", "/api/users", {**JSON, "Transfer-Encoding": "chunked"}, chunked(exact[:9000], exact[9000:]))))
    assert status == 201, response


def test_foreign_host_and_odd_request_ids_are_not_reflected(served):
    server, _ = served
    request = http("GET", "/api/users?limit=1", [("X-Request-Id", "\u00e9<script>"),
                                                ("X-Amzn-Trace-Id", "Root=" + "x" * 300)])
    answer = exchange(server.url, request.replace(b"Host: 127.0.0.1", b"Host: evil.example"))
    status, headers, body = parse(answer)
    assert status == 200 and json.loads(body)["data"][0]["email"] == SEED["email"]
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])  # a fresh id, not theirs
    assert b"evil.example" not in answer and b"<script>" not in answer


@pytest.mark.parametrize("request_bytes, status", [
    R(http("GET", "/api/users"), 200, id="list"),
    R(http("GET", "/api/users/1"), 200, id="one-user"),
    R(http("HEAD", "/api/users/1"), 200, id="head"),
    R(http("GET", "/api/users/999"), 404, id="no-such-user"),
    R(http("GET", "//api/users"), 404, id="routing-guards-own-404"),
    R(http("PUT", "/api/users"), 405, id="wrong-method"),
    R(http("POST", "/api/users", JSON, b"{"), 400, id="invalid-json"),
    R(http("GET", "/api/users?%3Cscript%3Ealert(1)%3C%2Fscript%3E=1"), 400, id="reflected-parameter-name"),
    R(http("OPTIONS", "/api/users", {"Origin": "https://elsewhere.example",
                                     "Access-Control-Request-Method": "DELETE"}), 200, id="preflight"),
    R(http("GET", "/openapi.json"), 200, id="openapi"),
    R(http("GET", "/health"), 200, id="health"),
    R(http("GET", "/health/ready"), 200, id="ready"),
])
def test_no_cache_keeps_an_answer_and_no_browser_sniffs_one(served, request_bytes, status):
    """Cache-Control: no-store, so that no proxy or browser cache keeps user data (or an error
    about it) to serve another client; X-Content-Type-Options: nosniff, so that a browser never
    reads JSON that echoes what it was sent (a parameter's name, JSON-escaped) as HTML."""
    server, _ = served
    got_status, headers, body = parse(exchange(server.url, request_bytes))
    assert got_status == status, body[:300]
    assert headers.get("cache-control") == "no-store", headers
    assert headers.get("x-content-type-options") == "nosniff", headers
    if b"script" in request_bytes:
        assert json.loads(body)["error"]["details"][0]["field"] == "<script>alert(1)</script>"
        assert headers["content-type"] == "application/json"


def test_an_answer_to_options_has_no_body_and_claims_no_content_type(served):
    """A JSON API has no HTML: the empty answer to OPTIONS said `text/html; charset=utf-8`."""
    server, _ = served
    for path in ("/api/users", "/api/users/1", "/health", "/openapi.json"):
        status, headers, body = parse(exchange(server.url, http("OPTIONS", path, {
            "Origin": "https://elsewhere.example", "Access-Control-Request-Method": "DELETE"})))
        assert status == 200 and "OPTIONS" in headers["allow"], (path, body)
        assert body == b"" and headers["content-length"] == "0", path
        assert "content-type" not in headers, (path, headers)
        assert not any(name.startswith("access-control-") for name in headers), headers  # no CORS


def test_a_user_deleted_as_soon_as_it_exists_never_makes_its_create_a_500(db_env, start_gunicorn):
    """Ids are sequential, so a client can DELETE the next one while another creates it.

    The create must answer 201 with the user it stored, never the 500 of a read-back that
    finds no row.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    server = start_gunicorn({**db_env, "WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"})
    latest = [0]
    done = threading.Event()
    deleted = []

    def delete_the_next_ids(offset):
        with requests.Session() as session:
            while not done.is_set():
                response = session.delete(f"{server.url}/api/users/{latest[0] + offset}", timeout=10)
                assert response.status_code in (204, 404), response.text
                if response.status_code == 204:
                    deleted.append(latest[0] + offset)

    failures = []
    with ThreadPoolExecutor(4) as pool:
        deleters = [pool.submit(delete_the_next_ids, offset) for offset in (1, 1, 2, 2)]
        try:
            with requests.Session() as session:
                for i in range(200):
                    response = session.post(f"{server.url}/api/users",
                                            json={"email": f"gone{i}@example.com", "name": "G"},
                                            timeout=10)
                    if response.status_code != 201:
                        failures.append((i, response.status_code, response.text))
                        break
                    latest[0] = response.json()["id"]
        finally:
            done.set()
            for deleter in deleters:
                deleter.result()
    assert failures == [], failures
    assert deleted  # the deleters did reach users right after their creation
    assert "Traceback" not in server.output()
