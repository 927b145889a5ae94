"""Settings read from the environment properties Elastic Beanstalk sets from option_settings.

Everything is validated once at startup: a bad value stops the app with one message that
names every offending variable and what it expects, instead of surfacing as a 500 later.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import ssl
from collections.abc import Mapping
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class ConfigError(Exception):
    """The environment does not describe a usable configuration; the message says how to fix it.

    `transient`: the configuration may well be right, but a source it names failed for now
    (Secrets Manager throttling, unreachable, failing): a later start may succeed.
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.transient = transient


class AuthMode(str, enum.Enum):
    """Where the password for a new database connection comes from."""

    PASSWORD = "password"  # RDS_PASSWORD, as Beanstalk sets it for a coupled RDS instance
    SECRETS_MANAGER = "secretsmanager"  # DB_SECRET_ID: an RDS-format secret, rotation-aware
    IAM = "iam"  # a fresh RDS IAM auth token per connection, over verified TLS


class SslMode(str, enum.Enum):
    """TLS to the database, named as MySQL's --ssl-mode and libpq's sslmode name them."""

    DISABLED = "disabled"
    REQUIRED = "required"
    VERIFY_CA = "verify-ca"
    VERIFY_IDENTITY = "verify-identity"


class SslTrust(str, enum.Enum):
    """Which CAs the prebuild hook installs at DB_SSL_CA (the app only reads that file)."""

    RDS = "rds"  # the RDS CA global bundle: RDS and Aurora endpoints
    RDS_PROXY = "rds-proxy"  # and Amazon Root CA 1-4: RDS Proxy endpoints present ACM certificates


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# The shape every AWS partition's region names share (botocore's partitions.json: us-east-1,
# us-gov-west-1, cn-north-1, us-iso-east-1, us-isob-east-1, eu-isoe-west-1, eusc-de-east-1...),
# so that a partition or region newer than this code still passes; an availability zone
# (eu-west-1a), a placeholder or an upper-case name does not.
_REGION = re.compile(r"^[a-z]+(-[a-z]+)+-\d+$")

# Where the deployment puts the RDS CA "global bundle" (see .platform/hooks/prebuild).
DEFAULT_SSL_CA = "/etc/pki/tls/certs/rds-global-bundle.pem"
RDS_CA_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
_VERIFYING = ("verify-ca", "verify-identity")


def _known_level(value: object) -> str:
    """Python's own level names, in any case; logging's aliases (WARN, FATAL, numbers) are refused."""
    if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
        return value.strip().upper()
    raise ValueError("is not a log level")


LogLevel = Annotated[str, BeforeValidator(_known_level)]
Seconds = Annotated[float, Field(gt=0, le=3600)]
WholeSeconds = Annotated[int, Field(ge=1, le=3600)]

