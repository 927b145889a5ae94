"""The database doctor: `python -m app.doctor [--json] [--from-beanstalk]` (scripts/doctor locally).

It walks the path a connection takes, in order, and stops at the first broken step: the
settings, DNS of the database host, TCP reach, the TLS handshake and CA verification, the
login in the configured DB_AUTH mode, the privileges on the database, the schema version,
and the fleet's connection budget. One line per check: PASS, WARN, FAIL (with the likely
cause and the fix) or SKIP (could not run after a failure). A check that stops on an error of
its own, or Ctrl-C, is a FAIL line too, so --json always prints one JSON document.

Exit status: 0 no FAIL; 1 a FAIL; 2 bad arguments; 130 interrupted (Ctrl-C; the checks not
run are SKIP); 141 stdout closed before the report was written (`| head -1`).

The checks use the app's own code (load_settings, the credential provider, ConnectionOpener,
the migrations' versions), so what passes here is what the app does. It lives in the app
package because scripts/ is not deployed: on an instance it runs with the app's virtualenv,
and --from-beanstalk reads the environment properties with get-config, as the hooks do.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
GET_CONFIG = "/opt/elasticbeanstalk/bin/get-config"
_CLIENT_SSL = 0x0800  # capability flag: the server offers TLS

_SECURITY_GROUPS = (
    "the database's security group must admit this instance's security group on tcp/{port} "
    "(.ebextensions/03-database-ingress.config or scripts/provision add that rule), and the "
    "instance must run in the database's VPC, in subnets whose route tables and network ACLs "
    "let it reach the database's subnets; from outside the VPC a database that is not publicly "
    "accessible never answers: run the doctor on an instance (eb ssh)")


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None
    data: dict = field(default_factory=dict)

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<10}  {self.detail}"
        return f"{text} Fix: {self.fix}" if self.fix else text

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix,
                **self.data}


class _Session:
    """A connection with the `query` that app.migrate.applied_version expects of a lease."""

    def __init__(self, conn):
        self.conn = conn

    def query(self, sql: str, params=()) -> list[dict]:
        cursor = self.conn.cursor(buffered=True)
        try:
            cursor.execute(sql, params)
            rows = cursor.fetchall() if cursor.with_rows else []
            return [dict(zip(cursor.column_names, row)) for row in rows]
        finally:
            cursor.close()


def _flat(text: object) -> str:
    return " ".join(str(text).split())


def beanstalk_environment() -> dict[str, str]:
    """The environment properties, read as the platform hooks read them (get-config, JSON)."""
    from app.config import ConfigError

    command = os.environ.get("EB_GET_CONFIG", GET_CONFIG)
    try:
        result = subprocess.run([command, "environment"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise ConfigError(f"--from-beanstalk: no {command} here; it exists on Elastic Beanstalk "
                          "instances (eb ssh), where this is run with sudo") from None
    except OSError as err:  # there, but this user may not run it
        raise ConfigError(f"--from-beanstalk: cannot run {command} ({err.strerror or err}); run this "
                          "with sudo on the instance") from None
    if result.returncode != 0:
        raise ConfigError(f"--from-beanstalk: `{command} environment` failed (exit "
                          f"{result.returncode}): {_flat(result.stderr)[:300]}; run it with sudo")
    try:
        data = json.loads(result.stdout)
    except ValueError:
        raise ConfigError(f"--from-beanstalk: `{command} environment` did not print JSON") from None
    return {**os.environ, **{str(k): str(v) for k, v in data.items()}}


class Doctor:
    """Runs the checks in order; a check that needs what an earlier one failed to get is skipped."""

    def __init__(self, environ: Mapping[str, str] | Callable[[], Mapping[str, str]]):
        self._environ = environ
        self.environ: Mapping[str, str] = {}
        self.settings = None
        self.credentials = None
        self.budget = None
        self.conn = None
        self.refused: BaseException | None = None  # why the login failed
        self.logged_in_tried = False
        self.interrupted = False

    def _crashed(self, name: str, err: Exception) -> Check:
        """A check that raised: a FAIL naming the error, never a traceback in place of the report."""
        errno = getattr(err, "errno", None)
        if isinstance(err, _mysql_error()) and errno:
            text, fix = f"MySQL error {errno}: {_flat(err.msg)}", _refusal_fix(errno)
        else:
            text, fix = f"{type(err).__name__}: {_flat(err) or 'no message'}", (
                "a bug of the doctor's: report this line with the checks above it")
        password = self.environ.get("RDS_PASSWORD") if self.environ else None
        if password:
            text = text.replace(password, "<RDS_PASSWORD>")
        return Check(name, FAIL, f"the check stopped on an error: {text}", fix=fix)

    def run(self) -> list[Check]:
        steps = [("settings", self.check_settings), ("dns", self.check_dns), ("tcp", self.check_tcp),
                 ("tls", self.check_tls), ("auth", self.check_auth),
                 ("privileges", self.check_privileges), ("schema", self.check_schema),
                 ("budget", self.check_budget)]
        checks: list[Check] = []
        failed: str | None = None
        try:
            for name, step in steps:
                if self.interrupted:
                    checks.append(Check(name, SKIP, "not run: interrupted"))
                    continue
                if failed and (name in ("dns", "tcp", "tls", "auth") or self.settings is None):
                    checks.append(Check(name, SKIP, f"not run: {failed} failed"))
                    continue
                try:
                    check = step(failed)
                except KeyboardInterrupt:
                    self.interrupted = True
                    check = Check(name, FAIL, "interrupted (Ctrl-C) while it ran")
                except Exception as err:  # noqa: BLE001 - one check's bug must not cost the report
                    check = self._crashed(name, err)
                checks.append(check)
                if check.status == FAIL and failed is None:
                    failed = name
        finally:
            if self.conn is not None:
                try:
                    self.conn.close()
                except Exception:  # noqa: BLE001 - a broken session needs no goodbye
                    pass
        return checks

    # -- the checks, in order ------------------------------------------------------------
    def check_settings(self, _failed) -> Check:
        from app.config import ConfigError, describe, load_settings
        from app.credentials import aws_error, complete_settings, provider_for
        from app.db.budget import budget_for

        try:
            self.environ = self._environ() if callable(self._environ) else self._environ
            settings = load_settings(self.environ)
            credentials = provider_for(settings)
            settings = complete_settings(settings, credentials)
            self.budget = budget_for(settings, self.environ)
        except ConfigError as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            if len(lines) > 2 and lines[0].startswith("Invalid"):  # load_settings' problem list
                return Check("settings", FAIL, " ".join(lines[:-1]), fix=lines[-1])
            return Check("settings", FAIL, " ".join(lines))
        except Exception as err:  # noqa: BLE001 - an AWS refusal is a finding, anything else a bug
            code = aws_error(err)
            if code is None:
                raise
            return Check("settings", FAIL, f"an AWS call failed ({code})",
                         fix="check the instance role's policy (scripts/provision writes it) and AWS_REGION")
        self.settings, self.credentials = settings, credentials
        s = settings
        return Check("settings", PASS,
                     f"DB_AUTH={s.auth.value}: {s.user}@{s.host}:{s.port}, database {s.database}, "
                     f"DB_SSL_MODE={s.ssl_mode.value}, credentials: {credentials.description}",
                     data={"settings": describe(s)})

    def check_dns(self, _failed) -> Check:
        host, port = self.settings.host, self.settings.port
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            return Check("dns", FAIL, f"cannot resolve {host}: {err.strerror or err}",
                         fix="check RDS_HOSTNAME: the endpoint on the database's Connectivity & "
                             "security tab (a deleted or renamed database's endpoint stops "
                             "resolving); a name from a Route 53 private hosted zone resolves only "
                             "inside its VPCs, with DNS resolution enabled")
        addresses = sorted({info[4][0] for info in infos})
        return Check("dns", PASS, f"{host} -> {', '.join(addresses)}", data={"addresses": addresses})

    def check_tcp(self, _failed) -> Check:
        """Connect and read the server's greeting: it proves a MySQL server answers, and a
        server that refuses everyone (1040, 1129) says so there."""
        host, port, timeout = self.settings.host, self.settings.port, self.settings.connect_timeout
        start = time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            return Check("tcp", FAIL, f"no answer from {host}:{port} within {timeout} s "
                                      "(DB_CONNECT_TIMEOUT): something drops the packets",
                         fix=_SECURITY_GROUPS.format(port=port))
        except ConnectionRefusedError:
            return Check("tcp", FAIL, f"{host}:{port} refused the connection: nothing listens there",
                         fix="check RDS_PORT (the endpoint's port), and that the database is "
                             "available, not stopped, rebooting or being modified")
        except OSError as err:
            return Check("tcp", FAIL, f"cannot reach {host}:{port}: {err.strerror or err}",
                         fix=_SECURITY_GROUPS.format(port=port))
        try:
            packet = _read_packet(sock, timeout)
        except (OSError, ValueError) as err:
            return Check("tcp", FAIL, f"{host}:{port} accepted the connection but sent no MySQL "
                                      f"greeting within {timeout} s ({_flat(err) or 'closed'})",
                         fix="check that RDS_HOSTNAME and RDS_PORT name the database, not another service")
        finally:
            sock.close()
        elapsed = (time.monotonic() - start) * 1000
        if packet[:1] == b"\xff":  # an error packet instead of the greeting
            errno = struct.unpack("<H", packet[1:3])[0]
            message = packet[3:].decode("utf-8", "replace").lstrip("#")
            self.refused = _ServerRefusal(errno, message)
            return Check("tcp", FAIL, f"{host}:{port} refused every login: MySQL error {errno}: "
                                      f"{_flat(message)}", fix=_refusal_fix(errno))
        if packet[:1] != b"\x0a":
            return Check("tcp", FAIL, f"{host}:{port} answered, but not as a MySQL server",
                         fix="check that RDS_HOSTNAME and RDS_PORT name the database")
        version = packet[1:packet.index(b"\0", 1)].decode("utf-8", "replace").removeprefix("5.5.5-")
        rest = packet.index(b"\0", 1) + 1 + 4 + 8 + 1  # thread id, auth data part 1, filler
        offers_tls = bool(struct.unpack("<H", packet[rest:rest + 2])[0] & _CLIENT_SSL)
        return Check("tcp", PASS, f"{host}:{port} answered in {elapsed:.0f} ms: {version}"
                                  + ("" if offers_tls else " (it does not offer TLS)"),
                     data={"server_version": version, "offers_tls": offers_tls})

    def check_tls(self, _failed) -> Check:
        from app.config import SslMode

        s = self.settings
        self._login()
        err = self.refused
        if s.ssl_mode is SslMode.DISABLED:
            return Check("tls", WARN, "DB_SSL_MODE=disabled: the session is not encrypted",
                         fix="fine for a local database only; with RDS use DB_SSL_MODE=verify-identity "
                             "and the RDS CA bundle at DB_SSL_CA (01-environment.config does)")
        if err is None:
            row = {r["Variable_name"]: r["Value"] for r in _Session(self.conn).query(
                "SHOW SESSION STATUS WHERE Variable_name IN ('Ssl_version', 'Ssl_cipher')")}
            if s.ssl_mode is SslMode.REQUIRED:
                how = "the certificate is not verified (DB_SSL_MODE=required)"
            else:
                how = f"the certificate verified against {s.ssl_ca}" + (
                    " and the host name" if s.ssl_mode is SslMode.VERIFY_IDENTITY else "")
            return Check("tls", PASS, f"{row.get('Ssl_version')} {row.get('Ssl_cipher')}; {how}",
                         data={"ssl_version": row.get("Ssl_version"), "ssl_cipher": row.get("Ssl_cipher")})
        if _is_tls_error(err):
            return Check("tls", FAIL, f"the TLS handshake failed: MySQL error {err.errno}: {_flat(err.msg)}",
                         fix=_tls_fix(err, s))
        if isinstance(err, _mysql_error()) and err.errno < 2000 or isinstance(err, _ServerRefusal):
            return Check("tls", PASS, "handshake completed: the server answered the login inside "
                                      "TLS (its refusal follows)")
        if not isinstance(err, _mysql_error()):
            return Check("tls", SKIP, "not reached: no credentials to log in with (see auth)")
        return Check("tls", FAIL, f"the connection broke during the TLS handshake or login: MySQL "
                                  f"error {err.errno}: {_flat(err.msg)}",
                     fix=f"check DB_SSL_MODE and DB_SSL_CA ({s.ssl_ca}) against the server")

    def check_auth(self, _failed) -> Check:
        s, err = self.settings, self.refused
        if err is None:
            (user,) = _Session(self.conn).query("SELECT CURRENT_USER() AS u")[0].values()
            return Check("auth", PASS, f"logged in as {user} ({self.credentials.description})")
        if isinstance(err, _ServerRefusal) or isinstance(err, _mysql_error()) and not _is_tls_error(err):
            errno, msg = err.errno, _flat(err.msg)
            if errno in (1044, 1049):
                return Check("auth", PASS, f"{s.user} authenticated; the database {s.database!r} "
                                           "was refused (see privileges)")
            detail = f"the database refused {s.user!r}: MySQL error {errno}: {msg}"
            if errno in (1045, 1698):
                return Check("auth", FAIL, detail, fix=_access_denied_fix(s))
            return Check("auth", FAIL, detail, fix=_refusal_fix(errno))
        if _is_tls_error(err):
            return Check("auth", SKIP, "not reached: TLS failed")
        return Check("auth", FAIL, _flat(err))  # the credential source failed; its message has the fix

    def check_privileges(self, failed) -> Check:
        from app.bootstrap import APP_GRANTS

        s, err = self.settings, self.refused
        grant = f"GRANT {APP_GRANTS} ON `{s.database}`.* TO '{s.user}'@'%'"
        if err is not None and getattr(err, "errno", None) == 1044:
            return Check("privileges", FAIL, f"{s.user} has no privileges on {s.database!r}: "
                                             f"MySQL error 1044: {_flat(err.msg)}",
                         fix=f"as the master user: {grant} (app.bootstrap runs it on the first deploy; "
                             "scripts/provision prints it)")
        if err is not None and getattr(err, "errno", None) == 1049:
            return Check("privileges", FAIL, f"the database {s.database!r} does not exist: MySQL error "
                                             f"1049: {_flat(err.msg)}",
                         fix="check RDS_DB_NAME; the leader's app.bootstrap creates it on the first "
                             "deploy (DB_BOOTSTRAP_DB_ARN), or run the SQL scripts/provision prints")
        if self.conn is None:
            return Check("privileges", SKIP, f"not run: {failed} failed")
        session = _Session(self.conn)
        row = session.query("SELECT CURRENT_USER() AS user, @@global.read_only AS ro, "
                            "@@global.innodb_read_only AS innodb_ro")[0]
        if int(row["ro"]) or int(row["innodb_ro"]):
            return Check("privileges", FAIL, f"the server at {s.host} is read-only: a read replica or "
                                             "an Aurora reader", fix="point RDS_HOSTNAME at the writer "
                                             "(the Aurora cluster endpoint, or the primary instance)")
        name, _, host = row["user"].rpartition("@")
        grantee = f"'{name}'@'{host}'"
        have = {r["p"] for r in session.query(
            "SELECT PRIVILEGE_TYPE AS p FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = %s "
            "UNION SELECT PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES "
            "WHERE GRANTEE = %s AND %s LIKE TABLE_SCHEMA", (grantee, grantee, s.database))}
        needed = [p.strip() for p in APP_GRANTS.split(",")]
        missing = [p for p in needed if p not in have]
        if not missing:
            return Check("privileges", PASS, f"{row['user']} may {', '.join(needed)} on "
                                             f"{s.database!r}; the server accepts writes")
        grant = f"GRANT {', '.join(missing)} ON `{s.database}`.* TO {grantee}"
        role = _current_role(session)
        if role:
            return Check("privileges", WARN, f"{row['user']} has no direct grant of "
                                             f"{', '.join(missing)} on {s.database!r}; its role(s) "
                                             f"{role} were not inspected",
                         fix=f"if the app or a migration is refused, as the master user: {grant}")
        return Check("privileges", FAIL, f"{row['user']} lacks {', '.join(missing)} on {s.database!r} "
                                         "(the app needs SELECT, INSERT, UPDATE, DELETE; its migrations "
                                         "the rest)", fix=f"as the master user: {grant}")

    def check_schema(self, failed) -> Check:
        from app.migrate import applied_version, latest_version

        if self.conn is None:
            return Check("schema", SKIP, f"not run: {failed or 'privileges'} failed")
        latest = latest_version()
        try:
            applied = applied_version(_Session(self.conn))
        except _mysql_error() as err:
            return Check("schema", FAIL, f"cannot read schema_migrations: MySQL error {err.errno}: "
                                         f"{_flat(err.msg)}",
                         fix="grant the app's user SELECT on its database (see privileges)")
        data = {"applied": applied, "expected": latest}
        fix = ("run the migrations: python -m app.migrate (on Beanstalk the leader runs it at every "
               "deploy; its output is in cfn-init-cmd.log, from eb logs)")
        if applied == 0:
            return Check("schema", FAIL, f"no migration was ever applied to {self.settings.database!r}; "
                                         f"this code needs {latest:04d}", fix=fix, data=data)
        if applied < latest:
            return Check("schema", FAIL, f"the schema is at migration {applied:04d}, this code needs "
                                         f"{latest:04d}", fix=fix, data=data)
        if applied > latest:
            return Check("schema", PASS, f"at migration {applied:04d}, newer than this code's "
                                         f"{latest:04d} (a newer release migrated it)", data=data)
        return Check("schema", PASS, f"at migration {applied:04d}, what this code needs", data=data)

    def check_budget(self, failed) -> Check:
        budget = self.budget
        if budget is None:
            return Check("budget", SKIP, f"not run: {failed} failed")
        data = budget.describe()
        fix = _budget_fix(budget, None)
        if getattr(self.refused, "errno", None) == 1040:
            return Check("budget", FAIL, f"the server has no free connection (1040); the fleet may open "
                                         f"{budget.formula()}", fix=fix, data=data)
        if self.conn is None:
            return Check("budget", SKIP, f"max_connections not read ({failed} failed); the fleet may "
                                         f"open {budget.formula()}", data=data)
        session = _Session(self.conn)
        row = session.query("SELECT @@global.max_connections AS mc, "
                            "@@session.max_user_connections AS muc")[0]
        status = session.query("SHOW GLOBAL STATUS LIKE 'Threads_connected'")
        now = int(status[0]["Value"]) if status else None
        limit, label = int(row["mc"]), "max_connections"
        if 0 < int(row["muc"]) < limit:
            limit, label = int(row["muc"]), "max_user_connections"
        data.update(max_connections=int(row["mc"]), max_user_connections=int(row["muc"]),
                    limit=limit, threads_connected=now, share=budget.share(limit))
        open_now = f"; {now} open now, this one included" if now is not None else ""
        if budget.proxy:
            return Check("budget", PASS, f"through RDS Proxy: {budget.formula()} client connections; "
                                         f"the proxy itself opens at most its MaxConnectionsPercent of "
                                         f"the database's {label} ({limit}){open_now}", data=data)
        verdict = budget.verdict(limit)
        status_of = {"ok": PASS, "warn": WARN, "over": FAIL}[verdict]
        if budget.fleet is None:
            detail = (f"{budget.formula()}; {label} is {limit}: {budget.instances_that_fit(limit)} "
                      f"such instances fit within 75%{open_now}")
        else:
            detail = f"{budget.formula()} of {label} {limit} ({budget.share(limit):.0%}){open_now}"
        return Check("budget", status_of, detail,
                     fix=None if verdict == "ok" else _budget_fix(budget, limit), data=data)

    # -- helpers -------------------------------------------------------------------------
    def _login(self) -> None:
        """Open one session exactly as the app's pool does (credentials, TLS arguments)."""
        from app.credentials import aws_error
        from app.db.connection import ConnectionOpener
        from app.db.errors import DatabaseUnavailable

        if self.logged_in_tried or self.refused is not None:
            return
        self.logged_in_tried = True
        try:
            # whole_reads: the grants are read in full whatever the server's sql_select_limit.
            self.conn = ConnectionOpener(self.settings, self.credentials, whole_reads=True)()
        except (_mysql_error(), DatabaseUnavailable) as err:
            self.refused = err
        except Exception as err:  # noqa: BLE001 - an AWS refusal is a finding, anything else a bug
            if aws_error(err) is None:
                raise
            self.refused = err


