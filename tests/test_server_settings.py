"""The app on a server whose global settings are not the defaults: what an RDS DB parameter
group, or the init_connect statement it may hold, sets for every session.

Each test starts one throwaway server with the settings as server arguments and runs its
cases on it, changing a global between cases where a group has variants (sessions copy the
globals when they open, and each case builds a new app). One test per server keeps the
server from being started once per pytest-xdist worker. Hostile strings go through the API
on both protocols: the C extension (the default) and the pure-Python one (DB_SSL_MODE=
verify-ca), which escape parameters each in their own way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone

import mysql.connector
import pytest

import localdb
from conftest import ROOT, make_test_pki

from app import create_app, migrate
from app.config import load_settings
from app.credentials import StaticPassword
from app.db.connection import ConnectionOpener

ROOT_LOGIN = {"via_socket": True, "user": "root", "password": ""}  # TLS or not, always let in
PROTOCOLS = {"c-extension": False, "pure-python": True}

# Names that break out of a string literal if a backslash or a quote is escaped for another
# sql_mode than the session's (NO_BACKSLASH_ESCAPES: a backslash is an ordinary character and
# only a doubled quote stays inside), or that mean something in LIKE, format strings, ANSI
# quoting or PIPES_AS_CONCAT. None ends in whitespace: names are stripped.
HOSTILE_NAMES = [
    "\\' OR 1=1 -- x", "x\\' OR '1'='1", "\\'; DROP TABLE users; -- x", "\\'), ('evil@example.com', 'x",
    "ends with a backslash \\", "\\", "\\\\'\\", "\\\"", "'", "''", "\"", "`tick`",
    "%", "100%", "a_b", "_%\\_%", "%s", "%%s %(name)s", "\\0 \\n \\Z \\x00 \\%",
    "¿' 뽜' ¥\\", "a || b", "Zoë 🙂 𝒜",
]
# Valid addresses (email-validator takes ' % _ ` | in a local part; never \ or ").
HOSTILE_LOCAL_PARTS = ["o'brien", "'or'1'='1", "100%_x", "a'--", "x'||'y", "_%", "`tick`",
                       "a+'%_'"]
# Refused before any SQL: 400 invalid_parameter, the same on every server.
HOSTILE_QUERIES = ["limit=1'", "limit=1%27%20OR%201=1", "after=0%5C", "after=0%5C%27", "after=%00",
                   "limit=%25", "limit=_", "after=1%20OR%201=1", "limit=1;DROP%20TABLE%20users",
                   "after=0x1", "limit=%E2%80%99"]


@contextlib.contextmanager
def server_with(tmp_path, *args: str):
    """A throwaway server started with `args`, as a parameter group would set them."""
    server = localdb.LocalServer(basedir=tmp_path / "db", extra_args=list(args)).start()
    try:
        yield server
    finally:
        server.remove()


def set_global(server, *assignments: str) -> None:
    server.sql([f"SET GLOBAL {a}" for a in assignments], **ROOT_LOGIN)


def new_database(server, **env) -> dict[str, str]:
    """A database as RDS creates the DBName one: in the server's default character set."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.sql([f"CREATE DATABASE `{name}`",
                f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{localdb.APP_USER}'@'127.0.0.1'"], **ROOT_LOGIN)
    return {**server.environ(name), "DB_POOL_TIMEOUT": "2", "DB_CONNECT_TIMEOUT": "5", **env}