# What each variable expects: the one source for error messages, and checked against the
# README's table (tests/test_config.py) so that the two cannot drift apart.
EXPECTED = {
    "RDS_HOSTNAME": "the database host name (RDS_ENDPOINT is accepted too, optionally as host:port)",
    "RDS_PORT": "a TCP port number between 1 and 65535 (default 3306)",
    "RDS_DB_NAME": "the database (schema) name, e.g. ebdb",
    "RDS_USERNAME": "the database user name",
    "RDS_PASSWORD": "the database password (required when DB_AUTH=password)",
    "DB_AUTH": "one of: " + ", ".join(m.value for m in AuthMode),
    "DB_SECRET_ID": "the name or ARN of an RDS-format secret (required when DB_AUTH=secretsmanager)",
    "AWS_REGION": "an AWS region such as eu-west-1 (for IAM tokens and Secrets Manager; default: "
                  "from the secret's ARN or the RDS host name)",
    "DB_SSL_MODE": "one of: " + ", ".join(m.value for m in SslMode),
    "DB_SSL_CA": f"a path to a PEM bundle of CA certificates (default {DEFAULT_SSL_CA})",
    "DB_SSL_TRUST": "one of: " + ", ".join(t.value for t in SslTrust)
                    + " (rds-proxy adds Amazon's root CAs for RDS Proxy endpoints)",
    "DB_BOOTSTRAP_DB_ARN": "the ARN of the RDS instance or Aurora cluster whose RDS-managed master "
                           "secret the leader-only bootstrap reads once to create the app's database user",
    "LOG_LEVEL": "one of: " + ", ".join(LOG_LEVELS) + " (any case; default INFO)",
    "DB_POOL_SIZE": "an integer from 1 to 200: connections per worker process",
    "DB_POOL_TIMEOUT": "seconds (> 0) a request waits for a free connection before a 503",
    "DB_POOL_MAX_LIFETIME": "seconds (> 0) after which a connection is closed and replaced",
    "DB_POOL_IDLE_PING": "seconds (>= 0) a connection may sit idle before it is pinged on borrow",
    "DB_CONNECT_TIMEOUT": "whole seconds (1-3600) to wait when opening a connection",
    "DB_READ_TIMEOUT": "whole seconds (1-3600) to wait for a query result",
    "API_AUTH": "one of: off, writes, all (which /api requests need an API key; "
                ".ebextensions sets all)",
    "API_KEY_SHA256": "comma-separated SHA-256 hex digests (64 hex characters each) of the "
                      "accepted API keys, as scripts/new-api-key prints them",
    "API_KEYS_SECRET_ID": 'the name or ARN of a secret holding {"api_key_sha256": [digests]}',
    "METRICS_INTERVAL": "seconds (0-3600) between a worker's pool metrics lines (CloudWatch "
                        "embedded metric format) on stdout; 0 turns them off (default 60)",
    "METRICS_NAMESPACE": "a CloudWatch namespace for the pool metrics: 1-255 letters, digits or "
                         ". - _ / # : and spaces, not starting with AWS/ (default FlaskRdsApp)",
    "METRICS_ENVIRONMENT": "the value of the metrics' EnvironmentName dimension: 1-255 printable "
                           "ASCII characters (.ebextensions sets the Beanstalk environment's name; "
                           "default local)",
    "FLEET_MAX_INSTANCES": "an integer from 1 to 10000: the Auto Scaling group's MaxSize, for the "
                           "connection budget (.ebextensions sets both)",
}


