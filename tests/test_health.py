"""Health endpoints and how the API answers when the database is busy or gone."""

import json

import localdb
from app import migrate
from conftest import connect
from app import create_app


def unreachable(env):
    return {**env, "RDS_PORT": str(localdb.free_port())}


def test_health_never_touches_the_database(db_env):
    app = create_app(unreachable(db_env))
    response = app.test_client().get("/health")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}
    assert app.extensions["database"].pool.stats()["opened"] == 0


def test_ready_reports_pool_statistics(client):
    response = client.get("/health/ready")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "ready" and body["database"] == "ok"
    assert body["pool"] == {"size": 8, "open": 1, "in_use": 0, "idle": 1, "waiting": 0,
                            "borrow_timeouts": 0, "opened": 1, "closed": 0}


def test_ready_is_503_when_the_database_is_unreachable(db_env):
    response = create_app(unreachable(db_env)).test_client().get("/health/ready")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.get_json()["database"] == "unreachable"


def test_ready_does_not_wait_when_every_connection_is_busy(db_env):
    app = create_app({**db_env, "DB_POOL_SIZE": "1", "DB_POOL_TIMEOUT": "30"})
    held = app.extensions["database"].borrow()
    try:
        response = app.test_client().get("/health/ready")
        assert response.status_code == 200 and response.get_json()["database"] == "busy"
    finally:
        held.release()


def test_exhausted_pool_answers_503_with_retry_after(db_env):
    app = create_app({**db_env, "DB_POOL_SIZE": "1", "DB_POOL_TIMEOUT": "0.3"})
    held = app.extensions["database"].borrow()
    try:
        response = app.test_client().get("/api/users")
    finally:
        held.release()
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.get_json() == {"error": {"code": "database_busy",
                                             "message": "The database is busy; retry shortly."}}
    assert app.test_client().get("/api/users").status_code == 200


def test_unreachable_database_answers_503_without_driver_details(db_env, capsys):
    app = create_app(unreachable(db_env))
    for method, url, body in [("get", "/api/users", None), ("get", "/api/users/1", None),
                              ("post", "/api/users", {"email": "a@example.com", "name": "A"}),
                              ("patch", "/api/users/1", {"name": "B"}), ("delete", "/api/users/1", None)]:
        response = getattr(app.test_client(), method)(url, json=body)
        assert response.status_code == 503, (method, url)
        assert response.headers["Retry-After"] == "5"
        assert response.get_json()["error"]["code"] == "database_unavailable"
        text = response.get_data(as_text=True)
        assert "127.0.0.1" not in text and "2003" not in text and "Traceback" not in text
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(r.get("event") == "db_unavailable" and r.get("errno") == 2003 for r in logged)


def test_unexpected_errors_are_500_json_without_details(app):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {"error": {"code": "internal_error",
                                             "message": "An unexpected error occurred."}}


def test_ready_fails_while_the_schema_is_behind_the_code(make_database):
    """The postdeploy smoke check asks /health/ready: an unmigrated database must fail the deploy."""
    env = make_database(migrated=False)
    client = create_app(env).test_client()
    response = client.get("/health/ready")
    assert response.status_code == 503
    body = response.get_json()
    assert (body["status"], body["database"]) == ("schema_behind", "schema_behind")
    assert body["schema"] == {"applied": 0, "expected": migrate.latest_version()}
    assert migrate.latest_version() >= 1

    conn = connect(env)
    try:
        migrate.apply(conn, migrate.discover()[:-1])  # all but the newest: still behind
        behind = client.get("/health/ready")
        migrate.apply(conn)
    finally:
        conn.close()
    assert behind.status_code == 503 and behind.get_json()["schema"]["expected"] > behind.get_json()["schema"]["applied"]
    assert client.get("/health/ready").status_code == 200
