"""`python -m app.bootstrap`, run as the leader-only container command runs it: its own process.

The database is real; Secrets Manager is moto in server mode (AWS_ENDPOINT_URL), holding an
RDS-managed master secret: only `username` and `password`
(https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-secrets-manager.html).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import boto3
import mysql.connector
import pytest

from app.bootstrap import user_sql
from conftest import MOTO_REGION, ROOT

REGION = MOTO_REGION


@pytest.fixture
def rds(moto_endpoint):
    return boto3.client("rds", region_name=REGION, endpoint_url=moto_endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def master(mysql_server, sm, rds):
    """A master user as RDS creates it (CREATE USER and GRANT OPTION), and the database's
    RDS-managed master secret holding it (ManageMasterUserPassword)."""
    user, password = f"m_{uuid.uuid4().hex[:8]}", f"Master-{uuid.uuid4().hex}"
    mysql_server.sql([f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'",
                      f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'127.0.0.1' WITH GRANT OPTION"])
    instance = rds.create_db_instance(
        DBInstanceIdentifier=f"db-{uuid.uuid4().hex[:8]}", DBInstanceClass="db.t4g.micro", Engine="mysql",
        MasterUsername=user, AllocatedStorage=20, ManageMasterUserPassword=True)["DBInstance"]
    secret = instance["MasterUserSecret"]["SecretArn"]
    sm.put_secret_value(SecretId=secret, SecretString=json.dumps({"username": user, "password": password}))
    yield {"user": user, "password": password, "arn": instance["DBInstanceArn"], "secret": secret}
    mysql_server.sql([f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"])


@pytest.fixture
def fresh(mysql_server):
    """A database and an app user that do not exist yet (dropped afterwards if created)."""
    names = {"database": f"b_{uuid.uuid4().hex[:10]}", "user": f"app_{uuid.uuid4().hex[:8]}"}
    yield names
    mysql_server.sql([f"DROP DATABASE IF EXISTS `{names['database']}`",
                      f"DROP USER IF EXISTS '{names['user']}'@'%'"])


def environment(mysql_server, fresh, moto_endpoint, **extra):
    return {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": str(mysql_server.port),
            "RDS_DB_NAME": fresh["database"], "RDS_USERNAME": fresh["user"],
            "RDS_PASSWORD": f"App-{fresh['user']}-pw", "DB_SSL_MODE": "disabled",
            "AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", **extra}


def run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """As 05-migrations.config runs it: `python -m <module>` in the app's directory."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RDS_", "DB_", "AWS_"))}
    return subprocess.run([sys.executable, "-m", module], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_first_deploy_creates_the_user_then_the_migration_runs_as_it(mysql_server, master, fresh,
                                                                     moto_endpoint):
    env = environment(mysql_server, fresh, moto_endpoint, DB_BOOTSTRAP_DB_ARN=master["arn"])
    assert run("app.migrate", {k: v for k, v in env.items() if k != "DB_BOOTSTRAP_DB_ARN"}
               ).returncode != 0  # today's failure: 1045, the user does not exist

    result = run("app.bootstrap", env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"event": "bootstrap", "user": fresh["user"],
                                         "database": fresh["database"], "created": True}
    for secret in (master["password"], env["RDS_PASSWORD"]):
        assert secret not in result.stdout + result.stderr

    migrated = run("app.migrate", env)
    assert migrated.returncode == 0, migrated.stderr
    grants = mysql_server.sql([f"SHOW GRANTS FOR '{fresh['user']}'@'%'"])
    assert any(f"ON `{fresh['database']}`.*" in g[0] and "SELECT, INSERT, UPDATE, DELETE, CREATE" in g[0]
               for g in grants), grants
    assert not any("ON *.*" in g[0] and "USAGE" not in g[0] for g in grants)  # nothing server-wide


def test_later_deploys_never_read_the_master_secret(mysql_server, master, fresh, moto_endpoint, sm):
    env = environment(mysql_server, fresh, moto_endpoint, DB_BOOTSTRAP_DB_ARN=master["arn"])
    assert run("app.bootstrap", env).returncode == 0
    # The grant to read it expires; without the secret the next deploy must still pass.
    sm.delete_secret(SecretId=master["secret"], ForceDeleteWithoutRecovery=True)
    result = run("app.bootstrap", env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["created"] is False


def test_secretsmanager_mode_creates_the_user_with_the_apps_secret(mysql_server, master, fresh,
                                                                   moto_endpoint, sm):
    password = f"Secret-{uuid.uuid4().hex}"
    app_secret = sm.create_secret(Name=f"app/{fresh['user']}", SecretString=json.dumps({
        "engine": "mysql", "host": "127.0.0.1", "port": mysql_server.port,
        "dbname": fresh["database"], "username": fresh["user"], "password": password}))["ARN"]
    env = {"DB_AUTH": "secretsmanager", "DB_SECRET_ID": app_secret, "DB_SSL_MODE": "disabled",
           "DB_BOOTSTRAP_DB_ARN": master["arn"], "AWS_ENDPOINT_URL": moto_endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    result = run("app.bootstrap", env)
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr
    conn = mysql.connector.connect(host="127.0.0.1", port=mysql_server.port, user=fresh["user"],
                                   password=password, database=fresh["database"], ssl_disabled=True)
    conn.close()


def test_without_a_bootstrap_secret_a_missing_user_is_a_clear_error(mysql_server, fresh, moto_endpoint):
    result = run("app.bootstrap", environment(mysql_server, fresh, moto_endpoint))
    assert result.returncode == 1
    assert result.stderr.startswith(f"bootstrap: the database refused user '{fresh['user']}' (MySQL error 1045)")
    assert "--bootstrap-user" in result.stderr and "Traceback" not in result.stderr


def test_an_existing_user_with_another_password_is_not_overwritten(mysql_server, master, fresh,
                                                                   moto_endpoint):
    mysql_server.sql([f"CREATE USER '{fresh['user']}'@'%' IDENTIFIED BY 'Someone-Elses-1'"])
    env = environment(mysql_server, fresh, moto_endpoint, DB_BOOTSTRAP_DB_ARN=master["arn"])
    result = run("app.bootstrap", env)
    assert result.returncode == 1
    assert "still cannot connect (MySQL error 1045)" in result.stderr and "ALTER USER" in result.stderr
    conn = mysql.connector.connect(host="127.0.0.1", port=mysql_server.port, user=fresh["user"],
                                   password="Someone-Elses-1", ssl_disabled=True)
    conn.close()  # its password is untouched


def test_a_wrong_master_secret_is_named_without_its_password(mysql_server, master, fresh, moto_endpoint, sm):
    sm.put_secret_value(SecretId=master["secret"], SecretString=json.dumps(
        {"username": master["user"], "password": "Not-The-Master-1"}))
    result = run("app.bootstrap", environment(mysql_server, fresh, moto_endpoint, DB_BOOTSTRAP_DB_ARN=master["arn"]))
    assert result.returncode == 1
    assert f"the master secret {master['secret']} was refused by the database (MySQL error 1045)" in result.stderr
    assert "Not-The-Master-1" not in result.stderr + result.stdout


def test_an_unreadable_master_secret_says_to_renew_the_grant(mysql_server, master, fresh, moto_endpoint, sm):
    """The grant scripts/provision gives expires: reading the secret after that is refused."""
    sm.delete_secret(SecretId=master["secret"], ForceDeleteWithoutRecovery=True)  # refused alike
    result = run("app.bootstrap", environment(mysql_server, fresh, moto_endpoint, DB_BOOTSTRAP_DB_ARN=master["arn"]))
    assert result.returncode == 1, result.stderr
    assert f"could not read the master secret of {master['arn']} (ResourceNotFoundException)" in result.stderr
    assert "run it again just before deploying" in result.stderr and "Traceback" not in result.stderr


def test_unreachable_database_says_where_to_look(fresh, moto_endpoint, mysql_server):
    import localdb

    env = environment(mysql_server, fresh, moto_endpoint, RDS_PORT=str(localdb.free_port()),
                      DB_CONNECT_TIMEOUT="2")
    result = run("app.bootstrap", env)
    assert result.returncode == 1 and "security group" in result.stderr
    assert "MySQL error 2003" in result.stderr and "check RDS_HOSTNAME/RDS_PORT" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tls_failure_names_the_tls_settings_not_the_network(make_database):
    """app.migrate's explanation: the test server offers no TLS, which DB_SSL_MODE=required needs."""
    result = run("app.bootstrap", {**make_database(migrated=False), "DB_SSL_MODE": "required"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("bootstrap: TLS to the database at 127.0.0.1:"), result.stderr
    assert "(MySQL error 2026: " in result.stderr and "check DB_SSL_MODE/DB_SSL_CA" in result.stderr
    assert "security group" not in result.stderr


def test_iam_users_are_created_for_the_rds_plugin(mysql_server, fresh):
    """MariaDB lacks AWSAuthenticationPlugin: it must refuse only the plugin, not the syntax."""
    create_db, create_user, grant = user_sql(fresh["database"], fresh["user"], iam=True, password=None)
    assert create_user == (f"CREATE USER IF NOT EXISTS %s@'%' IDENTIFIED WITH AWSAuthenticationPlugin "
                           "AS 'RDS' REQUIRE SSL", (fresh["user"],))
    statement, params = create_user
    with pytest.raises(mysql.connector.Error) as refused:
        mysql_server.sql([statement.replace("%s", f"'{params[0]}'", 1)])
    assert refused.value.errno == 1524  # ER_PLUGIN_IS_NOT_LOADED, not 1064 (syntax)


def test_migrate_logs_warnings_as_json_and_fails_in_one_line(mysql_server, fresh, moto_endpoint, sm):
    """A warning on the way (here: RDS_USERNAME loses to the secret's username) is a JSON log
    line on stdout, as the app logs it; stderr holds only the line that says why it failed."""
    import localdb

    secret = sm.create_secret(Name=f"app/{fresh['user']}", SecretString=json.dumps({
        "username": fresh["user"], "password": "Secret-Pw-1"}))["ARN"]
    env = {"DB_AUTH": "secretsmanager", "DB_SECRET_ID": secret, "RDS_USERNAME": "someone_else",
           "RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": str(localdb.free_port()),
           "RDS_DB_NAME": fresh["database"], "DB_SSL_MODE": "disabled",
           "AWS_ENDPOINT_URL": moto_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": REGION}
    result = run("app.migrate", env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("migrate: cannot reach the database at 127.0.0.1:") and "MySQL error 2003" in line
    [warning] = [json.loads(entry) for entry in result.stdout.splitlines()]
    assert warning["level"] == "WARNING" and warning["event"] == "config_override"
    assert "Secret-Pw-1" not in result.stdout + result.stderr


@pytest.mark.parametrize("errno", [1049, 1044])
def test_without_a_bootstrap_secret_a_missing_database_is_named_as_such(mysql_server, fresh,
                                                                       moto_endpoint, errno):
    """Credentials that work on a database that does not exist (1049), or to which the user has
    no access (1044), were reported as 'the database refused user ...': the line names the
    database now."""
    import localdb

    env = environment(mysql_server, fresh, moto_endpoint)
    if errno == 1049:  # a user that may see every database learns that this one is absent
        env.update(RDS_USERNAME=getattr(mysql_server, "user", localdb.ADMIN_USER),
                   RDS_PASSWORD=getattr(mysql_server, "password", localdb.ADMIN_PASSWORD))
        expected = f"bootstrap: the database '{fresh['database']}' does not exist (check RDS_DB_NAME) (MySQL error 1049)"
    else:
        mysql_server.sql([f"CREATE USER '{fresh['user']}'@'%' IDENTIFIED BY '{env['RDS_PASSWORD']}'"])
        expected = (f"bootstrap: user '{fresh['user']}' has no privileges on '{fresh['database']}' "
                    "(MySQL error 1044)")
    result = run("app.bootstrap", env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(expected + " and DB_BOOTSTRAP_DB_ARN is not set"), result.stderr
