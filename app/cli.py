"""Operator commands: `flask --app application migrate` and `flask --app application seed`.

Their help needs no configuration: `flask --app application --help` (and `migrate --help`)
with no settings at all lists them, as Flask's tutorial app does; the configuration error is
the answer of a command that needs the database (unconfigured_app).
"""

from __future__ import annotations

import json

import click
import mysql.connector
from flask import Flask, current_app

from app import migrate as migrations
from app.config import ConfigError
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
    database = _database()
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
    database = _database()
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


def _database():
    """The app's database; for an app built without one (unconfigured_app), its configuration
    error, as the one `Error:` message and exit status `python -m app.migrate` gives it."""
    err = current_app.extensions.get("config_error")
    if err is not None:
        failure = click.ClickException(migrations.failure_line(err, None))
        failure.exit_code = migrations.exit_status(err)
        raise failure
    return current_app.extensions["database"]


def _failure(err: Exception, database) -> click.ClickException:
    """One line and exit status, as `python -m app.migrate` has them (click adds "Error: ")."""
    failure = click.ClickException(migrations.failure_line(
        err, database.settings, database.opener.credentials.description))
    failure.exit_code = migrations.exit_status(err)
    return failure


def looking_up_commands() -> bool:
    """True while the Flask CLI loads the app only to list or find its commands (`flask --help`,
    `flask migrate --help`, the lookup before `flask migrate` runs): its group's context is the
    current one. A command that uses the app itself (run, shell, routes) loads it in its own."""
    context = click.get_current_context(silent=True)
    return context is not None and isinstance(context.command, click.Group)


def unconfigured_app(err: ConfigError) -> Flask:
    """An app holding only the commands, for the Flask CLI's lookups when the configuration is
    unusable: their help is shown, and running one says what to fix (_database)."""
    app = Flask("application")
    app.extensions["config_error"] = err
    init_app(app)
    return app


def init_app(app: Flask) -> None:
    app.cli.add_command(migrate_command)
    app.cli.add_command(seed_command)