class Settings(BaseModel):
    """The validated configuration; field aliases are the environment variable names."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    # host, database and user may come from the secret when DB_AUTH=secretsmanager.
    host: str | None = Field(None, validation_alias=AliasChoices("RDS_HOSTNAME", "RDS_ENDPOINT"),
                             min_length=1)
    port: int = Field(3306, validation_alias="RDS_PORT", ge=1, le=65535)
    database: str | None = Field(None, validation_alias="RDS_DB_NAME", min_length=1, max_length=64)
    user: str | None = Field(None, validation_alias="RDS_USERNAME", min_length=1, max_length=80)
    password: SecretStr | None = Field(None, validation_alias="RDS_PASSWORD")
    auth: AuthMode = Field(AuthMode.PASSWORD, validation_alias="DB_AUTH")
    secret_id: str | None = Field(None, validation_alias="DB_SECRET_ID", min_length=1)
    ssl_mode: SslMode = Field(SslMode.REQUIRED, validation_alias="DB_SSL_MODE")
    ssl_ca: str = Field(DEFAULT_SSL_CA, validation_alias="DB_SSL_CA", min_length=1)
    ssl_trust: SslTrust = Field(SslTrust.RDS, validation_alias="DB_SSL_TRUST")
    bootstrap_db_arn: str | None = Field(None, validation_alias="DB_BOOTSTRAP_DB_ARN",
                                         pattern=r"^arn:aws(-cn|-us-gov)?:rds:[a-z0-9-]+:\d{12}:(db|cluster):[A-Za-z0-9-]+$")
    log_level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")
    pool_size: int = Field(8, validation_alias="DB_POOL_SIZE", ge=1, le=200)
    pool_timeout: Seconds = Field(2.0, validation_alias="DB_POOL_TIMEOUT")
    pool_max_lifetime: Seconds = Field(1800.0, validation_alias="DB_POOL_MAX_LIFETIME")
    pool_idle_ping: float = Field(30.0, validation_alias="DB_POOL_IDLE_PING", ge=0, le=3600)
    connect_timeout: WholeSeconds = Field(5, validation_alias="DB_CONNECT_TIMEOUT")
    read_timeout: WholeSeconds = Field(30, validation_alias="DB_READ_TIMEOUT")
    # API keys (app/auth.py). Off when unset, for the local quick start; the deployment's
    # .ebextensions/01-environment.config sets all.
    api_auth: str = Field("off", validation_alias="API_AUTH", pattern=r"^(off|writes|all)$")
    api_key_sha256: str | None = Field(None, validation_alias="API_KEY_SHA256")
    api_keys_secret_id: str | None = Field(None, validation_alias="API_KEYS_SECRET_ID",
                                           min_length=1)
    # Declared after auth and api_keys_secret_id, which its validator reads. AWS_DEFAULT_REGION
    # (the AWS CLI's and SDKs' name) stands in when AWS_REGION is unset; errors name the one read.
    aws_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    # Pool metrics as CloudWatch embedded metric format lines on stdout (app/metrics.py).
    metrics_interval: float = Field(60.0, validation_alias="METRICS_INTERVAL", ge=0, le=3600)
    metrics_namespace: str = Field("FlaskRdsApp", validation_alias="METRICS_NAMESPACE",
                                   pattern=r"^[A-Za-z0-9._/#: -]{1,255}$")
    metrics_environment: str = Field("local", validation_alias="METRICS_ENVIRONMENT",
                                     pattern=r"^[!-~][ -~]{0,254}$")
    # The most instances the environment scales out to (app/db/budget.py); unset: unknown.
    fleet_max_instances: int | None = Field(None, validation_alias="FLEET_MAX_INSTANCES", ge=1,
                                            le=10000)

    @model_validator(mode="before")
    @classmethod
    def _split_endpoint(cls, data: dict) -> dict:
        """RDS shows endpoints as host:port; accept that form in RDS_ENDPOINT.

        IAM authentication defaults to verify-identity: a token must only go to the real host.
        """
        if data.get("DB_AUTH") == AuthMode.IAM.value and "DB_SSL_MODE" not in data:
            data = {**data, "DB_SSL_MODE": SslMode.VERIFY_IDENTITY.value}
        endpoint = data.get("RDS_ENDPOINT")
        if endpoint and not data.get("RDS_HOSTNAME"):
            host, port = _host_and_port(endpoint)
            data = {**data, "RDS_ENDPOINT": host}
            if port is not None:
                data.setdefault("RDS_PORT", port)
        return data

    @field_validator("metrics_namespace")
    @classmethod
    def _not_aws_namespace(cls, value: str) -> str:
        if value.startswith("AWS/"):
            raise ValueError("must not start with AWS/ (reserved for AWS services)")
        return value

    @field_validator("aws_region")
    @classmethod
    def _region_where_used(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked only where the app calls AWS with it (IAM tokens, Secrets Manager): a value
        set for other tools must not stop an app that makes no AWS call."""
        used = (info.data.get("auth") in (AuthMode.IAM, AuthMode.SECRETS_MANAGER)
                or info.data.get("api_keys_secret_id"))
        if value is not None and used and not _REGION.fullmatch(value):
            raise ValueError("is not an AWS region name")
        return value

    @field_validator("host")
    @classmethod
    def _plain_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, problem = _checked_host(value)
        if problem:
            raise ValueError(problem)
        return host

    @field_validator("secret_id", "api_keys_secret_id")
    @classmethod
    def _secret_arn_alone(cls, value: str | None) -> str | None:
        """GetSecretValue takes a secret's name or ARN; ECS's `ARN:json-key:stage:version`
        form, or another service's ARN, answers ResourceNotFoundException, which says to
        look for a secret that exists."""
        if value is None or not value.startswith("arn:"):
            return value
        parts = value.split(":")
        if len(parts) < 7 or parts[2] != "secretsmanager":
            raise ValueError("is not the ARN of a Secrets Manager secret (arn:<partition>:"
                             "secretsmanager:<region>:<account>:secret:<name>): give the secret's "
                             "ARN or name")
        if len(parts) > 7:
            raise ValueError(f"has {':'.join(parts[7:])!r} after the secret's ARN (a JSON key, "
                             "version stage or version id, as ECS task definitions take them): "
                             f"give the ARN alone, {':'.join(parts[:7])}; the app reads the "
                             "secret's fields and its current version itself")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Settings:
        """The checks between variables, in one validator: pydantic runs no later validator
        once one fails, and the one message must name every problem.

        load_settings' second pass gives `malformed`: fields whose value was refused and so
        left out, which are not to be reported as unset.
        """
        malformed = (info.context or {}).get("malformed", set())
        problems = [*self._auth_problems(malformed), *self._api_key_problems(malformed)]
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def _auth_problems(self, malformed: set[str]) -> list[str]:
        problems = []
        if "auth" not in malformed:  # which variables DB_AUTH needs depends on its value
            if self.auth is not AuthMode.SECRETS_MANAGER:
                # Without a secret to fill them in, these must come from the environment.
                for var, field in (("RDS_HOSTNAME", "host"), ("RDS_DB_NAME", "database"),
                                   ("RDS_USERNAME", "user")):
                    if not getattr(self, field) and field not in malformed:
                        problems.append(f"{var}: is required (got not set); expected {EXPECTED[var]}")
            if self.auth is AuthMode.PASSWORD and not self.password:
                problems.append("RDS_PASSWORD is required when DB_AUTH=password")
            if (self.auth is AuthMode.SECRETS_MANAGER and not self.secret_id
                    and "secret_id" not in malformed):
                problems.append("DB_SECRET_ID is required when DB_AUTH=secretsmanager: "
                                "set it to the secret's name or ARN")
        if self.auth is AuthMode.IAM and self.ssl_mode.value not in _VERIFYING:
            problems.append(f"DB_SSL_MODE={self.ssl_mode.value} is not allowed with DB_AUTH=iam: "
                            "the token is a password sent in clear text over TLS; use verify-ca or "
                            "verify-identity")
        if self.ssl_mode.value in _VERIFYING:
            if not os.path.isfile(self.ssl_ca):
                problems.append(f"DB_SSL_CA: no file at {self.ssl_ca!r}, needed for DB_SSL_MODE="
                                f"{self.ssl_mode.value}; deploy the RDS CA bundle there or point "
                                "DB_SSL_CA at it")
            elif why := _not_a_ca_bundle(self.ssl_ca):
                problems.append(f"DB_SSL_CA: {self.ssl_ca!r} {why}, needed for DB_SSL_MODE="
                                f"{self.ssl_mode.value}; put the RDS CA bundle there ({RDS_CA_BUNDLE_URL}, "
                                "which .platform's prebuild hook installs) or point DB_SSL_CA at it")
        return problems

    def _api_key_problems(self, malformed: set[str]) -> list[str]:
        """Digests only, never a key (nor anything that may be one) in the message."""
        problems = []
        items = [i.strip() for i in (self.api_key_sha256 or "").split(",") if i.strip()]
        for number, item in enumerate(items, 1):
            if not _is_sha256_hex(item):
                problems.append(
                    f"API_KEY_SHA256: item {number} of {len(items)} is not a SHA-256 hex digest (got "
                    f"{len(item)} characters, not shown); expected {EXPECTED['API_KEY_SHA256']}. "
                    "Put the digest there, never the key itself")
        given = items or self.api_keys_secret_id or malformed & {"api_key_sha256", "api_keys_secret_id"}
        if self.api_auth != "off" and not given:
            problems.append(
                f"API_AUTH={self.api_auth} needs API_KEY_SHA256 or API_KEYS_SECRET_ID (got neither); "
                "make a key with scripts/new-api-key and set its digest, or set API_AUTH=off to "
                "serve without keys (never on the internet)")
        return problems

    @property
    def api_key_hashes(self) -> tuple[str, ...]:
        """API_KEY_SHA256's digests, lower-case (the secret's come through app/auth.py)."""
        return tuple(i.strip().lower() for i in (self.api_key_sha256 or "").split(",") if i.strip())


