"""When the credential source fails: one clear message at startup, a 503 during a request.

Secrets Manager runs in moto (in-process, or as a real HTTP server that can be stopped).
Two AWS errors moto cannot return faithfully are given with botocore's Stubber on the app's
real client: moto's IAM enforcement answers a JSON-protocol service with an XML body and the
code "403", while AWS answers AccessDeniedException. Both errors are on AWS's list:
https://docs.aws.amazon.com/secretsmanager/latest/apireference/CommonErrors.html
(AccessDeniedException, ThrottlingException: HTTP 400).
"""

from __future__ import annotations

import json
import uuid

import boto3
import pytest
from botocore.stub import Stubber

import localdb
from app import create_app
from app.config import EXPECTED, ConfigError, load_settings
from app.credentials import SecretsManagerPassword, complete_settings
from test_secrets import CANARY, app_env, aws, db_user, force_new_connections, secret, secret_value  # noqa: F401

DENIED_MESSAGE = ("User: arn:aws:sts::123456789012:assumed-role/aws-elasticbeanstalk-ec2-role/"
                  "i-0123456789abcdef0 is not authorized to perform: secretsmanager:GetSecretValue "
                  "on resource: app/db because no identity-based policy allows the "
                  "secretsmanager:GetSecretValue action")


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- values from the secret are validated like environment properties ------------------

@pytest.mark.parametrize("key, value, expected", [
    ("host", "mysql://db:3306/", "bare host name"),
    ("port", "abc", "valid integer"),
    ("port", 70000, "65535"),
    ("dbname", "x" * 65, "at most 64"),
])
def test_secret_values_are_validated_and_named_as_secret_fields(aws, db_user, key, value, expected):
    secret = json.loads(secret_value(db_user, db_user["password"]))
    secret[key] = value
    arn = aws.create_secret(Name=f"bad/{uuid.uuid4().hex[:6]}", SecretString=json.dumps(secret))["ARN"]
    with pytest.raises(ConfigError) as err:
        create_app(app_env(arn))
    message = str(err.value)
    var = {"host": "RDS_HOSTNAME", "port": "RDS_PORT", "dbname": "RDS_DB_NAME"}[key]
    assert f'secret {arn} field "{key}": ' in message and f"(got {value!r})" in message
    assert expected in message and EXPECTED[var] in message
    assert db_user["password"] not in message


def test_an_environment_property_wins_over_a_bad_secret_field(aws, db_user):
    secret = {**json.loads(secret_value(db_user, db_user["password"])), "port": "abc"}
    arn = aws.create_secret(Name=f"bad/{uuid.uuid4().hex[:6]}", SecretString=json.dumps(secret))["ARN"]
    app = create_app(app_env(arn, RDS_PORT=db_user["env"]["RDS_PORT"]))
    assert app.test_client().get("/api/users").status_code == 200


# -- startup: one message naming DB_SECRET_ID, the AWS error code and the fix -------------

def test_a_missing_secret_stops_startup_with_the_fix(aws):
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCdEf"
    with pytest.raises(ConfigError) as err:
        create_app(app_env(arn))
    message = str(err.value)
    assert message.startswith(f"DB_SECRET_ID: cannot read secret {arn} (ResourceNotFoundException")
    assert "exists in eu-west-1" in message and "\n" not in message
    assert not err.value.transient  # application.py: gunicorn stops, "App failed to load"


def test_a_denied_secret_stops_startup_with_the_policy_to_add(aws, secret, db_user):
    settings = load_settings(app_env(secret))
    client = boto3.session.Session().client("secretsmanager", region_name="eu-west-1")
    with Stubber(client) as stub:
        stub.add_client_error("get_secret_value", service_error_code="AccessDeniedException",
                              service_message=DENIED_MESSAGE, http_status_code=400)
        with pytest.raises(ConfigError) as err:
            complete_settings(settings, SecretsManagerPassword(secret, client))
    message = str(err.value)
    assert message.startswith(f"DB_SECRET_ID: cannot read secret {secret} (AccessDeniedException: User:")
    assert "allow secretsmanager:GetSecretValue on this secret's ARN" in message


