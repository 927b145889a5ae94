"""Reference: the ceiling plus the project's query, for scripts/bench only.

The ceiling app (the project's bytes from memory) that also sends the project's query for
those bytes and reads every row before it answers: one round trip a request and nothing
else. Each gunicorn thread keeps one connection of its own (no pool, no borrow), the rows
are read by the project's own read of the C extension's session (app/db/pool.py's
`_read_cext`, so the two cannot drift apart) and thrown away; no query-string parsing, no
validation, no row shaping, no JSON encoding, no error handling. Any app that makes this
query per request and reads its rows this way does at least this work, so its req/s over the
ceiling's is what one round trip costs here, and the project's over its req/s is what
everything else the project does costs.
"""

from __future__ import annotations

import json
import os
import threading

import mysql.connector
from flask import Flask, Response

import reference
from app.db.pool import _read_cext


def create_app(environ=os.environ) -> Flask:
    with open(environ["BENCH_BODY_FILE"], "rb") as f:
        body = f.read()
    rows = len(json.loads(body)["data"])  # the page's query: the first `rows` users
    statement = reference.SELECT_PAGE.replace("%s", "{}").format(0, rows).encode()
    if not mysql.connector.HAVE_CEXT:
        raise SystemExit("roundtrip: mysql-connector's C extension did not load; this reference "
                         "reads through it")
    args = {**reference.connect_args(environ), "use_pure": False, "autocommit": True}
    sessions = threading.local()
    app = reference.flask_app(__name__)
    app.extensions["roundtrip_sessions"] = sessions  # tests close this thread's connection

    @app.get("/api/users")
    def list_users():
        conn = getattr(sessions, "conn", None)
        if conn is None:
            conn = sessions.conn = mysql.connector.connect(**args)
        _names, read = _read_cext(conn, statement)
        if len(read) != rows:
            raise RuntimeError(f"the query returned {len(read)} rows, the page has {rows}")
        return Response(body, mimetype="application/json")

    return app
