"""The app's database user, created on the first deploy by the leader: `python -m app.bootstrap`.

A database in a private subnet cannot be reached from the operator's machine, so the first
deploy's leader-only container commands create the user before the migration needs it. The
master user's password is read from the RDS-managed master secret of the database named by
DB_BOOTSTRAP_DB_ARN, through a grant that scripts/provision makes expire (hours, not
forever). The app's own credentials are tried first: once they work, the master secret is
never read again, so later deploys do not need that grant.

The user is created as scripts/provision's printed SQL would create it: the password from
RDS_PASSWORD or the app's secret, or AWSAuthenticationPlugin for IAM; TLS required; the
privileges the app and its migrations need on its own database only.
"""

from __future__ import annotations

import json
import os
import re
import sys

import mysql.connector
from mysql.connector import errorcode

from app.config import AuthMode, ConfigError, Settings, SslMode, load_settings
from app.credentials import (CredentialProvider, aws_error, aws_refusal, complete_settings, managed_master_secret,
                             provider_for)
from app.db.connection import ConnectionOpener
from app.db.errors import DatabaseUnavailable
from app.migrate import EXIT_FAILED, cleartext_refusal_hint, exit_status, explain, failure_line, parse_args

# Enough to serve the API and run its migrations, on the app's database only.
APP_GRANTS = "SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX, REFERENCES"
_NAME = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")
# The app's credentials are refused, or its database does not exist yet: the master can fix that.
_FIXABLE = {errorcode.ER_ACCESS_DENIED_ERROR, errorcode.ER_DBACCESS_DENIED_ERROR, errorcode.ER_BAD_DB_ERROR}


class BootstrapError(Exception):
    """The user could not be made to work; the message says what to fix (never a secret)."""


