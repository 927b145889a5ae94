"""API keys (API_AUTH): through the real app and a real database, once through real gunicorn.

The digest scheme is checked independently of app/auth.py: SHA-256 of the key's UTF-8 bytes,
lower-case hex, as the README tells operators.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import subprocess
import sys

import boto3
import pytest
import requests
from moto import mock_aws

from app import auth, create_app
from app.config import ConfigError
from conftest import ROOT, connect, readme_lines

USER = {"email": "grace@example.com", "name": "Grace Hopper"}


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def make_app(db_env):
    apps = []

    def make(**extra):
        app = create_app({**db_env, **extra})
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["database"].dispose()


def users_in_db(db_env) -> list[tuple]:
    conn = connect(db_env)
    try:
        cur = conn.cursor()
        cur.execute("SELECT id, email, name FROM users ORDER BY id")
        return cur.fetchall()
    finally:
        conn.close()


def assert_unauthorized(response, invalid: bool):
    assert response.status_code == 401, response.get_data(as_text=True)
    if response.request.method != "HEAD":
        assert response.get_json()["error"]["code"] == "unauthorized"
    challenge = 'Bearer realm="api"' + (', error="invalid_token"' if invalid else "")
    assert response.headers["WWW-Authenticate"] == challenge


def test_writes_mode_refuses_writes_without_a_key_and_changes_nothing(make_app, db_env):
    key = secrets.token_urlsafe(32)
    client = make_app(API_AUTH="writes", API_KEY_SHA256=digest(key)).test_client()
    created = client.post("/api/users", json=USER, headers=bearer(key))
    assert created.status_code == 201
    user_id = created.get_json()["id"]
    before = users_in_db(db_env)

    assert_unauthorized(client.post("/api/users", json={**USER, "email": "x@example.com"}), invalid=False)
    assert_unauthorized(client.patch(f"/api/users/{user_id}", json={"name": "X"}), invalid=False)
    assert_unauthorized(client.delete(f"/api/users/{user_id}"), invalid=False)
    assert users_in_db(db_env) == before


@pytest.mark.parametrize("header", [
    # A key, not ours; a fixed id, so that test processes side by side (pytest -n) collect alike.
    pytest.param("Bearer " + secrets.token_urlsafe(32), id="another key"),
    "Basic dXNlcjpwYXNz", "Bearer", "Bearer a b", "bearer \u00e9t\u00e9", "Bearer " + "a" * 300,
])
def test_a_wrong_or_malformed_key_is_refused(make_app, db_env, header):
    client = make_app(API_AUTH="writes", API_KEY_SHA256=digest(secrets.token_urlsafe(32))).test_client()
    assert_unauthorized(client.post("/api/users", json=USER, headers={"Authorization": header}), invalid=True)
    assert users_in_db(db_env) == []


def test_the_right_key_creates_changes_and_deletes(make_app, db_env):
    key = secrets.token_urlsafe(32)
    client = make_app(API_AUTH="writes", API_KEY_SHA256=digest(key)).test_client()
    user_id = client.post("/api/users", json=USER, headers=bearer(key)).get_json()["id"]
    # The scheme is case-insensitive (RFC 7235); the digest may be given in upper case.
    patched = client.patch(f"/api/users/{user_id}", json={"name": "G. Hopper"},
                           headers={"Authorization": f"bearer {key}"})
    assert patched.status_code == 200 and patched.get_json()["name"] == "G. Hopper"
    assert client.delete(f"/api/users/{user_id}", headers=bearer(key)).status_code == 204
    assert users_in_db(db_env) == []
    upper = make_app(API_AUTH="writes", API_KEY_SHA256=digest(key).upper()).test_client()
    assert upper.post("/api/users", json=USER, headers=bearer(key)).status_code == 201


def test_rotation_two_digests_both_work_then_the_old_one_is_gone(make_app):
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    third = secrets.token_urlsafe(32)
    both = make_app(API_AUTH="writes",
                    API_KEY_SHA256=f"{digest(old)}, {digest(new)},{digest(third)},").test_client()
    for n, key in enumerate((old, new, third)):  # first, middle and last digest all match
        assert both.post("/api/users", json={**USER, "email": f"u{n}@example.com"},
                         headers=bearer(key)).status_code == 201
    rotated = make_app(API_AUTH="writes", API_KEY_SHA256=digest(new)).test_client()
    assert_unauthorized(rotated.delete("/api/users/1", headers=bearer(old)), invalid=True)
    assert rotated.delete("/api/users/1", headers=bearer(new)).status_code == 204


def test_reads_per_mode(make_app):
    key = secrets.token_urlsafe(32)
    writes = make_app(API_AUTH="writes", API_KEY_SHA256=digest(key)).test_client()
    user_id = writes.post("/api/users", json=USER, headers=bearer(key)).get_json()["id"]
    assert writes.get("/api/users").status_code == 200
    assert writes.get(f"/api/users/{user_id}").status_code == 200

    every = make_app(API_AUTH="all", API_KEY_SHA256=digest(key)).test_client()
    assert_unauthorized(every.get("/api/users"), invalid=False)
    assert_unauthorized(every.get(f"/api/users/{user_id}"), invalid=False)
    assert_unauthorized(every.head("/api/users"), invalid=False)
    assert every.get("/api/users", headers=bearer(key)).get_json()["data"][0]["email"] == USER["email"]

    off = make_app(API_AUTH="off", API_KEY_SHA256=digest(key)).test_client()
    assert off.post("/api/users", json={**USER, "email": "open@example.com"}).status_code == 201
    unset = make_app().test_client()  # the local quick start: no API_AUTH at all
    assert unset.delete(f"/api/users/{user_id}").status_code == 204


def test_off_says_so_and_reads_no_secret(make_app, caplog):
    with caplog.at_level("WARNING", logger="app.auth"):
        # A secret that exists nowhere, and no region: with API_AUTH off nothing asks AWS.
        make_app(API_AUTH="off", API_KEYS_SECRET_ID="app/api-keys")
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "api_auth"]
    assert record.levelname == "WARNING" and record.mode == "off"
    assert record.ignored == ["API_KEYS_SECRET_ID"]
    assert "anyone who can reach the app may read, change and delete users" in record.getMessage()


def test_health_openapi_preflight_and_unknown_routes_stay_open(make_app):
    client = make_app(API_AUTH="all", API_KEY_SHA256=digest(secrets.token_urlsafe(32))).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/health/ready").status_code == 200  # the postdeploy smoke check
    assert client.get("/openapi.json").status_code == 200
    preflight = client.options("/api/users")
    assert preflight.status_code == 200 and "POST" in preflight.headers["Allow"]
    assert client.post("/api/nothing-here").status_code == 404
    assert client.put("/api/users").status_code == 405


def config_error(make_app, **env) -> str:
    with pytest.raises(ConfigError) as caught:
        make_app(**env)
    return str(caught.value)


def test_startup_refuses_a_guard_without_keys_or_with_bad_ones(make_app):
    message = config_error(make_app, API_AUTH="writes")
    assert "API_AUTH=writes needs API_KEY_SHA256 or API_KEYS_SECRET_ID (got neither)" in message
    assert "scripts/new-api-key" in message

    assert "API_AUTH: " in config_error(make_app, API_AUTH="on", API_KEY_SHA256=digest("k"))
    assert "one of: off, writes, all" in config_error(make_app, API_AUTH="readonly")
    # Any case is the same word (tests/test_config_values.py): Writes still needs a key.
    assert "API_AUTH=writes needs" in config_error(make_app, API_AUTH="Writes")

    # The key itself pasted where its digest belongs: refused, and not echoed.
    key = secrets.token_urlsafe(32)
    message = config_error(make_app, API_AUTH="all", API_KEY_SHA256=f"{digest('a')},{key}")
    assert "API_KEY_SHA256: item 2 of 2 is not a SHA-256 hex digest (got 43 characters, not shown)" in message
    assert key not in message
    # Even with API_AUTH off a malformed digest list is an error: it would bite when turned on.
    assert "API_KEY_SHA256: item 1 of 1" in config_error(make_app, API_KEY_SHA256="abc")


# -- keys from Secrets Manager ------------------------------------------------------------------
@pytest.fixture
def aws(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="eu-west-1")


def secret(digests) -> str:
    return json.dumps({"api_key_sha256": list(digests)})


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_keys_from_a_secret_follow_its_rotation_after_the_ttl(make_app, aws, caplog, monkeypatch):
    old, new = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    arn = aws.create_secret(Name="app/api-keys", SecretString=secret([digest(old)]))["ARN"]
    clock = Clock()
    monkeypatch.setattr(auth, "_clock", clock)
    client = make_app(API_AUTH="writes", API_KEYS_SECRET_ID=arn).test_client()  # region from the ARN
    assert client.post("/api/users", json=USER, headers=bearer(old)).status_code == 201

    aws.put_secret_value(SecretId=arn, SecretString=secret([digest(new)]))
    clock.now += auth.SECRET_TTL - 1  # cached: the rotation is not seen yet
    assert client.delete("/api/users/1", headers=bearer(new)).status_code == 401
    clock.now += 1
    assert client.delete("/api/users/1", headers=bearer(new)).status_code == 204
    assert_unauthorized(client.post("/api/users", json=USER, headers=bearer(old)), invalid=True)

    # Secrets Manager unreachable or the secret gone: the digests in force stay, and it says so.
    aws.delete_secret(SecretId=arn, ForceDeleteWithoutRecovery=True)
    clock.now += auth.SECRET_TTL
    with caplog.at_level("WARNING", logger="app.auth"):
        assert client.post("/api/users", json=USER, headers=bearer(new)).status_code == 201
    assert any(getattr(r, "event", None) == "api_keys_refresh_failed"
               and r.error == "ResourceNotFoundException" for r in caplog.records)
    assert old not in caplog.text and new not in caplog.text


def test_secret_and_environment_digests_add_up(make_app, aws):
    from_env, from_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    aws.create_secret(Name="app/api-keys", SecretString=secret([digest(from_secret)]))
    client = make_app(API_AUTH="writes", API_KEYS_SECRET_ID="app/api-keys", AWS_REGION="eu-west-1",
                      API_KEY_SHA256=digest(from_env)).test_client()
    assert client.post("/api/users", json=USER, headers=bearer(from_env)).status_code == 201
    assert client.delete("/api/users/1", headers=bearer(from_secret)).status_code == 204


def test_startup_names_what_is_wrong_with_the_secret(make_app, aws, db_env):
    env = {"API_AUTH": "all", "API_KEYS_SECRET_ID": "app/api-keys"}
    assert "AWS_REGION: is required (got not set) when API_KEYS_SECRET_ID (app/api-keys) is a name" in \
        config_error(make_app, **env)
    env["AWS_REGION"] = "eu-west-1"
    message = config_error(make_app, **env)
    assert "API_KEYS_SECRET_ID: cannot read secret app/api-keys (ResourceNotFoundException" in message
    assert "check that API_KEYS_SECRET_ID is the secret's exact name or ARN" in message
    assert "exists in eu-west-1" in message and "ApiKeysSecretName" in message
    key = secrets.token_urlsafe(32)
    aws.create_secret(Name="app/api-keys", SecretString=json.dumps([digest(key)]))
    assert 'is not a JSON object with a list \'api_key_sha256\'' in config_error(make_app, **env)
    aws.put_secret_value(SecretId="app/api-keys", SecretString=secret([key]))
    message = config_error(make_app, **env)
    assert "api_key_sha256 item(s) [1] are not SHA-256 hex digests (not shown)" in message
    assert key not in message
    aws.put_secret_value(SecretId="app/api-keys", SecretBinary=b"\x00")
    assert "is not a JSON object with a list" in config_error(make_app, **env)
    aws.put_secret_value(SecretId="app/api-keys", SecretString=secret([]))
    assert "lists no digest and API_KEY_SHA256 is not set" in config_error(make_app, **env)


def test_an_unreachable_secrets_manager_at_startup_names_the_network_not_the_policy(make_app, monkeypatch):
    """Each failure is told with its own fix, in the words DB_SECRET_ID's would use."""
    import localdb

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{localdb.free_port()}"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        make_app(API_AUTH="all", API_KEYS_SECRET_ID="app/api-keys", AWS_REGION="eu-west-1")
    message = str(caught.value)
    assert caught.value.transient  # application.py: this worker is started again, gunicorn goes on
    assert message.startswith("API_KEYS_SECRET_ID: cannot read secret app/api-keys (EndpointConnectionError")
    assert "can reach Secrets Manager in eu-west-1 (a NAT gateway or a secretsmanager VPC endpoint)" in message
    assert "GetSecretValue" not in message and "ApiKeysSecretName" not in message


