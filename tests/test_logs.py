"""Structured logs: JSON lines with the request id, and no secrets."""

import json

from app import create_app


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_log_lines_are_json_with_the_request_id(db_env, capsys):
    app = create_app(db_env)
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793"
    assert app.test_client().get("/api/users", headers={"X-Amzn-Trace-Id": trace}).status_code == 200
    records = json_lines(capsys.readouterr().out)
    opened = [r for r in records if r.get("event") == "db_connect"]
    assert opened and opened[0]["request_id"] == trace and opened[0]["level"] == "INFO"
    assert {"time", "logger", "message", "pid", "connection_id"} <= set(opened[0])


def test_password_never_appears_in_logs_or_responses(make_database, capsys):
    env = make_database()
    canary = "canary-Pw-7f3a9d"
    env_bad = {**env, "RDS_PASSWORD": canary, "LOG_LEVEL": "DEBUG"}
    app = create_app(env_bad)
    bodies = [app.test_client().get(url).get_data(as_text=True)
              for url in ("/api/users", "/health/ready", "/api/users/1")]
    out = capsys.readouterr()
    assert canary not in out.out + out.err + "".join(bodies)
    assert any(r.get("event") == "db_misconfigured" and r.get("errno") == 1045
               and r.get("reason") == "access_denied"
               for r in json_lines(out.out))


def test_error_responses_and_their_log_lines_carry_one_request_id(make_database, capsys):
    """The request id middleware wraps everything Flask answers: an outage's 503 (with its
    log line), Werkzeug's own 413 and 404 each carry exactly one X-Request-Id."""
    app = create_app({**make_database(), "RDS_PASSWORD": "not-the-password"})
    client = app.test_client()
    response = client.get("/api/users", headers={"X-Request-Id": "req-42"})
    assert response.status_code == 503 and response.headers.getlist("X-Request-Id") == ["req-42"]
    logged = [r for r in json_lines(capsys.readouterr().out) if r.get("event") == "db_misconfigured"]
    assert logged and {r["request_id"] for r in logged} == {"req-42"}
    too_large = client.post("/api/users", data=b"x" * 20_000, content_type="application/json")
    missing = client.get("/nowhere")
    for response, status in ((too_large, 413), (missing, 404)):
        assert response.status_code == status
        (request_id,) = response.headers.getlist("X-Request-Id")
        assert len(request_id) == 32


def test_a_request_id_with_a_line_break_is_replaced_not_echoed(db_env, capsys):
    """gunicorn refuses a CR or LF in a header; a WSGI server that lets one through (an obs-fold
    unfolded, a trailing newline) must not get it echoed into X-Request-Id or a log line."""
    client = create_app(db_env).test_client()
    for given in ("req-1\n", "req-1\r\nSet-Cookie: s=1", "\nreq-1"):
        response = client.get("/health", environ_overrides={"HTTP_X_REQUEST_ID": given})
        assert response.status_code == 200
        (echoed,) = response.headers.getlist("X-Request-Id")
        assert len(echoed) == 32 and echoed != given  # a fresh id instead
    assert "req-1" not in capsys.readouterr().out
