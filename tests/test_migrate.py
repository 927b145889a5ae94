"""Migrations: applied once, recorded, safe to run twice and from several instances at once."""

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from app import migrate
from conftest import ROOT, ExistingServer, connect


SHIPPED = [f"{m.version:04d}_{m.name}" for m in migrate.discover()]
RECORDED = [(m.version, m.name) for m in migrate.discover()]


def tables(env):
    conn = connect(env)
    try:
        cur = conn.cursor()
        cur.execute("SHOW TABLES")
        return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


def recorded(env):
    conn = connect(env)
    try:
        cur = conn.cursor()
        cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        return cur.fetchall()
    finally:
        conn.close()


def test_apply_twice_is_idempotent(make_database):
    env = make_database(migrated=False)
    conn = connect(env)
    try:
        assert migrate.apply(conn) == SHIPPED
        assert migrate.apply(conn) == []
    finally:
        conn.close()
    assert {"users", "schema_migrations"} <= tables(env)
    assert recorded(env) == RECORDED


def test_concurrent_runs_apply_each_migration_once(make_database):
    env = make_database(migrated=False)
    results, errors = [], []
    barrier = threading.Barrier(6)

    def run():
        conn = connect(env)
        try:
            barrier.wait()
            results.append(migrate.apply(conn))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [[]] * 5 + [SHIPPED]
    assert recorded(env) == RECORDED


