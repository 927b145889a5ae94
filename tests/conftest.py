"""Fixtures: a real MySQL-compatible server for the session, a fresh database per test.

The server is a throwaway mariadbd/mysqld in a temp dir on a free port (scripts/localdb.py),
or the one named by TEST_DATABASE_URL (mysql://user:password@host:port, a user that may
create databases). Each test gets its own database, migrated, and drops only that one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

import mysql.connector
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import localdb  # noqa: E402

from app import create_app  # noqa: E402
from app import migrate  # noqa: E402


def _share_botocore_data_loaders() -> None:
    """One botocore data loader per data path for every botocore session of a test process.

    botocore caches the service models it parses (EC2's alone is megabytes of JSON) in the data
    loader of a session, and shares that loader between the session's clients. The scripts
    make one session per run, as they should; the tests run them hundreds of times in one
    process, and parsing the same models again took about a fifth of the suite's CPU on a
    two-CPU machine (tests/test_provision.py alone: 190 s of test time). Sharing the loader
    across sessions is what botocore already does across clients: the models are the same
    files, read once.
    """
    import botocore.loaders
    import botocore.session

    create = botocore.loaders.create_loader
    shared: dict = {}

    def create_shared_loader(search_path_string=None):
        if search_path_string not in shared:
            shared[search_path_string] = create(search_path_string)
        return shared[search_path_string]

    botocore.session.create_loader = create_shared_loader


_share_botocore_data_loaders()


class ExistingServer:
    """A server given by TEST_DATABASE_URL, driven like localdb.LocalServer."""

    def __init__(self, url: str):
        parts = urlparse(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 3306
        self.user = unquote(parts.username or "root")
        self.password = unquote(parts.password or "")

    def sql(self, statements, database=None, **_):
        return localdb.run_sql(statements, host=self.host, port=self.port, user=self.user,
                               password=self.password, database=database)

    def create_database(self, name):
        self.sql([f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"])

    def environ(self, database):
        return {"RDS_HOSTNAME": self.host, "RDS_PORT": str(self.port), "RDS_DB_NAME": database,
                "RDS_USERNAME": self.user, "RDS_PASSWORD": self.password, "DB_SSL_MODE": "disabled"}



def load_script(name: str):
    """Import one of scripts/ (no .py suffix) as a module, to call its functions in-process."""
    import importlib.machinery
    import importlib.util

    module_name = name.replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(module_name, str(ROOT / "scripts" / name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(module_name, loader))
    sys.modules[module_name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module

def readme_blocks(language: str) -> list[str]:
    """The README's fenced code blocks in `language`, in order."""
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def readme_lines(containing: str) -> list[str]:
    """Command lines of the README's sh blocks that contain `containing`."""
    return [line.strip() for block in readme_blocks("sh") for line in block.splitlines()
            if containing in line]


def copy_project(tmp_path: Path, name: str = "project") -> Path:
    """The project's files as a fresh clone has them, in tmp_path/name (for runs that write
    into the project)."""
    project = tmp_path / name
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for file in filter(None, files.decode().split("\0")):  # this working tree's, as committed next
        if (ROOT / file).exists():
            (project / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / file, project / file)
    return project


def run_hiding(folders: list[str], command: list[str], *, env: dict[str, str], probe: str,
               cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    """`command` on this machine as one without what `folders` hold: in a mount namespace where
    each of them is an empty tmpfs. `probe`, a shell condition, says they are hidden (no
    mariadbd, say); the test skips where it cannot make such a machine (no root, no unshare(1),
    no CAP_SYS_ADMIN, or what it hides found elsewhere)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to hide " + ", ".join(folders))
    hide = " && ".join(f"mount -t tmpfs none {d}" for d in folders if os.path.isdir(d))
    namespace = ["unshare", "-m", "--propagation", "private", "sh", "-c"]
    hidden = subprocess.run([*namespace, f"{hide} && {probe} && echo hidden"], env=env,
                            capture_output=True, text=True, timeout=60)
    if hidden.stdout.splitlines()[-1:] != ["hidden"]:
        pytest.skip(f"cannot hide {', '.join(folders)} here: {hidden.stdout}{hidden.stderr}".strip())
    return subprocess.run([*namespace, f'{hide} && exec "$@"', "sh", *command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)

@pytest.fixture(scope="session", autouse=True)
def rehearse_lint_cache(tmp_path_factory, worker_id):
    """scripts/rehearse-deploy's linters answer each distinct input once per run
    (REHEARSE_LINT_CACHE), in a directory the pytest-xdist workers of this run share."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # a worker's basetemp is a folder of the run's
        root = root.parent
    os.environ["REHEARSE_LINT_CACHE"] = str(root / "rehearse-lint-cache")
    yield
    os.environ.pop("REHEARSE_LINT_CACHE", None)


MOTO_REGION = "eu-west-1"


@pytest.fixture(scope="module")
def moto_endpoint():
    """moto's server on a free port, for tests whose AWS calls cross a process boundary
    (subprocesses, gunicorn workers) and so cannot use mock_aws."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def sm(moto_endpoint):
    """A Secrets Manager client of moto_endpoint's, in MOTO_REGION."""
    import boto3

    return boto3.client("secretsmanager", region_name=MOTO_REGION, endpoint_url=moto_endpoint,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="session")
def mysql_server():
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield ExistingServer(url)
        return
    server = localdb.LocalServer().start()
    yield server
    server.remove()


def make_test_pki(directory: Path) -> list[str]:
    """In a new `directory`: ca.pem, which signs the server's certificate, and wrong-ca.pem,
    which signs nothing (a client trusting it must refuse the server); returns the server's
    TLS arguments."""
    directory.mkdir()
    localdb.make_ca(directory, "ca")
    localdb.make_ca(directory, "wrong-ca")
    return localdb.make_server_cert(directory)


@contextlib.contextmanager
def fresh_database(server, migrated: bool = True, seed=()):
    """A new database on `server` (migrated, holding `seed`'s (email, name) rows), dropped after."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server.create_database(name)
    env = server.environ(name)
    try:
        if migrated:
            conn = connect(env)
            try:
                migrate.apply(conn)
                if seed:
                    conn.cursor().executemany("INSERT INTO users (email, name) VALUES (%s, %s)",
                                              list(seed))
            finally:
                conn.close()
        yield env
    finally:
        server.sql([f"DROP DATABASE IF EXISTS `{name}`"])


@pytest.fixture
def make_database(mysql_server):
    """Create (and afterwards drop) fresh migrated databases; returns their environ."""
    with contextlib.ExitStack() as stack:
        yield lambda migrated=True: stack.enter_context(fresh_database(mysql_server, migrated))


@pytest.fixture
def db_env(make_database):
    """Environment properties of a fresh, migrated database, with quick pool timeouts."""
    env = make_database()
    env.update({"DB_POOL_TIMEOUT": "0.5", "DB_CONNECT_TIMEOUT": "2"})
    return env


@pytest.fixture
def app(db_env):
    app = create_app(db_env)
    app.config["TESTING"] = True
    yield app
    app.extensions["database"].dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def connect(env: dict[str, str], **extra):
    """A plain connection as the app's user, outside any pool."""
    return mysql.connector.connect(host=env["RDS_HOSTNAME"], port=int(env["RDS_PORT"]),
                                   user=env["RDS_USERNAME"], password=env["RDS_PASSWORD"],
                                   database=env["RDS_DB_NAME"], autocommit=True,
                                   ssl_disabled=True, **extra)


def procfile_command() -> list[str]:
    """The web command exactly as the Procfile gives it."""
    return localdb.procfile_command(ROOT)


class Gunicorn:
    """gunicorn started with the Procfile command in the repo root, output to a file.

    Returns once /health answers 200; one that never does is stopped before the test fails.
    """

    ready_timeout = 30.0

    def __init__(self, env: dict[str, str], log_path: Path, extra_args=()):
        self.port = localdb.free_port()
        full_env = {**os.environ, **env, "PORT": str(self.port)}
        full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
        self.log_path = log_path
        with open(log_path, "wb") as log:  # gunicorn writes through its own copy of the descriptor
            self.process = subprocess.Popen(procfile_command() + list(extra_args), cwd=ROOT,
                                            env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            localdb.wait_until_healthy(self.url + "/health", self.ready_timeout, process=self.process,
                                       output=self.output)
        except BaseException as err:
            self.stop()
            if isinstance(err, localdb.NotHealthy):
                raise AssertionError(f"gunicorn did not come up: {err}") from None
            raise

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def worker_pids(self, expect: int = 0, timeout: float = 10) -> set[int]:
        """The master's children; waits until there are `expect` of them (workers fork one by one)."""
        deadline = time.monotonic() + timeout
        while True:
            children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)],
                                      capture_output=True, text=True).stdout.split()
            if len(children) >= expect or time.monotonic() > deadline:
                return {int(p) for p in children}
            time.sleep(0.05)

    def stop(self) -> None:
        localdb.stop_process(self.process, 30)


