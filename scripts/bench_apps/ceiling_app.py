"""Reference: the no-database ceiling, for scripts/bench only.

Serves the bytes the project's GET /api/users returned, from memory, through Flask and the
same gunicorn settings: what the stack costs without a database.
"""

import os

from flask import Flask, Response

app = Flask(__name__)
with open(os.environ["BENCH_BODY_FILE"], "rb") as f:
    BODY = f.read()


@app.get("/api/users")
def list_users():
    return Response(BODY, mimetype="application/json")


application = app
