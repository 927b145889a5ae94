"""The /api/users resource: happy paths, pagination and every error path, against a real database."""

import re
import threading

import pytest

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def create(client, email="ada@example.com", name="Ada"):
    response = client.post("/api/users", json={"email": email, "name": name})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def post(client, email):
    return client.post("/api/users", json={"email": email, "name": "X"})


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_create_then_read(client):
    response = client.post("/api/users", json={"email": "ada@example.com", "name": "  Ada  "})
    assert response.status_code == 201
    user = response.get_json()
    assert user["email"] == "ada@example.com" and user["name"] == "Ada"
    assert TIMESTAMP.match(user["created_at"]) and TIMESTAMP.match(user["updated_at"])
    assert response.headers["Location"] == f"/api/users/{user['id']}"
    assert client.get(response.headers["Location"]).get_json() == user


def test_update_changes_only_given_fields(client):
    user = create(client)
    response = client.patch(f"/api/users/{user['id']}", json={"name": "Ada Lovelace"})
    assert response.status_code == 200
    assert response.get_json() | {"updated_at": None} == user | {"name": "Ada Lovelace", "updated_at": None}
    response = client.patch(f"/api/users/{user['id']}", json={"email": "countess@example.com"})
    assert response.get_json()["email"] == "countess@example.com"
    assert response.get_json()["name"] == "Ada Lovelace"


def test_update_with_the_same_values_is_fine(client):
    user = create(client)
    response = client.patch(f"/api/users/{user['id']}", json={"name": user["name"]})
    assert response.status_code == 200 and response.get_json()["name"] == user["name"]


def test_delete(client):
    user = create(client)
    deleted = client.delete(f"/api/users/{user['id']}")
    # No body, so no type: flask.Response(status=204) said text/html, as OPTIONS did.
    assert deleted.status_code == 204 and deleted.data == b"" and "Content-Type" not in deleted.headers
    assert_error(client.get(f"/api/users/{user['id']}"), 404, "user_not_found")
    assert_error(client.delete(f"/api/users/{user['id']}"), 404, "user_not_found")


def test_list_pages_are_stable_and_complete(client):
    ids = [create(client, f"u{i}@example.com", f"User {i}")["id"] for i in range(7)]
    seen, after = [], 0
    while True:
        page = client.get(f"/api/users?limit=3&after={after}").get_json()
        seen += [u["id"] for u in page["data"]]
        assert len(page["data"]) <= 3
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == sorted(ids)
    default = client.get("/api/users").get_json()
    assert [u["id"] for u in default["data"]] == sorted(ids) and default["next_after"] is None


def test_a_full_last_page_is_followed_by_an_empty_one_as_documented(client):
    """next_after is null only on a short page (the schema's description says so): a list
    reads `limit` rows, not one more to learn whether another page exists."""
    ids = [create(client, f"f{i}@example.com", "F")["id"] for i in range(4)]
    page = client.get(f"/api/users?limit=2&after={ids[1]}").get_json()
    assert [u["id"] for u in page["data"]] == ids[2:] and page["next_after"] == ids[3]
    assert client.get(f"/api/users?limit=2&after={ids[3]}").get_json() == {"data": [], "next_after": None}
    described = client.get("/openapi.json").get_json()["components"]["schemas"]["UserPage"]
    assert "A full page may be the last" in described["properties"]["next_after"]["description"]


def test_list_limit_defaults_to_20_and_caps_at_100(client):
    for i in range(21):
        create(client, f"p{i}@example.com", "P")
    page = client.get("/api/users").get_json()
    assert len(page["data"]) == 20 and page["next_after"] == page["data"][-1]["id"]
    assert len(client.get("/api/users?limit=100").get_json()["data"]) == 21
    details = assert_error(client.get("/api/users?limit=101"), 400, "invalid_parameter")["details"]
    assert details[0]["field"] == "limit"


