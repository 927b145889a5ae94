"""A refused password must not turn every connection attempt into Secrets Manager calls.

The pool, the opener, the database and Secrets Manager (moto) are real; only the provider's
clock is frozen and moved by hand, so the number of GetSecretValue calls follows from the
backoff policy alone, however fast the threads run. Calls are counted with botocore's own
event hook on the provider's client.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from app.config import load_settings
from app.credentials import (REFRESH_BACKOFF, REFRESH_BACKOFF_MAX, SecretsManagerPassword,
                             complete_settings)
from app.db.connection import ConnectionOpener
from app.db.errors import DatabaseUnavailable
from app.db.pool import ConnectionPool
from test_secrets import CANARY, app_env, aws, db_user, rotate_to, secret  # noqa: F401

ROUND = 3  # AWSCURRENT, AWSPENDING, AWSCURRENT: the most one refresh round may call
THREADS = 8


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def setup(secret):
    clock = Clock()
    settings = load_settings(app_env(secret))
    client = boto3.session.Session().client("secretsmanager", region_name="eu-west-1")
    provider = SecretsManagerPassword(secret, client, clock=clock)
    settings = complete_settings(settings, provider)
    pool = ConnectionPool(ConnectionOpener(settings, provider), size=THREADS, timeout=10,
                          max_lifetime=1800, idle_ping=30)
    calls: list[str] = []
    client.meta.events.register("provide-client-params.secrets-manager.GetSecretValue",
                                lambda params, **_: calls.append(params.get("VersionStage")))
    yield pool, calls, clock
    pool.dispose()


def borrow_together(pool, attempts_each=5):
    """THREADS threads borrow at once, each holding its lease until all have tried."""
    barrier = threading.Barrier(THREADS)
    outcomes = []

    def work(_):
        for _ in range(attempts_each):
            barrier.wait()
            try:
                lease = pool.borrow()
            except DatabaseUnavailable:
                outcomes.append("unavailable")
                barrier.wait()
                continue
            outcomes.append("ok")
            barrier.wait()  # every thread needs a connection of its own
            lease.release()
        pool.dispose()

    with ThreadPoolExecutor(THREADS) as executor:
        list(executor.map(work, range(THREADS)))
    return outcomes


def test_a_wrong_password_costs_one_lookup_round_per_backoff_period(setup, db_user):
    pool, calls, clock = setup
    right = db_user["password"]  # the one in the secret
    db_user["set_password"](CANARY.format("nobody-knows"))
    assert set(borrow_together(pool)) == {"unavailable"}  # 40 attempts, one round
    assert calls == ["AWSCURRENT", "AWSPENDING", "AWSCURRENT"]

    clock.now += REFRESH_BACKOFF * 0.9
    borrow_together(pool)
    assert len(calls) == ROUND  # still inside the first backoff period
    clock.now += REFRESH_BACKOFF * 0.2
    borrow_together(pool)
    assert len(calls) == 2 * ROUND  # one more round, and the period doubles
    clock.now += 2 * REFRESH_BACKOFF * 0.9
    borrow_together(pool)
    assert len(calls) == 2 * ROUND
    clock.now += 2 * REFRESH_BACKOFF * 0.2
    borrow_together(pool)
    assert len(calls) == 3 * ROUND

    # However long it lasts, the period stops growing at the cap: one round per cap after that.
    for _ in range(12):
        clock.now += REFRESH_BACKOFF_MAX
        borrow_together(pool, attempts_each=1)
    rounds = len(calls) // ROUND
    assert 3 + 12 - 6 <= rounds <= 3 + 12  # the doubling reaches 60 s within 6 periods

    # The password is right again: connections open with the cached secret, and a later
    # refusal is looked into at once (a success resets the backoff).
    db_user["set_password"](right)
    before = len(calls)
    assert set(borrow_together(pool, attempts_each=1)) == {"ok"}
    assert len(calls) == before
    db_user["set_password"](CANARY.format("again-wrong"))
    borrow_together(pool, attempts_each=1)
    assert len(calls) == before + ROUND


def test_threads_refused_together_share_one_lookup(setup, aws, secret, db_user):
    """A rotation: every thread is refused the cached password; one call serves them all."""
    pool, calls, _clock = setup
    rotate_to(aws, secret, db_user, CANARY.format("rotated"))
    assert set(borrow_together(pool, attempts_each=1)) == {"ok"}
    assert calls == ["AWSCURRENT"]
    assert set(borrow_together(pool, attempts_each=3)) == {"ok"}  # the new one is cached now
    assert calls == ["AWSCURRENT"]


def test_during_a_rotation_window_the_pending_password_is_looked_up_once(setup, aws, secret, db_user):
    """The database has AWSPENDING, AWSCURRENT is still old: new connections keep using the
    version that worked instead of being refused the old one and asking again."""
    pool, calls, _clock = setup
    rotate_to(aws, secret, db_user, CANARY.format("pending"), finish=False)
    assert set(borrow_together(pool, attempts_each=3)) == {"ok"}
    assert calls == ["AWSCURRENT", "AWSPENDING"]
