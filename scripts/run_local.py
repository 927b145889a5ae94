"""The body of scripts/run-local: database, migrations, sample data, then the Procfile command."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import localdb

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_ENV = {"RDS_HOSTNAME": "127.0.0.1", "RDS_PORT": "3306", "RDS_DB_NAME": "ebdb",
               "RDS_USERNAME": "app", "RDS_PASSWORD": "app-local-password", "DB_SSL_MODE": "disabled"}


def say(message: str) -> None:
    print(f"run-local: {message}", file=sys.stderr, flush=True)


def start_database(stack: list) -> dict[str, str]:
    """Environment for the database to use, starting one when none is configured."""
    if os.environ.get("RDS_HOSTNAME") or os.environ.get("RDS_ENDPOINT"):
        say(f"using the configured database {os.environ.get('RDS_HOSTNAME') or os.environ['RDS_ENDPOINT']}")
        return {}
    if localdb.find_server():
        server = localdb.LocalServer().start()
        stack.append(server.remove)
        server.create_database("ebdb")
        say(f"started a throwaway {localdb.find_server()[0]} on 127.0.0.1:{server.port} "
            f"(data in {server.basedir}, removed on exit)")
        return server.environ("ebdb")
    if shutil.which("docker"):
        say("no mariadbd/mysqld found: starting the db service with docker compose")
        subprocess.run(["docker", "compose", "up", "-d", "--wait", "db"], cwd=ROOT, check=True)
        stack.append(lambda: subprocess.run(["docker", "compose", "stop", "db"], cwd=ROOT))
        return dict(COMPOSE_ENV)
    raise SystemExit("run-local: no database configured (RDS_HOSTNAME), no mariadbd/mysqld and no "
                     "docker: install mariadb-server or Docker, or set the RDS_* variables")


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    cleanup: list = []
    gunicorn = None
    try:
        env = {**os.environ, **start_database(cleanup)}
        env.setdefault("PORT", "8000")
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
        if gunicorn is not None and gunicorn.poll() is None:
            gunicorn.send_signal(signal.SIGTERM)
            try:
                gunicorn.wait(35)
            except subprocess.TimeoutExpired:
                gunicorn.kill()
        for stop in reversed(cleanup):
            stop()
        say("stopped")


if __name__ == "__main__":
    sys.exit(main())