class _ServerRefusal(Exception):
    """An error packet the server sent instead of its greeting."""

    def __init__(self, errno: int, msg: str):
        super().__init__(msg)
        self.errno, self.msg = errno, msg


def _mysql_error():
    import mysql.connector

    return mysql.connector.Error


def _read_packet(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    header = _recv_exactly(sock, 4)
    length = int.from_bytes(header[:3], "little")
    return _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ValueError("the server closed the connection")
        data += chunk
    return data


def _is_tls_error(err: BaseException) -> bool:
    errno = getattr(err, "errno", None)
    text = str(getattr(err, "msg", "") or "")
    return isinstance(err, _mysql_error()) and (
        errno == 2026 or (errno in (2013, 2055) and any(k in text for k in ("SSL", "TLS", "certificate"))))


def _tls_fix(err, settings) -> str:
    text = str(err.msg).lower()
    if "verify failed" in text and any(k in text for k in ("mismatch", "hostname", "host name", "match")):
        return ("RDS_HOSTNAME must be the endpoint name the certificate names (not an IP address or a "
                "CNAME of your own); or DB_SSL_MODE=verify-ca, which checks the CA only")
    if "verify failed" in text or "unknown ca" in text or "issuer" in text:
        return (f"the server's certificate does not chain to a CA in DB_SSL_CA ({settings.ssl_ca}): on "
                "Beanstalk the prebuild hook installs the RDS CA bundle there (download it again if the "
                "database's certificate is newer than the bundle); an RDS Proxy endpoint needs "
                "DB_SSL_TRUST=rds-proxy, whose Amazon Root CAs sign the proxy's certificate")
    if "support" in text or "did not negotiate" in text:
        return ("the server does not offer TLS: turn it on at the server (RDS always offers it), "
                "or, for a local database only, DB_SSL_MODE=disabled")
    return f"check DB_SSL_MODE and DB_SSL_CA ({settings.ssl_ca}) against the server's certificate"


def _access_denied_fix(settings) -> str:
    from app.config import AuthMode, SslMode

    if settings.auth is AuthMode.IAM:
        fix = ("the instance role needs rds-db:connect on arn:aws:rds-db:<region>:<account>:dbuser:"
               f"<DbiResourceId>/{settings.user}: the DbiResourceId (db-...; cluster-... for Aurora, "
               "prx-... for RDS Proxy), never the instance's name (04-instance-role-policy.config, "
               f"scripts/provision); the user must be created IDENTIFIED WITH AWSAuthenticationPlugin "
               "AS 'RDS', IAM database authentication enabled on the database, and the token is "
               "signed for RDS_HOSTNAME, RDS_PORT and AWS_REGION, which must be the endpoint's own")
    elif settings.auth is AuthMode.SECRETS_MANAGER:
        fix = ("the secret's username/password is not what the database has: a rotation that did not "
               "finish (see the rotation function's log and the secret's AWSPENDING version), or a "
               "user created with another password; ALTER USER as the master user, or fix the secret")
    else:
        fix = ("RDS_USERNAME/RDS_PASSWORD are not what the database has: set them (eb setenv), or "
               "ALTER USER as the master user")
    if settings.ssl_mode is SslMode.DISABLED:
        fix += "; a user created REQUIRE SSL also needs DB_SSL_MODE other than disabled"
    return fix


def _refusal_fix(errno: int) -> str:
    if errno == 1040:
        return ("every connection the server allows is open: see the budget line (README "
                "\"Connection budget\")")
    if errno == 1129:
        return ("the server blocked this host after too many failed connection attempts: as the master "
                "user run FLUSH HOSTS, then find what keeps failing (max_connect_errors)")
    if errno == 3159:
        return "the server requires TLS: set DB_SSL_MODE=verify-identity"
    return "see the server's message"


def _budget_fix(budget, limit: int | None) -> str:
    fit = (f"at most {budget.instances_that_fit(limit)} instances of {budget.per_instance} "
           f"connections fit within 75% of {limit}: " if limit else "")
    return (f"{fit}lower the Auto Scaling MaxSize with FLEET_MAX_INSTANCES, DB_POOL_SIZE (keep it >= "
            "GUNICORN_THREADS) or WEB_CONCURRENCY; or raise max_connections (a larger DB instance "
            "class, or a DB parameter group); with many instances put RDS Proxy in front (README "
            "\"Connection budget\")")


def _current_role(session: _Session) -> str | None:
    try:
        role = session.query("SELECT CURRENT_ROLE() AS r")[0]["r"]
    except _mysql_error():  # MySQL 5.7 (Aurora MySQL 2) has no roles
        return None
    return None if role in (None, "", "NONE") else str(role)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON document")
    parser.add_argument("--from-beanstalk", action="store_true",
                        help="read the environment properties with /opt/elasticbeanstalk/bin/"
                             "get-config environment (on an instance, with sudo)")
    args = parser.parse_args(argv)
    try:
        return _report(args, environ)
    except KeyboardInterrupt:  # between the checks (each one turns Ctrl-C into its FAIL line)
        print("doctor: interrupted", file=sys.stderr)
        return 130


def _report(args, environ: Mapping[str, str] | None) -> int:
    source = beanstalk_environment if args.from_beanstalk else (os.environ if environ is None else environ)
    doctor = Doctor(source)
    checks = doctor.run()
    ok = not any(c.status == FAIL for c in checks)
    try:
        if args.json:
            print(json.dumps({"ok": ok, "checks": [c.as_dict() for c in checks]}, default=str))
        else:
            for check in checks:
                print(check.line())
        sys.stdout.flush()
    except BrokenPipeError:  # stdout closed (`| head -1`): the rest of the report has nowhere to go
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    if doctor.interrupted:
        return 130
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