def _not_a_ca_bundle(path: str) -> str | None:
    """Why the file cannot be the CAs a TLS connection trusts, loaded as the driver loads it;
    None when it holds a certificate. Else every connection fails, naming no variable."""
    try:
        loaded = ssl.create_default_context(cafile=path).cert_store_stats()["x509"]
    except ssl.SSLError as err:  # OpenSSL's words, without its source line
        return f"is not a PEM bundle of CA certificates ({str(err).split(' (_ssl.c')[0]})"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    return None if loaded else "holds no certificate"


def _is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and not value.strip("0123456789abcdefABCDEF")


_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_BARE_HOST = "must be a bare host name, without scheme, path or port"


def _host_and_port(value: str) -> tuple[str, str | None]:
    """RDS_ENDPOINT's host and port: host:port, [IPv6]:port, or a host alone (an IPv6 address
    too). Anything else (a scheme, a path) is returned whole, for the host's check to name."""
    if value.startswith("["):
        inner, bracket, rest = value[1:].partition("]")
        if bracket and rest.startswith(":"):
            return f"[{inner}]", rest[1:]
        return value, None
    host, colon, port = value.rpartition(":")
    if colon and ":" not in host and "/" not in value:
        return host, port
    return value, None


def _checked_host(value: str) -> tuple[str, str | None]:
    """The host as the driver, TLS and the region lookups need it (lower case, without a fully
    qualified name's trailing dot, an IPv6 address without brackets), and why it is not one."""
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(inner)), None
    except ValueError:
        pass
    host = value.lower()
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    if "/" in host or ":" in host:
        parts = urlsplit(value if "://" in value else f"//{value}")
        try:
            found, port = parts.hostname, parts.port
        except ValueError:  # a port that is no number
            found, port = parts.hostname, None
        if not found:
            return host, _BARE_HOST
        where = f"; here the host is {found!r}" + (f" and the port {port} (RDS_PORT)" if port else "")
        return host, _BARE_HOST + where
    if _HOST.fullmatch(host):
        return host, None
    bad = "".join(sorted({c for c in host if not (c.isascii() and (c.isalnum() or c in "-._"))}))
    if bad:
        return host, f"must be a bare host name: it holds {bad!r}, which no host name has"
    return host, "must be a bare host name: it has a dot at its start or two dots in a row"


