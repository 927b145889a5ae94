"""DB_AUTH=secretsmanager: Secrets Manager in moto, the database real, rotations included.

moto's rotate_secret needs a Lambda; the tests drive a rotation's steps themselves as the
RDS single-user rotation function does: put the new password as AWSPENDING (createSecret),
change it in the database (setSecret), then move AWSCURRENT to it (finishSecret).
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import boto3
import pytest
from moto import mock_aws

from app import create_app
from app.config import ConfigError

CANARY = "canary-Secret-{}"


@pytest.fixture
def aws(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1", "AWS_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="eu-west-1")


@pytest.fixture
def db_user(make_database, mysql_server):
    """A database user of its own (its password is rotated) and the database it may use."""
    env = make_database()
    user = f"sm_{uuid.uuid4().hex[:8]}"
    password = CANARY.format(uuid.uuid4().hex[:8])
    mysql_server.sql([f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'",
                      f"GRANT ALL PRIVILEGES ON `{env['RDS_DB_NAME']}`.* TO '{user}'@'127.0.0.1'"])
    state = {"env": env, "user": user, "password": password}

    def set_password(new):
        mysql_server.sql([f"ALTER USER '{user}'@'127.0.0.1' IDENTIFIED BY '{new}'"])
        state["password"] = new

    state["set_password"] = set_password
    yield state
    mysql_server.sql([f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"])


def secret_value(db_user, password):
    env = db_user["env"]
    return json.dumps({"engine": "mysql", "host": env["RDS_HOSTNAME"], "port": int(env["RDS_PORT"]),
                       "dbname": env["RDS_DB_NAME"], "username": db_user["user"], "password": password})


@pytest.fixture
def secret(aws, db_user):
    arn = aws.create_secret(Name=f"app/db/{uuid.uuid4().hex[:6]}",
                            SecretString=secret_value(db_user, db_user["password"]))["ARN"]
    return arn


def app_env(secret_arn, **extra):
    """Only what Beanstalk would set: the mode and the secret; the rest comes from the secret."""
    return {"DB_AUTH": "secretsmanager", "DB_SECRET_ID": secret_arn, "DB_SSL_MODE": "disabled",
            "AWS_REGION": "eu-west-1", "DB_POOL_TIMEOUT": "5", **extra}


def count_calls(app):
    client = app.extensions["database"].opener.credentials._client
    calls = []
    client.meta.events.register("provide-client-params.secrets-manager.GetSecretValue",
                                lambda **kw: calls.append(kw["params"].get("VersionStage")))
    return calls


def force_new_connections(app):
    app.extensions["database"].pool.dispose()


def rotate_to(aws, secret_arn, db_user, new_password, *, finish=True):
    """createSecret, setSecret and (optionally) finishSecret of a single-user rotation."""
    token = str(uuid.uuid4())
    aws.put_secret_value(SecretId=secret_arn, ClientRequestToken=token,
                         SecretString=secret_value(db_user, new_password), VersionStages=["AWSPENDING"])
    db_user["set_password"](new_password)
    if finish:
        finish_rotation(aws, secret_arn, token)
    return token


def finish_rotation(aws, secret_arn, token):
    """finishSecret: AWSCURRENT moves to the new version, AWSPENDING is removed from it."""
    current = next(v for v, stages in aws.describe_secret(SecretId=secret_arn)["VersionIdsToStages"].items()
                   if "AWSCURRENT" in stages)
    aws.update_secret_version_stage(SecretId=secret_arn, VersionStage="AWSCURRENT",
                                    MoveToVersionId=token, RemoveFromVersionId=current)
    aws.update_secret_version_stage(SecretId=secret_arn, VersionStage="AWSPENDING",
                                    RemoveFromVersionId=token)


def test_secret_fills_what_the_environment_leaves_unset(secret, db_user):
    app = create_app(app_env(secret))
    settings = app.extensions["database"].settings
    env = db_user["env"]
    assert (settings.host, settings.port, settings.database) == (
        env["RDS_HOSTNAME"], int(env["RDS_PORT"]), env["RDS_DB_NAME"])
    response = app.test_client().post("/api/users", json={"email": "s@example.com", "name": "S"})
    assert response.status_code == 201


def test_environment_wins_over_the_secret(secret, db_user, make_database):
    other = make_database()
    app = create_app(app_env(secret, RDS_DB_NAME=other["RDS_DB_NAME"]))
    assert app.extensions["database"].settings.database == other["RDS_DB_NAME"]


def test_secret_is_cached(secret):
    app = create_app(app_env(secret, DB_POOL_MAX_LIFETIME="0.01"))
    calls = count_calls(app)
    client = app.test_client()
    for _ in range(1000):
        assert client.get("/api/users").status_code == 200
    stats = app.extensions["database"].pool.stats()
    assert stats["opened"] > 10  # new connections kept asking the provider...
    assert calls == []  # ...which answered from the cache fetched at startup


def test_refused_cached_password_is_refreshed_once(aws, secret, db_user):
    app = create_app(app_env(secret))
    client = app.test_client()
    assert client.get("/api/users").status_code == 200
    calls = count_calls(app)
    rotate_to(aws, secret, db_user, CANARY.format("new1"))
    force_new_connections(app)
    assert client.get("/api/users").status_code == 200
    assert calls == ["AWSCURRENT"]  # one refresh; no AWSPENDING needed
    assert client.get("/api/users").status_code == 200
    assert calls == ["AWSCURRENT"]


def test_pending_password_is_tried_during_the_rotation_window(aws, secret, db_user):
    app = create_app(app_env(secret))
    client = app.test_client()
    assert client.get("/api/users").status_code == 200
    calls = count_calls(app)
    rotate_to(aws, secret, db_user, CANARY.format("pending"), finish=False)  # DB changed, AWSCURRENT old
    force_new_connections(app)
    assert client.get("/api/users").status_code == 200
    assert calls == ["AWSCURRENT", "AWSPENDING"]


def test_rotation_finishing_between_refresh_and_pending_lookup(aws, secret, db_user):
    """The refresh still sees the old AWSCURRENT, then the rotation finishes (AWSPENDING gone)."""
    app = create_app(app_env(secret))
    client = app.test_client()
    assert client.get("/api/users").status_code == 200
    token = rotate_to(aws, secret, db_user, CANARY.format("finishing"), finish=False)
    force_new_connections(app)
    calls = count_calls(app)

    def finish_after_first_refresh(**_):
        if calls == ["AWSCURRENT"]:
            finish_rotation(aws, secret, token)

    app.extensions["database"].opener.credentials._client.meta.events.register(
        "after-call.secrets-manager.GetSecretValue", finish_after_first_refresh)
    assert client.get("/api/users").status_code == 200
    assert calls == ["AWSCURRENT", "AWSPENDING", "AWSCURRENT"]


def test_wrong_password_everywhere_is_a_503(aws, secret, db_user):
    app = create_app(app_env(secret))
    db_user["set_password"](CANARY.format("nobody-knows"))
    response = app.test_client().get("/api/users")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "database_unavailable"


def test_rotation_under_concurrent_load_fails_no_request(aws, secret, db_user, capsys):
    # Connections live 50 ms, so new ones open throughout every step of the rotation.
    app = create_app(app_env(secret, DB_POOL_MAX_LIFETIME="0.05", DB_POOL_SIZE="4"))
    stop = threading.Event()
    results: list[int] = []
    bodies: list[str] = []

    def load():
        client = app.test_client()
        while not stop.is_set():
            response = client.get("/api/users")
            results.append(response.status_code)
            if response.status_code != 200:
                bodies.append(response.get_data(as_text=True))

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    passwords = []
    try:
        for round_no in range(3):
            time.sleep(0.3)
            new = CANARY.format(f"rot{round_no}{uuid.uuid4().hex[:4]}")
            passwords.append(new)
            token = rotate_to(aws, secret, db_user, new, finish=False)
            time.sleep(0.3)  # the window: the DB has the new password, AWSCURRENT the old one
            finish_rotation(aws, secret, token)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    out = capsys.readouterr()
    assert len(results) > 200
    problems = [line for line in out.out.splitlines() if '"level": "WARNING"' in line
                or '"level": "ERROR"' in line]
    assert results.count(200) == len(results), (len(results), bodies[:3], problems[:5])
    assert app.extensions["database"].pool.stats()["opened"] > 20
    assert '"event": "secret_pending"' in out.out  # new connections did open inside the windows
    for password in passwords + [db_user["password"]]:
        assert password not in out.out + out.err


def test_missing_secret_id_and_bad_secret_are_config_errors(aws):
    with pytest.raises(ConfigError, match="DB_SECRET_ID is required"):
        create_app({"DB_AUTH": "secretsmanager"})
    arn = aws.create_secret(Name="not-json", SecretString="hunter2")["ARN"]
    with pytest.raises(ConfigError) as err:
        create_app(app_env(arn))
    assert "not a JSON object" in str(err.value) and "hunter2" not in str(err.value)
