"""Versioned schema migrations: `python -m app.migrate` (or `flask --app application migrate`).

Files in app/migrations named NNNN_description.sql are applied in order, each recorded in
`schema_migrations` with a checksum. A MySQL named lock (GET_LOCK) serialises instances
that start at once, and applied versions are skipped, so running it twice, or on every
instance, is safe. Statements in a file end with `;` at the end of a line.

Each migration must stay compatible with the code version still serving while a deploy
rolls out (add columns and tables; drop only in a later release).

A failure is one line on stderr naming the cause and what to check (the settings' message: a
line per bad variable), with an exit status that says what to do (EXIT_* below; `flask
--app application migrate` and `seed` and `python -m app.bootstrap` use the same): it is read
in Beanstalk's deployment log, where a traceback hides what matters.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import mysql.connector

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
LOCK_TIMEOUT_SECONDS = 120
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_STATEMENT_END = re.compile(r";\s*$", re.MULTILINE)


# Exit statuses. A missing credential (a denied or deleted secret, no AWS credentials on the
# instance) is configuration: what the environment names cannot be used until someone fixes it.
EXIT_FAILED = 1  # the database or a migration failed
EXIT_CONFIG = 2  # the configuration cannot be used: fix what the line names, then run again
EXIT_TRY_AGAIN = 3  # a credential source failed for now (throttled, failing, out of reach)
TRY_AGAIN = "nothing was changed; run it again (on Beanstalk: eb deploy again)"


class MigrationError(Exception):
    """The migrations cannot be applied safely; the message says why."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        body = "\n".join(l for l in self.sql.splitlines() if not l.lstrip().startswith("--"))
        return [s.strip() for s in _STATEMENT_END.split(body) if s.strip()]


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: name it NNNN_description.sql (lowercase, digits, _)")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def apply(conn, migrations: list[Migration] | None = None,
          lock_timeout: int = LOCK_TIMEOUT_SECONDS) -> list[str]:
    """Apply pending migrations on an open connection; return the names applied."""
    migrations = discover() if migrations is None else migrations
    cur = conn.cursor()
    cur.execute("SELECT DATABASE()")
    (database,) = cur.fetchone()
    lock = f"schema_migrations:{database}"[:64]
    cur.execute("SELECT GET_LOCK(%s, %s)", (lock, lock_timeout))
    if cur.fetchone()[0] != 1:
        raise MigrationError(_lock_held(cur, lock, lock_timeout))
    try:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INT NOT NULL PRIMARY KEY,"
            " name VARCHAR(200) NOT NULL,"
            " checksum CHAR(64) NOT NULL,"
            " applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP"
            ") ENGINE=InnoDB")
        cur.execute("SELECT version, checksum FROM schema_migrations")
        applied = dict(cur.fetchall())
        done = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one")
                continue
            statements = m.statements()
            for number, statement in enumerate(statements, 1):
                try:
                    cur.execute(statement)  # DDL commits implicitly in MySQL
                except mysql.connector.Error as err:
                    raise MigrationError(_failed(m, number, len(statements), err)) from err
            cur.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (m.version, m.name, m.checksum))
            conn.commit()
            done.append(f"{m.version:04d}_{m.name}")
        return done
    finally:
        try:
            cur.execute("SELECT RELEASE_LOCK(%s)", (lock,))
            cur.fetchall()
            cur.close()
        except mysql.connector.Error:
            pass  # the session broke: the server releases its named locks with it


def _lock_held(cur, lock: str, lock_timeout: int) -> str:
    """Who holds the lock, and the way out when it is a session whose client is gone: an
    instance that vanished without closing it keeps its lock for hours, until the server
    drops the session (TCP keepalive, or wait_timeout: 8 hours by default), and every
    deploy fails meanwhile."""
    cur.execute("SELECT IS_USED_LOCK(%s)", (lock,))
    (holder,) = cur.fetchone()
    message = f"another instance held the migration lock for {lock_timeout}s"
    if holder is None:
        return f"{message}; it is free now: run the migration again"
    return (f"{message} (MySQL session {holder}): if no migration is running, that session "
            f"outlived its instance: as the master user KILL {holder}, then run the migration again")