def _quoted(value: str) -> bool:
    return len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'"


# Variables whose value is one of a few lower-case words: read in any case (IAM,
# Verify-Identity), DB_SSL_MODE also as MySQL's --ssl-mode spells it (VERIFY_IDENTITY).
_CHOICE_VARS = ("DB_AUTH", "DB_SSL_MODE", "DB_SSL_TRUST", "API_AUTH")


def _variables(field) -> list[str]:
    alias = field.validation_alias
    return list(alias.choices) if isinstance(alias, AliasChoices) else [alias]


_FIELD_TO_VAR = {name: _variables(field)[0] for name, field in Settings.model_fields.items()}
_VAR_TO_FIELD = {var: name for name, field in Settings.model_fields.items() for var in _variables(field)}
_SECRET_VARS = {"RDS_PASSWORD"}


def describe(settings: Settings) -> dict[str, object]:
    """What the startup log says about the database: never a password, token or secret."""
    return {"auth": settings.auth.value, "host": settings.host, "port": settings.port,
            "database": settings.database, "user": settings.user,
            "secret_id": settings.secret_id, "ssl_mode": settings.ssl_mode.value,
            "ssl_ca": settings.ssl_ca if settings.ssl_mode is not SslMode.DISABLED else None,
            "ssl_trust": settings.ssl_trust.value}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Validate the environment; raise ConfigError naming each bad variable and the fix."""
    given, values, refused = _read(environ)
    usable = {k: v for k, v in values.items() if k not in refused}
    malformed = {_VAR_TO_FIELD[var] for var in refused}
    problems = [{"loc": (var,), "msg": why, "type": "refused"} for var, why in refused.items()]
    try:
        settings = Settings.model_validate(usable, context={"malformed": malformed})
    except ValidationError as err:
        found = _problems(err)
        problems += found + _unchecked(found, usable, malformed)
    else:
        if not problems:
            return settings
    raise ConfigError(_describe(_in_order(problems), given)) from None


def _read(environ: Mapping[str, str]) -> tuple[dict, dict, dict]:
    """The variables Settings reads, as they were meant when pasted into the console.

    Returns what was given (without surrounding white space, which no value needs: a
    pasted newline would otherwise be part of a host name), the values to validate (choices
    in lower case, RDS_HOSTNAME and RDS_ENDPOINT reconciled), and the variables refused
    outright with why. The password is taken as it is: it may begin or end with anything.
    """
    given, refused = {}, {}
    for var, value in environ.items():
        if var not in _VAR_TO_FIELD:
            continue
        if var not in _SECRET_VARS:
            value = value.strip()
        if value == "":
            continue  # an empty property means "not set": Beanstalk keeps a cleared one as ""
        given[var] = value
        if var not in _SECRET_VARS and _quoted(value):
            refused[var] = "is in quotes, which would be part of the value: set it without them"
    values = dict(given)
    for var in _CHOICE_VARS:
        if var in values:
            values[var] = values[var].lower()
    if "DB_SSL_MODE" in values:
        values["DB_SSL_MODE"] = values["DB_SSL_MODE"].replace("_", "-")
    _reconcile_endpoint(given, values, refused)
    return given, values, refused


def _reconcile_endpoint(given: dict, values: dict, refused: dict) -> None:
    """RDS_ENDPOINT set along with RDS_HOSTNAME or RDS_PORT must say the same: the app would
    otherwise connect to one of the two and ignore the other without a word."""
    endpoint, hostname = values.get("RDS_ENDPOINT"), values.get("RDS_HOSTNAME")
    if not endpoint or refused.keys() & {"RDS_ENDPOINT", "RDS_HOSTNAME"}:
        return
    host, port = _host_and_port(endpoint)
    if hostname:
        if _checked_host(host)[0] != _checked_host(hostname)[0]:
            refused["RDS_ENDPOINT"] = (
                f"names another host than RDS_HOSTNAME ({_shown('RDS_HOSTNAME', hostname)}); set "
                "RDS_HOSTNAME to the database's host and unset RDS_ENDPOINT")
            return
        del given["RDS_HOSTNAME"], values["RDS_HOSTNAME"]  # the same host: RDS_ENDPOINT says it all
    if port is not None and "RDS_PORT" in values and "RDS_PORT" not in refused:
        try:
            differ = int(port) != int(values["RDS_PORT"])
        except ValueError:
            differ = False  # a port that is no number is refused as such
        if differ:
            refused["RDS_PORT"] = (f"differs from the port in RDS_ENDPOINT ({port}); unset RDS_PORT "
                                   "or remove the port from RDS_ENDPOINT, so that one of them says it")


def _in_order(problems: list) -> list:
    """Each variable's problems in the order of the settings, then those between variables."""
    order = {name: index for index, name in enumerate(Settings.model_fields)}

    def position(problem) -> int:
        var = str(problem["loc"][0])
        return order.get(_VAR_TO_FIELD.get(var, var), len(order))

    return (sorted((p for p in problems if p["loc"]), key=position)
            + [p for p in problems if not p["loc"]])


