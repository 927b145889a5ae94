"""A throwaway MySQL-compatible server in a directory of its own, on a free port.

Used by scripts/run-local, scripts/bench and the tests. It runs `mariadbd` (or Oracle's
`mysqld`) from PATH or /usr/sbin with no defaults files, so it never touches a system
server or its data. The datadir is removed on stop unless it was given by the caller.

    python scripts/localdb.py        # start one, print its RDS_* variables, stop on Ctrl-C
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin",
                               "/usr/local/mysql/bin"])
APP_USER = "app"
APP_PASSWORD = "app-local-password"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-local-password"


def find_server() -> tuple[str, str] | None:
    """('mariadb'|'mysql', path of the server binary), or None when neither is installed."""
    for flavour, name in (("mariadb", "mariadbd"), ("mysql", "mysqld")):
        path = shutil.which(name, path=SEARCH_PATH)
        if path:
            if flavour == "mysql" and "MariaDB" in _version(path):
                flavour = "mariadb"  # Debian's mysqld is a MariaDB symlink
            return flavour, path
    return None


def _version(path: str) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def make_ca(directory: Path, name: str, subject: str | None = None) -> Path:
    """A self-signed test CA: writes NAME.pem and NAME.key in `directory`, returns the PEM."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", subject or f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
             cwd=directory)
    return directory / f"{name}.pem"


def make_server_cert(directory: Path, ca: str = "ca") -> list[str]:
    """A server certificate for 127.0.0.1 signed by CA; returns the server's TLS arguments."""
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
             "server.key", "-out", "server.csr", cwd=directory)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=directory)
    return [f"--ssl-ca={directory / f'{ca}.pem'}", f"--ssl-cert={directory / 'server.pem'}",
            f"--ssl-key={directory / 'server.key'}"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def run_sql(statements: list[str], **connect_args) -> list:
    """Run statements on a new autocommit connection; return the rows of the last one."""
    import mysql.connector

    conn = mysql.connector.connect(autocommit=True, ssl_disabled=True, **connect_args)
    try:
        cur = conn.cursor()
        rows: list = []
        for statement in statements:
            cur.execute(statement)
            rows = cur.fetchall() if cur.with_rows else []
        return rows
    finally:
        conn.close()


def procfile_command(root: Path, app: str | None = None) -> list[str]:
    """The Procfile's web command as arguments, optionally serving another WSGI app."""
    for line in (root / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            args = shlex.split(line.removeprefix("web:"))
            return [app if app and a == "application:application" else a for a in args]
    raise SystemExit(f"{root / 'Procfile'} has no web: line")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """One server process. `start()` returns once it accepts TCP connections."""

    basedir: Path | None = None
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    _own_dir: bool = False

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def socket_path(self) -> Path:
        return self.basedir / "mysqld.sock"

    def start(self, timeout: float = 60) -> LocalServer:
        found = find_server()
        if found is None:
            raise RuntimeError("no mariadbd or mysqld found on PATH or in /usr/sbin; install "
                               "mariadb-server (Debian) or mysql-server, or set RDS_HOSTNAME")
        flavour, server = found
        if self.basedir is None:
            self.basedir = Path(tempfile.mkdtemp(prefix="localdb-"))
            self._own_dir = True
        self.basedir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        fresh = not self.datadir.exists()
        if fresh:
            self._initialize(flavour, server)
        args = [server, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket_path}",
                f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                f"--pid-file={self.basedir / 'mysqld.pid'}", "--innodb-buffer-pool-size=64M",
                f"--log-error={self.basedir / 'error.log'}", *self.extra_args]
        if os.geteuid() == 0:
            args.insert(2, "--user=root")
        if flavour == "mysql":
            args.append("--mysqlx=OFF")
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self._wait_ready(timeout)
        if fresh:
            self._create_users()
        return self

    def _initialize(self, flavour: str, server: str) -> None:
        if flavour == "mariadb":
            install = shutil.which("mariadb-install-db", path=SEARCH_PATH) or shutil.which(
                "mysql_install_db", path=SEARCH_PATH)
            cmd = [install, "--no-defaults", f"--datadir={self.datadir}",
                   "--auth-root-authentication-method=normal", "--skip-test-db"]
            if os.geteuid() == 0:
                cmd.append("--user=root")
        else:
            cmd = [server, "--no-defaults", "--initialize-insecure", f"--datadir={self.datadir}"]
            if os.geteuid() == 0:
                cmd.append("--user=root")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"initializing the datadir failed:\n{result.stdout}\n{result.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    if self.socket_path.exists():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server did not start within {timeout}s:\n{self.error_log()}")

    def error_log(self) -> str:
        path = self.basedir / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _create_users(self) -> None:
        """An app user and an admin user over TCP (root only has the unix socket)."""
        statements = [
            f"CREATE USER '{ADMIN_USER}'@'127.0.0.1' IDENTIFIED BY '{ADMIN_PASSWORD}'",
            f"GRANT ALL PRIVILEGES ON *.* TO '{ADMIN_USER}'@'127.0.0.1' WITH GRANT OPTION",
            f"CREATE USER '{APP_USER}'@'127.0.0.1' IDENTIFIED BY '{APP_PASSWORD}'",
        ]
        self.sql(statements, via_socket=True, user="root", password="")

    def sql(self, statements: list[str], *, via_socket: bool = False, user: str = ADMIN_USER,
            password: str = ADMIN_PASSWORD, database: str | None = None) -> list:
        """Run statements as an administrator; return the rows of the last one."""
        target = ({"unix_socket": str(self.socket_path)} if via_socket
                  else {"host": "127.0.0.1", "port": self.port})
        return run_sql(statements, user=user, password=password, database=database, **target)

    def create_database(self, name: str, user: str = APP_USER) -> None:
        self.sql([f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                  f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{user}'@'127.0.0.1'"])

    def environ(self, database: str) -> dict[str, str]:
        """The environment properties an app needs to use `database` on this server."""
        return {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": str(self.port), "RDS_DB_NAME": database,
                "RDS_USERNAME": APP_USER, "RDS_PASSWORD": APP_PASSWORD, "DB_SSL_MODE": "disabled"}

    def stop(self, timeout: float = 30) -> None:
        """Shut down cleanly (SIGTERM), killing only if it hangs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        self.stop()
        if self._own_dir and self.basedir is not None:
            shutil.rmtree(self.basedir, ignore_errors=True)


def main() -> int:
    server = LocalServer().start()
    server.create_database("ebdb")
    for name, value in server.environ("ebdb").items():
        print(f"export {name}={value}")
    sys.stdout.flush()
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:
        pass
    finally:
        server.remove()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