def test_no_aws_credentials_stops_startup_with_the_fix(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance profile here
    with pytest.raises(ConfigError) as err:
        create_app(app_env("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCdEf"))
    assert "(NoCredentialsError" in str(err.value) and "attach an instance profile" in str(err.value)


def test_an_unreachable_secrets_manager_stops_startup_with_the_fix(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", f"http://127.0.0.1:{localdb.free_port()}")
    with pytest.raises(ConfigError) as err:
        create_app(app_env("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCdEf"))
    assert "(EndpointConnectionError" in str(err.value)
    assert "can reach Secrets Manager in eu-west-1" in str(err.value)
    assert err.value.transient  # application.py: this worker is started again, gunicorn goes on


# -- during a request: a 503 with Retry-After and a log event, never a 500 ----------------

def refuse_the_cached_password(app, db_user):
    """The next new connection is refused and must look the secret up again."""
    db_user["set_password"](CANARY.format(uuid.uuid4().hex[:6]))
    force_new_connections(app)


def assert_503_with_event(app, capsys, code, reason, permanent):
    response = app.test_client().get("/api/users")
    assert response.status_code == 503, response.get_data(as_text=True)
    assert response.headers["Retry-After"]
    assert response.get_json()["error"]["code"] == "database_unavailable"
    out = capsys.readouterr()
    events = [r for r in json_lines(out.out) if r.get("event") == "db_credentials_unavailable"]
    assert events and events[0]["code"] == code and events[0]["reason"] == reason
    assert events[0]["permanent"] is permanent
    assert "Traceback" not in out.out + out.err
    return response, out


@pytest.mark.parametrize("code, permanent", [("AccessDeniedException", True),
                                             ("ThrottlingException", False)])
def test_an_aws_error_during_a_request_is_a_503(secret, db_user, capsys, code, permanent):
    app = create_app(app_env(secret))
    refuse_the_cached_password(app, db_user)
    with Stubber(app.extensions["database"].opener.credentials._client) as stub:
        stub.add_client_error("get_secret_value", service_error_code=code,
                              service_message=DENIED_MESSAGE if permanent else "Rate exceeded",
                              http_status_code=400)
        response, out = assert_503_with_event(app, capsys, code, "secret_unreadable", permanent)
    assert db_user["password"] not in out.out + response.get_data(as_text=True)


def test_a_deleted_secret_during_a_request_is_a_503(aws, secret, db_user, capsys):
    app = create_app(app_env(secret))
    aws.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
    refuse_the_cached_password(app, db_user)
    assert_503_with_event(app, capsys, "ResourceNotFoundException", "secret_unreadable", True)


def test_health_ready_names_the_credential_sources_refusal(aws, secret, db_user):
    """README Health checks: a secret gone for good is "misconfigured" with its reason."""
    app = create_app(app_env(secret))
    aws.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
    refuse_the_cached_password(app, db_user)
    response = app.test_client().get("/health/ready")
    body = response.get_json()
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert (body["database"], body["reason"]) == ("misconfigured", "secret_unreadable")


def test_a_malformed_rotated_secret_during_a_request_is_a_503(aws, secret, db_user, capsys):
    app = create_app(app_env(secret))
    aws.put_secret_value(SecretId=secret, SecretString="password=hunter2")  # now AWSCURRENT
    refuse_the_cached_password(app, db_user)
    response, out = assert_503_with_event(app, capsys, None, "secret_invalid", True)
    assert "hunter2" not in out.out + out.err + response.get_data(as_text=True)


def test_a_rotated_secret_with_a_username_that_is_no_string_names_that_field(aws, secret, db_user, capsys):
    app = create_app(app_env(secret))
    rotated = {**json.loads(secret_value(db_user, db_user["password"])), "username": 123}
    aws.put_secret_value(SecretId=secret, SecretString=json.dumps(rotated))  # now AWSCURRENT
    refuse_the_cached_password(app, db_user)
    _, out = assert_503_with_event(app, capsys, None, "secret_invalid", True)
    [event] = [r for r in json_lines(out.out) if r.get("event") == "db_credentials_unavailable"][:1]
    assert 'field "username" is not a string (got int)' in event["message"], event["message"]


def test_an_unreachable_secrets_manager_during_a_request_is_a_503(db_user, monkeypatch, capsys):
    from moto.server import ThreadedMotoServer

    port = localdb.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_MAX_ATTEMPTS": "1",
                            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{port}"}.items():
            monkeypatch.setenv(name, value)
        arn = boto3.session.Session().client("secretsmanager", region_name="eu-west-1").create_secret(
            Name="app/db", SecretString=secret_value(db_user, db_user["password"]))["ARN"]
        app = create_app(app_env(arn))
        assert app.test_client().get("/api/users").status_code == 200
    finally:
        server.stop()
    refuse_the_cached_password(app, db_user)
    assert_503_with_event(app, capsys, "EndpointConnectionError", "secret_unreadable", False)


def test_an_unreadable_secret_after_its_ttl_keeps_the_cached_password(aws, secret, db_user, capsys):
    """Secrets Manager failing must not break connections the cached password still opens."""
    app = create_app(app_env(secret))
    provider = app.extensions["database"].opener.credentials
    provider._ttl = 0  # every new connection would look the secret up again
    aws.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
    calls = []
    provider._client.meta.events.register("before-call.secrets-manager.GetSecretValue",
                                          lambda **kw: calls.append(1))
    for _ in range(5):
        force_new_connections(app)
        assert app.test_client().get("/api/users").status_code == 200
    assert len(calls) == 1  # then retried only after the longest backoff
    events = [r for r in json_lines(capsys.readouterr().out) if r.get("event") == "secret_refresh_failed"]
    assert len(events) == 1 and events[0]["code"] == "ResourceNotFoundException"


def test_a_missing_secret_under_gunicorn_and_migrate_is_one_message(monkeypatch):
    """The two commands an operator runs: the Procfile's gunicorn and the migration."""
    import os
    import subprocess
    import sys

    from moto.server import ThreadedMotoServer

    from conftest import ROOT, procfile_command

    port = localdb.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCdEf"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "AWS_"))}
        env.update(app_env(arn), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_ENDPOINT_URL_SECRETS_MANAGER=f"http://127.0.0.1:{port}",
                   WEB_CONCURRENCY="1", PORT=str(localdb.free_port()),
                   PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
        for command in (procfile_command(), [sys.executable, "-m", "app.migrate"]):
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                    timeout=60)
            output = result.stdout + result.stderr
            assert result.returncode != 0, output
            assert f"DB_SECRET_ID: cannot read secret {arn} (ResourceNotFoundException" in output
            assert "Traceback" not in output and "botocore" not in output
    finally:
        server.stop()


def test_secrets_manager_out_of_reach_while_a_worker_boots_does_not_stop_gunicorn(db_user, tmp_path):
    """A transient failure (here: nothing listens where Secrets Manager should) stops only the
    booting worker, which gunicorn starts again; once the secret can be read, the app serves.
    APP_LOAD_ERROR would halt the master, and with it every healthy worker of the instance."""
    import os
    import socket
    import subprocess
    import sys
    import time

    import requests
    from moto.server import ThreadedMotoServer

    from conftest import ROOT, procfile_command

    # Held (bound, not listening: connections are refused) until moto takes it, so that no
    # other process takes the port meanwhile; moto's start() would wait forever on a taken one.
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    moto_port, port = placeholder.getsockname()[1], localdb.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "AWS_"))}
    env.update(app_env("app/db"), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_ENDPOINT_URL_SECRETS_MANAGER=f"http://127.0.0.1:{moto_port}",
               WEB_CONCURRENCY="1", PORT=str(port),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        gunicorn = subprocess.Popen(procfile_command(), cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    server = None
    try:
        deadline = time.monotonic() + 60  # generous: a loaded CI machine boots workers slowly
        while log.read_text().count("Configuration source unavailable") < 2:  # one worker, then another
            assert time.monotonic() < deadline and gunicorn.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "DB_SECRET_ID: cannot read secret app/db (EndpointConnectionError" in log.read_text()
        placeholder.close()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port)
        server.start()
        boto3.client("secretsmanager", region_name="eu-west-1", endpoint_url=f"http://127.0.0.1:{moto_port}",
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_secret(
            Name="app/db", SecretString=secret_value(db_user, db_user["password"]))
        localdb.wait_until_healthy(f"http://127.0.0.1:{port}/health", 60, process=gunicorn,
                                   output=lambda: log.read_text())
        assert requests.get(f"http://127.0.0.1:{port}/api/users", timeout=10).status_code == 200
        assert "App failed to load" not in log.read_text() and "Traceback" not in log.read_text()
    finally:
        placeholder.close()
        localdb.stop_process(gunicorn, 30)
        if server is not None:
            server.stop()


def test_a_silent_secrets_manager_endpoint_fails_within_the_connect_timeout(tmp_path):
    """A black-holed endpoint (no NAT, no VPC endpoint) must not hold a worker for botocore's
    default 60 s per attempt: gunicorn would kill the booting worker and start another."""
    import os
    import socket
    import subprocess
    import sys

    from conftest import ROOT

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (the kernel does), never answers
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "AWS_"))}
        env.update(app_env("arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCdEf"),
                   DB_CONNECT_TIMEOUT="1", AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing",
                   AWS_ENDPOINT_URL_SECRETS_MANAGER=f"http://127.0.0.1:{silent.getsockname()[1]}")
        result = subprocess.run([sys.executable, "-m", "app.migrate"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=20)
    finally:
        silent.close()
    assert result.returncode != 0
    assert "(ReadTimeoutError" in result.stderr and "can reach Secrets Manager" in result.stderr


def test_iam_without_aws_credentials_is_a_503_naming_the_fix(monkeypatch, tmp_path, capsys):
    """A token is signed at the first connection, not at startup: without credentials (no
    instance profile) each connection attempt is a 503 and a log line saying what to attach."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    localdb.make_ca(tmp_path, "ca")  # DB_SSL_CA must hold a certificate
    app = create_app({"DB_AUTH": "iam", "RDS_HOSTNAME": "127.0.0.1", "RDS_DB_NAME": "ebdb",
                      "RDS_USERNAME": "app", "AWS_REGION": "eu-west-1",
                      "DB_SSL_CA": str(tmp_path / "ca.pem")})
    response, out = assert_503_with_event(app, capsys, "NoCredentialsError",
                                          "aws_credentials_missing", True)
    assert "attach an instance profile" in out.out


def test_a_revoked_secret_stops_a_respawned_worker_not_gunicorn(db_user, tmp_path):
    """The secret deleted while the app serves, then a worker dies (a crash, a max_requests
    recycle): its replacement cannot read the secret. It exited with APP_LOAD_ERROR, which
    halted the master and the worker still serving on its cached password with it. Now it
    says so and gunicorn starts another; the other worker keeps serving, and once the secret
    is back a new worker boots."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import requests
    from moto.server import ThreadedMotoServer

    from conftest import ROOT, procfile_command

    moto_port, port = localdb.free_port(), localdb.free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port)
    server.start()
    sm = boto3.client("secretsmanager", region_name="eu-west-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing", endpoint_url=f"http://127.0.0.1:{moto_port}")
    name = f"app/db-{uuid.uuid4().hex[:8]}"  # moto's server shares the process's accounts
    sm.create_secret(Name=name, SecretString=secret_value(db_user, db_user["password"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "AWS_"))}
    env.update(app_env(name), AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_ENDPOINT_URL_SECRETS_MANAGER=f"http://127.0.0.1:{moto_port}",
               WEB_CONCURRENCY="2", PORT=str(port), TMPDIR=str(tmp_path / "tmp"),
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "tmp").mkdir()
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        gunicorn = subprocess.Popen(procfile_command(), cwd=ROOT, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/api/users"
    try:
        localdb.wait_until_healthy(url, 60, process=gunicorn, output=lambda: log.read_text())
        deadline = time.monotonic() + 60
        while log.read_text().count('"event": "gc_frozen"') < 2:  # both workers loaded the app
            assert time.monotonic() < deadline and gunicorn.poll() is None, log.read_text()
            time.sleep(0.1)
        sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
        workers = [int(pid) for pid in
                   open(f"/proc/{gunicorn.pid}/task/{gunicorn.pid}/children").read().split()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        while log.read_text().count("this worker cannot start") < 2:  # one respawn, then another
            assert time.monotonic() < deadline and gunicorn.poll() is None, log.read_text()
            assert requests.get(url, timeout=10).status_code == 200  # the other worker serves
            time.sleep(0.2)
        text = log.read_text()
        assert "the workers already running keep serving with the configuration they loaded" in text
        assert f"DB_SECRET_ID: cannot read secret {name} (ResourceNotFoundException" in text
        assert "App failed to load" not in text and "Traceback" not in text
        sm.create_secret(Name=name, SecretString=secret_value(db_user, db_user["password"]))
        while log.read_text().count('"event": "gc_frozen"') < 3:  # a new worker loaded the app
            assert time.monotonic() < deadline and gunicorn.poll() is None, log.read_text()
            time.sleep(0.1)
        assert requests.get(url, timeout=10).status_code == 200
        # The mark is the master's (gunicorn.conf.py): one file in a directory of its own...
        assert [p.name for p in (tmp_path / "tmp").glob("gunicorn-app-*/*")] == ["loaded"]
        localdb.stop_process(gunicorn, 30)
        assert gunicorn.returncode == 0
        assert not list((tmp_path / "tmp").glob("gunicorn-app-*"))  # ...which it removes as it exits
    finally:
        localdb.stop_process(gunicorn, 30)
        server.stop()
