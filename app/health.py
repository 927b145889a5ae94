"""Health endpoints.

`/health` is what the load balancer checks: it never touches the database, so a database
blip does not make Beanstalk replace healthy instances. `/health/ready` is for operators
and deploy checks: it proves this worker can use a pooled connection.
"""

from __future__ import annotations

import os

from flask import Blueprint, current_app, jsonify

from app.db import DatabaseUnavailable, PoolTimeout

bp = Blueprint("health", __name__, url_prefix="/health")


@bp.get("")
def health():
    return jsonify(status="ok")


@bp.get("/ready")
def ready():
    pool = current_app.extensions["database"].pool
    status, code, headers = "ready", 200, {}
    if pool.stats()["idle"] == 0 and pool.stats()["open"] >= pool.size:
        database = "busy"  # every connection is serving a request: the database answers
    else:
        try:
            lease = pool.borrow()
        except PoolTimeout:
            database = "busy"
        except DatabaseUnavailable:
            status, code, database = "unavailable", 503, "unreachable"
            headers = {"Retry-After": "5"}
        else:
            try:
                lease.query("SELECT 1")
                database = "ok"
            except DatabaseUnavailable:
                status, code, database = "unavailable", 503, "unreachable"
                headers = {"Retry-After": "5"}
            finally:
                lease.release()
    body = jsonify(status=status, database=database, pid=os.getpid(), pool=pool.stats())
    return body, code, headers
