"""Settings read from the environment properties Elastic Beanstalk sets from option_settings.

Everything is validated once at startup: a bad value stops the app with one message that
names every offending variable and what it expects, instead of surfacing as a 500 later.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(Exception):
    """The environment does not describe a usable configuration; the message says how to fix it."""


class AuthMode(str, enum.Enum):
    """Where the password for a new database connection comes from."""

    PASSWORD = "password"  # RDS_PASSWORD, as Beanstalk sets it for a coupled RDS instance


class SslMode(str, enum.Enum):
    """TLS to the database, named as MySQL's --ssl-mode and libpq's sslmode name them."""

    DISABLED = "disabled"
    REQUIRED = "required"
    VERIFY_CA = "verify-ca"
    VERIFY_IDENTITY = "verify-identity"


Seconds = Annotated[float, Field(gt=0, le=3600)]
WholeSeconds = Annotated[int, Field(ge=1, le=3600)]

# What each variable expects, used in error messages and mirrored in the README's table.
EXPECTED = {
    "RDS_HOSTNAME": "the database host name (RDS_ENDPOINT is accepted too, optionally as host:port)",
    "RDS_PORT": "a TCP port number between 1 and 65535 (default 3306)",
    "RDS_DB_NAME": "the database (schema) name, e.g. ebdb",
    "RDS_USERNAME": "the database user name",
    "RDS_PASSWORD": "the database password (required when DB_AUTH=password)",
    "DB_AUTH": "one of: " + ", ".join(m.value for m in AuthMode),
    "DB_SSL_MODE": "one of: " + ", ".join(m.value for m in SslMode),
    "DB_SSL_CA": "a path to a PEM bundle of CA certificates",
    "DB_POOL_SIZE": "an integer from 1 to 200: connections per worker process",
    "DB_POOL_TIMEOUT": "seconds (> 0) a request waits for a free connection before a 503",
    "DB_POOL_MAX_LIFETIME": "seconds (> 0) after which a connection is closed and replaced",
    "DB_POOL_IDLE_PING": "seconds (>= 0) a connection may sit idle before it is pinged on borrow",
    "DB_CONNECT_TIMEOUT": "whole seconds (1-3600) to wait when opening a connection",
    "DB_READ_TIMEOUT": "whole seconds (1-3600) to wait for a query result",
}


class Settings(BaseModel):
    """The validated configuration; field aliases are the environment variable names."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    host: str = Field(validation_alias=AliasChoices("RDS_HOSTNAME", "RDS_ENDPOINT"), min_length=1)
    port: int = Field(3306, validation_alias="RDS_PORT", ge=1, le=65535)
    database: str = Field(validation_alias="RDS_DB_NAME", min_length=1, max_length=64)
    user: str = Field(validation_alias="RDS_USERNAME", min_length=1, max_length=80)
    password: SecretStr | None = Field(None, validation_alias="RDS_PASSWORD")
    auth: AuthMode = Field(AuthMode.PASSWORD, validation_alias="DB_AUTH")
    ssl_mode: SslMode = Field(SslMode.REQUIRED, validation_alias="DB_SSL_MODE")
    ssl_ca: str | None = Field(None, validation_alias="DB_SSL_CA")
    pool_size: int = Field(8, validation_alias="DB_POOL_SIZE", ge=1, le=200)
    pool_timeout: Seconds = Field(2.0, validation_alias="DB_POOL_TIMEOUT")
    pool_max_lifetime: Seconds = Field(1800.0, validation_alias="DB_POOL_MAX_LIFETIME")
    pool_idle_ping: float = Field(30.0, validation_alias="DB_POOL_IDLE_PING", ge=0, le=3600)
    connect_timeout: WholeSeconds = Field(5, validation_alias="DB_CONNECT_TIMEOUT")
    read_timeout: WholeSeconds = Field(30, validation_alias="DB_READ_TIMEOUT")

    @model_validator(mode="before")
    @classmethod
    def _split_endpoint(cls, data: dict) -> dict:
        """RDS shows endpoints as host:port; accept that form in RDS_ENDPOINT."""
        endpoint = data.get("RDS_ENDPOINT")
        if endpoint and not data.get("RDS_HOSTNAME") and ":" in endpoint:
            host, _, port = endpoint.rpartition(":")
            data = {**data, "RDS_ENDPOINT": host}
            data.setdefault("RDS_PORT", port)
        return data

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str) -> str:
        if "/" in value or " " in value or ":" in value:
            raise ValueError("must be a bare host name, without scheme, path or port")
        return value

    @model_validator(mode="after")
    def _auth_needs(self) -> Settings:
        if self.auth is AuthMode.PASSWORD and not self.password:
            raise ValueError("RDS_PASSWORD is required when DB_AUTH=password")
        if self.ssl_mode in (SslMode.VERIFY_CA, SslMode.VERIFY_IDENTITY) and not self.ssl_ca:
            raise ValueError(f"DB_SSL_CA is required when DB_SSL_MODE={self.ssl_mode.value}")
        return self


_FIELD_TO_VAR = {
    name: (field.validation_alias.choices[0] if isinstance(field.validation_alias, AliasChoices)
           else field.validation_alias)
    for name, field in Settings.model_fields.items()
}
_SECRET_VARS = {"RDS_PASSWORD"}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Validate the environment; raise ConfigError naming each bad variable and the fix."""
    values = {k: v for k, v in environ.items() if k in EXPECTED or k == "RDS_ENDPOINT"}
    values = {k: v for k, v in values.items() if v != ""}  # an empty property means "not set"
    try:
        return Settings.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_describe(err, values)) from None


def _describe(err: ValidationError, values: Mapping[str, str]) -> str:
    lines = ["Invalid database configuration (environment properties):"]
    for problem in err.errors(include_url=False, include_input=False):
        loc = problem["loc"]
        if loc:
            var = _FIELD_TO_VAR.get(str(loc[0]), str(loc[0]))
            got = "not set" if var not in values else (
                "<hidden>" if var in _SECRET_VARS else repr(values[var]))
            reason = problem["msg"] if problem["type"] != "missing" else "is required"
            lines.append(f"  {var}: {reason} (got {got}); expected {EXPECTED[var]}.")
        else:
            lines.append(f"  {problem['msg'].removeprefix('Value error, ')}.")
    lines.append(
        "Set them as environment properties (`eb setenv NAME=value` or option_settings in "
        ".ebextensions); for a local database run scripts/run-local, which sets them for you."
    )
    return "\n".join(lines)
