"""The body of scripts/run-local: database, migrations, sample data, then the Procfile command."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import localdb

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_ENV = {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": "3306", "RDS_DB_NAME": "ebdb",
               "RDS_USERNAME": "app", "RDS_PASSWORD": "app-local-password", "DB_SSL_MODE": "disabled"}


def say(message: str) -> None:
    print(f"run-local: {message}", file=sys.stderr, flush=True)


def configured_database(environ) -> str | None:
    """The database the environment names, in words; None when it names none."""
    host = environ.get("RDS_HOSTNAME") or environ.get("RDS_ENDPOINT")
    if host:
        if ":" not in host:
            host = f"{host}:{environ.get('RDS_PORT') or 3306}"
        who = f" as {environ['RDS_USERNAME']!r}" if environ.get("RDS_USERNAME") else ""
        return f"database {environ.get('RDS_DB_NAME') or '(RDS_DB_NAME not set)'!r} on {host}{who}"
    if environ.get("DB_AUTH") == "secretsmanager" and environ.get("DB_SECRET_ID"):
        return f"the database of secret {environ['DB_SECRET_ID']} (DB_AUTH=secretsmanager)"
    return None


def confirm(database: str, assume_yes: bool) -> None:
    """Migrating and seeding a database run-local did not start needs a yes; exits otherwise.

    RDS_* left over from a shell that talked to staging or production would otherwise get
    migrations applied and sample users inserted without a word.
    """
    if assume_yes:
        say(f"--yes: migrating and seeding the configured {database}")
        return
    refusal = (f"not touching the configured {database}: run-local would apply the migrations and "
               "add sample users to it. Pass --yes to do that, or unset RDS_HOSTNAME/RDS_ENDPOINT "
               "(and DB_AUTH) to use a throwaway local database instead")
    if not sys.stdin.isatty():
        raise SystemExit(f"run-local: {refusal}")
    print(f"run-local: RDS_* name the {database}, not a database this script started.\n"
          "run-local: apply the migrations to it and add the sample users? [y/N] ",
          end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise SystemExit(f"run-local: {refusal}")


def port_taken(port: int) -> bool:
    """Whether gunicorn could not bind 127.0.0.1:`port` (it sets SO_REUSEADDR too)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_port(raw: str) -> None:
    """Stop at once when the port is taken, naming one that is free.

    gunicorn would find out only after the database, migrations and seed, then retry five
    times and exit with lines that do not say what to do. An invalid PORT is refused here with
    gunicorn.conf.py's words, before a database is started and "serving on" printed.
    """
    try:
        port = int(raw)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise SystemExit(f"run-local: PORT={raw!r} is invalid: expected an integer from 1 to 65535 "
                         "(unset it for the default 8000)")
    if not port_taken(port):
        return
    free = next((p for p in range(port + 1, min(port + 100, 65536)) if not port_taken(p)), None)
    fix = f"PORT={free} ./scripts/run-local" if free else "PORT=<a free port> ./scripts/run-local"
    raise SystemExit(f"run-local: 127.0.0.1:{raw} is already in use (another run-local or server "
                     f"is listening there): stop it, or serve on another port: {fix}")


def start_database(stack: list, assume_yes: bool = False) -> dict[str, str]:
    """Environment for the database to use, starting one when none is configured."""
    configured = configured_database(os.environ)
    if configured:
        confirm(configured, assume_yes)
        return {}
    if localdb.find_server():
        try:
            server = localdb.LocalServer().start()
        except RuntimeError as err:  # start() has already stopped and removed what it made
            raise SystemExit(f"run-local: could not start a local database: {err}") from None
        stack.append(server.remove)
        server.create_database("ebdb")
        say(f"started a throwaway {localdb.find_server()[0]} on 127.0.0.1:{server.port} "
            f"(data in {server.basedir}, removed on exit)")
        # Its users have passwords: a DB_AUTH left in the shell (iam, secretsmanager) is not for it.
        return {**server.environ("ebdb"), "DB_AUTH": "password"}
    if shutil.which("docker"):
        compose = subprocess.run(["docker", "compose", "version"], cwd=ROOT, capture_output=True)
        if compose.returncode != 0:  # Debian's docker.io, say: the CLI without the compose plugin
            raise SystemExit("run-local: no mariadbd/mysqld found, and `docker compose` does not run here "
                             "(Docker's compose plugin is missing): install mariadb-server (README, Quick "
                             "start) or the compose plugin (docker-compose-plugin), or set the RDS_* variables")
        say("no mariadbd/mysqld found: starting the db service with docker compose")
        if subprocess.run(["docker", "compose", "up", "-d", "--wait", "db"], cwd=ROOT).returncode != 0:
            # A container that started but never got healthy is not left running.
            subprocess.run(["docker", "compose", "stop", "db"], cwd=ROOT, capture_output=True)
            raise SystemExit("run-local: docker compose up -d --wait db failed (docker says why above): start "
                             "Docker, free 127.0.0.1:3306 (the db service's port), or install mariadb-server "
                             "(README, Quick start)")
        stack.append(lambda: subprocess.run(["docker", "compose", "stop", "db"], cwd=ROOT))
        return {**COMPOSE_ENV, "DB_AUTH": "password"}
    raise SystemExit("run-local: no database configured (RDS_HOSTNAME), no mariadbd/mysqld and no "
                     "docker: install mariadb-server or Docker, or set the RDS_* variables")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/run-local",
        description="Serve the API on http://127.0.0.1:$PORT (8000) as Beanstalk does, with a "
                    "throwaway local database unless RDS_* name one; migrates and seeds it.")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="migrate and seed the database RDS_* name without asking")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    # As gunicorn.conf.py reads it: pasted spaces around it ignored, only spaces is unset.
    port = os.environ.get("PORT", "").strip() or "8000"
    check_port(port)
    cleanup: list = []
    gunicorn = None
    try:
        env = {**os.environ, **start_database(cleanup, args.yes)}
        env["PORT"] = port
        python = sys.executable
        subprocess.run([python, "-m", "app.migrate"], cwd=ROOT, env=env, check=True)
        subprocess.run([python, "-m", "flask", "--app", "application", "seed"], cwd=ROOT, env=env,
                       check=True)
        env["PATH"] = f"{Path(python).parent}{os.pathsep}{env.get('PATH', '')}"
        say(f"serving on http://127.0.0.1:{env['PORT']}  (try /api/users; Ctrl-C to stop)")
        gunicorn = subprocess.Popen(localdb.procfile_command(ROOT), cwd=ROOT, env=env)
        return gunicorn.wait()
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as err:
        say(f"{shlex.join(map(str, err.cmd))} failed with exit code {err.returncode}")
        return 1
    finally:
        # A second Ctrl-C while stopping would abandon the database server and its directory;
        # stopping is bounded anyway (stop_process kills what does not stop in time).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        localdb.stop_process(gunicorn, 35)
        for stop in reversed(cleanup):
            stop()
        if gunicorn is not None or cleanup:
            say("stopped")


if __name__ == "__main__":
    sys.exit(main())