@pytest.mark.parametrize("query, field", [
    ("limit=0", "limit"), ("limit=abc", "limit"), ("after=-1", "after"),
    ("after=x", "after"), ("sort=name", "sort"),
])
def test_list_rejects_bad_parameters(client, query, field):
    error = assert_error(client.get(f"/api/users?{query}"), 400, "invalid_parameter")
    assert [d["field"] for d in error["details"]] == [field]


def test_duplicate_email_is_a_conflict_case_insensitively(client):
    create(client, "ada@example.com")
    assert_error(client.post("/api/users", json={"email": "ADA@example.com", "name": "X"}), 409, "email_taken")
    other = create(client, "grace@example.com", "Grace")
    assert_error(client.patch(f"/api/users/{other['id']}", json={"email": "ada@example.com"}),
                 409, "email_taken")
    assert client.get(f"/api/users/{other['id']}").get_json()["email"] == "grace@example.com"


def test_email_comparison_folds_case_and_nothing_else(client):
    """README: emails compare case-insensitively. Accents and other letters still count."""
    create(client, "zoe@example.org", "Zoe")
    zoe = create(client, "zoë@example.org", "Zoë")  # utf8mb4_unicode_ci ignores accents: 409
    for taken in ("ZOE@example.org", "Zoë@example.org", "ZOË@EXAMPLE.ORG",
                  "zoe\u0308@example.org"):  # NFD of zoë: the validator stores NFC
        assert_error(post(client, taken), 409, "email_taken")
    # The database's LOWER() is the one definition of case: simple 1:1 mappings (UCA 4.0.0
    # on MySQL 8 and MariaDB alike); no folding of ß to ss, of width, or of look-alikes.
    create(client, "straße@example.org", "X")
    create(client, "strasse@example.org", "X")
    create(client, "ｚｏｅ@example.org", "X")  # fullwidth letters are not ASCII letters...
    assert_error(post(client, "ＺＯＥ@example.org"), 409, "email_taken")  # ...but have case
    create(client, "inci@example.org", "X")
    create(client, "ınci@example.org", "X")  # dotless ı is a letter of its own
    for taken in ("INCI@example.org", "İnci@example.org"):  # İ lowers to i
        assert_error(post(client, taken), 409, "email_taken")
    assert client.get(f"/api/users/{zoe['id']}").get_json()["email"] == "zoë@example.org"


def test_email_changes_follow_the_same_comparison(client):
    zoe = create(client, "zoe@example.org", "Zoe")
    other = create(client, "other@example.org", "Other")
    response = client.patch(f"/api/users/{other['id']}", json={"email": "zoë@example.org"})
    assert response.status_code == 200, response.get_json()
    assert_error(client.patch(f"/api/users/{other['id']}", json={"email": "Zoe@example.org"}),
                 409, "email_taken")
    # A user may change the case of their own address: it is still the same address.
    response = client.patch(f"/api/users/{zoe['id']}", json={"email": "Zoe@example.org"})
    assert response.status_code == 200 and response.get_json()["email"] == "Zoe@example.org"


def test_concurrent_creates_of_one_email_make_one_user(app):
    statuses = []

    def post():
        statuses.append(app.test_client().post(
            "/api/users", json={"email": "race@example.com", "name": "R"}).status_code)

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] + [409] * 5


@pytest.mark.parametrize("body, fields", [
    ({"email": "x@example.com"}, ["name"]),
    ({"name": "X"}, ["email"]),
    ({"email": "not-an-email", "name": "X"}, ["email"]),
    ({"email": "x@example.com", "name": ""}, ["name"]),
    ({"email": "x@example.com", "name": "   "}, ["name"]),
    ({"email": "x@example.com", "name": "n" * 101}, ["name"]),
    ({"email": "a" * 250 + "@example.com", "name": "X"}, ["email"]),
    ({"email": "x@example.com", "name": 42}, ["name"]),
    ({"email": ["x@example.com"], "name": "X"}, ["email"]),
    ({"email": "x@example.com", "name": "X", "admin": True}, ["admin"]),
    ({"email": None, "name": "X"}, ["email"]),
])
def test_create_rejects_invalid_bodies(client, body, fields):
    error = assert_error(client.post("/api/users", json=body), 422, "validation_error")
    assert [d["field"] for d in error["details"]] == fields
    assert client.get("/api/users").get_json()["data"] == []  # nothing was stored