@pytest.fixture
def start_gunicorn(tmp_path):
    started = []

    def start(env, extra_args=()):
        g = Gunicorn(env, tmp_path / f"gunicorn-{len(started)}.log", extra_args)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def slow_gunicorn(start_gunicorn, monkeypatch):
    """start_gunicorn serving tests/slow_app.py (the app plus /_test/sleep) with the
    Procfile's command and gunicorn.conf.py."""
    import conftest

    monkeypatch.setattr(conftest, "procfile_command",
                        lambda: localdb.procfile_command(conftest.ROOT, "tests.slow_app:application"))
    return start_gunicorn


@pytest.fixture(scope="session")
def eb_venv() -> Path:
    """The README's EB CLI install, run for real (a virtualenv of its own)."""
    [line] = readme_lines("./scripts/install-eb-cli")
    # Test processes running side by side (pytest -n) install into the same .venv-eb: one at a time.
    with open(Path(tempfile.gettempdir()) / f"eb-venv-{hashlib.sha256(bytes(ROOT)).hexdigest()[:12]}.lock",
              "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(shlex.split(line), cwd=ROOT, capture_output=True, text=True,
                                timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EB CLI 3.27.5" in result.stdout
    venv = ROOT / ".venv-eb"
    # Its own environment: the EB CLI's pins never reach the app's virtualenv.
    assert not list((Path(sys.executable).parent.parent / "lib").glob("python*/site-packages/ebcli"))
    return venv
