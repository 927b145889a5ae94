"""Reference: the same endpoint written with SQLAlchemy Core, for scripts/bench only.

A fair peer, not a straw man: the same query as a Core select(), the same driver (its C
extension), the same session settings and pool size as the project (QueuePool with no
overflow), autocommit, and the same response bytes. What remains is SQLAlchemy's own
per-request path (Connection, compiled-statement cache, Result rows), Flask's jsonify instead
of pydantic, and two commands a request that this driver adds under SQLAlchemy with either
setting for returning connections (the server counts them, tests/test_bench.py): a ping
when SQLAlchemy opens a cursor (mysql-connector's cursor() checks the connection), and on
closing the Connection either a ROLLBACK or, with `skip_autocommit_rollback` as here,
`SELECT @@session.autocommit` (the dialect asks the driver whether autocommit is on, and
the driver asks the server).
The two cost the same within this machine's noise (docs/request-budget.md, round 4).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify
from sqlalchemy import (BigInteger, Column, DateTime, MetaData, String, Table, URL, bindparam,
                        create_engine, func, select)

import reference

users = Table("users", MetaData(), Column("id", BigInteger, primary_key=True),
              Column("email", String(254)), Column("name", String(100)),
              Column("created_at", DateTime), Column("updated_at", DateTime))


def _iso(column):
    return func.date_format(column, reference.TIMESTAMP_FORMAT).label(column.name)


LIST_PAGE = (select(users.c.id, users.c.email, users.c.name, _iso(users.c.created_at),
                    _iso(users.c.updated_at))
             .where(users.c.id > bindparam("after")).order_by(users.c.id)
             .limit(bindparam("limit")))


def create_app(environ=os.environ) -> Flask:
    args = reference.connect_args(environ)
    url = URL.create("mysql+mysqlconnector", username=args.pop("user"),
                     password=args.pop("password"), host=args.pop("host"),
                     port=args.pop("port"), database=args.pop("database"))
    engine = create_engine(url, connect_args=args, pool_size=reference.pool_size(environ),
                           max_overflow=0, pool_timeout=float(environ.get("DB_POOL_TIMEOUT", 2)),
                           isolation_level="AUTOCOMMIT", skip_autocommit_rollback=True)
    app = reference.flask_app(__name__)
    app.extensions["engine"] = engine

    @app.get("/api/users")
    def list_users():
        limit, after = reference.page_args()
        with engine.connect() as conn:
            rows = [row._asdict() for row in conn.execute(LIST_PAGE, {"after": after, "limit": limit})]
        return jsonify(reference.page(rows, limit))

    return app
