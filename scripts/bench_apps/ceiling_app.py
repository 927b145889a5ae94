"""Reference: the framework ceiling, for scripts/bench only.

The project's response to the bench's URL, served from memory by Flask under the same gunicorn
config: the body bytes the project returned (scripts/bench saves them in BENCH_BODY_FILE), the
same headers, and per request only routing, the request id and the JSON access log. No
database, no validation, no JSON encoding: no app that queries per request can be faster on
this stack.
"""

from __future__ import annotations

import os

from flask import Flask, Response

import reference


def create_app(environ=os.environ) -> Flask:
    with open(environ["BENCH_BODY_FILE"], "rb") as f:
        body = f.read()
    app = reference.flask_app(__name__)

    @app.get("/api/users")
    def list_users():
        return Response(body, mimetype="application/json")

    return app
