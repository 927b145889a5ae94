"""No secret in anything a user reads, with the logging a user turned on outside the app; and
the configuration error where a command needs the configuration, not before its help.

tests/test_credentials_canary.py searches, in-process, what the app's own log handler prints.
Here the processes are the real ones, started as a user starts them: gunicorn with the
Procfile's command and `--log-level debug`, and the operator commands (`flask migrate`,
`python -m app.migrate`, `python -m app.bootstrap`, `scripts/doctor`). Each runs with
LOG_LEVEL=DEBUG and a sitecustomize that does what a user's may: `logging.basicConfig(level=
DEBUG)`, which puts a handler of its own on the root logger, before the app's. Everything
on stdout and stderr (gunicorn's error and access logs included) and every response body is
searched for the canaries: database passwords, the secret's JSON, the AWS secret key and
session token, API keys.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

import localdb
from app.auth import key_digest
from conftest import MOTO_REGION, ROOT
from test_secrets import app_env, db_user, secret_value  # noqa: F401 (a fixture)

REGION = MOTO_REGION
AWS_SECRET = f"canary-aws-secret-key-{uuid.uuid4().hex[:8]}"
AWS_TOKEN = f"canary-aws-session-token-{uuid.uuid4().hex[:8]}"
ROOT_AT_DEBUG = "import logging\nlogging.basicConfig(level=logging.DEBUG)\n"


@pytest.fixture
def root_at_debug(tmp_path) -> dict[str, str]:
    """The environment of a process whose sitecustomize sets the root logger to DEBUG, with
    AWS credentials that are canaries (moto accepts any)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(ROOT_AT_DEBUG)
    return {"PYTHONPATH": str(site), "LOG_LEVEL": "DEBUG", "AWS_ACCESS_KEY_ID": "AKIDCANARYTEST",
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_SESSION_TOKEN": AWS_TOKEN}


def without_settings() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "AWS_", "API_"))}