@pytest.mark.parametrize("body, field, message", [
    ({}, "", "at least one"), ({"name": None}, "name", "cannot be null"),
    ({"email": None}, "email", "cannot be null"), ({"id": 5}, "id", "unknown field"),
    ({"name": 1}, "name", "string"),
])
def test_patch_rejects_invalid_bodies_and_keeps_the_user(client, body, field, message):
    user = create(client)
    error = assert_error(client.patch(f"/api/users/{user['id']}", json=body), 422, "validation_error")
    assert error["details"][0]["field"] == field and message in error["details"][0]["message"]
    assert client.get(f"/api/users/{user['id']}").get_json() == user


@pytest.mark.parametrize("method", ["post", "patch"])
def test_body_must_be_json(client, method):
    user = create(client)
    url = "/api/users" if method == "post" else f"/api/users/{user['id']}"
    send = getattr(client, method)
    assert_error(send(url, data="email=a@b.c", content_type="application/x-www-form-urlencoded"),
                 415, "unsupported_media_type")
    assert_error(send(url, data='{"email": "a@b.c"'), 415, "unsupported_media_type")  # no type
    assert_error(send(url, data='{"email": ', content_type="application/json"), 400, "invalid_json")
    assert_error(send(url, data="", content_type="application/json"), 400, "invalid_json")
    assert_error(send(url, json=["a"]), 422, "validation_error")
    assert_error(send(url, data="x" * 20_000, content_type="application/json"), 413, "payload_too_large")


def test_unknown_routes_and_methods_are_json(client):
    assert_error(client.get("/api/nothing"), 404, "not_found")
    assert_error(client.get("/api/users/abc"), 404, "not_found")
    response = client.put("/api/users")
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert_error(client.delete("/api/users"), 405, "method_not_allowed")


def test_every_response_carries_a_request_id(client):
    response = client.get("/api/users", headers={"X-Amzn-Trace-Id": "Root=1-67891233-abcdef012345678912345678"})
    assert response.headers["X-Request-Id"] == "Root=1-67891233-abcdef012345678912345678"
    assert len(client.get("/api/nothing").headers["X-Request-Id"]) == 32
    assert client.get("/", headers={"X-Request-Id": "<script>"}).headers["X-Request-Id"] != "<script>"


def test_sql_in_input_is_data(client):
    user = create(client, "o'brien@example.com", "Robert'); DROP TABLE users;--")
    assert client.get(f"/api/users/{user['id']}").get_json()["name"] == "Robert'); DROP TABLE users;--"
    assert len(client.get("/api/users").get_json()["data"]) == 1


@pytest.mark.parametrize("query, field, says", [
    ("after=" + "9" * 5000, "after", "less than or equal to 18446744073709551615"),
    ("after=" + "0" * 30 + "18446744073709551616", "after", "less than or equal to 18446744073709551615"),
    ("limit=" + "1" * 25, "limit", "less than or equal to 100"),
    ("limit=1%2B1", "limit", "digits 0-9"),
])
def test_a_number_too_large_is_refused_as_too_large(client, query, field, says):
    """Leading zeros are allowed in the query (limit=010 is 10); digits past the twentieth
    only make a number larger than any parameter takes, and the message says that, not that
    they are not digits."""
    error = assert_error(client.get(f"/api/users?{query}"), 400, "invalid_parameter")
    assert [d["field"] for d in error["details"]] == [field]
    assert says in error["details"][0]["message"], error


def test_zero_padded_numbers_read_as_their_value_however_long(client):
    ids = [create(client, f"z{i}@example.com", "Z")["id"] for i in range(3)]
    assert client.get("/api/users?limit=002").get_json()["next_after"] == ids[1]
    page = client.get(f"/api/users?after={ids[0]:030d}&limit={2:025d}")
    assert page.status_code == 200, page.get_json()
    assert [u["id"] for u in page.get_json()["data"]] == ids[1:]
