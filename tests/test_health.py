"""Health endpoints and how the API answers when the database is busy or gone."""

import json
import uuid

import jsonschema
import pytest

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


def logged_events(capsys, event):
    return [r for r in (json.loads(line) for line in capsys.readouterr().out.splitlines()
                        if line.startswith("{")) if r.get("event") == event]


@pytest.fixture
def db_user(mysql_server):
    """Make a throwaway database user with the given grants; dropped afterwards."""
    made = []

    def make(*grants: str) -> tuple[str, str]:
        name, password = f"u_{uuid.uuid4().hex[:10]}", "pw-" + uuid.uuid4().hex
        mysql_server.sql([f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'"]
                         + [f"GRANT {grant} TO '{name}'@'%'" for grant in grants])
        made.append(name)
        return name, password

    yield make
    for name in made:
        mysql_server.sql([f"DROP USER IF EXISTS '{name}'@'%'"])


def assert_generic_503(response, *secrets):
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.get_json() == {"error": {"code": "database_unavailable",
                                             "message": "The database is unavailable; retry later."}}
    text = response.get_data(as_text=True)
    for secret in secrets:
        assert secret not in text


@pytest.mark.parametrize("case", ["access_denied", "unknown_database", "missing_privilege"])
def test_misconfiguration_is_logged_for_operators_and_generic_for_clients(db_env, db_user, case, capsys):
    """1045, 1049 and 1142 are not outages: the log and /health/ready say what to fix."""
    database = db_env["RDS_DB_NAME"]
    if case == "access_denied":
        user, password = db_user(f"ALL ON `{database}`.*")
        env, errno, says = {**db_env, "RDS_USERNAME": user, "RDS_PASSWORD": "wrong-" + password}, 1045, "Access denied"
    elif case == "unknown_database":
        user, password = db_user(f"ALL ON `{database}\\_%`.*")
        env, errno, says = {**db_env, "RDS_USERNAME": user, "RDS_PASSWORD": password,
                            "RDS_DB_NAME": database + "_missing"}, 1049, "Unknown database"
    else:
        user, password = db_user(f"SELECT ON `{database}`.`users`")  # no INSERT, no schema_migrations
        env, errno, says = {**db_env, "RDS_USERNAME": user, "RDS_PASSWORD": password}, 1142, "command denied"
    client = create_app(env).test_client()
    capsys.readouterr()

    response = client.post("/api/users", json={"email": "m@example.com", "name": "M"})
    assert_generic_503(response, user, password, says, str(errno))
    [record] = logged_events(capsys, "db_misconfigured")
    assert record["reason"] == case and record["errno"] == errno and record["level"] == "ERROR"
    assert says in record["message"]  # the server's own words, for the operator
    assert password not in json.dumps(record)

    ready = client.get("/health/ready")
    assert ready.status_code == 503
    body = ready.get_json()
    assert (body["status"], body["database"], body["reason"]) == ("unavailable", "misconfigured", case)
    assert user not in ready.get_data(as_text=True) and password not in ready.get_data(as_text=True)
    assert [r["reason"] for r in logged_events(capsys, "db_misconfigured")] == [case]


def test_outage_log_carries_the_driver_message_and_errno(db_env, capsys):
    create_app(unreachable(db_env)).test_client().get("/api/users")
    [record] = logged_events(capsys, "db_unavailable")
    assert record["errno"] == 2003 and "Can't connect" in record["message"]


def test_ready_bodies_are_the_documented_ones(db_env, make_database):
    """/openapi.json describes each /health/ready answer: body, status and Retry-After."""
    answers = [create_app(db_env).test_client().get("/health/ready"),
               create_app(unreachable(db_env)).test_client().get("/health/ready"),
               create_app(make_database(migrated=False)).test_client().get("/health/ready")]
    busy_app = create_app({**db_env, "DB_POOL_SIZE": "1"})
    held = busy_app.extensions["database"].borrow()
    try:
        answers.append(busy_app.test_client().get("/health/ready"))
    finally:
        held.release()
    doc = create_app(db_env).test_client().get("/openapi.json").get_json()
    documented = doc["paths"]["/health/ready"]["get"]["responses"]
    seen = set()
    for response in answers:
        spec = documented[str(response.status_code)]
        schema = spec["content"]["application/json"]["schema"]
        jsonschema.validate(response.get_json(), {**schema, "components": doc["components"]})
        if "Retry-After" in response.headers:
            assert "Retry-After" in spec["headers"]
        seen.add(response.get_json()["database"])
    assert seen == {"ok", "unreachable", "schema_behind", "busy"}
