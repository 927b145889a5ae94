"""SQL for the users table; the only module that knows the table's columns."""

from __future__ import annotations

import functools
import logging
from typing import Any

from mysql.connector import errorcode
from mysql.connector.errors import IntegrityError

from app.db import DatabaseBusy, Lease

log = logging.getLogger(__name__)

# Timestamps are formatted by the server (UTC sessions): no datetime objects per row.
_COLUMNS = ("id, email, name, DATE_FORMAT(created_at, '%Y-%m-%dT%TZ') AS created_at, "
            "DATE_FORMAT(updated_at, '%Y-%m-%dT%TZ') AS updated_at")
_UPDATABLE = ("email", "name")  # column names are never taken from input


class EmailTaken(Exception):
    """Another user already has this email address.

    The server decides, by the unique key on email_key = LOWER(email) (migration 0002): the
    comparison is defined once, in the schema, and holds for every writer.
    """


def _retried_after_deadlock(write):
    """Run a write once more when the server ended it as a deadlock's victim (1213).

    Writes of the same email deadlock in InnoDB's duplicate checks: two creates of an address
    whose holder was just deleted each lock the deleted row and the next key, then wait for
    each other to insert. The server rolls the victim's whole transaction back, so nothing of
    it was applied and running it again from its start is safe: the client gets the answer the
    conflict deserves (409 email_taken, or its 201), not a 503. A second deadlock is 503
    database_busy; a lock wait timeout (1205) is never retried, a second try would wait as long.
    """
    @functools.wraps(write)
    def run(db: Lease, *args, **kwargs):
        try:
            return write(db, *args, **kwargs)
        except DatabaseBusy as err:
            if not err.rolled_back:
                raise
            log.warning("deadlock: the server rolled the transaction back; running it again once",
                        extra={"event": "db_deadlock_retried", "errno": err.errno})
        return write(db, *args, **kwargs)
    return run


def list_users(db: Lease, *, limit: int, after: int) -> list[dict[str, Any]]:
    return db.query(
        f"SELECT {_COLUMNS} FROM users WHERE id > %s ORDER BY id LIMIT %s", (after, limit))


def get_user(db: Lease, user_id: int) -> dict[str, Any] | None:
    rows = db.query(f"SELECT {_COLUMNS} FROM users WHERE id = %s", (user_id,))
    return rows[0] if rows else None


@_retried_after_deadlock
def create_user(db: Lease, *, email: str, name: str) -> dict[str, Any]:
    """Insert and read the row back in one transaction: ids are sequential, and a DELETE of
    the next id that came between an autocommitted INSERT and its read left no row to return.
    The new row's lock makes such a DELETE wait for the COMMIT. On an error the lease rolls
    the transaction back when it is released.

    READ WRITE: a read-only server (a writer mid-failover) refuses the START itself (1290),
    outside any transaction, so the lease retries it once on a fresh connection as it would
    the INSERT; a plain START would succeed there and leave the INSERT's refusal unretried.
    The START changes nothing, so a pooled connection found dead by it is retried too.
    """
    db.execute("START TRANSACTION READ WRITE", idempotent=True)
    try:
        _, user_id = db.execute("INSERT INTO users (email, name) VALUES (%s, %s)", (email, name))
    except IntegrityError as err:
        if err.errno == errorcode.ER_DUP_ENTRY:
            raise EmailTaken(email) from None
        raise
    user = get_user(db, user_id)
    db.execute("COMMIT")
    assert user is not None
    return user


@_retried_after_deadlock
def update_user(db: Lease, user_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
    """Apply changes and return the user as they left it, or None when there is no such user.

    In one transaction, as create_user: the UPDATE's row lock holds until the row is read back,
    so a write of the same user that comes next waits for the COMMIT. Autocommitted, such a
    PATCH landed between the two and the client got its value (200 with another client's
    name), or a DELETE did and it got 404 user_not_found for a change it had made.
    """
    columns = [c for c in _UPDATABLE if c in changes]
    if not columns:
        return get_user(db, user_id)
    db.execute("START TRANSACTION READ WRITE", idempotent=True)
    assignments = ", ".join(f"{c} = %s" for c in columns)
    try:
        db.execute(f"UPDATE users SET {assignments} WHERE id = %s",
                   [changes[c] for c in columns] + [user_id])
    except IntegrityError as err:
        if err.errno == errorcode.ER_DUP_ENTRY:
            raise EmailTaken(changes.get("email")) from None
        raise
    user = get_user(db, user_id)
    db.execute("COMMIT")
    return user


@_retried_after_deadlock
def delete_user(db: Lease, user_id: int) -> bool:
    deleted, _ = db.execute("DELETE FROM users WHERE id = %s", (user_id,))
    return deleted > 0