def get(url: str, **headers) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def send_raw(url: str, request: bytes) -> str:
    """A request as a client wrote it, which gunicorn refuses before the app sees it."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        return connection.recv(4096).decode(errors="replace")


def assert_nowhere(canaries: list[str], *texts: str) -> None:
    """Each canary absent from each text; a failure shows the lines around the first found."""
    for canary in canaries:
        assert canary, canaries
        for text in texts:
            if canary in text:
                at = text.find(canary)
                pytest.fail(f"{canary!r} found:\n{text[max(0, at - 600):at + 200]}", pytrace=False)


def kill_sessions(server, user: str) -> None:
    """The pool's connections die: the next request opens a new one, asking for credentials."""
    ids = server.sql([f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}'"])
    if ids:
        server.sql([f"KILL {row[0]}" for row in ids])


def test_gunicorn_at_debug_with_a_root_handler_of_the_users(
        db_user, sm, moto_endpoint, mysql_server, root_at_debug, start_gunicorn):
    """Secrets Manager mode through gunicorn: startup, requests with good, bad and misplaced API
    keys (in the query, in a header line without its colon, which gunicorn refuses itself), a
    rotation under way (AWSPENDING tried after the database refused AWSCURRENT), an unhandled
    exception, then a password the secret does not hold (1045: a 503). gunicorn's -e values are
    in its debug configuration dump."""
    first = db_user["password"]
    arn = sm.create_secret(Name=f"app/db/{uuid.uuid4().hex[:6]}",
                           SecretString=secret_value(db_user, first))["ARN"]
    secret_string = sm.get_secret_value(SecretId=arn)["SecretString"]
    key, bad_key, query_key = (f"canary-api-key-{n}-{uuid.uuid4().hex[:8]}" for n in range(3))
    env = {**app_env(arn), **root_at_debug, "AWS_ENDPOINT_URL_SECRETS_MANAGER": moto_endpoint,
           "WEB_CONCURRENCY": "1", "DB_POOL_IDLE_PING": "0", "API_AUTH": "all",
           "API_KEY_SHA256": key_digest(key)}
    dash_e = f"canary-dash-e-{uuid.uuid4().hex[:8]}"
    server = start_gunicorn(env, extra_args=["--log-level", "debug", "-e", f"RDS_PASSWORD={dash_e}"])
    auth = {"Authorization": f"Bearer {key}"}
    answers = [get(server.url + "/api/users", **auth),
               get(server.url + "/api/users", Authorization=f"Bearer {bad_key}"),
               get(server.url + f"/api/users?api_key={query_key}", **auth)]
    assert [status for status, _ in answers] == [200, 401, 400], answers
    for raw in (f"GET /api/users HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {key}\r\n\r\n",
                f"GET /api/users?api_key={query_key}\r\n\r\n",  # no colon; no HTTP version
                f"GET /api/users?q=a b&api_key={query_key} HTTP/1.1\r\n\r\n",  # its "version"
                f"GET /api/users?q=O'Brien&api_key={query_key}\r\n\r\n"):  # repr in double quotes
        assert send_raw(server.url, raw.encode()).startswith("HTTP/1.1 400 ")

    pending = f"canary-pending-{uuid.uuid4().hex[:8]}"  # a rotation's setSecret done, finishSecret not
    sm.put_secret_value(SecretId=arn, ClientRequestToken=str(uuid.uuid4()),
                        SecretString=secret_value(db_user, pending), VersionStages=["AWSPENDING"])
    db_user["set_password"](pending)
    kill_sessions(mysql_server, db_user["user"])
    answers.append(get(server.url + "/api/users", **auth))
    assert answers[-1][0] == 200, answers[-1]

    database = db_user["env"]["RDS_DB_NAME"]
    mysql_server.sql(["RENAME TABLE users TO users_away"], database=database)
    try:
        answers.append(get(server.url + "/api/users", **auth))  # a driver error no handler expects
    finally:
        mysql_server.sql(["RENAME TABLE users_away TO users"], database=database)
    assert answers[-1][0] == 500, answers[-1]

    wrong = f"canary-unknown-{uuid.uuid4().hex[:8]}"
    db_user["set_password"](wrong)
    kill_sessions(mysql_server, db_user["user"])
    answers.append(get(server.url + "/api/users", **auth))
    assert answers[-1][0] == 503, answers[-1]
    server.stop()

    output = server.output()
    assert "DEBUG:botocore." in output  # the user's root handler printed the libraries' lines
    assert '"event": "secret_pending"' in output and "Traceback" in output
    assert_nowhere([first, pending, wrong, secret_string, AWS_SECRET, AWS_TOKEN, key, bad_key,
                    query_key, dash_e], output, *(body for _, body in answers))
    assert "Current configuration:" in output and "raw_env: ['RDS_PASSWORD=<not shown>']" in output
    assert "Invalid HTTP Header: 'Authorization ...'" in output


def test_gunicorns_refusals_quote_no_credential():
    """gunicorn.conf.py's filter on gunicorn's warning for each request it refuses, as gunicorn
    23 words it (workers/base.py handle_error: the exception's text, a repr). A query with a
    space in it puts what follows the space in the "HTTP version" it quotes, and a single
    quote anywhere makes the repr double-quoted: both printed the API key before."""
    import logging
    import runpy

    from gunicorn.http.errors import InvalidHeader, InvalidHTTPVersion, InvalidRequestLine

    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    key = f"canary-api-key-{uuid.uuid4().hex[:8]}"
    refusals = {
        InvalidRequestLine(f"GET /api/users?api_key={key}"): "'GET /api/users?...'",
        InvalidRequestLine(f"GET /api/users?q=O'Brien&api_key={key}"): "'GET /api/users?...'",
        InvalidHTTPVersion(f"b&api_key={key} HTTP/1.1"): "Invalid HTTP Version: '...'",
        InvalidHeader(f"Authorization Bearer {key}"): "'Authorization ...'",
        InvalidHeader(f"X-Note it's {key}"): "X-Note ...",
        InvalidHTTPVersion("HTTP/1.x"): "Invalid HTTP Version: 'HTTP/1.x'",  # no credential: shown
    }
    for exc, shown in refusals.items():
        record = logging.LogRecord("gunicorn.error", logging.WARNING, __file__, 0,
                                   f"Invalid request from ip=127.0.0.1: {exc}", (), None)
        assert config["CredentialTextFilter"]().filter(record)
        message = record.getMessage()
        assert key not in message and shown in message, message


def test_operator_commands_at_debug_with_a_root_handler_of_the_users(
        db_user, sm, moto_endpoint, root_at_debug, tmp_path):
    """Operator commands as they are typed, side by side: scripts/doctor (which configures no
    logging of the app's) reading the secret, `python -m app.migrate` refused a malformed
    secret, and one signing an IAM token for a database that does not answer. (flask migrate
    and app.bootstrap set logging up as app.migrate does.)"""
    password = db_user["password"]
    arn = sm.create_secret(Name=f"app/db/{uuid.uuid4().hex[:6]}",
                           SecretString=secret_value(db_user, password))["ARN"]
    secret_string = sm.get_secret_value(SecretId=arn)["SecretString"]
    broken = f"canary-malformed-{uuid.uuid4().hex[:8]}"
    malformed = sm.create_secret(Name=f"app/db/{uuid.uuid4().hex[:6]}",
                                 SecretString=f'{{"username": "app", "password": "{broken}"')["ARN"]
    iam = {**db_user["env"], "DB_AUTH": "iam", "RDS_PORT": str(localdb.free_port()),
           "RDS_USERNAME": "iam_app", "AWS_REGION": REGION, "DB_SSL_MODE": "verify-identity",
           "DB_SSL_CA": str(localdb.make_ca(tmp_path, "ca"))}
    migrate = [sys.executable, "-m", "app.migrate"]
    runs = {  # name: (command, environment, exit status)
        "scripts/doctor": ([str(ROOT / "scripts" / "doctor")], app_env(arn), 0),
        "app.migrate, malformed secret": (migrate, app_env(malformed), 2),
        "app.migrate, iam": (migrate, iam, 1),
    }
    base = {**without_settings(), **root_at_debug, "AWS_ENDPOINT_URL": moto_endpoint,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = {name: subprocess.Popen(command, cwd=ROOT, env={**base, **env}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
               for name, (command, env, _) in runs.items()}
    outputs = {name: process.communicate(timeout=120)[0] for name, process in started.items()}
    for name, process in started.items():
        assert process.returncode == runs[name][2], f"{name}: {process.returncode}\n{outputs[name][-3000:]}"
        assert "DEBUG:botocore." in outputs[name], name  # the user's handler printed the libraries'
    assert "is not a JSON object with a password string" in outputs["app.migrate, malformed secret"]
    assert_nowhere([password, secret_string, broken, AWS_SECRET, AWS_TOKEN], *outputs.values())


def test_flask_help_with_no_settings_lists_the_commands_and_a_command_names_the_fix():
    """A tutorial reader's first command, `flask --app application --help`, before setting
    anything: the help with the app's commands (`migrate --help` takes the same way). The
    configuration error (naming each variable and the fix) is the answer of a command that
    needs the database: migrate, and run, which must not serve an app without one."""
    flask = [sys.executable, "-m", "flask", "--app", "application"]
    runs = {"--help": (0, ["migrate  Apply pending schema", "seed     Insert the sample users"]),
            "migrate": (2, []), "run": (2, [])}
    env = {**without_settings(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = {args: subprocess.Popen(flask + args.split(), cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for args in runs}
    for args, process in started.items():
        out, err = process.communicate(timeout=60)
        status, shown = runs[args]
        assert process.returncode == status, f"flask {args}: {process.returncode}\n{out}{err}"
        if shown:
            assert all(line in out for line in shown) and err == "", f"flask {args}:\n{out}{err}"
        else:
            assert out == "" and err.startswith("Error: Invalid configuration"), f"flask {args}:\n{err}"
            assert "RDS_HOSTNAME: is required" in err and "eb setenv" in err and "Traceback" not in err