def test_concurrent_processes_via_the_cli(make_database):
    env = make_database(migrated=False)
    procs = [subprocess.Popen([sys.executable, "-m", "app.migrate"], cwd=ROOT,
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    applied = [o[0] for o in outputs if "0001_create_users" in o[0]]
    assert len(applied) == 1
    assert recorded(env) == RECORDED


@pytest.mark.parametrize("command", [["-m", "app.migrate"],
                                     ["-m", "flask", "--app", "application", "migrate"]])
def test_waiting_for_the_lock_outlasts_db_read_timeout(make_database, command):
    """DB_READ_TIMEOUT is for requests: a migration waits for the lock (and for a long DDL
    statement) as long as the server works on it, not 1 s."""
    env = {**make_database(migrated=False), "DB_READ_TIMEOUT": "1"}
    holder = connect(env)
    try:
        cur = holder.cursor()
        lock = f"schema_migrations:{env['RDS_DB_NAME']}"
        cur.execute("SELECT GET_LOCK(%s, 0)", (lock,))
        assert cur.fetchone() == (1,)
        proc = subprocess.Popen([sys.executable, *command], cwd=ROOT, env={**os.environ, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        waiting = 0
        for _ in range(100):  # until it waits for the lock, then twice DB_READ_TIMEOUT more
            cur.execute("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                        "WHERE DB = %s AND INFO LIKE 'SELECT GET_LOCK(%%'", (env["RDS_DB_NAME"],))
            (waiting,) = cur.fetchone()
            if waiting or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert waiting == 1, proc.communicate(timeout=60)
        time.sleep(2)
        cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))
        cur.fetchall()
        out, err = proc.communicate(timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 0, err
    assert json.loads(out.splitlines()[-1])["applied"] == SHIPPED
    assert recorded(env) == RECORDED


def test_a_held_lock_names_the_session_to_kill(make_database):
    env = make_database(migrated=False)
    holder, waiter = connect(env), connect(env)
    try:
        cur = holder.cursor()
        cur.execute("SELECT GET_LOCK(%s, 0)", (f"schema_migrations:{env['RDS_DB_NAME']}",))
        assert cur.fetchone() == (1,)
        with pytest.raises(migrate.MigrationError) as held:
            migrate.apply(waiter, lock_timeout=1)
        assert str(held.value) == (
            f"another instance held the migration lock for 1s (MySQL session "
            f"{holder.connection_id}): if no migration is running, that session outlived its "
            f"instance: as the master user KILL {holder.connection_id}, then run the migration again")
    finally:
        holder.close()
        waiter.close()
    assert "users" not in tables(env)


def test_edited_migration_is_refused(make_database, tmp_path):
    env = make_database(migrated=True)
    edited = migrate.Migration(1, "create_users", "CREATE TABLE users (id INT);")
    conn = connect(env)
    try:
        with pytest.raises(migrate.MigrationError, match="changed after it was applied"):
            migrate.apply(conn, [edited])
    finally:
        conn.close()


def test_new_migration_files_apply_in_order(make_database, tmp_path):
    env = make_database(migrated=False)
    for path in migrate.MIGRATIONS_DIR.glob("*.sql"):
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "9999_add_user_note.sql").write_text(
        "-- additive, so the version still serving keeps working\n"
        "ALTER TABLE users ADD COLUMN note VARCHAR(200) NULL;\n"
        "CREATE INDEX ix_users_name ON users (name);\n")
    conn = connect(env)
    try:
        assert migrate.apply(conn, migrate.discover(tmp_path)) == SHIPPED + ["9999_add_user_note"]
    finally:
        conn.close()
    assert recorded(env) == RECORDED + [(9999, "add_user_note")]


def test_badly_named_file_is_refused(tmp_path):
    (tmp_path / "1_users.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="NNNN_description.sql"):
        migrate.discover(tmp_path)


def test_cli_reports_configuration_errors():
    result = run_module("app.migrate", {})
    assert result.returncode == 2, result.stderr  # 2: the settings; 1: the database or a migration
    assert "RDS_HOSTNAME: is required" in no_traceback(result)


def test_flask_commands_migrate_and_seed(make_database):
    env = make_database(migrated=False)
    flask = [sys.executable, "-m", "flask", "--app", "application"]
    full_env = {**os.environ, **env}
    for command in (["migrate"], ["seed"], ["seed"]):
        result = subprocess.run(flask + command, cwd=ROOT, env=full_env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    conn = connect(env)
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) FROM users")
        assert cur.fetchone()[0] == 5  # seeding twice adds nothing
    finally:
        conn.close()


def users(cur):
    cur.execute("SELECT id, email, name, created_at, updated_at FROM users ORDER BY id")
    return cur.fetchall()


def test_email_key_migration_keeps_rows_and_serves_the_previous_release(make_database):
    """0002 on a database that 0001 made and the previous release filled."""
    import mysql.connector

    env = make_database(migrated=False)
    conn = connect(env)
    try:
        first, *later = migrate.discover()
        assert migrate.apply(conn, [first]) == ["0001_create_users"]
        cur = conn.cursor()
        cur.executemany("INSERT INTO users (email, name) VALUES (%s, %s)",
                        [("Zoe@example.org", "Zoe"), ("ada@example.com", "Ada")])
        before = users(cur)
        assert migrate.apply(conn) == ["0002_email_key_case_only"]
        assert users(cur) == before  # same ids, emails as typed, timestamps untouched

        # The previous release's statements, unchanged, while it still serves (rolling deploy):
        # it writes email only; the server derives the key.
        cur.execute("INSERT INTO users (email, name) VALUES ('zoë@example.org', 'Zoë')")
        with pytest.raises(mysql.connector.IntegrityError) as taken:
            cur.execute("INSERT INTO users (email, name) VALUES ('ZOE@EXAMPLE.ORG', 'Z')")
        assert taken.value.errno == 1062
        cur.execute("UPDATE users SET email = 'ADA@example.com' WHERE email = 'ada@example.com'")
        cur.execute("SELECT email, email_key FROM users ORDER BY id")
        assert cur.fetchall() == [("Zoe@example.org", "zoe@example.org"),
                                  ("ADA@example.com", "ada@example.com"),
                                  ("zoë@example.org", "zoë@example.org")]
        cur.close()
    finally:
        conn.close()


def run_module(module, env, *args):
    """`python -m <module>` as .ebextensions/05 runs it: only the given environment properties."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={"PATH": os.environ["PATH"], **env})


def no_traceback(result):
    """A failed run that explains itself: no traceback, no warning, nothing on stdout."""
    assert result.returncode != 0 and result.stdout == "", result
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    return result.stderr


def one_line(result):
    lines = no_traceback(result).splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def migrate_env(make_database):
    return {**make_database(migrated=False), "DB_CONNECT_TIMEOUT": "3"}


@pytest.mark.parametrize("change, code, says", [
    ({"RDS_PORT": "free"}, 1, ["MySQL error 2003", "RDS_HOSTNAME/RDS_PORT",
                               "security group allows the instances' security group"]),
    ({"RDS_HOSTNAME": "db.invalid"}, 1, ["MySQL error 2005", "RDS_HOSTNAME/RDS_PORT"]),
    ({"RDS_PASSWORD": "Wrong-Password-1"}, 1, ["MySQL error 1045", "RDS_USERNAME",
                                               "password"]),
    ({"RDS_DB_NAME": "no_such_db", "admin": True}, 1, ["MySQL error 1049", "RDS_DB_NAME"]),
    ({"RDS_DB_NAME": "no_such_db"}, 1, ["MySQL error 1044", "RDS_DB_NAME"]),  # not the user's
    ({"DB_SSL_MODE": "required"}, 1, ["MySQL error 2026", "DB_SSL_MODE", "DB_SSL_CA"]),
])
def test_cli_failures_are_one_line_with_the_fix(mysql_server, migrate_env, change, code, says):
    import localdb

    if change.get("RDS_PORT") == "free":
        change = {"RDS_PORT": str(localdb.free_port())}
    if change.pop("admin", False):  # a user with privileges on every database learns it is absent
        change.update(RDS_USERNAME=getattr(mysql_server, "user", localdb.ADMIN_USER),
                      RDS_PASSWORD=getattr(mysql_server, "password", localdb.ADMIN_PASSWORD))
    elif "RDS_DB_NAME" in change and isinstance(mysql_server, ExistingServer):
        pytest.skip("TEST_DATABASE_URL's user may see every database")
    result = run_module("app.migrate", {**migrate_env, **change})
    line = one_line(result)
    assert result.returncode == code, line
    assert line.startswith("migrate: ")
    for phrase in says:
        assert phrase in line
    assert "Wrong-Password-1" not in line and migrate_env["RDS_PASSWORD"] not in line
    assert change.get("RDS_PASSWORD", "?") not in line


def test_cli_success_prints_one_json_line_and_no_warning(migrate_env):
    result = run_module("app.migrate", migrate_env)
    assert result.returncode == 0 and result.stderr == "", result.stderr  # no RuntimeWarning
    assert json.loads(result.stdout) == {"event": "migrate", "database": migrate_env["RDS_DB_NAME"],
                                         "applied": SHIPPED}


def test_a_failing_migration_is_named_in_one_line(migrate_env, tmp_path):
    conn = connect(migrate_env)
    try:
        with pytest.raises(migrate.MigrationError) as failed:
            migrate.apply(conn, [migrate.Migration(1, "broken", "CREATE TABLE a (id INT);\n"
                                                                "ALTER TABLE nothing ADD x INT;\n")])
        message = str(failed.value)
        assert message.startswith("0001_broken failed at statement 2 of 2: MySQL error 1146: ")
        assert "(statement 1 took effect" in message and "\n" not in message
        assert recorded(migrate_env) == []  # not recorded: fix it and run again
        assert migrate.apply(conn, [migrate.Migration(1, "fixed", "CREATE TABLE IF NOT EXISTS a (id INT);\n")]
                             ) == ["0001_fixed"]  # the session and its lock are fine
    finally:
        conn.close()


@pytest.mark.parametrize("module", ["app.migrate", "app.bootstrap"])
def test_modules_run_without_runpy_warning(module):
    """`python -m app.X` warns if importing the package `app` already imported app.X."""
    result = run_module(module, {})  # no settings: the configuration error, nothing more
    assert f"{module[4:]}: Invalid configuration" in no_traceback(result)
    assert "RDS_HOSTNAME: is required" in result.stderr


def test_flask_migrate_failures_are_one_line(migrate_env):
    import localdb

    env = {**os.environ, **migrate_env, "RDS_PORT": str(localdb.free_port())}
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "application", "migrate"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()  # the app's JSON log lines go to stdout
    assert line.startswith("Error: cannot reach the database at 127.0.0.1:")
    assert "MySQL error 2003" in line and "security group" in line


def test_credential_source_failures_print_their_own_message():
    """The opener raises DatabaseUnavailable/DatabaseMisconfigured for a secret it cannot read:
    their message already names the cause and the fix, so it is printed as it is, on one line."""
    from app.db.errors import DatabaseMisconfigured, DatabaseUnavailable

    err = DatabaseMisconfigured("DB_SECRET_ID: access denied\n(AccessDeniedException); fix the role",
                                reason="secret_access_denied")
    assert migrate.explain(err, None) == ("DB_SECRET_ID: access denied (AccessDeniedException); "
                                          "fix the role")
    assert migrate.explain(DatabaseUnavailable("Secrets Manager timed out"), None) == \
        "Secrets Manager timed out"


@pytest.mark.parametrize("case", ["unmigrated", "unreachable"])
def test_flask_seed_failures_are_one_line(make_database, case):
    """`flask seed` (run-local's step after the migration) went up as a traceback:
    ProgrammingError 1146 on a database nobody migrated, DatabaseUnavailable on one it cannot
    reach. Now one line, as `flask migrate` says it, with the fix."""
    import localdb

    env = {**os.environ, **make_database(migrated=False), "DB_CONNECT_TIMEOUT": "2"}
    if case == "unreachable":
        env["RDS_PORT"] = str(localdb.free_port())
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "application", "seed"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.splitlines()  # the app's JSON log lines go to stdout
    if case == "unmigrated":
        assert line == (f"Error: the database {env['RDS_DB_NAME']!r} has no users table (MySQL error 1146): "
                        "apply the migrations first: python -m app.migrate"), line
    else:
        assert line.startswith("Error: cannot reach the database at 127.0.0.1:"), line
        assert "check RDS_HOSTNAME/RDS_PORT" in line


NO_AWS_CREDENTIALS = {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
                      "AWS_EC2_METADATA_DISABLED": "true"}  # no instance profile here


@pytest.mark.parametrize("command, prefix", [
    (["-m", "app.migrate"], "migrate: "),
    (["-m", "flask", "--app", "application", "migrate"], "Error: "),
    (["-m", "flask", "--app", "application", "seed"], "Error: "),
    (["-m", "app.bootstrap"], "bootstrap: "),
])
@pytest.mark.parametrize("case, code, says", [
    ("invalid", 2, ["Invalid configuration (environment properties):", "RDS_PORT"]),
    ("no AWS credentials", 2, ["(NoCredentialsError)", "attach an instance profile"]),
    ("Secrets Manager out of reach", 3, ["(EndpointConnectionError)", "can reach Secrets Manager",
                                         "nothing was changed; run it again (on Beanstalk: eb deploy again)"]),
])
def test_operator_commands_share_their_exit_statuses(tmp_path, command, prefix, case, code, says):
    """The README's exit statuses hold for every operator command: 2 when the configuration
    cannot be used as it is (a missing credential too), 3 when its source failed for now.
    `flask` exited 4 (gunicorn's APP_LOAD_ERROR) on a bad setting and 1 after a 2 s pause on
    an unreachable Secrets Manager; `python -m app.migrate` exited 2 for both."""
    import localdb

    env = {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": "abc", "RDS_DB_NAME": "ebdb",
           "RDS_USERNAME": "app", "RDS_PASSWORD": "pw", "DB_SSL_MODE": "disabled"}
    if case == "no AWS credentials":  # DB_AUTH=iam: the first connection signs a token
        localdb.make_ca(tmp_path, "ca")
        env.update(NO_AWS_CREDENTIALS, DB_AUTH="iam", RDS_PORT=str(localdb.free_port()),
                   AWS_REGION="eu-west-1", DB_SSL_MODE="verify-ca", DB_SSL_CA=str(tmp_path / "ca.pem"))
    elif case == "Secrets Manager out of reach":
        env = {"DB_AUTH": "secretsmanager", "DB_SECRET_ID": "app/db", "AWS_REGION": "eu-west-1",
               "DB_SSL_MODE": "disabled", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_MAX_ATTEMPTS": "1",
               "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{localdb.free_port()}"}
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={"PATH": os.environ["PATH"], **env})
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Secrets Manager out of reach" not in result.stderr
    assert result.stderr.startswith(prefix), result.stderr
    for phrase in says:
        assert phrase in result.stderr, result.stderr


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A server of this module's own: a test makes it read-only."""
    import localdb

    server = localdb.LocalServer(basedir=tmp_path_factory.mktemp("own-db")).start()
    yield server
    server.remove()


OPERATOR_COMMANDS = [(["-m", "app.migrate"], "migrate: "),
                     (["-m", "flask", "--app", "application", "migrate"], "Error: "),
                     (["-m", "flask", "--app", "application", "seed"], "Error: ")]


def run_operator_command(command, env):
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, env={"PATH": os.environ["PATH"], **env})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    [line] = result.stderr.splitlines()  # warnings go to stdout as JSON
    return line


@pytest.mark.parametrize("command, prefix", OPERATOR_COMMANDS)
def test_a_read_only_server_is_named_with_the_fix(own_server, command, prefix):
    """A writer turned reader by a failover, or an Aurora reader endpoint: the line said only
    'the database ... failed (MySQL error 1290: ...)'; now what it is and where to point."""
    from conftest import fresh_database

    with fresh_database(own_server, migrated="seed" in command) as env:
        own_server.sql(["SET GLOBAL read_only = 1"])  # localdb's app user has no SUPER
        try:
            line = run_operator_command(command, {**env, "DB_CONNECT_TIMEOUT": "3"})
        finally:
            own_server.sql(["SET GLOBAL read_only = 0"])
    assert line.startswith(f"{prefix}the server at 127.0.0.1:{env['RDS_PORT']} is read-only, "
                           "a read replica or an Aurora reader (MySQL error 1290: "), line
    assert line.endswith("point RDS_HOSTNAME at the writer (the Aurora cluster endpoint, or the "
                         "primary instance)"), line


@pytest.mark.parametrize("command, prefix", OPERATOR_COMMANDS)
def test_a_missing_privilege_is_named_with_the_fix(make_database, mysql_server, command, prefix):
    """A user that may read but not create or write: the line said only 'the database ...
    failed (MySQL error 1142: ...)'; now whose privilege is missing, and how to grant it."""
    import uuid

    env = make_database(migrated="seed" in command)
    user = f"ro_{uuid.uuid4().hex[:8]}"
    mysql_server.sql([f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY 'Ro-password-1'",
                      f"GRANT SELECT ON `{env['RDS_DB_NAME']}`.* TO '{user}'@'127.0.0.1'"])
    try:
        line = run_operator_command(command, {**env, "RDS_USERNAME": user,
                                              "RDS_PASSWORD": "Ro-password-1"})
    finally:
        mysql_server.sql([f"DROP USER IF EXISTS '{user}'@'127.0.0.1'"])
    assert line.startswith(f"{prefix}user {user!r} lacks a privilege on {env['RDS_DB_NAME']!r} "
                           "(MySQL error 1142: "), line
    assert "grant the app's privileges with the SQL scripts/provision prints" in line
    assert "Ro-password-1" not in line


@pytest.mark.parametrize("module", ["app.migrate", "app.bootstrap"])
@pytest.mark.parametrize("args, code", [(["--help"], 0), (["--dry-run"], 2)])
def test_help_and_unknown_arguments_run_nothing(make_database, module, args, code):
    """`python -m app.migrate --help` ignored its arguments and migrated the database it was
    pointed at (the bootstrap likewise ran). Now --help says what it does and its exit
    statuses, and an argument it does not take is a usage error; neither touches the database."""
    env = make_database(migrated=False)
    result = run_module(module, env, *args)
    assert result.returncode == code, result.stderr
    output = result.stdout + result.stderr
    assert f"usage: python -m {module} [-h]" in output
    assert "event" not in output and "schema_migrations" not in tables(env)
    if code == 0:
        text = " ".join(result.stdout.split())  # argparse wraps it
        assert "Exit status: 0 done; 1 " in text and "3 Secrets Manager failed for now" in text