def _failed(m: Migration, number: int, total: int, err: mysql.connector.Error) -> str:
    message = (f"{m.version:04d}_{m.name} failed at statement {number} of {total}: "
               f"MySQL error {err.errno}: {_flat(err.msg)}")
    if err.errno in (1071, 1709) and "767" in str(err.msg):
        # ER_TOO_LONG_KEY, ER_INDEX_COLUMN_TOO_LONG: 0001's unique key on a utf8mb4
        # VARCHAR(254) is 1016 bytes, within DYNAMIC's 3072 (MySQL 8's and MariaDB 10.11's
        # default) but not COMPACT's or REDUNDANT's 767. A global-only setting: no session of
        # ours can change it, and a migration already applied elsewhere must not change.
        message += (" (the server's innodb_default_row_format is COMPACT or REDUNDANT, which "
                    "cap an index key at 767 bytes: set it to DYNAMIC in the DB parameter group, "
                    "then run the migration again)")
    if number > 1:
        before = "statement 1" if number == 2 else f"statements 1-{number - 1}"
        message += (f" ({before} took effect, as MySQL commits DDL at once, and the migration "
                    "is not recorded: make them idempotent or undo them)")
    return message


def _flat(text) -> str:
    return " ".join(str(text).split())


def connect(settings, credentials):
    """A session for migrating: the app's credentials and TLS, without DB_READ_TIMEOUT, reading
    whole tables whatever the server's sql_select_limit (WHOLE_READS).

    That timeout is for requests. Here the wait for the lock is bounded by GET_LOCK's own
    timeout, and a DDL statement on a large table may run for minutes: a client that gave up
    would leave the server finishing a change the migration never records, and the next run
    would fail on it (a duplicate column, say).
    """
    from app.db.connection import ConnectionOpener

    return ConnectionOpener(settings.model_copy(update={"read_timeout": None}), credentials,
                            whole_reads=True)()


def latest_version() -> int:
    """The newest migration this code ships: the schema it needs."""
    return max((m.version for m in discover()), default=0)


def applied_version(lease) -> int:
    """The newest migration applied to the lease's database; 0 when none ever ran.

    /health/ready compares it with latest_version(): code running on a schema that is
    behind (a failed or skipped leader-only migration) must not pass a deploy check.
    """
    try:
        rows = lease.query("SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations")
    except mysql.connector.errors.ProgrammingError as err:
        if err.errno == 1146:  # ER_NO_SUCH_TABLE: nothing was ever migrated here
            return 0
        raise
    return int(rows[0]["version"])


def cleartext_refusal_hint(settings) -> str:
    """What to add to an access-denied line (1045) when the login went in cleartext: MariaDB
    refuses it this way under require_secure_transport=ON (MySQL 8 says 3159), and so does
    a user created REQUIRE SSL; empty when the login used TLS."""
    from app.config import SslMode

    if settings.ssl_mode is not SslMode.DISABLED:
        return ""
    return (", or set DB_SSL_MODE=verify-identity: with DB_SSL_MODE=disabled a server that "
            "requires TLS (require_secure_transport=ON in its DB parameter group, or a user "
            "created REQUIRE SSL) refuses the login the same way")


def explain(err: Exception, settings, source: str | None = None) -> str:
    """One line for the deployment log: what failed and what to check; never a secret.

    The driver's connection messages name the user and host, never the password (1045 says
    only "using password: YES"); statements quoted in errors are the migration files' own.
    """
    if isinstance(err, MigrationError) or not isinstance(err, mysql.connector.Error):
        return _flat(err)  # MigrationError, DatabaseUnavailable: already say what to fix
    where = f"{settings.host}:{settings.port}"
    errno, detail = err.errno, f"MySQL error {err.errno}: {_flat(err.msg)}"
    if errno in (2003, 2005):  # CR_CONN_HOST_ERROR, CR_UNKNOWN_HOST
        return (f"cannot reach the database at {where} ({detail}): check RDS_HOSTNAME/RDS_PORT "
                "and that the database's security group allows the instances' security group")
    if errno == 1045:  # ER_ACCESS_DENIED_ERROR
        line = (f"the database at {where} refused user {settings.user!r} ({detail}): check "
                f"RDS_USERNAME and the password source ({source or 'DB_AUTH'})")
        return line + cleartext_refusal_hint(settings)
    if errno == 3159:  # ER_SECURE_TRANSPORT_REQUIRED (MySQL 8): require_secure_transport=ON
        return (f"the database at {where} requires TLS ({detail}): set DB_SSL_MODE=verify-identity "
                "(with the RDS CA bundle at DB_SSL_CA), not disabled")
    if errno == 1049:  # ER_BAD_DB_ERROR
        return (f"the database {settings.database!r} does not exist at {where} ({detail}): "
                "check RDS_DB_NAME")
    if errno == 1044:  # ER_DBACCESS_DENIED_ERROR
        return (f"user {settings.user!r} has no privileges on {settings.database!r} ({detail}): "
                "check RDS_DB_NAME, or grant them with the SQL scripts/provision prints")
    if errno in (1142, 1143):  # ER_TABLEACCESS_DENIED_ERROR, ER_COLUMNACCESS_DENIED_ERROR
        return (f"user {settings.user!r} lacks a privilege on {settings.database!r} ({detail}): "
                "grant the app's privileges with the SQL scripts/provision prints (python -m "
                "app.bootstrap grants them to a user it creates)")
    if errno == 1836 or (errno == 1290 and "read" in str(err.msg).lower()):  # read-only server
        return (f"the server at {where} is read-only, a read replica or an Aurora reader "
                f"({detail}): point RDS_HOSTNAME at the writer (the Aurora cluster endpoint, or "
                "the primary instance)")
    if errno == 2026 or (errno == 2055 and "SSL" in str(err.msg)):  # CR_SSL_CONNECTION_ERROR
        return f"TLS to the database at {where} failed ({detail}): check DB_SSL_MODE/DB_SSL_CA"
    return f"the database at {where} failed ({detail})"