# -- the real server and the README's key command ----------------------------------------------
def new_api_key() -> tuple[str, str]:
    """Run the README's key command; returns the key and the digest it printed."""
    [line] = readme_lines("scripts/new-api-key")
    result = subprocess.run([sys.executable, *line.split()[1:]], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=True)
    key = re.search(r"^API key.*\n  (\S+)$", result.stdout, re.MULTILINE)[1]
    printed = re.search(r"^  API_KEY_SHA256=([0-9a-f]{64})$", result.stdout, re.MULTILINE)[1]
    return key, printed


def test_new_api_key_prints_a_fresh_random_key_and_its_digest():
    key, printed = new_api_key()
    assert printed == digest(key)
    assert len(key) >= 43 and re.fullmatch(r"[A-Za-z0-9_-]+", key)
    assert not re.fullmatch(r"[0-9a-f]{64}", key)  # never mistaken for a digest
    assert new_api_key()[0] != key


def test_through_gunicorn_the_deployment_default(db_env, start_gunicorn):
    """API_AUTH=all as .ebextensions sets it, a key from the README's command."""
    key, printed = new_api_key()
    wrong = secrets.token_urlsafe(32)
    server = start_gunicorn({**db_env, "API_AUTH": "all", "API_KEY_SHA256": printed, "WEB_CONCURRENCY": "1"})
    refused = requests.post(f"{server.url}/api/users", json=USER, timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    assert refused.json()["error"]["code"] == "unauthorized"
    assert refused.headers["Cache-Control"] == "no-store"  # no cache keeps a 401 for the next client
    assert requests.post(f"{server.url}/api/users", json=USER, headers=bearer(wrong), timeout=10).status_code == 401
    assert requests.get(f"{server.url}/api/users", timeout=10).status_code == 401
    # Only the header carries a key: in the query string (RFC 6750's access_token too) it is
    # refused, and the access log, which names the path and not the query, does not keep it.
    for name in ("access_token", "api_key", "key"):
        for method in ("GET", "POST"):
            sent = requests.request(method, f"{server.url}/api/users?{name}={key}", json=USER, timeout=10)
            assert sent.status_code == 401 and key not in sent.text, (name, method)
    assert users_in_db(db_env) == []
    created = requests.post(f"{server.url}/api/users", json=USER, headers=bearer(key), timeout=10)
    assert created.status_code == 201
    listed = requests.get(f"{server.url}/api/users", headers={**bearer(key), "Origin": "https://elsewhere.example"},
                          timeout=10)
    assert listed.json()["data"]
    assert not [h for h in listed.headers if h.lower().startswith("access-control-")]  # no CORS (README)
    # Read with a key: no shared cache may keep the list and serve it to a client without one.
    assert listed.headers["Cache-Control"] == "no-store"
    assert listed.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/health/ready", timeout=10).status_code == 200
    output = server.output()
    assert '"event": "auth_failed"' in output and f'"key_id": "{printed[:8]}"' in output
    assert key not in output and wrong not in output


def test_a_key_in_the_query_string_counts_for_nothing(make_app):
    """README API keys, Logs: only the Authorization header carries a key. In the query string
    it is refused where a key is needed (401); where none is, the request is answered as
    without it, except by GET /api/users, which refuses any parameter it does not take (the
    README said 400 for every such request: GET /api/users/1?access_token=... answers 200)."""
    key = secrets.token_urlsafe(32)
    writes = make_app(API_AUTH="writes", API_KEY_SHA256=digest(key)).test_client()
    user_id = writes.post("/api/users", json=USER, headers=bearer(key)).get_json()["id"]
    for name in ("access_token", "api_key"):
        query = f"?{name}={key}"
        assert_unauthorized(writes.post(f"/api/users{query}", json={**USER, "email": "q@example.com"}),
                            invalid=False)
        assert_unauthorized(writes.delete(f"/api/users/{user_id}{query}"), invalid=False)
        listed = writes.get(f"/api/users{query}")
        assert listed.status_code == 400 and listed.get_json()["error"]["code"] == "invalid_parameter"
        assert [d["field"] for d in listed.get_json()["error"]["details"]] == [name]
        one = writes.get(f"/api/users/{user_id}{query}")
        assert one.status_code == 200 and one.get_json() == writes.get(f"/api/users/{user_id}").get_json()
        assert writes.get(f"/health{query}").status_code == 200
        for response in (listed, one):
            assert key not in response.get_data(as_text=True)
    logs = (ROOT / "README.md").read_text().split("- **Logs.** ", 1)[1].split("\n- **", 1)[0]
    assert "`401` where a key is needed; elsewhere the request is answered as without it" in " ".join(logs.split())