def user_sql(database: str, user: str, *, iam: bool, password: str | None,
             require_ssl: bool = True) -> list[tuple[str, tuple]]:
    """CREATE DATABASE, CREATE USER and GRANT for the app user, as (statement, parameters).

    Idempotent (IF NOT EXISTS; GRANT adds only what is missing). The password is a parameter
    the driver quotes, and no message of ours repeats a statement or the server's text about
    it. scripts/provision prints the same statements for those who run them by hand.
    """
    if not _NAME.match(database or ""):
        raise ConfigError(f"RDS_DB_NAME: {database!r} cannot be created by the bootstrap; expected "
                          "letters, digits, _, $ or - (at most 64)")
    if iam:
        identified, params = "IDENTIFIED WITH AWSAuthenticationPlugin AS 'RDS'", (user,)
    else:
        identified, params = "IDENTIFIED BY %s", (user, password)
    tls = " REQUIRE SSL" if require_ssl else ""
    return [
        (f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci", ()),
        (f"CREATE USER IF NOT EXISTS %s@'%' {identified}{tls}", params),
        (f"GRANT {APP_GRANTS} ON `{database}`.* TO %s@'%'", (user,)),
    ]


def _app_can_connect(settings: Settings, credentials: CredentialProvider) -> mysql.connector.Error | None:
    """None when the app's own credentials open a session on its database, else the refusal.

    Any other failure is explained as the migration explains it (the network, TLS...): this is
    a deploy's first command, so its line is the one an operator reads.
    """
    try:
        ConnectionOpener(settings, credentials)().close()
    except mysql.connector.Error as err:
        if err.errno in _FIXABLE:
            return err
        raise BootstrapError(explain(err, settings, credentials.description)) from None
    return None


def _create_user(settings: Settings, credentials: CredentialProvider) -> None:
    # The master secret is read like an app secret (its username comes with its password);
    # the session has no default database, which may not exist yet.
    master = managed_master_secret(settings.bootstrap_db_arn)
    master_settings = settings.model_copy(update={"auth": AuthMode.PASSWORD, "database": None})
    password = None
    if settings.auth is not AuthMode.IAM:
        password = next(iter(credentials.candidates())).password
    try:
        conn = ConnectionOpener(master_settings, master)()
    except mysql.connector.Error as err:
        hint = cleartext_refusal_hint(settings) if err.errno == errorcode.ER_ACCESS_DENIED_ERROR else ""
        raise BootstrapError(f"the master secret {master.secret_id} was refused by the database "
                             f"(MySQL error {err.errno}); check that DB_BOOTSTRAP_DB_ARN names the "
                             f"database RDS_HOSTNAME points at{hint}") from None
    try:
        cursor = conn.cursor()
        for statement, params in user_sql(settings.database, settings.user,
                                          iam=settings.auth is AuthMode.IAM, password=password,
                                          require_ssl=settings.ssl_mode is not SslMode.DISABLED):
            cursor.execute(statement, params)
        cursor.close()
    except mysql.connector.Error as err:
        # err.msg may quote the statement, password included: only the number is shown.
        raise BootstrapError(f"the master user could not create {settings.user!r} or its grants "
                             f"(MySQL error {err.errno})") from None
    finally:
        conn.close()


def bootstrap(settings: Settings, credentials: CredentialProvider) -> dict:
    """Make the app's credentials work; returns what was done, for the deployment log."""
    refused = _app_can_connect(settings, credentials)
    result = {"event": "bootstrap", "user": settings.user, "database": settings.database}
    if refused is None:
        return {**result, "created": False, "reason": "the app's credentials already work"}
    if not settings.bootstrap_db_arn:
        what = {errorcode.ER_BAD_DB_ERROR: f"the database {settings.database!r} does not exist "
                                           "(check RDS_DB_NAME)",
                errorcode.ER_DBACCESS_DENIED_ERROR: f"user {settings.user!r} has no privileges "
                                                    f"on {settings.database!r}",
                }.get(refused.errno, f"the database refused user {settings.user!r}")
        hint = cleartext_refusal_hint(settings) if refused.errno == errorcode.ER_ACCESS_DENIED_ERROR else ""
        raise BootstrapError(
            f"{what} (MySQL error {refused.errno}) and "
            "DB_BOOTSTRAP_DB_ARN is not set: run scripts/provision with --bootstrap-user (the "
            "leader then creates the user with the RDS-managed master secret), or create the user "
            f"with the SQL scripts/provision prints{hint}")
    try:
        _create_user(settings, credentials)
    except Exception as err:  # noqa: BLE001 - AWS's failures become a message, others propagate
        code = aws_error(err)
        if code is None:
            raise
        raise BootstrapError(
            f"could not read the master secret of {settings.bootstrap_db_arn} ({code}): the grant "
            "scripts/provision --bootstrap-user gives the instances expires; run it again just "
            "before deploying") from None
    refused = _app_can_connect(settings, credentials)
    if refused is not None:
        hint = ("the instance role needs rds-db:connect on the DbiResourceId (or cluster/proxy "
                "resource id) and this user" if settings.auth is AuthMode.IAM else
                "the user existed already with another password; make the database and "
                "RDS_PASSWORD or the app's secret agree (ALTER USER as the master user)")
        raise BootstrapError(f"user {settings.user!r} still cannot connect (MySQL error "
                             f"{refused.errno}): {hint}")
    return {**result, "created": True}


def main(environ=os.environ, argv: list[str] | None = None) -> int:
    parse_args("python -m app.bootstrap", "Make the app's database user work: when the app's "
               "credentials are refused and DB_BOOTSTRAP_DB_ARN is set, create it (and its "
               "database and grants) with the RDS-managed master secret.", argv,
               failed="the user could not be made to work, or the database failed")
    from app.logs import configure_logging

    configure_logging("WARNING")  # as app.migrate: warnings as JSON on stdout, stderr the one line
    try:
        settings = load_settings(environ)
        credentials = provider_for(settings)
        settings = complete_settings(settings, credentials)
        done = bootstrap(settings, credentials)
    except BootstrapError as err:
        print(f"bootstrap: {err}", file=sys.stderr)
        return EXIT_FAILED
    except (ConfigError, DatabaseUnavailable) as err:  # statuses as app.migrate's: 2, or 3 to run again
        print(f"bootstrap: {failure_line(err, None)}", file=sys.stderr)
        return exit_status(err)
    except Exception as err:  # noqa: BLE001 - an AWS refusal is a message, anything else a bug
        refusal = aws_refusal(err)
        if refusal is None:
            raise
        print(f"bootstrap: {refusal}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
