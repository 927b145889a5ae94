"""The error table: one JSON shape, one stable code per cause, one place mapping causes to statuses.

Every error response is `{"error": {"code": ..., "message": ...}}` (plus `details` for
validation). Driver messages and stack traces never reach a client; they go to the log
with the request id.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from app.db.errors import (DatabaseBusy, DatabaseMisconfigured, DatabaseUnavailable, PoolTimeout,
                           StatementTimeout, WriteOutcomeUnknown)

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying a 503, per cause.
RETRY_AFTER_BUSY = 1
RETRY_AFTER_UNAVAILABLE = 5

# Werkzeug's HTTP errors, by status: stable code and message.
HTTP_ERRORS = {
    400: ("bad_request", "The request is malformed."),
    404: ("not_found", "No such resource."),
    405: ("method_not_allowed", "This method is not allowed on this resource."),
    413: ("payload_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "This content type is not supported."),
}


class APIError(Exception):
    """An error the client caused or can act on; raised by routes, rendered here."""

    def __init__(self, status: int, code: str, message: str, details: list | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: list | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    body: dict = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    response = jsonify(error=body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def log_database_failure(err: DatabaseUnavailable) -> None:
    """Tell operators what the database said: its message and code, never to the client.

    A misconfiguration (access denied, unknown database, missing grant) is its own event at
    ERROR level, since retrying will not fix it; an outage is a warning.
    """
    cause = err.__cause__
    if isinstance(err, DatabaseMisconfigured):
        log.error("the database refused this configuration (%s): %s", err.reason, err,
                  extra={"event": "db_misconfigured", "reason": err.reason, "errno": err.errno})
        return
    if isinstance(err, WriteOutcomeUnknown):  # the client was told it may have been applied
        log.warning("no answer to a write that commits: it may have been applied", extra={
            "event": "db_write_unconfirmed", "errno": getattr(cause, "errno", None),
            "timed_out": err.timed_out})
        return
    if isinstance(err, StatementTimeout):  # not an outage: a statement ran past the limit
        log.warning("the database did not answer within DB_READ_TIMEOUT", extra={
            "event": "db_timeout", "errno": getattr(cause, "errno", None)})
        return
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
    log.warning("database unavailable: %s", detail,
                extra={"event": "db_unavailable", "errno": getattr(cause, "errno", None)})


def init_app(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(err: APIError):
        return error_response(err.status, err.code, err.message, err.details, err.headers)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        status = err.code or 500
        code, message = HTTP_ERRORS.get(status, (f"http_{status}", err.name))
        response = error_response(status, code, message)
        if getattr(err, "valid_methods", None):
            response.headers["Allow"] = ", ".join(err.valid_methods)
        return response

    def busy() -> Response:
        return error_response(503, "database_busy", "The database is busy; retry shortly.",
                              headers={"Retry-After": str(RETRY_AFTER_BUSY)})

    @app.errorhandler(PoolTimeout)
    def _pool_timeout(_err: PoolTimeout):
        log.warning("no free database connection within the borrow timeout",
                    extra={"event": "db_pool_timeout"})
        return busy()

    @app.errorhandler(DatabaseBusy)
    def _db_busy(err: DatabaseBusy):
        log.warning("the database gave up on a statement: %s", err,
                    extra={"event": "db_busy", "errno": err.errno})
        return busy()

    @app.errorhandler(DatabaseUnavailable)  # DatabaseMisconfigured too: the client's request was fine
    def _db_unavailable(err: DatabaseUnavailable):
        log_database_failure(err)
        return error_response(503, "database_unavailable",
                              "The database is unavailable; retry later.",
                              headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE)})

    @app.errorhandler(WriteOutcomeUnknown)
    def _write_outcome_unknown(err: WriteOutcomeUnknown):
        log_database_failure(err)
        return error_response(503, "write_outcome_unknown",
                              "The database did not confirm this write, which may have been "
                              "applied; read the resource before sending it again.",
                              headers={"Retry-After": str(RETRY_AFTER_UNAVAILABLE)})

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        log.exception("unhandled error", extra={"event": "unhandled_error"})
        return error_response(500, "internal_error", "An unexpected error occurred.")