def migrate_as_the_app(env: dict[str, str], pure: bool = False) -> list[str]:
    """app.migrate's session (the app's opener, no read timeout) on either protocol."""
    settings = load_settings(env).model_copy(update={"read_timeout": None})
    opener = ConnectionOpener(settings, StaticPassword(settings.user, settings.password.get_secret_value()),
                              use_pure=pure, whole_reads=True)
    conn = opener()
    try:
        return migrate.apply(conn)
    finally:
        conn.close()


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """An operator command as run on an instance, in the project's virtualenv."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def app_client(env: dict[str, str], pure: bool | None = None):
    """The app's test client; `pure` swaps the opener for one on that protocol (None: the one
    the settings pick, DB_SSL_MODE=verify-ca being pure Python)."""
    app = create_app(env)
    app.config["TESTING"] = True
    database = app.extensions["database"]
    if pure is not None:
        database.opener = ConnectionOpener(database.settings, database.opener.credentials, use_pure=pure)
    try:
        yield app.test_client(), database
    finally:
        database.dispose()


def protocol_of(database) -> str:
    lease = database.borrow()
    try:
        return type(lease.connection).__name__
    finally:
        lease.release()


def table(server, env) -> dict[int, tuple[str, str]]:
    """The users table as the server holds it, read on a session of its own."""
    rows = server.sql(["SELECT id, email, name FROM users ORDER BY id"], database=env["RDS_DB_NAME"],
                      **ROOT_LOGIN)
    return {row[0]: (row[1], row[2]) for row in rows}


def utc(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def assert_round_trips(client, server, env, tag: str, case: str) -> None:
    """Every hostile name and address is stored and answered byte for byte, through POST,
    PATCH, GET and the list, and nothing else in the table changes: no statement was cut
    short or extended by what it carried. Bad query strings and NULs never reach SQL."""
    before = table(server, env)
    expected = {}
    for i, name in enumerate(HOSTILE_NAMES):
        email = f"{HOSTILE_LOCAL_PARTS[i % len(HOSTILE_LOCAL_PARTS)]}@{i}.{tag}.example.com"
        created = client.post("/api/users", json={"email": email, "name": name})
        assert created.status_code == 201, (case, name, created.get_json())
        user = created.get_json()
        assert (user["email"], user["name"]) == (email, name), case
        new_email, new_name = f"{HOSTILE_LOCAL_PARTS[-1 - i % len(HOSTILE_LOCAL_PARTS)]}@p{i}.{tag}.example.com", f"{name}|{name}"
        patched = client.patch(f"/api/users/{user['id']}", json={"email": new_email, "name": new_name})
        assert patched.status_code == 200, (case, name, patched.get_json())
        got = client.get(f"/api/users/{user['id']}").get_json()
        assert (got["email"], got["name"]) == (new_email, new_name), (case, name, got)
        expected[user["id"]] = (new_email, new_name)
        # The same address in another case: the unique key still sees it.
        taken = client.post("/api/users", json={"email": new_email.upper(), "name": "dup"})
        assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "email_taken", (case, name)
    assert table(server, env) == {**before, **expected}, case
    page = client.get(f"/api/users?after={min(expected) - 1}&limit=100").get_json()["data"]
    assert {u["id"]: (u["email"], u["name"]) for u in page} == expected, case
    for query in HOSTILE_QUERIES:
        refused = client.get(f"/api/users?{query}")
        assert refused.status_code == 400, (case, query, refused.get_json())
        assert refused.get_json()["error"]["code"] == "invalid_parameter", (case, query)
    for body in ({"email": f"nul@{tag}.example.com", "name": "a\x00b"}, {"email": "n\x00l@example.com", "name": "n"}):
        refused = client.post("/api/users", json=body)
        assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "validation_error", case
    assert table(server, env) == {**before, **expected}, case


def assert_binds_hostile_reads(database, case: str) -> None:
    """Lease.query binds parameters itself on the C extension (the API's reads carry only
    numbers, so its strings are checked here): every hostile string comes back unchanged."""
    values = HOSTILE_NAMES + ["nul\x00byte", "\\\x00'", "\n\r\x1a"]
    lease = database.borrow()
    try:
        names = ", ".join(f"%s AS v{i}" for i in range(len(values)))
        (row,) = lease.query(f"SELECT {names}", values)
        assert list(row.values()) == values, case
        patched = f"{HOSTILE_NAMES[0]}|{HOSTILE_NAMES[0]}"  # as assert_round_trips stored it
        assert lease.query("SELECT COUNT(*) AS n FROM users WHERE name = %s", (patched,)) == [{"n": 1}], case
    finally:
        lease.release()


SQL_MODES = {  # the server starts with the first; the rest are set globally, one after another
    "NO_BACKSLASH_ESCAPES": "NO_BACKSLASH_ESCAPES",
    "ANSI (ANSI_QUOTES, PIPES_AS_CONCAT, ONLY_FULL_GROUP_BY) with NO_BACKSLASH_ESCAPES":
        "ANSI,NO_BACKSLASH_ESCAPES",
    "TRADITIONAL with NO_BACKSLASH_ESCAPES": "TRADITIONAL,NO_BACKSLASH_ESCAPES",
    "empty: not strict": "",
}


def test_hostile_strings_round_trip_and_inject_nothing_under_every_sql_mode(tmp_path):
    """sql_mode as a parameter group sets it, and NO_BACKSLASH_ESCAPES added by init_connect
    after the login (the session's mode changes before the driver has run a statement): on
    both protocols every hostile value round trips and the migrations apply."""
    with server_with(tmp_path, "--sql-mode=NO_BACKSLASH_ESCAPES") as server:
        cases = [(label, mode, "") for label, mode in SQL_MODES.items()]
        cases.append(("NO_BACKSLASH_ESCAPES by init_connect", "TRADITIONAL",
                      "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')"))
        for label, mode, init_connect in cases:
            set_global(server, f"sql_mode = '{mode}'", f"init_connect = \"{init_connect}\"")
            no_backslash_escapes = "NO_BACKSLASH_ESCAPES" in label
            for protocol, pure in PROTOCOLS.items():
                case = f"{label}, {protocol}"
                env = new_database(server)
                assert migrate_as_the_app(env, pure) == ["0001_create_users", "0002_email_key_case_only"], case
                with app_client(env, pure) as (client, database):
                    assert protocol_of(database) == ("MySQLConnection" if pure else "CMySQLConnection")
                    lease = database.borrow()
                    try:  # the case is the one meant: the app's sessions run in that mode
                        got = lease.query("SELECT @@session.sql_mode AS m")[0]["m"]
                    finally:
                        lease.release()
                    assert ("NO_BACKSLASH_ESCAPES" in got) == no_backslash_escapes, (case, got)
                    assert_round_trips(client, server, env, protocol, case)
                    assert_binds_hostile_reads(database, case)


def test_session_defaults_a_parameter_group_may_change(tmp_path):
    """time_zone +05:30, autocommit=0, SERIALIZABLE (then READ-COMMITTED), latin1 as the server's
    character set (then utf8mb4 with utf8mb4_bin), max_allowed_packet at RDS's minimum, short
    wait and lock timeouts; then an init_connect that sets the same and sql_select_limit, and
    a row format that caps index keys. The app's sessions set what it relies on, migrations
    create utf8mb4 tables in a latin1 database, and what needs an operator says so."""
    with server_with(tmp_path, "--default-time-zone=+05:30", "--autocommit=0",
                     "--transaction-isolation=SERIALIZABLE", "--character-set-server=latin1",
                     "--collation-server=latin1_swedish_ci", "--max-allowed-packet=1024",
                     "--wait-timeout=5", "--interactive-timeout=5",
                     "--innodb-lock-wait-timeout=1") as server:
        env = new_database(server)
        assert migrate_as_the_app(env) == ["0001_create_users", "0002_email_key_case_only"]
        db = env["RDS_DB_NAME"]
        charsets = dict(server.sql([
            "SELECT 'database', DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA "
            f"WHERE SCHEMA_NAME = '{db}' UNION ALL SELECT TABLE_NAME, TABLE_COLLATION FROM "
            f"information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = 'users' UNION ALL "
            "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE "
            f"TABLE_SCHEMA = '{db}' AND TABLE_NAME = 'users' AND COLLATION_NAME IS NOT NULL"], **ROOT_LOGIN))
        assert charsets == {"database": "latin1_swedish_ci", "users": "utf8mb4_unicode_ci",
                            "email": "utf8mb4_unicode_ci", "name": "utf8mb4_unicode_ci",
                            "email_key": "utf8mb4_bin"}

        # The largest user the API takes: 100 non-BMP characters (400 bytes) and a 254-byte
        # address, within max_allowed_packet's minimum of 1024 bytes.
        name = "𝒜🙂" * 50
        for isolation in ("SERIALIZABLE", "READ-COMMITTED"):
            if isolation != "SERIALIZABLE":
                # Portable: MariaDB 10.11 calls the variable tx_isolation, MySQL 8 transaction_isolation.
                server.sql([f"SET GLOBAL TRANSACTION ISOLATION LEVEL {isolation.replace('-', ' ')}"],
                           **ROOT_LOGIN)
            for protocol, pure in PROTOCOLS.items():
                case = f"{isolation}, {protocol}"
                email = f"{'a' * 61}.{protocol[0]}{isolation[0]}@{'b' * 63}.{'c' * 63}.{'d' * 57}.com"
                assert len(email) == 254
                assert_serves_utc_and_commits(server, env, pure, email, name, case)

        # utf8mb4 with another collation: the table keeps its own, and with it the rule that
        # addresses are unique case-insensitively, accents apart.
        set_global(server, "character_set_server = 'utf8mb4'", "collation_server = 'utf8mb4_bin'")
        env = new_database(server)
        assert migrate_as_the_app(env, pure=True) == ["0001_create_users", "0002_email_key_case_only"]
        with app_client(env) as (client, _):
            assert client.post("/api/users", json={"email": "Zoë@example.com", "name": "😀 Zoë"}).status_code == 201
            assert client.post("/api/users", json={"email": "zoË@EXAMPLE.com", "name": "z"}).status_code == 409
            assert client.post("/api/users", json={"email": "zoe@example.com", "name": "z"}).status_code == 201
        assert sorted(table(server, env).values()) == [("Zoë@example.com", "😀 Zoë"), ("zoe@example.com", "z")]

        # init_connect (the app user has no SUPER: it runs for every session of the app), with
        # a sql_select_limit: migrate read one applied version, applied 0002 again and failed
        # (1091, "Can't DROP INDEX"); doctor read one privilege and reported the rest missing.
        set_global(server, "init_connect = \"SET NAMES latin1, time_zone = '+05:30', autocommit = 0, "
                           "sql_select_limit = 1\"")
        env = new_database(server)
        for applied in (["0001_create_users", "0002_email_key_case_only"], []):
            result = run(["-m", "app.migrate"], env)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout.splitlines()[-1])["applied"] == applied
        assert_serves_utc_and_commits(server, env, False, "init@example.com", name, "init_connect")
        with app_client(env) as (client, _):
            for n in ("one", "two"):  # a page holds both: the list's LIMIT is its own
                assert client.post("/api/users", json={"email": f"{n}@example.com", "name": n}).status_code == 201
            assert [u["name"] for u in client.get("/api/users").get_json()["data"]] == ["one", "two"]
        doctor = subprocess.run([str(ROOT / "scripts" / "doctor"), "--json"], cwd=ROOT,
                                env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert checks["privileges"]["status"] == "PASS", checks["privileges"]
        assert checks["schema"]["status"] == "PASS", checks["schema"]

        # A row format whose index keys stop at 767 bytes: global only, so the operator's to
        # change; the migration's one line says which setting and to what.
        set_global(server, "init_connect = ''", "innodb_default_row_format = 'compact'")
        env = new_database(server)
        with pytest.raises(migrate.MigrationError) as failed:  # python -m app.migrate prints it
            migrate_as_the_app(env)
        line = migrate.explain(failed.value, load_settings(env))
        # MariaDB says 1709 (ER_INDEX_COLUMN_TOO_LONG), MySQL 8 1071 (ER_TOO_LONG_KEY).
        assert re.match(r"0001_create_users failed at statement 1 of 1: MySQL error (1709|1071): ", line), line
        assert "innodb_default_row_format" in line and "DYNAMIC" in line and "parameter group" in line


def assert_serves_utc_and_commits(server, env, pure: bool, email: str, name: str, case: str) -> None:
    """Create, change and delete one user: timestamps in UTC and right, each write visible at
    once to another session (committed), the stored text exactly what was sent."""
    with app_client(env, pure) as (client, _):
        started = time.time()
        created = client.post("/api/users", json={"email": email, "name": name})
        assert created.status_code == 201, (case, created.get_json())
        user = created.get_json()
        assert (user["email"], user["name"]) == (email, name), case
        assert started - 2 <= utc(user["created_at"]) <= time.time() + 1, (case, user, started)
        assert table(server, env)[user["id"]] == (email, name), case
        stored = server.sql([f"SELECT UNIX_TIMESTAMP(created_at) FROM users WHERE id = {user['id']}"],
                            database=env["RDS_DB_NAME"], **ROOT_LOGIN)[0][0]
        assert utc(user["created_at"]) == int(stored), case
        patched = client.patch(f"/api/users/{user['id']}", json={"name": name[::-1]})
        assert patched.status_code == 200 and patched.get_json()["name"] == name[::-1], case
        assert table(server, env)[user["id"]] == (email, name[::-1]), case
        assert client.get(f"/api/users?after={user['id'] - 1}").get_json()["data"][0]["id"] == user["id"]
        assert client.delete(f"/api/users/{user['id']}").status_code == 204, case
        assert user["id"] not in table(server, env), case
        assert client.get("/health/ready").status_code == 200, case


def test_a_server_that_requires_tls(tmp_path):
    """require_secure_transport=ON: every TLS mode works, hostile strings included (verify-ca
    runs the pure-Python protocol, verify-identity the C extension), and with DB_SSL_MODE=
    disabled a request answers 503 with Retry-After and the migration's line names DB_SSL_MODE
    (MariaDB refuses the login as access denied, and the line named only RDS_USERNAME and the
    password)."""
    pki = tmp_path / "pki"
    with server_with(tmp_path, *make_test_pki(pki), "--sql-mode=NO_BACKSLASH_ESCAPES") as server:
        env = {**new_database(server), "DB_SSL_CA": str(pki / "ca.pem")}
        assert migrate_as_the_app(env) == ["0001_create_users", "0002_email_key_case_only"]
        set_global(server, "require_secure_transport = ON")

        plain = {**env, "DB_SSL_MODE": "disabled"}
        with app_client(plain) as (client, _):
            for response in (client.get("/api/users"), client.post("/api/users", json={"email": "p@example.com", "name": "P"})):
                assert response.status_code == 503 and response.headers["Retry-After"] == "5"
                assert response.get_json() == {"error": {"code": "database_unavailable",
                                                         "message": "The database is unavailable; retry later."}}
        result = run(["-m", "app.migrate"], plain)
        assert result.returncode == migrate.EXIT_FAILED
        [line] = result.stderr.splitlines()
        assert "set DB_SSL_MODE=verify-identity" in line and "require_secure_transport" in line, line
        assert localdb.APP_PASSWORD not in result.stdout + result.stderr
        # A deploy's first command, bootstrap, said only that the user was refused, and to run
        # scripts/provision --bootstrap-user.
        result = run(["-m", "app.bootstrap"], plain)
        assert result.returncode == migrate.EXIT_FAILED
        [line] = result.stderr.splitlines()
        assert "set DB_SSL_MODE=verify-identity" in line and "require_secure_transport" in line, line

        with app_client({**env, "DB_SSL_MODE": "verify-ca"}) as (client, database):
            assert protocol_of(database) == "MySQLConnection"
            assert_round_trips(client, server, env, "verify-ca", "require_secure_transport, verify-ca")
        for mode in ("required", "verify-identity"):
            with app_client({**env, "DB_SSL_MODE": mode}) as (client, database):
                assert protocol_of(database) == "CMySQLConnection"
                assert client.get("/api/users?limit=1").status_code == 200
        assert migrate_as_the_app({**env, "DB_SSL_MODE": "verify-identity"}) == []


# The session variables RDS Proxy tracks for MySQL and MariaDB: a session that sets only these
# keeps being multiplexed; any other SET pins it to one database connection until it closes
# ("What RDS Proxy tracks for RDS for MySQL and RDS for MariaDB databases",
# https://docs.aws.amazon.com/AmazonRDS/latest/UserGuide/rds-proxy-pinning.html).
PROXY_TRACKED = {"autocommit", "auto_increment_increment", "character set", "char set",
                 "character_set_client", "character_set_database", "character_set_results",
                 "collation_connection", "collation_database", "collation_server", "names",
                 "sql_mode", "time_zone", "transaction_isolation", "tx_isolation",
                 "transaction_read_only", "tx_read_only"}


def set_variables(statement: str) -> set[str]:
    """The variables a SET statement of the general log assigns (NAMES for SET NAMES)."""
    rest = re.sub(r"(?i)^SET\s+", "", statement)
    if re.match(r"(?i)NAMES\s", rest):
        return {"names"}
    return {name.lower() for name in re.findall(r"(?i)(?:^|,)\s*(?:@@session\.|SESSION\s+)?([a-z_]+)\s*=", rest)}


def test_the_pools_sessions_set_only_what_rds_proxy_tracks(tmp_path):
    """The pool's sessions, on both protocols, set only variables RDS Proxy tracks, so behind a
    proxy they stay multiplexed; an operator's (migrate) also sets sql_select_limit, which
    pins its short session. Before, every pooled session set sql_select_limit too, and a proxy
    would have pinned them all (the README's DatabaseConnectionsCurrentlySessionPinned).
    Read from the server's general log: every statement each session sent."""
    log = tmp_path / "general.log"
    with server_with(tmp_path, "--general-log=1", f"--general-log-file={log}") as server:
        env = new_database(server)
        settings = load_settings(env)
        operator = migrate.connect(settings, StaticPassword(settings.user, settings.password.get_secret_value()))
        migrate.apply(operator)
        operator.close()
        pooled = []
        for protocol, pure in PROTOCOLS.items():
            with app_client(env, pure) as (client, database):
                assert client.get("/api/users").status_code == 200, protocol
                assert client.post("/api/users", json={"email": f"p@{protocol}.example.com",
                                                       "name": "p"}).status_code == 201, protocol
                lease = database.borrow()
                pooled.append(lease.connection_id)
                lease.release()
        sent: dict[int, list[str]] = {}
        for line in log.read_text().splitlines():
            found = re.match(r"^(?:\d{6}\s+[\d:]+)?\s+(\d+) Query\t(.*)$", line)
            if found:
                sent.setdefault(int(found[1]), []).append(found[2])
    for connection_id in pooled:
        statements = [s for s in sent[connection_id] if re.match(r"(?i)SET\s", s)]
        variables = set().union(*map(set_variables, statements))
        assert variables and variables <= PROXY_TRACKED, (variables - PROXY_TRACKED, statements)
    operators = [cid for cid, statements in sent.items()
                 if "SET sql_select_limit = 18446744073709551615" in statements]
    assert operators and not set(operators) & set(pooled), sent


def test_mysql_8s_refusal_of_cleartext_names_db_ssl_mode():
    """MySQL 8 refuses a cleartext login under require_secure_transport=ON with its own error
    (3159, ER_SECURE_TRANSPORT_REQUIRED), which MariaDB does not send: the driver's error as
    the connector raises it for that packet."""
    settings = load_settings({"RDS_HOSTNAME": "db.example.com", "RDS_DB_NAME": "ebdb", "RDS_USERNAME": "app",
                              "RDS_PASSWORD": "pw", "DB_SSL_MODE": "disabled"})
    err = mysql.connector.errors.get_mysql_exception(
        3159, "Connections using insecure transport are prohibited while --require_secure_transport=ON.",
        "HY000")
    line = migrate.explain(err, settings)
    assert "requires TLS" in line and "set DB_SSL_MODE=verify-identity" in line, line


def test_a_max_join_size_below_the_lists_page_is_named_not_a_500(tmp_path, caplog):
    """max_join_size, which a DB parameter group may set, below the rows the optimizer expects
    the list's keyset page to examine: MySQL error 1104 was unclassified, a 500 with a
    traceback in the log. It is the operator's to raise: a 503 for the client, db_misconfigured
    naming the variable in the log, and the connection kept."""
    with server_with(tmp_path) as server:
        env = new_database(server)
        migrate_as_the_app(env)
        set_global(server, "max_join_size = 2")
        with app_client(env) as (client, database):
            for n in range(3):
                assert client.post("/api/users", json={"email": f"m{n}@example.com", "name": "m"}).status_code == 201
            with caplog.at_level(logging.ERROR, logger="app"):
                response = client.get("/api/users")
            assert response.status_code == 503 and response.headers["Retry-After"] == "5"
            assert response.get_json()["error"]["code"] == "database_unavailable"
            [logged] = [r for r in caplog.records if getattr(r, "event", None) == "db_misconfigured"]
            assert (logged.reason, logged.errno) == ("max_join_size", 1104)
            assert not [r for r in caplog.records if getattr(r, "event", None) == "unhandled_error"]
            assert database.pool.stats()["closed"] == 0  # the session was fine: kept
