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
        yield boto3.session.Session().client("secretsmanager", region_name="eu-west-1")


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


def test_the_secrets_username_wins_over_rds_username(aws, secret, db_user, capsys):
    """User and password are a pair: a stale RDS_USERNAME must not be sent with the secret's password."""
    app = create_app(app_env(secret, RDS_USERNAME="someone_else"))
    assert app.extensions["database"].settings.user == db_user["user"]
    assert app.test_client().get("/api/users").status_code == 200
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(r.get("event") == "config_override" and r.get("variable") == "RDS_USERNAME"
               and r.get("user") == db_user["user"] for r in logged)


def test_rds_managed_master_secret_holds_only_username_and_password(aws, db_user):
    """ManageMasterUserPassword secrets have no host, port or dbname: the environment gives them."""
    arn = aws.create_secret(Name=f"rds!db-{uuid.uuid4()}", SecretString=json.dumps(
        {"username": db_user["user"], "password": db_user["password"]}))["ARN"]
    env = db_user["env"]
    where = {k: env[k] for k in ("RDS_HOSTNAME", "RDS_PORT", "RDS_DB_NAME")}
    app = create_app(app_env(arn, **where, RDS_USERNAME="ignored"))
    assert app.test_client().post("/api/users", json={"email": "m@example.com", "name": "M"}).status_code == 201
    with pytest.raises(ConfigError, match="RDS_HOSTNAME, RDS_DB_NAME: not set in the environment nor in the secret"):
        create_app(app_env(arn))


def test_alternating_users_rotation_switches_user_and_password_together(aws, secret, db_user, mysql_server):
    """RDS's alternating-users rotation moves AWSCURRENT to a clone user with its own password.

    RDS_USERNAME names the first user, as an operator would have set it: it must not pin it.
    """
    app = create_app(app_env(secret, RDS_USERNAME=db_user["user"]))
    client = app.test_client()
    assert client.get("/api/users").status_code == 200
    clone, password = f"{db_user['user']}_clone", CANARY.format("clone")
    mysql_server.sql([f"CREATE USER '{clone}'@'127.0.0.1' IDENTIFIED BY '{password}'",
                      f"GRANT ALL PRIVILEGES ON `{db_user['env']['RDS_DB_NAME']}`.* TO '{clone}'@'127.0.0.1'"])
    try:
        token = str(uuid.uuid4())
        aws.put_secret_value(SecretId=secret, ClientRequestToken=token, VersionStages=["AWSPENDING"],
                             SecretString=secret_value({**db_user, "user": clone}, password))
        finish_rotation(aws, secret, token)
        db_user["set_password"](CANARY.format("old-user-retired"))  # the old pair stops working
        force_new_connections(app)
        assert client.get("/api/users").status_code == 200
        lease = app.extensions["database"].borrow()
        try:
            assert lease.query("SELECT CURRENT_USER() AS u")[0]["u"] == f"{clone}@127.0.0.1"
        finally:
            lease.release()
    finally:
        app.extensions["database"].dispose()
        mysql_server.sql([f"DROP USER IF EXISTS '{clone}'@'127.0.0.1'"])


def test_region_comes_from_the_secret_arn_when_aws_region_is_unset(aws, secret, monkeypatch):
    """botocore raises NoRegionError without a region; a secret ARN carries one."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    env = {k: v for k, v in app_env(secret).items() if k != "AWS_REGION"}
    app = create_app(env)
    assert app.extensions["database"].opener.credentials._client.meta.region_name == "eu-west-1"
    assert app.test_client().get("/api/users").status_code == 200
    name = aws.describe_secret(SecretId=secret)["Name"]
    with pytest.raises(ConfigError, match=r"AWS_REGION: is required \(got not set\) when DB_AUTH=secretsmanager"):
        create_app({**env, "DB_SECRET_ID": name})
    # The secret lives where its ARN says, whatever region the environment runs in.
    elsewhere = create_app({**env, "AWS_REGION": "us-east-1"})
    assert elsewhere.extensions["database"].opener.credentials._client.meta.region_name == "eu-west-1"
    assert elsewhere.test_client().get("/api/users").status_code == 200


def test_debug_logging_never_prints_the_secret(aws, secret, db_user, capsys, monkeypatch):
    """At LOG_LEVEL=DEBUG botocore would log the GetSecretValue response, password included."""
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [h for h in root.handlers if not getattr(h, "_app_json", False)])
    monkeypatch.setattr(root, "level", logging.WARNING)
    app = create_app(app_env(secret, LOG_LEVEL="DEBUG"))
    assert app.test_client().get("/api/users").status_code == 200
    out = capsys.readouterr()
    assert '"logger": "app.db.connection"' in out.out  # the app's own lines are there
    assert db_user["password"] not in out.out + out.err
    assert not logging.getLogger("botocore").isEnabledFor(logging.DEBUG)
