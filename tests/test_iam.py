"""DB_AUTH=iam end to end: real TLS, a real cleartext-auth login, a real SigV4 check.

The harness makes a test CA and a server certificate, starts a throwaway MariaDB with TLS
and the PAM plugin in cleartext mode, and creates an IAM-style user `IDENTIFIED VIA pam`
whose PAM service runs tests/pam_iam_checker.py: it accepts only a valid, unexpired token
signed with the test credentials for this host, port and user, as RDS does.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import boto3
import mysql.connector
import pytest

import localdb
from app import create_app, migrate
from app.config import ConfigError, load_settings
from app.credentials import IamAuthToken, provider_for
from app.db.connection import ConnectionOpener
from app.db.pool import ConnectionPool
from conftest import make_test_pki

# Clients come from a new boto3 Session each: boto3's default session keeps the credentials it
# found first, which may be another test module's.
ACCESS_KEY = "AKIDEXAMPLETESTONLY1"  # not an AWS key: only the checker knows it
SECRET_KEY = "test-secret-key-for-the-pam-checker-only"
REGION = "us-east-1"
IAM_USER = "iam_app"
PLUGIN_DIR = Path("/usr/lib/mysql/plugin")


def pam_plugin() -> str | None:
    """auth_pam needs its setuid helper; auth_pam_v1 runs PAM in the server process."""
    if (PLUGIN_DIR / "auth_pam.so").exists() and (PLUGIN_DIR / "auth_pam_tool_dir").exists():
        return "auth_pam.so"
    if (PLUGIN_DIR / "auth_pam_v1.so").exists():
        return "auth_pam_v1.so"
    return None


@pytest.fixture(scope="module")
def iam_server(tmp_path_factory):
    plugin = pam_plugin()
    flavour = (localdb.find_server() or ("none",))[0]
    reasons = [r for r, bad in [
        ("not root: cannot write /etc/pam.d", os.geteuid() != 0),
        ("no MariaDB PAM plugin in /usr/lib/mysql/plugin", plugin is None),
        ("the server is not MariaDB", flavour != "mariadb"),
        ("openssl is not installed", shutil.which("openssl") is None),
        ("pam_exec.so is not installed", not any(Path(d, "pam_exec.so").exists() for d in (
            "/lib/x86_64-linux-gnu/security", "/lib/aarch64-linux-gnu/security",
            "/usr/lib64/security", "/lib/security"))),
    ] if bad]
    if reasons:
        message = "IAM end-to-end test needs " + "; ".join(reasons)
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run it: .ci/run installs these)")
        pytest.skip(message)
    work = tmp_path_factory.mktemp("iam")
    certs = work / "certs"
    tls = make_test_pki(certs)
    server = localdb.LocalServer(basedir=work / "db", extra_args=[
        *tls, f"--plugin-load-add={plugin}", "--pam-use-cleartext-plugin=ON"]).start()
    service = f"iamtest{uuid.uuid4().hex[:8]}"
    pam_file = Path("/etc/pam.d") / service
    config = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "region": REGION,
              "endpoint": f"127.0.0.1:{server.port}", "log": str(work / "checker.log"),
              "clock_offset_file": str(work / "clock_offset")}
    (work / "checker.json").write_text(json.dumps(config))
    checker = Path(__file__).with_name("pam_iam_checker.py")
    pam_file.write_text(f"auth required pam_exec.so expose_authtok quiet {sys.executable} {checker} "
                        f"{work / 'checker.json'}\naccount required pam_permit.so\n")
    try:
        server.create_database("iamdb")
        server.sql([f"CREATE USER '{IAM_USER}'@'127.0.0.1' IDENTIFIED VIA pam USING '{service}' REQUIRE SSL",
                    f"GRANT ALL PRIVILEGES ON iamdb.* TO '{IAM_USER}'@'127.0.0.1'"])
        conn = mysql.connector.connect(host="127.0.0.1", port=server.port, user=localdb.APP_USER,
                                       password=localdb.APP_PASSWORD, database="iamdb",
                                       ssl_ca=str(certs / "ca.pem"), ssl_verify_cert=True)
        migrate.apply(conn)
        conn.close()
        yield {"server": server, "certs": certs, "work": work, "config": config}
    finally:
        pam_file.unlink(missing_ok=True)
        server.remove()


@pytest.fixture
def iam_env(iam_server, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    (iam_server["work"] / "clock_offset").write_text("0")
    return {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": str(iam_server["server"].port),
            "RDS_DB_NAME": "iamdb", "RDS_USERNAME": IAM_USER, "DB_AUTH": "iam",
            "AWS_REGION": REGION, "DB_SSL_CA": str(iam_server["certs"] / "ca.pem")}


def checker_log(iam_server) -> str:
    path = Path(iam_server["config"]["log"])
    return path.read_text() if path.exists() else ""


def connect_raw(iam_server, password, **tls):
    args = dict(host="127.0.0.1", port=iam_server["server"].port, user=IAM_USER, password=password,
                database="iamdb", auth_plugin="mysql_clear_password")
    args.update(tls)
    return mysql.connector.connect(**args)


@pytest.mark.parametrize("use_pure", [False, True], ids=["c-extension", "pure-python"])
def test_app_connects_and_serves_with_fresh_tokens(iam_env, iam_server, use_pure, capsys):
    settings = load_settings(iam_env)
    assert settings.ssl_mode.value == "verify-identity"  # the default for IAM
    provider = provider_for(settings)
    opener = ConnectionOpener(settings, provider, use_pure=use_pure)
    conn = opener()
    try:
        assert type(conn).__module__.endswith("connection_cext") != use_pure
        cur = conn.cursor()
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        assert cur.fetchone()[1]  # the session is encrypted
    finally:
        conn.close()
    assert f"accept {IAM_USER}" in checker_log(iam_server)

    app = create_app(iam_env)
    client = app.test_client()
    created = client.post("/api/users", json={"email": f"iam-{use_pure}@example.com", "name": "I"})
    assert created.status_code == 201
    assert client.get(f"/api/users/{created.get_json()['id']}").status_code == 200
    token = provider.token()
    out = capsys.readouterr()
    assert token not in out.out + out.err
    assert '"auth": "iam"' in out.out and '"ssl_mode": "verify-identity"' in out.out


def test_garbage_and_expired_tokens_are_refused(iam_env, iam_server):
    ca = {"ssl_ca": str(iam_server["certs"] / "ca.pem"), "ssl_verify_cert": True}
    for garbage in ("not-a-token", f"127.0.0.1:{iam_server['server'].port}/?Action=connect"):
        with pytest.raises(mysql.connector.Error) as err:
            connect_raw(iam_server, garbage, **ca)
        assert err.value.errno == 1045
    client = boto3.session.Session().client("rds", region_name=REGION)
    token = client.generate_db_auth_token(DBHostname="127.0.0.1", Port=iam_server["server"].port,
                                          DBUsername=IAM_USER, Region=REGION)
    connect_raw(iam_server, token, **ca).close()  # valid now
    (iam_server["work"] / "clock_offset").write_text(str(16 * 60))
    with pytest.raises(mysql.connector.Error) as err:
        connect_raw(iam_server, token, **ca)  # the same token, 16 minutes later
    assert err.value.errno == 1045
    assert "reject iam_app: expired" in checker_log(iam_server)
    other_user = token.replace(f"DBUser={IAM_USER}", "DBUser=root")
    (iam_server["work"] / "clock_offset").write_text("0")
    with pytest.raises(mysql.connector.Error):
        connect_raw(iam_server, other_user, **ca)
    tampered = token[:-1] + ("0" if token[-1] != "0" else "1")
    with pytest.raises(mysql.connector.Error):
        connect_raw(iam_server, tampered, **ca)
    assert "reject iam_app: bad signature" in checker_log(iam_server)


def test_no_tls_or_the_wrong_ca_is_refused(iam_env, iam_server):
    client = boto3.session.Session().client("rds", region_name=REGION)
    token = client.generate_db_auth_token(DBHostname="127.0.0.1", Port=iam_server["server"].port,
                                          DBUsername=IAM_USER, Region=REGION)
    with pytest.raises(mysql.connector.Error):
        connect_raw(iam_server, token, ssl_disabled=True)  # cleartext token without TLS
    with pytest.raises(mysql.connector.Error) as err:
        connect_raw(iam_server, token, ssl_ca=str(iam_server["certs"] / "wrong-ca.pem"),
                    ssl_verify_cert=True)
    assert err.value.errno in (2026, 2055)
    wrong = {**iam_env, "DB_SSL_CA": str(iam_server["certs"] / "wrong-ca.pem")}
    response = create_app(wrong).test_client().get("/api/users")
    assert response.status_code == 503
    with pytest.raises(ConfigError, match="not allowed with DB_AUTH=iam"):
        load_settings({**iam_env, "DB_SSL_MODE": "required"})
    with pytest.raises(ConfigError, match="DB_SSL_CA: no file"):
        load_settings({**iam_env, "DB_SSL_CA": "/nonexistent/rds-ca.pem"})


def test_connections_after_the_token_lifetime_get_a_new_token(iam_env, iam_server, monkeypatch):
    import datetime

    import botocore.auth

    settings = load_settings(iam_env)
    now = [1_000_000.0]
    provider = IamAuthToken(boto3.session.Session().client("rds", region_name=REGION), settings.host, settings.port,
                            settings.user, REGION, clock=lambda: now[0])
    pool = ConnectionPool(ConnectionOpener(settings, provider), size=1, timeout=2,
                          max_lifetime=1800, idle_ping=30)
    lease = pool.borrow()
    first_token = provider.token()
    lease.release()
    now[0] += 5 * 60
    assert provider.token() == first_token  # reused while young
    # 16 minutes after the first token, for the provider, the signer and the server alike.
    now[0] += 11 * 60
    (iam_server["work"] / "clock_offset").write_text(str(16 * 60))
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: datetime.datetime.now(
        datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(minutes=16))
    with pytest.raises(mysql.connector.Error):
        connect_raw(iam_server, first_token, ssl_ca=str(iam_server["certs"] / "ca.pem"))
    old_session = pool.borrow()
    assert old_session.query("SELECT 1 AS one") == [{"one": 1}]  # open sessions outlive tokens
    old_session._discard()  # force a new physical connection on the next borrow
    lease = pool.borrow()
    assert provider.token() != first_token
    assert lease.query("SELECT CURRENT_USER() AS u")[0]["u"].startswith(IAM_USER)
    lease.release()
    assert pool.stats()["opened"] == 2


def test_a_token_is_signed_for_the_region_its_rds_endpoint_names(monkeypatch, tmp_path):
    """RDS checks a token against its own region. An endpoint *.<region>.rds.amazonaws.com names
    it: that region wins over AWS_REGION (an environment in another region, a shell's
    AWS_DEFAULT_REGION), whose token the database would refuse as 1045, naming nothing."""
    import subprocess

    host = "appdb.abcdefghijkl.us-east-1.rds.amazonaws.com"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    localdb.make_ca(tmp_path, "ca")
    settings = load_settings({"DB_AUTH": "iam", "RDS_HOSTNAME": host, "RDS_DB_NAME": "ebdb",
                              "RDS_USERNAME": IAM_USER, "AWS_REGION": "eu-west-1",
                              "DB_SSL_CA": str(tmp_path / "ca.pem")})
    token = provider_for(settings).token()
    # The same check as the IAM test server's, as RDS in us-east-1 makes it.
    config = {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY, "region": "us-east-1",
              "endpoint": f"{host}:3306", "log": str(tmp_path / "checker.log"),
              "clock_offset_file": str(tmp_path / "clock_offset")}
    (tmp_path / "checker.json").write_text(json.dumps(config))
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("pam_iam_checker.py")),
                             str(tmp_path / "checker.json")], input=token.encode(),
                            env={**os.environ, "PAM_USER": IAM_USER}, timeout=30)
    assert result.returncode == 0, (tmp_path / "checker.log").read_text()
