"""Structured JSON logs, each line carrying the request id of the request that wrote it.

The request id is the load balancer's `X-Amzn-Trace-Id` when present (so a line can be
matched with the ALB's access log and X-Ray), else the caller's `X-Request-Id`, else a new
one; it is echoed in the `X-Request-Id` response header.

A small WSGI middleware assigns and echoes it rather than a before_request/after_request pair:
two Flask hooks (each called through ensure_sync) and Werkzeug's Headers cost about three
times as much per request (docs/request-budget.md), and the middleware also covers responses
Flask builds without running after_request hooks.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys

from flask import Flask, has_request_context, request
from pythonjsonlogger.json import JsonFormatter

from app.config import log_level

_SAFE_ID = re.compile(r"[A-Za-z0-9=;:._\-]{1,200}")  # fullmatch: "$" would pass "id\n"
ENVIRON_KEY = "app.request_id"  # where the middleware keeps the id in the WSGI environ


class StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (gunicorn and pytest may swap it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass


class RequestContextFilter(logging.Filter):
    """Adds request_id and pid to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = (request.environ.get(ENVIRON_KEY) if has_request_context()
                             else None)
        record.pid = os.getpid()
        return True


class WireContentFilter(logging.Filter):
    """Drops the records in which botocore prints what crosses the wire.

    At DEBUG, botocore.endpoint logs each request's headers and body (a session token, a
    PutSecretValue's secret), botocore.auth the signing steps (an IAM token's signature and
    session token), botocore.parsers each response body (a GetSecretValue's password). An
    operator who turns botocore's logger up still gets its other lines (credential source,
    retries, endpoints), never these: no list of secret values to redact can be complete.
    """

    LOGGERS = ("botocore.endpoint", "botocore.auth", "botocore.parsers")

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        return not any(name == drop or name.startswith(drop + ".") for drop in self.LOGGERS)


def guard_wire_content() -> None:
    """Put WireContentFilter on botocore's wire loggers themselves, once per process.

    A logger's filter drops a record before any handler sees it: not only the app's, but one a
    user's sitecustomize (`logging.basicConfig(level=DEBUG)`), `boto3.set_stream_logger` or a
    gunicorn logconfig puts on the root or on botocore, which the app's handler filter never
    sees. app/credentials.py calls it before making an AWS client, for the processes that
    configure no logging of the app's (scripts/doctor).
    """
    for name in WireContentFilter.LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, WireContentFilter) for f in logger.filters):
            logger.addFilter(WireContentFilter())


def configure_logging(level: str | None = "INFO") -> None:
    """Send logs to stdout as JSON (Beanstalk streams web.stdout.log to CloudWatch).

    An unknown LOG_LEVEL is a ConfigError in the same words load_settings would use: this
    runs before the settings are read, so that reading them logs JSON too.

    LOG_LEVEL applies to the app's own loggers only: the root logger, and with it botocore
    and urllib3, stays at WARNING, because at DEBUG botocore logs whole responses, a
    GetSecretValue's password included, and the signing steps of an IAM token: those lines are
    dropped whatever the levels and handlers (guard_wire_content).
    """
    logging.getLogger("app").setLevel(log_level(level))
    guard_wire_content()
    root = logging.getLogger()
    if any(getattr(h, "_app_json", False) for h in root.handlers):
        return
    handler = StdoutHandler()
    handler._app_json = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter(
        "{asctime}{levelname}{name}{message}{request_id}{pid}", style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        datefmt="%Y-%m-%dT%H:%M:%S%z",
    ))
    handler.addFilter(RequestContextFilter())
    handler.addFilter(WireContentFilter())
    root.addHandler(handler)


def request_id_from(environ) -> str:
    """Read from the WSGI environ: Werkzeug's Headers view costs twice as much per request
    (2.7 vs 1.3 µs, scripts/profile-request's request id stage) for the same two lookups."""
    for name in ("HTTP_X_AMZN_TRACE_ID", "HTTP_X_REQUEST_ID"):
        value = environ.get(name)
        if value and _SAFE_ID.fullmatch(value):
            return value
    return secrets.token_hex(16)


class RequestIdMiddleware:
    """Gives each request its id before Flask sees it and adds X-Request-Id to its response."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        request_id = environ[ENVIRON_KEY] = request_id_from(environ)

        def start_with_id(status, headers, exc_info=None):
            headers.append(("X-Request-Id", request_id))
            return start_response(status, headers, exc_info)

        return self.wsgi_app(environ, start_with_id)


def init_app(app: Flask) -> None:
    configure_logging(app.config.get("LOG_LEVEL", "INFO"))
    app.wsgi_app = RequestIdMiddleware(app.wsgi_app)