def _unchecked(problems: list, values: Mapping[str, str], refused: set[str] = frozenset()) -> list:
    """The checks between variables (a required one unset...) that pydantic skipped because a
    value was malformed, run without the malformed ones: one start names every bad variable."""
    malformed = {_VAR_TO_FIELD.get(str(p["loc"][0]), str(p["loc"][0])) for p in problems if p["loc"]}
    if not malformed:
        return []  # they ran: the problems are theirs
    malformed |= refused
    if "port" in malformed and "RDS_PORT" not in values:
        malformed.add("host")  # the port came from RDS_ENDPOINT's host:port
    rest = {k: v for k, v in values.items() if _VAR_TO_FIELD.get(k) not in malformed}
    try:
        Settings.model_validate(rest, context={"malformed": malformed})
    except ValidationError as err:
        return [p for p in _problems(err) if not p["loc"]]
    return []


def _problems(err: ValidationError) -> list:
    return err.errors(include_url=False, include_input=False)


class _LogLevelOnly(BaseModel):
    log_level: LogLevel = Field("INFO", validation_alias="LOG_LEVEL")


def log_level(value: str | None) -> str:
    """LOG_LEVEL checked as load_settings checks it, for code that runs before the settings."""
    values = {"LOG_LEVEL": value} if value else {}
    try:
        return _LogLevelOnly.model_validate(values).log_level
    except ValidationError as err:
        raise ConfigError(_describe(_problems(err), values)) from None


