"""WSGI entry point: Elastic Beanstalk's Python platform and the Procfile load `application`.

A configuration error is printed as its message alone and the process exits with
gunicorn's APP_LOAD_ERROR status: gunicorn then stops with "App failed to load" instead of
printing a traceback for every worker it boots. The message names what to fix.

Not so when the configuration's source failed for now (Secrets Manager throttling or out of
reach while a worker boots, a deploy's or a respawn's): APP_LOAD_ERROR from one worker would
stop the master and every healthy worker with it. That worker exits with an ordinary status
after a pause instead, and gunicorn starts another, which asks again.

Nor when a worker of the same master loaded the app before (a worker respawned after a crash
or a max_requests recycle, hours into its master's life): the configuration was good, and
what failed is outside (a secret revoked or deleted since). The workers still running serve
with what they loaded, and halting the master would take them all down for the one that
cannot start; that one says so, exits with an ordinary status after the pause, and gunicorn
starts another, which boots as soon as the cause is fixed. gunicorn.conf.py marks a worker's
successful load in a file of its master's (_a_worker_loaded); without that config, as before.

Loaded by the Flask CLI (`flask --app application migrate`, `seed`), there is no gunicorn to
read a status: the error is one `Error: ` line, with the exit status `python -m app.migrate`
gives it (2: fix the configuration; 3: its source failed for now, run it again). Not when the
CLI only looks the commands up (`flask --app application --help`, a tutorial's first command,
run before any setting): it gets an app holding just the commands, and the error is the
answer of the one that runs (app/cli.py's unconfigured_app).
"""

import os
import sys
import time

from app import create_app
from app.config import ConfigError

APP_LOAD_ERROR = 4  # gunicorn.arbiter.Arbiter.APP_LOAD_ERROR: the master halts, no respawn loop
TRY_AGAIN = 1  # any status but 3 (WORKER_BOOT_ERROR) and 4: the master starts a new worker
TRY_AGAIN_PAUSE = 2  # seconds: a failing source is asked every few seconds, not in a tight loop


def _say(message: str) -> None:
    """The message and its newline in one write: workers failing together share the master's
    stderr, and print's two writes (the text, then its end) let one worker's line run into
    another's."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _under_gunicorn() -> bool:
    """True in a gunicorn worker (forked from the master, which imported the arbiter)."""
    return "gunicorn.arbiter" in sys.modules


def _a_worker_loaded() -> bool:
    """True when a worker of this gunicorn master loaded the app before: gunicorn.conf.py's
    post_worker_init creates the file its on_starting named in APP_WORKER_LOADED_MARK."""
    mark = os.environ.get("APP_WORKER_LOADED_MARK")
    return bool(mark) and os.path.exists(mark)


try:
    application = create_app()
except ConfigError as err:
    if not _under_gunicorn():
        from app.cli import looking_up_commands, unconfigured_app
        from app.migrate import exit_status, failure_line

        if not looking_up_commands():
            _say(f"Error: {failure_line(err, None)}")
            raise SystemExit(exit_status(err)) from None
        application = unconfigured_app(err)
    elif err.transient:
        _say(f"Configuration source unavailable: this worker exits in {TRY_AGAIN_PAUSE} s and "
             f"gunicorn starts another.\n{err}")
        time.sleep(TRY_AGAIN_PAUSE)
        raise SystemExit(TRY_AGAIN) from None
    elif _a_worker_loaded():
        _say(f"Configuration error: this worker cannot start; the workers already running keep "
             f"serving with the configuration they loaded. It exits in {TRY_AGAIN_PAUSE} s and "
             f"gunicorn starts another.\n{err}")
        time.sleep(TRY_AGAIN_PAUSE)
        raise SystemExit(TRY_AGAIN) from None
    else:
        _say(f"Configuration error: the app cannot start.\n{err}")
        raise SystemExit(APP_LOAD_ERROR) from None
