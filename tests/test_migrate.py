"""Migrations: applied once, recorded, safe to run twice and from several instances at once."""

import os
import subprocess
import sys
import threading

import pytest

from app import migrate
from conftest import ROOT, connect


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
        assert migrate.apply(conn) == ["0001_create_users"]
        assert migrate.apply(conn) == []
    finally:
        conn.close()
    assert {"users", "schema_migrations"} <= tables(env)
    assert recorded(env) == [(1, "create_users")]


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
    assert sorted(results) == [[]] * 5 + [["0001_create_users"]]
    assert recorded(env) == [(1, "create_users")]


def test_concurrent_processes_via_the_cli(make_database):
    env = make_database(migrated=False)
    procs = [subprocess.Popen([sys.executable, "-m", "app.migrate"], cwd=ROOT,
                              env={**os.environ, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    applied = [o[0] for o in outputs if "0001_create_users" in o[0]]
    assert len(applied) == 1
    assert recorded(env) == [(1, "create_users")]


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
    (tmp_path / "0002_add_user_note.sql").write_text(
        "-- additive, so the version still serving keeps working\n"
        "ALTER TABLE users ADD COLUMN note VARCHAR(200) NULL;\n"
        "CREATE INDEX ix_users_name ON users (name);\n")
    conn = connect(env)
    try:
        assert migrate.apply(conn, migrate.discover(tmp_path)) == ["0001_create_users",
                                                                    "0002_add_user_note"]
    finally:
        conn.close()
    assert recorded(env) == [(1, "create_users"), (2, "add_user_note")]


def test_badly_named_file_is_refused(tmp_path):
    (tmp_path / "1_users.sql").write_text("SELECT 1;")
    with pytest.raises(migrate.MigrationError, match="NNNN_description.sql"):
        migrate.discover(tmp_path)


def test_cli_reports_configuration_errors(tmp_path):
    result = subprocess.run([sys.executable, "-m", "app.migrate"], cwd=ROOT, capture_output=True,
                            text=True, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 2 and "RDS_HOSTNAME: is required" in result.stderr


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
