"""How requests fail, and what they leave behind, when code or the database misbehaves."""

import mysql.connector
import pytest
from flask import Blueprint, jsonify

from app import create_app
from app.db import get_db
from conftest import connect


def fault_routes(seen: list) -> Blueprint:
    """Test-only routes: never part of the production app."""
    bp = Blueprint("faults", __name__, url_prefix="/_test")

    @bp.post("/fail-mid-transaction")
    def fail_mid_transaction():
        db = get_db()
        seen.append(db.connection_id)
        db.execute("START TRANSACTION")
        db.execute("INSERT INTO users (email, name) VALUES ('locked@example.com', 'L')")
        db.query("SELECT id FROM users WHERE email = 'locked@example.com' FOR UPDATE")
        raise RuntimeError("a bug after the write, before any commit")

    @bp.get("/session")
    def session():
        db = get_db()
        [row] = db.query("SELECT CONNECTION_ID() AS id, (SELECT COUNT(*) FROM users) AS users")
        # The server's status flag, as the OK packet of that query carried it.
        return jsonify(connection_id=row["id"], users=row["users"],
                       in_transaction=db.connection.in_transaction)

    return bp


@pytest.fixture
def faulty_app(db_env):
    seen: list[int] = []
    app = create_app({**db_env, "DB_POOL_SIZE": "1"})
    app.register_blueprint(fault_routes(seen))
    app.config["SEEN"] = seen
    yield app
    app.extensions["database"].dispose()


def test_failed_request_leaves_no_transaction_or_locks_on_its_connection(faulty_app, db_env):
    client = faulty_app.test_client()
    response = client.post("/_test/fail-mid-transaction")
    assert response.status_code == 500 and response.get_json()["error"]["code"] == "internal_error"

    after = client.get("/_test/session").get_json()
    assert after["connection_id"] == faulty_app.config["SEEN"][0]  # the same, returned connection
    assert after == {"connection_id": after["connection_id"], "users": 0, "in_transaction": False}

    other = connect(db_env)  # the row lock is gone: another session writes that row at once
    try:
        cur = other.cursor()
        cur.execute("SET SESSION innodb_lock_wait_timeout = 1")
        cur.execute("INSERT INTO users (email, name) VALUES ('locked@example.com', 'Other')")
    finally:
        other.close()
    assert client.get("/_test/session").get_json()["users"] == 1
