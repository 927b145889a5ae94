"""Credentials for each new physical database connection: a password, a secret, or an IAM token.

The pool calls a provider every time it opens a connection, never once at startup, so a
source whose credentials change (a rotated secret, an expiring IAM token) is asked again
instead of being frozen into the pool. This is the only module that knows about AWS.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.config import AuthMode, ConfigError, Settings

log = logging.getLogger(__name__)

# IAM auth tokens are valid for 15 minutes; one older than this is never handed out.
IAM_TOKEN_MAX_AGE = 10 * 60
# How long a fetched secret is trusted before the next new connection fetches it again.
SECRET_TTL = 5 * 60

_RDS_REGION = re.compile(r"\.([a-z]{2}(?:-gov)?-[a-z]+-\d)\.rds\.amazonaws\.com(?:\.cn)?$")
_ARN_REGION = re.compile(r"^arn:aws(?:-cn|-us-gov)?:(?:secretsmanager|rds):([a-z]{2}(?:-gov)?-[a-z]+-\d):")


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


class SecretsManagerPassword:
    """The password (and, where the environment is silent, user and endpoint) from a secret.

    The secret is the JSON that RDS and Secrets Manager rotation use; an RDS-managed master
    secret holds only `username` and `password`. User and password are a pair: the secret's
    username wins over RDS_USERNAME (an alternating-users rotation changes both), which is
    used only when the secret has none. It is cached for
    SECRET_TTL; when the server refuses the cached password the secret is fetched again,
    and during a rotation window the AWSPENDING version (which the database may already
    have) is tried before giving up. aws-secretsmanager-caching offers no public forced
    refresh (its issues #16 and #33), which that window needs, hence this small cache.
    """

    def __init__(self, secret_id: str, client: Any, user: str | None = None,
                 ttl: float = SECRET_TTL, clock: Callable[[], float] = time.monotonic):
        self.secret_id = secret_id
        self.description = f"Secrets Manager secret {secret_id}"
        self._client = client
        self._user = user
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: dict[str, Any] | None = None
        self._fetched_at = 0.0

    def secret(self, refresh: bool = False) -> dict[str, Any]:
        """The AWSCURRENT secret as a dict, from the cache unless stale or refresh is asked."""
        with self._lock:
            if refresh or self._cached is None or self._clock() - self._fetched_at >= self._ttl:
                self._cached = self._fetch("AWSCURRENT")
                self._fetched_at = self._clock()
            return self._cached

    def _fetch(self, stage: str) -> dict[str, Any]:
        response = self._client.get_secret_value(SecretId=self.secret_id, VersionStage=stage)
        try:
            value = json.loads(response["SecretString"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"DB_SECRET_ID: secret {self.secret_id} is not a JSON object with "
                              "username and password (the format RDS rotation uses)") from None
        if not isinstance(value, dict) or "password" not in value:
            raise ConfigError(f"DB_SECRET_ID: secret {self.secret_id} has no password field")
        value["_version_id"] = response.get("VersionId")
        return value

    def _credentials(self, secret: dict[str, Any]) -> Credentials:
        user = secret.get("username") or self._user
        if not user:
            raise ConfigError("RDS_USERNAME is not set and the secret has no username field")
        return Credentials(user, secret["password"])

    def candidates(self) -> Iterator[Credentials]:
        current = self.secret()
        tried = {current.get("_version_id")}
        yield self._credentials(current)
        log.info("database refused the cached secret; fetching it again",
                 extra={"event": "secret_refresh"})
        # AWSCURRENT, then AWSPENDING, then AWSCURRENT once more: a rotation that finishes
        # between two of these calls (AWSCURRENT moved to the new version, AWSPENDING
        # removed) is still caught by the last one.
        for stage in ("AWSCURRENT", "AWSPENDING", "AWSCURRENT"):
            value = self.secret(refresh=True) if stage == "AWSCURRENT" else self._pending()
            if value is None or value.get("_version_id") in tried:
                continue
            tried.add(value.get("_version_id"))
            if stage == "AWSPENDING":
                log.info("trying the AWSPENDING secret (rotation under way)",
                         extra={"event": "secret_pending"})
            yield self._credentials(value)

    def _pending(self) -> dict[str, Any] | None:
        try:
            return self._fetch("AWSPENDING")
        except self._client.exceptions.ResourceNotFoundException:
            return None  # no rotation under way


class IamAuthToken:
    """RDS IAM authentication: a signed token as the password of each new connection.

    A token is generated locally (no network call) and checked by RDS only when a
    connection opens, so open connections outlive it. It is reused while younger than
    IAM_TOKEN_MAX_AGE and regenerated after, so a pool can never present an expired one.
    """

    def __init__(self, client: Any, host: str, port: int, user: str, region: str,
                 max_age: float = IAM_TOKEN_MAX_AGE, clock: Callable[[], float] = time.time):
        self.description = f"IAM auth token for {user} in {region}"
        self._client = client
        self._host, self._port, self._user, self._region = host, port, user, region
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._issued_at = 0.0

    def token(self, fresh: bool = False) -> str:
        with self._lock:
            now = self._clock()
            if fresh or self._token is None or now - self._issued_at >= self._max_age:
                self._token = self._client.generate_db_auth_token(
                    DBHostname=self._host, Port=self._port, DBUsername=self._user,
                    Region=self._region)
                self._issued_at = now
            return self._token

    def candidates(self) -> Iterator[Credentials]:
        yield Credentials(self._user, self.token())
        yield Credentials(self._user, self.token(fresh=True))


def region_for(settings: Settings, environ_region: str | None) -> str:
    """The secret's region when DB_SECRET_ID is an ARN, else AWS_REGION, else the endpoint's.

    A secret lives in the region its ARN names, whatever region the environment runs in.
    botocore does not ask the instance metadata for a region (NoRegionError), so one of
    these must name it; Beanstalk sets AWS_REGION from 01-environment.config.
    """
    if settings.auth is AuthMode.SECRETS_MANAGER:
        match = _ARN_REGION.search(settings.secret_id or "")
        if match:
            return match[1]
    if environ_region:
        return environ_region
    match = _RDS_REGION.search(settings.host or "")
    if match:
        return match[1]
    if settings.auth is AuthMode.SECRETS_MANAGER:
        raise ConfigError(f"AWS_REGION: is required (got not set) when DB_AUTH=secretsmanager and "
                          f"DB_SECRET_ID ({settings.secret_id}) is a name, not an ARN; set AWS_REGION "
                          "to the secret's region, or DB_SECRET_ID to the secret's ARN.")
    raise ConfigError("AWS_REGION: is required (got not set) when DB_AUTH=iam and RDS_HOSTNAME "
                      "is not an *.<region>.rds.amazonaws.com endpoint; set it to the DB's region.")


def aws_error(err: BaseException) -> str | None:
    """The error code of a failed AWS call (AccessDeniedException...), None for anything else."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code", "ClientError")
    if isinstance(err, BotoCoreError):
        return type(err).__name__
    return None


