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
from flask import Response as FlaskResponse
from werkzeug.exceptions import NotFound

MAX_BODY_BYTES = 16 * 1024


class RoutingGuards:
    """WSGI middleware: what Werkzeug's router would make of a request before it matches.

    A path that starts with `//` is not found (404 `not_found`, from the error table), like any
    other path with doubled slashes: the router strips leading slashes, so without this
    `//api/users` would be `/api/users` while `/api//users` is not found.

    An `Upgrade` header is ignored (RFC 9110 7.8 allows it; nothing here speaks WebSocket).
    With `Upgrade: websocket` and `Connection: upgrade`, which Beanstalk's nginx sends on every
    request, the router matches ws:// rules only, and there are none: GET /api/users/1 answered
    405 with an Allow that left GET out, /health 400.

    Requests with a plain path and no Upgrade pay one startswith and one lookup.
    """

    def __init__(self, app: Flask):
        self.app = app
        self.wsgi_app = app.wsgi_app

    def __call__(self, environ, start_response):
        if "HTTP_UPGRADE" in environ:
            del environ["HTTP_UPGRADE"]
        if environ.get("PATH_INFO", "").startswith("//"):
            with self.app.request_context(environ):
                response = self.app.make_response(self.app.handle_user_exception(NotFound()))
            return response(environ, start_response)
        return self.wsgi_app(environ, start_response)


# Every answer carries user data or says something about the service: no cache, shared or
# the browser's, may keep it (a list of emails read with one client's key must not be served
# to the next from a proxy, nor stay on a shared computer's disk), and a browser must not
# sniff JSON, which echoes some of what it was sent (a query parameter's name), into HTML.
# /openapi.json too: it changes with each deploy, and a stale copy would describe another API.
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


class Response(FlaskResponse):
    """Flask's response with no default Content-Type: every body the app sends says it is
    JSON, and the answer to OPTIONS (Werkzeug's: Allow and no body) claimed text/html."""

    default_mimetype = None


class SecurityHeaders:
    """WSGI middleware: SECURITY_HEADERS on every response the app makes, as the request id
    middleware (app/logs.py) adds its header, so that the responses Flask builds without
    after_request hooks (RoutingGuards' 404, an unhandled error's 500) have them too."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start_with_headers(status, headers, exc_info=None):
            headers.extend(SECURITY_HEADERS)
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start_with_headers)


def create_app(environ: Mapping[str, str] | None = None) -> Flask:
    """Build the app from environment properties (os.environ unless given).

    Nothing connects to the database here: the pool is created lazily in each worker
    process, so importing the app in gunicorn's master before fork is harmless. A bad
    configuration raises ConfigError now, before any request is served.
    """
    from app import auth, cli, db, errors, health, logs, migrate, openapi, users
    from app.config import describe, load_settings
    from app.credentials import complete_settings, provider_for
    from app.db.budget import budget_for

    environ = os.environ if environ is None else environ
    app = Flask(__name__)
    app.response_class = Response  # an empty answer claims no Content-Type
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
    app.wsgi_app = RoutingGuards(app)  # inside logs' middleware: the 404 gets its request id
    app.wsgi_app = SecurityHeaders(app.wsgi_app)  # and its headers: every response gets them
    logs.init_app(app)  # first, so that what reading the settings logs is JSON too

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
