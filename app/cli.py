"""Operator commands: `flask --app application migrate` and `flask --app application seed`."""

from __future__ import annotations

import json

import click
import mysql.connector
from flask import Flask, current_app

from app import migrate as migrations
from app.db.errors import DatabaseUnavailable
from app.users import repository

SAMPLE_USERS = [
    ("ada@example.com", "Ada Lovelace"),
    ("grace@example.com", "Grace Hopper"),
    ("alan@example.com", "Alan Turing"),
    ("edsger@example.com", "Edsger Dijkstra"),
    ("barbara@example.com", "Barbara Liskov"),
]


@click.command("migrate")
def migrate_command() -> None:
    """Apply pending schema migrations (safe to run on several instances at once)."""
    database = current_app.extensions["database"]
    try:
        conn = migrations.connect(database.settings, database.opener.credentials)
        try:
            done = migrations.apply(conn)
        finally:
            migrations.close_quietly(conn)
    except (migrations.MigrationError, DatabaseUnavailable, mysql.connector.Error) as err:
        raise _failure(err, database) from None
    click.echo(json.dumps({"event": "migrate", "applied": done}))


@click.command("seed")
def seed_command() -> None:
    """Insert the sample users that are not there yet (for local development)."""
    database = current_app.extensions["database"]
    created = 0
    try:
        lease = database.borrow()
        try:
            for email, name in SAMPLE_USERS:
                try:
                    repository.create_user(lease, email=email, name=name)
                    created += 1
                except repository.EmailTaken:
                    pass
        finally:
            lease.release()
    except (DatabaseUnavailable, mysql.connector.Error) as err:
        # One line, as `flask migrate` says it; the pool's own message hides the driver's error.
        cause = err.__cause__ if isinstance(err.__cause__, mysql.connector.Error) else err
        if getattr(cause, "errno", None) == 1146:  # ER_NO_SUCH_TABLE
            raise click.ClickException(
                f"the database {database.settings.database!r} has no users table (MySQL error 1146): "
                "apply the migrations first: python -m app.migrate") from None
        raise _failure(cause, database) from None
    click.echo(json.dumps({"event": "seed", "created": created}))


def _failure(err: Exception, database) -> click.ClickException:
    """One line and exit status, as `python -m app.migrate` has them (click adds "Error: ")."""
    failure = click.ClickException(migrations.failure_line(
        err, database.settings, database.opener.credentials.description))
    failure.exit_code = migrations.exit_status(err)
    return failure


def init_app(app: Flask) -> None:
    app.cli.add_command(migrate_command)
    app.cli.add_command(seed_command)