def exit_status(err: BaseException) -> int:
    """EXIT_CONFIG or EXIT_TRY_AGAIN for a configuration error or a credential source's failure
    (also when the opener raised it as DatabaseUnavailable), else EXIT_FAILED."""
    from app.config import ConfigError
    from app.credentials import CredentialsUnavailable

    if isinstance(err, ConfigError):
        return EXIT_TRY_AGAIN if err.transient else EXIT_CONFIG
    if isinstance(err.__cause__, CredentialsUnavailable):
        return EXIT_CONFIG if err.__cause__.permanent else EXIT_TRY_AGAIN
    return EXIT_FAILED


def failure_line(err: BaseException, settings, source: str | None = None) -> str:
    """explain()'s line, with what to do next when running it again may be enough."""
    from app.config import ConfigError

    line = str(err) if isinstance(err, ConfigError) else explain(err, settings, source)
    return f"{line.rstrip('.')}; {TRY_AGAIN}" if exit_status(err) == EXIT_TRY_AGAIN else line


def parse_args(prog: str, description: str, argv: list[str] | None, *,
               failed: str = "the database or a migration failed") -> None:
    """--help, and a usage error for anything else: no operator command takes arguments, and
    one that ignored them would run (migrate, create a user) when asked for its help."""
    import argparse

    argparse.ArgumentParser(prog=prog, description=description, epilog=(
        f"Exit status: 0 done; {EXIT_FAILED} {failed}; {EXIT_CONFIG} the configuration (or the "
        f"command line) cannot be used as it is; {EXIT_TRY_AGAIN} Secrets Manager failed for now: "
        "run it again.")).parse_args(argv)


def main(environ=os.environ, argv: list[str] | None = None) -> int:
    parse_args("python -m app.migrate", "Apply the pending schema migrations in app/migrations to "
               "the database the RDS_* and DB_* environment properties name; safe to run twice "
               "or on several instances at once.", argv)
    from app.config import ConfigError, load_settings
    from app.credentials import aws_refusal, complete_settings, provider_for
    from app.db.errors import DatabaseUnavailable
    from app.logs import configure_logging

    # Warnings (a credential source's, say) go out as JSON log lines on stdout, like the
    # app's; stderr keeps only the one line that says why the migration failed.
    configure_logging("WARNING")
    settings = credentials = None
    try:
        settings = load_settings(environ)
        credentials = provider_for(settings)
        settings = complete_settings(settings, credentials)
        conn = connect(settings, credentials)
        try:
            done = apply(conn)
        finally:
            close_quietly(conn)
    except ConfigError as err:
        print(f"migrate: {failure_line(err, settings)}", file=sys.stderr)
        return exit_status(err)
    except (MigrationError, DatabaseUnavailable, mysql.connector.Error) as err:
        print(f"migrate: {failure_line(err, settings, getattr(credentials, 'description', None))}",
              file=sys.stderr)
        return exit_status(err)
    except Exception as err:  # noqa: BLE001 - an AWS refusal is a message, anything else a bug
        refusal = aws_refusal(err)
        if refusal is None:
            raise
        print(f"migrate: {refusal}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps({"event": "migrate", "applied": done, "database": settings.database}))
    return 0


def close_quietly(conn) -> None:
    try:
        conn.close()
    except mysql.connector.Error:
        pass  # already broken: the error that broke it is the one to report


if __name__ == "__main__":
    sys.exit(main())
