"""A throwaway MySQL-compatible server in a directory of its own, on a free port.

Used by scripts/run-local, scripts/bench and the tests. It runs `mariadbd` (or Oracle's
`mysqld`) from PATH or /usr/sbin with no defaults files, so it never touches a system
server or its data. The datadir is removed on stop unless it was given by the caller.

    .venv/bin/python scripts/localdb.py   # start one, print its RDS_* variables, stop on Ctrl-C

As a program it exits 0 once stopped (Ctrl-C or SIGTERM, the server and its directory
removed), 1 when the server does not start (a message saying why), 2 on bad arguments, and 141
when stdout is closed before the variables are written (the server is stopped then too).

A module, not a script of its own (no executable bit, no re-run with .venv): run it with the
project's virtualenv, which has mysql-connector for creating the database.
"""

from __future__ import annotations

import argparse
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
from typing import Callable

SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/libexec",
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


def stop_process(process: subprocess.Popen | None, timeout: float = 30,
                 sig: int = signal.SIGTERM) -> int | None:
    """Stop a child: `sig`, wait up to `timeout` s, then SIGKILL; returns its exit code.

    The one place the scripts and tests stop what they start. A process started with
    start_new_session=True leads its own group: its leftovers (a gunicorn master's workers,
    say) are killed with it, so nothing outlives a hung or crashed leader. Harmless to call
    twice or on a process that already exited.
    """
    if process is None:
        return None
    leads_group = False
    if process.poll() is None:
        try:
            leads_group = os.getpgid(process.pid) == process.pid
        except ProcessLookupError:
            pass
        try:
            process.send_signal(sig)
            process.wait(timeout)
        except ProcessLookupError:
            process.wait()
        except subprocess.TimeoutExpired:
            if leads_group:
                _kill_group(process.pid)
            else:
                process.kill()
            process.wait()
    if leads_group:
        # The group id stays reserved while any member lives, so this reaches only leftovers.
        _kill_group(process.pid)
    return process.returncode


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # nobody left in it
        pass


class NotHealthy(RuntimeError):
    """A server did not answer as expected in time, or its process exited first."""


def wait_until_healthy(url: str, timeout: float = 30, *, process: subprocess.Popen | None = None,
                       output: Path | Callable[[], str] | None = None, status: int = 200,
                       interval: float = 0.1) -> int:
    """Poll GET `url` until it answers `status`; returns that status.

    The one readiness loop of the scripts and tests. When `process` exits first it fails at
    once instead of waiting out the deadline; the NotHealthy message ends with the tail of
    `output` (a log file or a function returning text). Uses urllib, not requests: run-local's
    virtualenv holds only requirements.txt. Never through a proxy: the server is local.
    """
    import http.client
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if process is not None and process.poll() is not None:
            raise NotHealthy(f"{_program(process)} exited with code {process.returncode} before "
                             f"{url} answered {status}{_tail(output)}")
        try:
            with opener.open(url, timeout=max(0.1, min(2.0, deadline - time.monotonic()))) as response:
                code = response.status
        except urllib.error.HTTPError as err:
            code = err.code
            err.close()
        except (OSError, http.client.HTTPException) as err:  # refused, reset, timed out, garbled
            code = None
            last = getattr(err, "reason", None) or err
        if code == status:
            return code
        if code is not None:
            last = f"HTTP {code}"
        if time.monotonic() >= deadline:
            raise NotHealthy(f"{url} did not answer {status} within {timeout:g} s (last: {last})"
                             f"{_tail(output)}")
        time.sleep(interval)


def _program(process: subprocess.Popen) -> str:
    args = process.args if isinstance(process.args, (list, tuple)) else shlex.split(str(process.args))
    return Path(str(args[0])).name if args else "the process"


def _tail(output: Path | Callable[[], str] | None, limit: int = 3000) -> str:
    if output is None:
        return ""
    try:
        text = output() if callable(output) else Path(output).read_text(errors="replace")
    except OSError as err:
        return f"; its output could not be read ({err})"
    if not text.strip():
        return "; it printed nothing"
    if len(text) > limit:
        text = text[-limit:].partition("\n")[2]  # from the first whole line
    return f"; its output ends:\n{text}"


