"""WSGI entry point: Elastic Beanstalk's Python platform and the Procfile load `application`.

A configuration error is printed as its message alone and the process exits with
gunicorn's APP_LOAD_ERROR status: gunicorn then stops with "App failed to load" instead of
printing a traceback for every worker it boots. The message names what to fix.
"""

import sys

from app import create_app
from app.config import ConfigError

APP_LOAD_ERROR = 4  # gunicorn.arbiter.Arbiter.APP_LOAD_ERROR: the master halts, no respawn loop

try:
    application = create_app()
except ConfigError as err:
    print(f"Configuration error: the app cannot start.\n{err}", file=sys.stderr, flush=True)
    raise SystemExit(APP_LOAD_ERROR) from None
