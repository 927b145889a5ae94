"""Application factory: reads like a table of contents, one concern per module.

As in Flask's tutorial, the modules are imported inside create_app: importing the package
`app` (which `python -m app.migrate` does first) must not import app.migrate, or runpy warns
that the module was imported before it ran and two copies of it exist.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from flask import Flask

MAX_BODY_BYTES = 16 * 1024


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app from environment properties (os.environ unless given).

    Nothing connects to the database here: the pool is created lazily in each worker
    process, so importing the app in gunicorn's master before fork is harmless. A bad
    configuration raises ConfigError now, before any request is served.
    """
    from app import auth, cli, db, errors, health, logs, migrate, openapi, users, web
    from app.config import ConfigError, describe, load_settings
    from app.credentials import complete_settings, provider_for
    from app.db.budget import budget_for

    environ = os.environ if environ is None else environ
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        LOG_LEVEL=environ.get("LOG_LEVEL", "INFO"),
        SCHEMA_VERSION=migrate.latest_version(),  # what /health/ready expects applied
    )
    app.json.sort_keys = False  # keys in the order the code gives them (Flask >= 2.3 reads this)
    app.url_map.strict_slashes = False
    # Werkzeug would answer //api//users or /health//ready with a 308 redirect to a URL built
    # from the request's Host header; a path with doubled slashes is simply not found, leading
    # ones too (the middleware: the router would strip them).
    app.url_map.merge_slashes = False
    web.init_app(app)  # before logs: its middleware wraps these
    try:
        logs.init_app(app)  # first, so that what reading the settings logs is JSON too
    except ConfigError:  # LOG_LEVEL: the one message names it and every other bad variable
        load_settings(environ)
        raise

    settings = load_settings(environ)
    credentials = provider_for(settings)
    settings = complete_settings(settings, credentials)

    errors.init_app(app)
    auth.init_app(app, settings)  # API keys, as API_AUTH says
    budget = budget_for(settings, environ)  # workers and pool size, as gunicorn.conf.py sees them
    db.init_app(app, db.Database(settings, credentials, budget))
    logging.getLogger(__name__).info(
        "database settings", extra={"event": "startup", **describe(settings),
                                    "credentials": credentials.description})
    # Once per worker (each builds its app after fork): what the fleet may open, no query.
    logging.getLogger(__name__).info(
        "connection budget: %s", budget.formula(), extra={"event": "db_budget", **budget.describe()})
    app.register_blueprint(health.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(openapi.bp)
    cli.init_app(app)
    return app