def complete_from_secret(settings: Settings, found: Mapping[str, tuple[str, object]],
                         secret_id: str) -> Settings:
    """The settings with fields taken from a secret, validated as strictly as the environment.

    `found` maps a field to (the secret's key, its value). A bad value is reported as the
    secret's field, never with the password, which is not among them.
    """
    data = {name: getattr(settings, name) for name in Settings.model_fields}
    data.update({name: value for name, (_key, value) in found.items()})
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        lines = [f"Invalid database configuration from the secret {secret_id} (DB_SECRET_ID):"]
        for problem in err.errors(include_url=False):
            loc = problem["loc"]
            name = str(loc[0]) if loc else None
            reason = _reason(problem)
            if name in found:
                var, value = _FIELD_TO_VAR[name], found[name][1]
                got = _shown(var, value) if isinstance(value, str) else repr(value)
                lines.append(f"  secret {secret_id} field \"{found[name][0]}\": {reason} "
                             f"(got {got}); expected {EXPECTED[var]}.")
            elif name in _FIELD_TO_VAR:
                lines.append(f"  {_FIELD_TO_VAR[name]}: {reason}; expected {EXPECTED[_FIELD_TO_VAR[name]]}.")
            else:
                lines.append(f"  {reason}.")
        lines.append("Fix the secret's value (Secrets Manager console or `aws secretsmanager "
                     "put-secret-value`), or set the environment property, which wins over the secret.")
        raise ConfigError("\n".join(lines)) from None


_UNIT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)\s*[a-z]+", re.IGNORECASE)  # 30s, 2.5 min, 1h
_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^/]*@", re.IGNORECASE)  # mysql://app:pw@


def _reason(problem, value: str | None = None) -> str:
    if problem["type"] == "missing":
        return "is required"
    if problem["type"] == "string_pattern_mismatch":
        return "is not of the form expected"  # not the regular expression
    if problem["type"] in ("int_parsing", "float_parsing") and value and _UNIT.fullmatch(value):
        return "must be a plain number, without a unit"
    return problem["msg"].removeprefix("Value error, ")


def _shown(var: str, value: str) -> str:
    """A value as a message may show it: never a password, nor what may be an API key."""
    if var in _SECRET_VARS:
        return "<hidden>"
    if var == "API_KEY_SHA256":
        return f"{len(value)} characters, not shown"
    if var in ("RDS_HOSTNAME", "RDS_ENDPOINT"):  # a URL pasted whole may hold user:password@
        value = _USERINFO.sub(lambda m: f"{m[1] or ''}<hidden>@", value)
    return repr(value)


def _describe(problems: list, values: Mapping[str, str]) -> str:
    lines = ["Invalid configuration (environment properties):"]
    for problem in problems:
        loc = problem["loc"]
        if loc:
            var = _FIELD_TO_VAR.get(str(loc[0]), str(loc[0]))
            reason = _reason(problem, values.get(var))
            # An alias expects what its field's first name does (AWS_DEFAULT_REGION: AWS_REGION's).
            expected = EXPECTED.get(_FIELD_TO_VAR.get(_VAR_TO_FIELD.get(var), var))
            endpoint = values.get("RDS_ENDPOINT")
            if endpoint and not values.get("RDS_HOSTNAME") and (
                    var in ("RDS_HOSTNAME", "RDS_ENDPOINT")
                    or (var == "RDS_PORT" and "RDS_PORT" not in values and ":" in endpoint)):
                # RDS_ENDPOINT filled this field: name it, with the value the operator wrote.
                if var == "RDS_PORT":
                    reason = f"its port: {reason}"
                var, expected = "RDS_ENDPOINT", (f"{EXPECTED['RDS_HOSTNAME']}; the port after ':' "
                                                 f"{EXPECTED['RDS_PORT']}")
            got = "not set" if var not in values else _shown(var, values[var])
            line = f"  {var}: {reason} (got {got}); expected {expected}."
            if not any(seen.startswith(f"  {var}: ") for seen in lines):  # one line per variable
                lines.append(line)
        else:
            lines.append(f"  {_reason(problem)}.")
    lines.append(
        "Set them as environment properties (`eb setenv NAME=value` or option_settings in "
        ".ebextensions); for a local database run scripts/run-local, which sets them for you."
    )
    return "\n".join(lines)
