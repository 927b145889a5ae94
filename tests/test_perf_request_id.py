"""The request id, now read from the WSGI environ (scripts/profile-request's cheaper path),
still follows its rules: the load balancer's trace id first, then the caller's X-Request-Id,
each only if it is safe to echo and log; otherwise a new one."""

from __future__ import annotations


def test_trace_id_wins_then_the_callers_id_then_a_new_one(client):
    trace, mine = "Root=1-67891233-abcdef012345678912345678", "my-id_1.2:3"
    both = client.get("/api/users?limit=1", headers={"X-Amzn-Trace-Id": trace, "X-Request-Id": mine})
    assert both.headers["X-Request-Id"] == trace
    assert client.get("/api/users?limit=1", headers={"X-Request-Id": mine}).headers["X-Request-Id"] == mine
    # An unsafe trace id falls through to the caller's id; an unsafe id of both kinds, to a new one.
    unsafe = client.get("/api/users?limit=1",
                        headers={"X-Amzn-Trace-Id": "a b", "X-Request-Id": mine})
    assert unsafe.headers["X-Request-Id"] == mine
    fresh = client.get("/api/users?limit=1",
                       headers={"X-Amzn-Trace-Id": "a b", "X-Request-Id": "x" * 201})
    value = fresh.headers["X-Request-Id"]
    assert len(value) == 32 and int(value, 16) >= 0