def managed_master_secret(db_arn: str) -> SecretsManagerPassword:
    """The RDS-managed master user secret of an instance or Aurora cluster, by the database's ARN.

    Looked up through RDS rather than named in an environment property: the secret's name
    (rds!db-...) holds a `!`, and RDS may replace the secret when its management changes.
    """
    region = _ARN_REGION.search(db_arn)[1]
    kind, name = db_arn.rsplit(":", 2)[1:]
    rds = _client("rds", region)
    if kind == "cluster":
        record = rds.describe_db_clusters(DBClusterIdentifier=db_arn)["DBClusters"][0]
    else:
        record = rds.describe_db_instances(DBInstanceIdentifier=db_arn)["DBInstances"][0]
    secret = (record.get("MasterUserSecret") or {}).get("SecretArn")
    if not secret:
        raise ConfigError(f"DB_BOOTSTRAP_DB_ARN: {kind} {name} has no RDS-managed master user secret; "
                          "enable it (--manage-master-user-password) or create the app's user yourself")
    return SecretsManagerPassword(secret, _client("secretsmanager", region))


def _client(service: str, region: str | None):
    import boto3  # imported here so password mode never loads boto3

    return boto3.session.Session().client(service, region_name=region)


def provider_for(settings: Settings) -> CredentialProvider:
    """Build the provider DB_AUTH selects (AWS clients use the instance profile's credentials)."""
    if settings.auth is AuthMode.PASSWORD:
        assert settings.password is not None  # enforced by Settings
        return StaticPassword(settings.user, settings.password.get_secret_value())
    region = region_for(settings, settings.aws_region)
    if settings.auth is AuthMode.SECRETS_MANAGER:
        return SecretsManagerPassword(settings.secret_id, _client("secretsmanager", region),
                                      user=settings.user)
    return IamAuthToken(_client("rds", region), settings.host, settings.port, settings.user, region)


def complete_settings(settings: Settings, provider: CredentialProvider) -> Settings:
    """Fill host, port and database left unset by the environment from the secret.

    The user comes from the secret whenever it has one: it belongs with the password.
    """
    if not isinstance(provider, SecretsManagerPassword):
        return settings
    secret = provider.secret()
    filled = {
        "host": settings.host or secret.get("host"),
        "port": (settings.port if "port" in settings.model_fields_set
                 else int(secret.get("port") or settings.port)),
        "database": settings.database or secret.get("dbname"),
        "user": secret.get("username") or settings.user,
    }
    if settings.user and secret.get("username") and settings.user != secret["username"]:
        log.warning("RDS_USERNAME is ignored: the secret's username comes with its password",
                    extra={"event": "config_override", "variable": "RDS_USERNAME",
                           "secret_id": provider.secret_id, "user": secret["username"]})
    missing = [var for var, key in (("RDS_HOSTNAME", "host"), ("RDS_DB_NAME", "database"),
                                    ("RDS_USERNAME", "user")) if not filled[key]]
    if missing:
        raise ConfigError(", ".join(missing) + ": not set in the environment nor in the secret "
                          f"{provider.secret_id}; set them as environment properties.")
    return settings.model_copy(update=filled)


def secret_reader(secret_id: str, region: str | None, variable: str) -> Callable[[], str | None]:
    """A function returning the AWSCURRENT SecretString of a secret that is not the database's.

    For the API keys' digests (app/auth.py caches and parses them). The secret's own region
    wins when `secret_id` is an ARN. Short timeouts: a request that refreshes the cache must
    not hang for botocore's default minute when Secrets Manager is slow.
    """
    match = _ARN_REGION.search(secret_id)
    region = match[1] if match else region
    if not region:
        raise ConfigError(f"AWS_REGION: is required (got not set) when {variable} ({secret_id}) is a "
                          f"name, not an ARN; set AWS_REGION to the secret's region, or {variable} to "
                          "the secret's ARN.")
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "secretsmanager", region_name=region,
        config=Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3}))

    def read() -> str | None:
        return client.get_secret_value(SecretId=secret_id).get("SecretString")  # None: a binary secret

    return read