@dataclass
class LocalServer:
    """One server process. `start()` returns once it accepts TCP connections."""

    basedir: Path | None = None
    port: int = 0
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None
    _own_dir: bool = False
    # The error log's tail, kept when a failed start() removed the directory holding it.
    _saved_log: str | None = field(default=None, init=False, repr=False)

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def socket_path(self) -> Path:
        return self.basedir / "mysqld.sock"

    def start(self, timeout: float = 60) -> LocalServer:
        """Start the server; on any failure stop what was started, then raise RuntimeError.

        A temp dir this object made is removed too; a `basedir` the caller gave is left as is.
        """
        found = find_server()
        if found is None:
            raise RuntimeError("no mariadbd or mysqld found on PATH or in /usr/sbin, /usr/local/sbin or "
                               "/usr/libexec: install mariadb-server (README, Quick start)")
        flavour, server = found
        if self.basedir is None:
            self.basedir = Path(tempfile.mkdtemp(prefix="localdb-"))
            self._own_dir = True
        self._saved_log = None
        try:
            self._start(flavour, server, timeout)
        except Exception as err:
            # The error log goes with a temp dir: keep its tail for error_log(), which the
            # callers' fault reports print, and for the message of a failure that lacks it.
            try:
                self._saved_log = self.error_log()
            except OSError:
                self._saved_log = ""
            finally:
                self.remove()
            if isinstance(err, RuntimeError):
                raise
            where = f" on 127.0.0.1:{self.port}" if self.port else ""
            tail = (f"its error log ends:\n{self._saved_log}" if self._saved_log
                    else "it wrote no error log")
            raise RuntimeError(f"setting up the server{where} failed: {err}; {tail}") from err
        except BaseException:
            self.remove()
            raise
        return self

    @property
    def tmpdir(self) -> Path:
        """The server's own temp dir: at startup a server deletes every #sql* file in its
        tmpdir, so with a shared /tmp one server starting broke another's bootstrap."""
        return self.basedir / "tmp"

    def _start(self, flavour: str, server: str, timeout: float) -> None:
        self.basedir.mkdir(parents=True, exist_ok=True)
        self.tmpdir.mkdir(exist_ok=True)
        self.port = self.port or free_port()
        fresh = not self.datadir.exists()
        if fresh:
            self._initialize(flavour, server)
        args = [server, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket_path}",
                f"--port={self.port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                f"--tmpdir={self.tmpdir}",
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

    def _initialize(self, flavour: str, server: str) -> None:
        if flavour == "mariadb":
            install = shutil.which("mariadb-install-db", path=SEARCH_PATH) or shutil.which(
                "mysql_install_db", path=SEARCH_PATH)
            cmd = [install, "--no-defaults", f"--datadir={self.datadir}",
                   "--auth-root-authentication-method=normal", "--skip-test-db",
                   f"--tmpdir={self.tmpdir}"]  # passed on to mariadbd --bootstrap
            if os.geteuid() == 0:
                cmd.append("--user=root")
        else:
            cmd = [server, "--no-defaults", "--initialize-insecure", f"--datadir={self.datadir}",
                   f"--tmpdir={self.tmpdir}"]
            if os.geteuid() == 0:
                cmd.append("--user=root")
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"initializing the datadir failed:\n{result.stdout}\n{result.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        name = Path(self.process.args[0]).name
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} for 127.0.0.1:{self.port} exited with code {self.process.returncode} while starting; "
                                   f"its error log ends:\n{self.error_log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                # The socket file appears when the server binds it, before it listens on it: a
                # connection in between is refused (111), which _create_users met on a busy
                # machine (test processes side by side). So connect, rather than check the file.
                with socket.socket(socket.AF_UNIX) as unix:
                    unix.settimeout(0.2)
                    unix.connect(str(self.socket_path))
                return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not accept connections on 127.0.0.1:{self.port} within "
                           f"{timeout:g} s; its error log ends:\n{self.error_log()}")

    def error_log(self) -> str:
        """The last 4,000 characters of the server's error log, also once a failed start()
        has removed its directory."""
        path = self.basedir / "error.log" if self.basedir is not None else None
        if path is not None and path.exists():
            return path.read_text(errors="replace")[-4000:]
        return self._saved_log or ""

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
        stop_process(self.process, timeout)
        self.process = None

    def remove(self) -> None:
        self.stop()
        if self._own_dir and self.basedir is not None:
            shutil.rmtree(self.basedir, ignore_errors=True)


def main() -> int:
    argparse.ArgumentParser(prog="localdb.py", description=__doc__.split("\n\n")[0]).parse_args()
    try:
        server = LocalServer().start()
    except RuntimeError as err:  # start() has stopped and removed what it made; the message says why
        sys.exit(f"localdb.py: {err}")
    try:  # from here on the server is ours to stop, whatever happens (a closed stdout included)
        server.create_database("ebdb")
        for name, value in server.environ("ebdb").items():
            print(f"export {name}={value}")
        sys.stdout.flush()
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    except KeyboardInterrupt:  # only when main() runs with the signals not blocked
        pass
    except BrokenPipeError:  # `| head -1`: nobody reads the variables, so nobody uses the server
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("localdb.py: stdout was closed before the RDS_* variables were written; stopped the "
              "server", file=sys.stderr)
        return 141
    finally:
        server.remove()
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main())
