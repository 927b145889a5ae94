"""A test-only WSGI app: the production app plus a slow route, for gunicorn-level tests.

Never part of the production app. Started with the Procfile's command and gunicorn.conf.py,
with `tests.slow_app:application` as the app (see slow_gunicorn in tests/test_resilience.py).
"""

from flask import Blueprint, jsonify, request

from app import create_app
from app.db import get_db

bp = Blueprint("slow", __name__, url_prefix="/_test")


@bp.get("/sleep")
def sleep():
    """Hold a pooled connection for `s` seconds in one query; say which connection it was."""
    seconds = min(float(request.args.get("s", "0.2")), 10.0)
    [row] = get_db().query("SELECT SLEEP(%s) AS slept, CONNECTION_ID() AS id", (seconds,))
    return jsonify(connection_id=row["id"])


application = create_app()
application.register_blueprint(bp)
