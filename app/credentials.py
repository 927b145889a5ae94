"""Credentials for each new physical database connection.

The pool calls a provider every time it opens a connection, never once at startup, so a
source whose credentials change (a rotated secret, an expiring IAM token) is asked again
instead of being frozen into the pool. This is the only module that may know about AWS.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from app.config import AuthMode, Settings


@dataclass(frozen=True)
class Credentials:
    """A user and password for one connection attempt; the password never shows in repr."""

    user: str
    password: str = field(repr=False)


class CredentialProvider(Protocol):
    """What the connection opener needs from a credential source."""

    description: str

    def candidates(self) -> Iterator[Credentials]:
        """Yield credentials to try, best first.

        The opener takes the next one only after the server refused the previous one with
        "access denied", so later candidates (a refreshed or pending secret) cost nothing on
        the normal path.
        """


@dataclass(frozen=True)
class StaticPassword:
    """RDS_USERNAME and RDS_PASSWORD, as Beanstalk sets them for a coupled RDS instance."""

    user: str
    password: str = field(repr=False)
    description: str = "password from RDS_PASSWORD"

    def candidates(self) -> Iterator[Credentials]:
        yield Credentials(self.user, self.password)


def provider_for(settings: Settings) -> CredentialProvider:
    """Build the provider DB_AUTH selects."""
    if settings.auth is AuthMode.PASSWORD:
        assert settings.password is not None  # enforced by Settings
        return StaticPassword(settings.user, settings.password.get_secret_value())
    raise NotImplementedError(settings.auth)  # pragma: no cover - Settings rejects other modes
