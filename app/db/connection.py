"""Opening one physical MySQL connection with the configured TLS and fresh credentials."""

from __future__ import annotations

import logging
import os

import mysql.connector
from mysql.connector import errorcode

from app.config import AuthMode, Settings, SslMode
from app.credentials import CredentialProvider, CredentialsUnavailable
from app.db.errors import DatabaseMisconfigured, DatabaseUnavailable

log = logging.getLogger(__name__)


# Operator sessions (migrate, doctor) read whole tables: the applied migrations, the grants.
# A global sql_select_limit (a DB parameter group's, or its init_connect's: the app user has no
# SUPER, so it runs for every session) cut those reads: migrate then applied 0002 again and
# failed, every deploy after the first, and doctor reported every privilege missing
# (tests/test_server_settings.py). Not the pooled sessions: each of their reads carries its own
# LIMIT, and a session variable that RDS Proxy does not track pins the session to its database
# connection for good (https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy-pinning.html):
# the pool sets only time_zone, autocommit and the character set, which the proxy tracks.
WHOLE_READS = "SET sql_select_limit = 18446744073709551615"


def connect_arguments(settings: Settings, use_pure: bool = False, whole_reads: bool = False) -> dict:
    """mysql-connector arguments shared by every connection, credentials excluded;
    `whole_reads` for an operator's session (WHOLE_READS)."""
    args = dict(
        host=settings.host,
        port=settings.port,
        database=settings.database,
        connection_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        write_timeout=settings.read_timeout,
        autocommit=True,  # each statement commits on its own: no COMMIT/ROLLBACK round trips
        time_zone="+00:00",  # TIMESTAMP columns come back in UTC
        charset="utf8mb4",
        collation="utf8mb4_unicode_ci",
        # False: the C extension (mysql.connector.HAVE_CEXT says it loaded). Not for
        # verify-ca: there the C extension (9.7.0) goes on in cleartext when the server offers
        # no TLS and sends the login (an IAM token in full) before anything can refuse it; the
        # pure-Python protocol refuses such a server first (tests/test_tls_downgrade.py).
        use_pure=use_pure or settings.ssl_mode is SslMode.VERIFY_CA,
    )
    if whole_reads:
        args["init_command"] = WHOLE_READS
    if settings.auth is AuthMode.IAM:
        # The token travels as a cleartext password: only ever inside verified TLS (Settings
        # refuses IAM below verify-ca; with verify-ca or verify-identity the driver refuses a
        # server that offers no TLS before it sends the token).
        args["auth_plugin"] = "mysql_clear_password"
    if settings.ssl_mode is SslMode.DISABLED:
        args["ssl_disabled"] = True
    else:
        args["ssl_disabled"] = False
        if settings.ssl_ca:
            args["ssl_ca"] = settings.ssl_ca
        args["ssl_verify_cert"] = settings.ssl_mode in (SslMode.VERIFY_CA, SslMode.VERIFY_IDENTITY)
        args["ssl_verify_identity"] = settings.ssl_mode is SslMode.VERIFY_IDENTITY
    return args


class ConnectionOpener:
    """The pool's creator: asks the credential provider anew for every physical connection."""

    def __init__(self, settings: Settings, credentials: CredentialProvider, use_pure: bool = False,
                 whole_reads: bool = False):
        self.settings = settings
        self.credentials = credentials
        self._args = connect_arguments(settings, use_pure, whole_reads)

    def __call__(self):
        """A new connection; raises the driver's error, or DatabaseUnavailable (or its
        DatabaseMisconfigured) when the credential source fails."""
        try:
            return self._open()
        except CredentialsUnavailable as err:
            log.warning("database credentials unavailable: %s", err,
                        extra={"event": "db_credentials_unavailable", "code": err.code,
                               "reason": err.reason, "permanent": err.permanent})
            if err.permanent:
                raise DatabaseMisconfigured(str(err), reason=err.reason) from err
            raise DatabaseUnavailable(str(err)) from err

    def _open(self):
        denied: mysql.connector.Error | None = None
        for creds in self.credentials.candidates():
            try:
                conn = mysql.connector.connect(user=creds.user, password=creds.password, **self._args)
            except mysql.connector.Error as err:
                if err.errno != errorcode.ER_ACCESS_DENIED_ERROR:
                    raise
                denied = err  # try the provider's next candidate, if it has one
                continue
            if self.settings.ssl_mode is not SslMode.DISABLED:
                _require_tls(conn)
            self.credentials.accepted(creds)
            log.info("database connection opened",
                     extra={"event": "db_connect", "connection_id": conn.connection_id,
                            "pid": os.getpid()})
            return conn
        assert denied is not None
        raise denied


def _require_tls(conn) -> None:
    """Refuse a session the server let through in cleartext when TLS was asked for."""
    cur = conn.cursor()
    cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    row = cur.fetchone()
    cur.close()
    if not row or not row[1]:
        conn.close()
        raise mysql.connector.errors.InterfaceError(
            msg="the server did not negotiate TLS but DB_SSL_MODE requires it", errno=2026)
