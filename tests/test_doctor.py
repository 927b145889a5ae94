"""scripts/doctor against real servers: each failure it names is provoked for real.

One throwaway MariaDB with TLS (a test CA signed its certificate) and max_connections=10
serves the module; each test runs `scripts/doctor` as a subprocess, as an operator would,
with the environment properties the app would get.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import mysql.connector
import pytest

import localdb
from app import migrate
from conftest import ROOT, load_script, make_test_pki, readme_lines
from test_iam import ACCESS_KEY, IAM_USER, REGION, SECRET_KEY, iam_server  # noqa: F401 (a fixture)

DOCTOR = ROOT / "scripts" / "doctor"
ORDER = ["settings", "dns", "tcp", "tls", "auth", "privileges", "schema", "budget"]
MAX_CONNECTIONS = 10  # MariaDB's smallest


def run_doctor(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """./scripts/doctor as its shebang starts it: the first python3 on PATH (this venv's)."""
    full = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "HOME": os.environ.get("HOME", "/root"), **env}
    return subprocess.run([str(DOCTOR), *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def lines_of(result) -> dict[str, tuple[str, str]]:
    """{check: (status, rest of the line)}, asserting one line per check, in order."""
    lines = result.stdout.splitlines()
    parsed = [re.match(r"^(PASS|WARN|FAIL|SKIP)  (\w+)\s+(.*)$", line) for line in lines]
    assert all(parsed), result.stdout + result.stderr
    assert [m[2] for m in parsed] == ORDER, result.stdout
    return {m[2]: (m[1], m[3]) for m in parsed}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("doctor")
    pki = work / "pki"
    tls = make_test_pki(pki)
    db = localdb.LocalServer(basedir=work / "db",
                             extra_args=[*tls, f"--max-connections={MAX_CONNECTIONS}"]).start()
    try:
        db.create_database("ebdb")
        db.create_database("fresh")
        db.sql(["CREATE USER 'reader'@'127.0.0.1' IDENTIFIED BY 'reader-password'",
                "GRANT SELECT ON ebdb.* TO 'reader'@'127.0.0.1'",
                "CREATE USER 'stranger'@'127.0.0.1' IDENTIFIED BY 'stranger-password'"])
        conn = mysql.connector.connect(host="127.0.0.1", port=db.port, user=localdb.APP_USER,
                                       password=localdb.APP_PASSWORD, database="ebdb", ssl_disabled=True)
        try:
            migrate.apply(conn)
        finally:
            conn.close()
        yield {"db": db, "pki": pki}
    finally:
        db.remove()


@pytest.fixture
def env(server):
    """The app's properties for the migrated database over verified TLS; one small instance."""
    return {**server["db"].environ("ebdb"), "DB_SSL_MODE": "verify-identity",
            "DB_SSL_CA": str(server["pki"] / "ca.pem"), "DB_CONNECT_TIMEOUT": "2",
            "WEB_CONCURRENCY": "1", "DB_POOL_SIZE": "2", "FLEET_MAX_INSTANCES": "2"}


def test_readme_line_passes_against_a_local_database(make_database):
    """The README's local run, against a migrated database of the test server."""
    [line] = [l for l in readme_lines("./scripts/doctor") if l.endswith("./scripts/doctor")]
    db = make_database()
    line = (line.replace("RDS_PORT=3306", f"RDS_PORT={db['RDS_PORT']}")
            .replace("RDS_DB_NAME=ebdb", f"RDS_DB_NAME={db['RDS_DB_NAME']}"))
    assert f"RDS_PASSWORD={db['RDS_PASSWORD']}" in line and f"RDS_USERNAME={db['RDS_USERNAME']}" in line
    result = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines_of(result)
    assert checks["tls"][0] == "WARN" and "DB_SSL_MODE=disabled" in checks["tls"][1]
    assert all(checks[name][0] == "PASS" for name in ORDER if name != "tls"), result.stdout
    assert "what this code needs" in checks["schema"][1]


def test_all_pass_over_verified_tls_and_json_says_the_same(env):
    result = run_doctor(env)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines_of(result)
    assert {status for status, _ in checks.values()} == {"PASS"}, result.stdout
    assert re.search(r"TLSv1\.[23] \S+; the certificate verified against .*ca\.pem and the host name",
                     checks["tls"][1])
    assert "logged in as app@127.0.0.1 (password from RDS_PASSWORD)" in checks["auth"][1]
    assert (f"2 instances (FLEET_MAX_INSTANCES) × 1 workers × 2 (DB_POOL_SIZE) + 1 (deploy) = 5 of "
            f"max_connections {MAX_CONNECTIONS} (50%)") in checks["budget"][1]
    as_json = json.loads(run_doctor(env, "--json").stdout)
    assert as_json["ok"] is True
    assert [c["name"] for c in as_json["checks"]] == ORDER
    budget = as_json["checks"][-1]
    assert (budget["fleet_connections"], budget["max_connections"], budget["share"]) == (5, 10, 0.5)
    schema = as_json["checks"][-2]
    assert schema["applied"] == schema["expected"] == migrate.latest_version()


def test_a_config_error_is_the_first_fail(env):
    result = run_doctor({**env, "RDS_PORT": "not-a-port"}, "--json")
    assert result.returncode == 1
    checks = json.loads(result.stdout)["checks"]
    assert checks[0]["status"] == "FAIL" and "RDS_PORT" in checks[0]["detail"]
    assert "'not-a-port'" in checks[0]["detail"] and "eb setenv" in checks[0]["fix"]
    assert [c["status"] for c in checks[1:]] == ["SKIP"] * 7


def test_a_closed_port(env):
    result = run_doctor({**env, "RDS_PORT": str(localdb.free_port())})
    checks = lines_of(result)
    assert result.returncode == 1
    assert checks["tcp"][0] == "FAIL" and "refused the connection" in checks["tcp"][1]
    assert "check RDS_PORT" in checks["tcp"][1]
    assert [checks[n][0] for n in ORDER[3:]] == ["SKIP"] * 5


def test_packets_that_are_dropped_time_out_and_point_at_security_groups(env):
    """A listener whose accept queue is full: the kernel drops the SYN, as a security group
    without the rule does, and the connection attempt times out."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=2)  # fills the queue
    try:
        result = run_doctor({**env, "RDS_PORT": str(listener.getsockname()[1]), "DB_CONNECT_TIMEOUT": "1"})
    finally:
        filler.close()
        listener.close()
    checks = lines_of(result)
    assert result.returncode == 1
    assert checks["tcp"][0] == "FAIL", result.stdout
    assert "no answer from 127.0.0.1" in checks["tcp"][1] and "within 1 s" in checks["tcp"][1]
    assert "security group must admit this instance's security group on tcp/" in checks["tcp"][1]


def test_an_unresolvable_host(env):
    checks = lines_of(run_doctor({**env, "RDS_HOSTNAME": "no-such-database.invalid"}))
    assert checks["dns"][0] == "FAIL" and "cannot resolve no-such-database.invalid" in checks["dns"][1]
    assert "check RDS_HOSTNAME" in checks["dns"][1]


def test_the_wrong_ca(env, server):
    result = run_doctor({**env, "DB_SSL_CA": str(server["pki"] / "wrong-ca.pem")})
    checks = lines_of(result)
    assert result.returncode == 1
    assert checks["tcp"][0] == "PASS"
    assert checks["tls"][0] == "FAIL" and "certificate verify failed" in checks["tls"][1]
    assert "does not chain to a CA in DB_SSL_CA" in checks["tls"][1]
    assert "DB_SSL_TRUST=rds-proxy" in checks["tls"][1]
    assert checks["auth"] == ("SKIP", "not run: tls failed")


def test_the_wrong_password(env):
    secret = "wrong-password-canary-4711"
    result = run_doctor({**env, "RDS_PASSWORD": secret})
    checks = lines_of(result)
    assert result.returncode == 1
    assert checks["tls"][0] == "PASS"  # the refusal came inside TLS
    assert checks["auth"][0] == "FAIL" and "MySQL error 1045" in checks["auth"][1]
    assert "RDS_USERNAME/RDS_PASSWORD are not what the database has" in checks["auth"][1]
    assert secret not in result.stdout + result.stderr


def test_a_missing_privilege(env):
    result = run_doctor({**env, "RDS_USERNAME": "reader", "RDS_PASSWORD": "reader-password"})
    checks = lines_of(result)
    assert result.returncode == 1
    assert checks["auth"][0] == "PASS"
    status, text = checks["privileges"]
    assert status == "FAIL" and "reader@127.0.0.1 lacks INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, REFERENCES" in text
    assert "GRANT INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, REFERENCES ON `ebdb`.* TO 'reader'@'127.0.0.1'" in text
    # No grant on the database at all: the server refuses it at login (1044).
    checks = lines_of(run_doctor({**env, "RDS_USERNAME": "stranger", "RDS_PASSWORD": "stranger-password"}))
    assert checks["auth"][0] == "PASS" and "was refused (see privileges)" in checks["auth"][1]
    assert checks["privileges"][0] == "FAIL" and "MySQL error 1044" in checks["privileges"][1]
    assert "GRANT SELECT, INSERT" in checks["privileges"][1]


def test_an_unmigrated_schema(env):
    result = run_doctor({**env, "RDS_DB_NAME": "fresh"})
    checks = lines_of(result)
    assert result.returncode == 1
    assert checks["privileges"][0] == "PASS"
    assert checks["schema"][0] == "FAIL" and "no migration was ever applied to 'fresh'" in checks["schema"][1]
    assert "python -m app.migrate" in checks["schema"][1]
    assert checks["budget"][0] == "PASS"  # measured all the same: the session is open


@pytest.mark.parametrize("instances, status, share", [(4, "WARN", "90%"), (5, "FAIL", "110%")])
def test_the_budget_against_a_low_max_connections(env, instances, status, share):
    result = run_doctor({**env, "FLEET_MAX_INSTANCES": str(instances)})
    checks = lines_of(result)
    assert result.returncode == (1 if status == "FAIL" else 0)
    assert checks["budget"][0] == status, result.stdout
    assert f"+ 1 (deploy) = {instances * 2 + 1} of max_connections 10 ({share})" in checks["budget"][1]
    assert "at most 3 instances of 2 connections fit within 75% of 10" in checks["budget"][1]
    assert "RDS Proxy" in checks["budget"][1]


def test_a_per_user_connection_limit_is_the_budget(env, server):
    """MAX_USER_CONNECTIONS on the app's account caps it below max_connections."""
    server["db"].sql(["CREATE USER 'capped'@'127.0.0.1' IDENTIFIED BY 'capped-password' "
                      "WITH MAX_USER_CONNECTIONS 4",
                      "GRANT ALL PRIVILEGES ON ebdb.* TO 'capped'@'127.0.0.1'"])
    try:
        checks = lines_of(run_doctor({**env, "RDS_USERNAME": "capped", "RDS_PASSWORD": "capped-password"}))
    finally:
        server["db"].sql(["DROP USER 'capped'@'127.0.0.1'"])
    assert checks["budget"][0] == "FAIL"
    assert "= 5 of max_user_connections 4 (125%)" in checks["budget"][1]


def test_a_read_only_server(env, server):
    """What the writer turns into after a failover, and what an Aurora reader endpoint is."""
    server["db"].sql(["SET GLOBAL read_only = 1"])
    try:
        checks = lines_of(run_doctor(env))
    finally:
        server["db"].sql(["SET GLOBAL read_only = 0"])
    assert checks["privileges"][0] == "FAIL" and "is read-only" in checks["privileges"][1]
    assert "point RDS_HOSTNAME at the writer" in checks["privileges"][1]


def test_a_full_server_is_a_budget_failure(env, server):
    """Every connection taken (1040 Too many connections): the login fails, and the fix is the budget."""
    held = []
    try:
        while True:
            try:
                held.append(mysql.connector.connect(host="127.0.0.1", port=server["db"].port,
                                                    user=localdb.APP_USER, password=localdb.APP_PASSWORD,
                                                    ssl_disabled=True))
            except mysql.connector.Error as err:
                assert err.errno == 1040
                break
            assert len(held) <= MAX_CONNECTIONS
        result = run_doctor(env)
    finally:
        for conn in held:
            conn.close()
    checks = lines_of(result)
    assert result.returncode == 1
    assert checks["auth"][0] == "FAIL" and "MySQL error 1040" in checks["auth"][1]
    assert "see the budget line" in checks["auth"][1]
    assert checks["budget"][0] == "FAIL" and "no free connection (1040)" in checks["budget"][1]


def test_from_beanstalk_reads_the_environment_properties_with_get_config(env, tmp_path):
    """On an instance the properties are not in the shell: get-config prints them as JSON."""
    get_config = tmp_path / "get-config"
    load_script("rehearse-deploy").get_config_stand_in(get_config, env)
    result = run_doctor({"EB_GET_CONFIG": str(get_config)}, "--from-beanstalk")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "logged in as app@127.0.0.1" in lines_of(result)["auth"][1]
    missing = run_doctor({"EB_GET_CONFIG": str(tmp_path / "nowhere")}, "--from-beanstalk")
    checks = lines_of(missing)
    assert missing.returncode == 1 and checks["settings"][0] == "FAIL"
    assert "Elastic Beanstalk instances (eb ssh)" in checks["settings"][1]


# -- DB_AUTH=iam, against tests/test_iam.py's stand-in for RDS (PAM checks the token) -------


def test_iam_access_denied_names_the_resource_id_and_the_plugin(iam_server):  # noqa: F811
    """A token signed with other credentials than the role's is refused (1045) as RDS refuses
    one without rds-db:connect on the DbiResourceId; the doctor says what to check."""
    env = {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": str(iam_server["server"].port),
           "RDS_DB_NAME": "iamdb", "RDS_USERNAME": IAM_USER, "DB_AUTH": "iam", "AWS_REGION": REGION,
           "DB_SSL_CA": str(iam_server["certs"] / "ca.pem"), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
           "WEB_CONCURRENCY": "1", "FLEET_MAX_INSTANCES": "1"}
    (iam_server["work"] / "clock_offset").write_text("0")
    accepted = run_doctor(env)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    checks = lines_of(accepted)
    assert f"logged in as {IAM_USER}@127.0.0.1 (IAM auth token for {IAM_USER} in {REGION})" in checks["auth"][1]
    assert "and the host name" in checks["tls"][1]  # iam defaults to verify-identity

    other_key = "another-secret-key-the-database-does-not-trust"
    refused = run_doctor({**env, "AWS_SECRET_ACCESS_KEY": other_key})
    checks = lines_of(refused)
    assert refused.returncode == 1
    status, text = checks["auth"]
    assert status == "FAIL" and "MySQL error 1045" in text
    assert f"rds-db:connect on arn:aws:rds-db:<region>:<account>:dbuser:<DbiResourceId>/{IAM_USER}" in text
    assert "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'" in text
    assert other_key not in refused.stdout + refused.stderr and "X-Amz-Signature" not in refused.stdout


def test_from_beanstalk_with_a_get_config_it_may_not_run_says_sudo(tmp_path):
    """get-config there but not executable for this user (a copy without its mode, a mount with
    noexec): subprocess's PermissionError went up as a traceback instead of the settings FAIL."""
    get_config = tmp_path / "get-config"
    get_config.write_text("#!/bin/sh\necho '{}'\n")
    get_config.chmod(0o644)
    result = run_doctor({"EB_GET_CONFIG": str(get_config)}, "--from-beanstalk")
    assert "Traceback" not in result.stderr, result.stderr
    checks = lines_of(result)
    assert result.returncode == 1 and checks["settings"][0] == "FAIL"
    assert (f"--from-beanstalk: cannot run {get_config} (Permission denied); run this with sudo on the "
            "instance") in checks["settings"][1], checks["settings"]
