"""Reference: the usual tutorial pattern, for scripts/bench only.

A MySQLConnectionPool(pool_size=5) and get_connection() per request: get_connection() raises
"pool exhausted" at once when six threads want a connection (its non-2xx responses are the
point). Same query, session settings and response bytes as the project.
"""

from __future__ import annotations

import os

import mysql.connector.pooling
from flask import Flask, jsonify

import reference


def create_app(environ=os.environ) -> Flask:
    pool = mysql.connector.pooling.MySQLConnectionPool(
        pool_name="tutorial", pool_size=5, autocommit=True, **reference.connect_args(environ))
    app = reference.flask_app(__name__)

    @app.get("/api/users")
    def list_users():
        limit, after = reference.page_args()
        conn = pool.get_connection()
        try:
            cursor = conn.cursor(dictionary=True)
            cursor.execute(reference.SELECT_PAGE, (after, limit))
            rows = cursor.fetchall()
            cursor.close()
        finally:
            conn.close()
        return jsonify(reference.page(rows, limit))

    return app
