"""No password, secret or token in any log line or response, whatever the log level.

For each DB_AUTH mode the app goes through startup, a first connection, a refused
credential, a validation error, a TLS failure (a CA that did not sign the server's
certificate, or a server without TLS), a database outage and an unhandled exception, at
LOG_LEVEL=DEBUG and with the root logger (botocore, urllib3, mysql.connector...) at DEBUG
too, as an operator chasing a problem might set it. Everything the app's log handler
prints and every response body is searched for the canaries: the passwords, the secret's
JSON, the AWS secret key and session token, and each IAM token's X-Amz-Signature.
"""

from __future__ import annotations

import logging
import uuid

import pytest

import localdb
from app import create_app
from test_iam import SECRET_KEY, iam_env, iam_server  # noqa: F401
from test_secrets import (CANARY, app_env, aws, db_user, force_new_connections, rotate_to,  # noqa: F401
                          secret)

AWS_SECRET = "canary-aws-secret-key-{}".format(uuid.uuid4().hex[:8])
AWS_TOKEN = "canary-aws-session-token-{}".format(uuid.uuid4().hex[:8])


@pytest.fixture
def everything_at_debug():
    """The root logger and the libraries' loggers at DEBUG, restored afterwards."""
    names = ["", "botocore", "boto3", "urllib3", "mysql.connector"]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


@pytest.fixture
def wrong_ca(tmp_path):
    """A CA that signed nothing the test servers present."""
    return str(localdb.make_ca(tmp_path, "unrelated"))


def exercise(app, broken_app, break_credentials, mysql_server, database, after_break,
             tls_app) -> list[str]:
    """Walk the app through the normal and the failing paths; return every response body."""
    client = app.test_client()
    responses = [
        client.get("/api/users"),  # the first connection
        client.post("/api/users", json={"email": "not-an-email", "name": ""}),  # 422
        client.post("/api/users", json={"email": f"c{uuid.uuid4().hex[:6]}@example.com", "name": "C"}),
    ]
    assert [r.status_code for r in responses] == [200, 422, 201]
    mysql_server.sql(["RENAME TABLE users TO users_away"], database=database)
    try:
        unhandled = client.get("/api/users")  # a driver error no handler expects
    finally:
        mysql_server.sql(["RENAME TABLE users_away TO users"], database=database)
    responses.append(unhandled)
    assert unhandled.status_code == 500
    break_credentials()  # the next new connection is refused and looks again
    force_new_connections(app)
    responses.append(client.get("/api/users"))
    assert responses[-1].status_code == after_break
    responses.append(broken_app.test_client().get("/api/users"))  # nothing listens: an outage
    assert responses[-1].status_code == 503
    responses.append(tls_app.test_client().get("/api/users"))  # TLS cannot be verified
    assert responses[-1].status_code == 503
    return [r.get_data(as_text=True) for r in responses]


def assert_nowhere(canaries, capsys, bodies):
    out = capsys.readouterr()
    printed = out.out + out.err
    assert '"logger": "app.' in printed  # the test searches what the app's handler printed
    assert '"event": "unhandled_error"' in printed and "Traceback" in printed
    for canary in canaries:
        assert canary and canary not in printed, canary
        for body in bodies:
            assert canary not in body, canary
    return printed


def test_password_mode(db_user, mysql_server, everything_at_debug, capsys, wrong_ca):
    env = {**db_user["env"], "RDS_USERNAME": db_user["user"], "RDS_PASSWORD": db_user["password"],
           "LOG_LEVEL": "DEBUG"}
    first = db_user["password"]
    app = create_app(env)
    broken = create_app({**env, "RDS_PORT": str(localdb.free_port())})
    tls = create_app({**env, "DB_SSL_MODE": "verify-ca", "DB_SSL_CA": wrong_ca})
    bodies = exercise(app, broken, lambda: db_user["set_password"](CANARY.format("changed")),
                      mysql_server, env["RDS_DB_NAME"], after_break=503, tls_app=tls)
    assert_nowhere([first, db_user["password"]], capsys, bodies)


def test_secretsmanager_mode(aws, secret, db_user, mysql_server, monkeypatch, everything_at_debug,
                             capsys, wrong_ca):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_TOKEN)
    env = app_env(secret, LOG_LEVEL="DEBUG")
    first = db_user["password"]
    secret_string = aws.get_secret_value(SecretId=secret)["SecretString"]
    app = create_app(env)
    broken = create_app({**env, "RDS_PORT": str(localdb.free_port())})
    rotated = CANARY.format("rotated" + uuid.uuid4().hex[:6])
    tls = create_app({**env, "DB_SSL_MODE": "verify-ca", "DB_SSL_CA": wrong_ca})
    bodies = exercise(app, broken, lambda: rotate_to(aws, secret, db_user, rotated),
                      mysql_server, db_user["env"]["RDS_DB_NAME"], after_break=200, tls_app=tls)
    printed = assert_nowhere([first, rotated, secret_string, AWS_SECRET, AWS_TOKEN], capsys, bodies)
    assert '"event": "secret_refresh"' in printed  # the refresh did happen
    assert '"level": "DEBUG", "logger": "botocore.' in printed  # its other debug lines are kept


def test_iam_mode(iam_env, iam_server, monkeypatch, everything_at_debug, capsys, wrong_ca):
    env = {**iam_env, "LOG_LEVEL": "DEBUG"}
    monkeypatch.setenv("AWS_SESSION_TOKEN", AWS_TOKEN)  # signed into every token
    app = create_app(env)
    broken = create_app({**env, "RDS_PORT": str(localdb.free_port())})
    tls = create_app({**env, "DB_SSL_MODE": "verify-ca", "DB_SSL_CA": wrong_ca})
    tokens = []
    for each in (app, tls):  # record every token the apps that reach the server sign
        client = each.extensions["database"].opener.credentials._client
        monkeypatch.setattr(client, "generate_db_auth_token",
                            lambda sign=client.generate_db_auth_token, **kw:
                            tokens.append(sign(**kw)) or tokens[-1])
    offset = iam_server["work"] / "clock_offset"

    class Server:
        @staticmethod
        def sql(statements, database=None):
            return iam_server["server"].sql(statements, database=database)

    def refuse_every_token():
        offset.write_text(str(16 * 60))  # the checker now sees every token as expired

    try:
        bodies = exercise(app, broken, refuse_every_token, Server, "iamdb", after_break=503,
                          tls_app=tls)
    finally:
        offset.write_text("0")
    assert len(tokens) >= 3  # the first, the fresh one tried after the refusal, the TLS app's
    signatures = [token.split("X-Amz-Signature=")[1] for token in tokens]
    assert_nowhere([*tokens, *signatures, SECRET_KEY, AWS_TOKEN], capsys, bodies)
