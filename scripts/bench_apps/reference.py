"""What every reference app of scripts/bench does exactly as the project does.

The references answer the bench's URL with the project's response: the same query (columns,
server-formatted UTC timestamps, keyset page), the same JSON bytes and the same headers
(Content-Type, Content-Length, X-Request-Id, Cache-Control, X-Content-Type-Options). What
differs is only the path from socket to bytes, which is what the benchmark compares. Not a template for applications.
"""

from __future__ import annotations

import os
import secrets

from flask import Flask, request

# The project's query (app/users/repository.py), written out again.
TIMESTAMP_FORMAT = "%Y-%m-%dT%TZ"
SELECT_PAGE = ("SELECT id, email, name, DATE_FORMAT(created_at, '%Y-%m-%dT%TZ') AS created_at, "
               "DATE_FORMAT(updated_at, '%Y-%m-%dT%TZ') AS updated_at "
               "FROM users WHERE id > %s ORDER BY id LIMIT %s")
# Session settings as the project's (app/db/connection.py): UTC, utf8mb4, autocommit reads.
SESSION = {"time_zone": "+00:00", "charset": "utf8mb4", "collation": "utf8mb4_unicode_ci"}


# The headers app/web.py's SecurityHeaders adds to every response, written out again.
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"))


def flask_app(name: str) -> Flask:
    """Flask as the project configures it for this response: keys in the code's order, UTF-8
    JSON (pydantic writes non-ASCII as is), an X-Request-Id and SECURITY_HEADERS on every
    response."""
    app = Flask(name)
    app.json.sort_keys = False
    app.json.ensure_ascii = False
    inner = app.wsgi_app

    def with_request_id(environ, start_response):
        # As the project's middleware (app/logs.py) answers a caller that gave no id (wrk
        # gives none): a new id in the environ and in the response's headers.
        request_id = environ["app.request_id"] = secrets.token_hex(16)

        def start_with_id(status, headers, exc_info=None):
            headers.extend(SECURITY_HEADERS)
            headers.append(("X-Request-Id", request_id))
            return start_response(status, headers, exc_info)

        return inner(environ, start_with_id)

    app.wsgi_app = with_request_id
    return app


def page_args() -> tuple[int, int]:
    """?limit= (1-100, default 20) and ?after= (default 0), clamped like a typical app."""
    limit = min(max(request.args.get("limit", 20, type=int), 1), 100)
    after = max(request.args.get("after", 0, type=int), 0)
    return limit, after


def page(rows: list[dict], limit: int) -> dict:
    return {"data": rows, "next_after": rows[-1]["id"] if len(rows) == limit else None}


def connect_args(environ=os.environ) -> dict:
    """The bench's local server: plain TCP, the project's session settings."""
    return {"host": environ["RDS_HOSTNAME"], "port": int(environ["RDS_PORT"]),
            "user": environ["RDS_USERNAME"], "password": environ["RDS_PASSWORD"],
            "database": environ["RDS_DB_NAME"], "ssl_disabled": True, **SESSION}


def pool_size(environ=os.environ) -> int:
    """DB_POOL_SIZE, which scripts/bench sets to the project's pool size for every app."""
    return int(environ["DB_POOL_SIZE"])
