"""Health endpoints.

`/health` is what the load balancer checks: it never touches the database, so a database
blip does not make Beanstalk replace healthy instances. `/health/ready` is for operators
and the postdeploy smoke check: it proves this worker can use a pooled connection and that
the schema has every migration this code ships.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from flask import Blueprint, current_app, jsonify
from pydantic import Field
from typing_extensions import NotRequired, TypedDict

from app import migrate
from app.db import DatabaseBusy, DatabaseUnavailable, PoolTimeout
from app.db.errors import DatabaseMisconfigured
from app.errors import RETRY_AFTER_UNAVAILABLE, log_database_failure

bp = Blueprint("health", __name__, url_prefix="/health")


class PoolStats(TypedDict):
    size: int
    open: int
    in_use: int
    idle: int
    waiting: int
    borrow_timeouts: int
    opened: int
    closed: int


class SchemaVersions(TypedDict):
    applied: int
    expected: int


class Readiness(TypedDict):
    """Body of GET /health/ready (200 and 503)."""

    status: Literal["ready", "unavailable", "schema_behind"]
    database: Literal["ok", "busy", "unreachable", "misconfigured", "schema_behind"]
    pid: int
    pool: PoolStats
    reason: NotRequired[Annotated[str, Field(
        description="With database misconfigured: what to fix, e.g. access_denied.")]]
    schema: NotRequired[Annotated[SchemaVersions, Field(
        description="With schema_behind: the newest migration applied and the one expected.")]]


@bp.get("")
def health():
    return jsonify(status="ok")


@bp.get("/ready")
def ready():
    pool = current_app.extensions["database"].pool
    status, code, headers, extra = "ready", 200, {}, {}
    before = pool.stats()  # one snapshot: idle and open from the same moment
    if before["idle"] == 0 and before["open"] >= pool.size:
        database = "busy"  # every connection is serving a request: the database answers
    else:
        lease = None
        try:
            lease = pool.borrow()
            applied = migrate.applied_version(lease)
            database = "ok"
        except (PoolTimeout, DatabaseBusy):  # the database answers: it gave up on a lock or a time limit
            database = "busy"
        except DatabaseUnavailable as err:
            log_database_failure(err)
            status, code, headers = "unavailable", 503, {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)}
            if isinstance(err, DatabaseMisconfigured):  # credentials, database name or grants
                database, extra["reason"] = "misconfigured", err.reason
            else:
                database = "unreachable"
        finally:
            if lease is not None:
                lease.release()
        if database == "ok":
            expected = current_app.config["SCHEMA_VERSION"]
            if applied < expected:
                # A newer schema is fine (old code serves during a rolling deploy); an older
                # one means the leader-only migration did not run or failed.
                status, code, database = "schema_behind", 503, "schema_behind"
                extra["schema"] = {"applied": applied, "expected": expected}
    body = jsonify(status=status, database=database, pid=os.getpid(), pool=pool.stats(), **extra)
    return body, code, headers
