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

from app.config import AuthMode, ConfigError, Settings, complete_from_secret

log = logging.getLogger(__name__)

# IAM auth tokens are valid for 15 minutes; one older than this is never handed out.
IAM_TOKEN_MAX_AGE = 10 * 60
# How long a fetched secret is trusted before the next new connection fetches it again.
SECRET_TTL = 5 * 60
# After the database refused the cached secret and a round of lookups found nothing that
# works, no new lookup for this long, doubling up to the cap; a connection that opens resets it.
REFRESH_BACKOFF = 1.0
REFRESH_BACKOFF_MAX = 60.0
# The lookups of one round, in order, each made only when all before it were refused:
# AWSCURRENT, then AWSPENDING (the database may already have it during a rotation), then
# AWSCURRENT once more (a rotation that finished between the two is still caught).
_ROUND = ("AWSCURRENT", "AWSPENDING", "AWSCURRENT")
# Error codes after which the same call may well succeed later.
_TRANSIENT_CODES = {"ThrottlingException", "Throttling", "TooManyRequestsException",
                    "RequestLimitExceeded", "InternalServiceError", "InternalFailure",
                    "ServiceUnavailable", "RequestTimeout", "RequestTimeoutException"}

_RDS_REGION = re.compile(r"\.([a-z]{2}(?:-gov)?-[a-z]+-\d)\.rds\.amazonaws\.com(?:\.cn)?$")
_ARN_REGION = re.compile(r"^arn:aws(?:-cn|-us-gov)?:(?:secretsmanager|rds):([a-z]{2}(?:-gov)?-[a-z]+-\d):")


@dataclass(frozen=True)
class Credentials:
    """A user and password for one connection attempt; the password never shows in repr."""

    user: str
    password: str = field(repr=False)
    version: str | None = field(default=None, compare=False)  # the secret's VersionId, if any


class CredentialsUnavailable(Exception):
    """The credential source failed. The message names the cause and the fix, never a secret.

    `permanent`: an operator must act (access denied, no such secret, a malformed secret);
    otherwise a later attempt may succeed (throttling, the network). `code` is the AWS error
    code when AWS answered, `reason` a stable name for logs and health checks.
    """

    def __init__(self, message: str, *, reason: str, permanent: bool, code: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.permanent = permanent
        self.code = code


class CredentialProvider(Protocol):
    """What the connection opener needs from a credential source."""

    description: str

    def candidates(self) -> Iterator[Credentials]:
        """Yield credentials to try, best first.

        The opener takes the next one only after the server refused the previous one with
        "access denied", so later candidates (a refreshed or pending secret) cost nothing on
        the normal path. Raises CredentialsUnavailable when the source itself fails.
        """

    def accepted(self, credentials: Credentials) -> None:
        """The database accepted these credentials (a connection opened with them)."""


@dataclass(frozen=True)
class StaticPassword:
    """RDS_USERNAME and RDS_PASSWORD, as Beanstalk sets them for a coupled RDS instance."""

    user: str
    password: str = field(repr=False)
    description: str = "password from RDS_PASSWORD"

    def candidates(self) -> Iterator[Credentials]:
        yield Credentials(self.user, self.password)

    def accepted(self, credentials: Credentials) -> None:
        pass


class SecretsManagerPassword:
    """The password (and, where the environment is silent, user and endpoint) from a secret.

    The secret is the JSON that RDS and Secrets Manager rotation use; an RDS-managed master
    secret holds only `username` and `password`. User and password are a pair: the secret's
    username wins over RDS_USERNAME (an alternating-users rotation changes both), which is
    used only when the secret has none. It is cached for
    SECRET_TTL; when the server refuses the cached password the secret is fetched again,
    and during a rotation window the AWSPENDING version (which the database may already
    have) is tried before giving up. Those lookups are shared by the threads of the process
    and backed off when they do not help (see _after_refusal), so a wrong password cannot
    turn every connection attempt into Secrets Manager calls. aws-secretsmanager-caching
    offers no public forced refresh (its issues #16 and #33), which that window needs, hence
    this small cache.
    """

    def __init__(self, secret_id: str, client: Any, user: str | None = None,
                 ttl: float = SECRET_TTL, clock: Callable[[], float] = time.monotonic,
                 backoff: float = REFRESH_BACKOFF, backoff_max: float = REFRESH_BACKOFF_MAX):
        self.secret_id = secret_id
        self.description = f"Secrets Manager secret {secret_id}"
        self._client = client
        self._user = user
        self._ttl = ttl
        self._clock = clock
        self._backoff, self._backoff_max = backoff, backoff_max
        # One lock for the cache and the refresh rounds, shared by every thread of the
        # process: threads refused together wait for one lookup instead of making their own.
        self._lock = threading.Lock()
        self._cached: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._round: list[dict[str, Any]] = []  # what the current round has found so far
        self._step = len(_ROUND)  # the round's next lookup; len(_ROUND): no round under way
        self._delay = backoff
        self._quiet_until = float("-inf")

    def secret(self) -> dict[str, Any]:
        """The AWSCURRENT secret as a dict, from the cache unless stale."""
        with self._lock:
            return self._current()

    def _current(self) -> dict[str, Any]:
        now = self._clock()
        if self._cached is not None and now - self._fetched_at < self._ttl:
            return self._cached
        try:
            value = self._fetch("AWSCURRENT")
        except CredentialsUnavailable as err:
            if self._cached is None:
                raise
            # The cached password still opens connections until the database changes it;
            # try Secrets Manager again after the longest backoff, not on every connection.
            log.warning("cannot refresh the secret; using the cached one: %s", err,
                        extra={"event": "secret_refresh_failed", "code": err.code,
                               "reason": err.reason})
            self._fetched_at = now - self._ttl + self._backoff_max
            return self._cached
        self._cached, self._fetched_at = value, now
        return value

    def _fetch(self, stage: str) -> dict[str, Any] | None:
        """One GetSecretValue; None when the stage is AWSPENDING and no rotation is under way."""
        try:
            response = self._client.get_secret_value(SecretId=self.secret_id, VersionStage=stage)
        except Exception as err:  # noqa: BLE001 - botocore's errors, sorted by aws_error
            code = aws_error(err)
            if code is None:
                raise
            if stage == "AWSPENDING" and code == "ResourceNotFoundException":
                return None  # no rotation under way
            raise _secret_failure(err, code, self.secret_id, self._client.meta.region_name,
                                  "DB_SECRET_ID") from None
        try:
            value = json.loads(response["SecretString"])
        except (KeyError, TypeError, ValueError):
            value = None
        if not isinstance(value, dict) or not isinstance(value.get("password"), str):
            raise CredentialsUnavailable(
                f"DB_SECRET_ID: the {stage} version of secret {self.secret_id} is not a JSON object "
                "with a password string (expected the format RDS rotation uses: username, "
                "password, host, port, dbname); fix the secret's value",
                reason="secret_invalid", permanent=True)
        value["_version_id"] = response.get("VersionId")
        value["_stage"] = stage
        return value

    def _credentials(self, secret: dict[str, Any]) -> Credentials:
        given = secret.get("username")
        if given is not None and not isinstance(given, str):
            raise CredentialsUnavailable(
                f"DB_SECRET_ID: secret {self.secret_id} field \"username\" is not a string (got "
                f"{type(given).__name__}); fix the secret's value",
                reason="secret_invalid", permanent=True)
        user = given or self._user
        if not user:
            raise CredentialsUnavailable(
                f"DB_SECRET_ID: secret {self.secret_id} has no username field and RDS_USERNAME "
                "is not set; add username to the secret or set RDS_USERNAME",
                reason="secret_invalid", permanent=True)
        return Credentials(user, secret["password"], version=secret.get("_version_id"))

    def candidates(self) -> Iterator[Credentials]:
        with self._lock:
            value = self._current()
        tried = {value.get("_version_id")}
        yield self._credentials(value)
        while (value := self._after_refusal(tried)) is not None:
            tried.add(value.get("_version_id"))
            if value.get("_stage") == "AWSPENDING":
                log.info("trying the AWSPENDING secret (rotation under way)",
                         extra={"event": "secret_pending"})
            yield self._credentials(value)

    def _after_refusal(self, tried: set) -> dict[str, Any] | None:
        """The next secret version to try once the database refused every one in `tried`.

        A version another thread found (or the database accepted) since comes first and costs
        no call. Otherwise the round's next lookup is made; when the round is over, a new one
        starts only after the backoff, so a wrong password costs at most three calls per
        backoff period for the whole process, however many connections are attempted.
        """
        with self._lock:
            while True:
                for value in (self._cached, *self._round):
                    if value is not None and value.get("_version_id") not in tried:
                        return value
                if self._step >= len(_ROUND):
                    now = self._clock()
                    if now < self._quiet_until:
                        return None
                    log.info("database refused the cached secret; fetching it again",
                             extra={"event": "secret_refresh", "backoff_seconds": self._delay})
                    self._round, self._step = [], 0
                    self._quiet_until = now + self._delay
                    self._delay = min(self._delay * 2, self._backoff_max)
                stage = _ROUND[self._step]
                self._step += 1
                value = self._fetch(stage)
                if value is None:
                    continue
                if stage == "AWSCURRENT":
                    self._cached, self._fetched_at = value, self._clock()
                self._round.append(value)

    def accepted(self, credentials: Credentials) -> None:
        """A connection opened: reset the backoff, and keep using the version that worked.

        During a rotation window that is the AWSPENDING version, which the database already
        has; new connections then use it first instead of being refused the old one.
        """
        with self._lock:
            self._delay, self._quiet_until = self._backoff, float("-inf")
            if self._cached is not None and credentials.version != self._cached.get("_version_id"):
                for value in self._round:
                    if value.get("_version_id") == credentials.version:
                        self._cached = value


def _secret_failure(err: BaseException, code: str, secret_id: str, region: str | None,
                    variable: str) -> CredentialsUnavailable:
    """What a failed GetSecretValue of the secret `variable` names means, with the fix, in one
    line (AWS messages hold no secret)."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as AwsConnectionError

    status = None
    detail = ""
    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = " ".join(str(err.response.get("Error", {}).get("Message") or "").split())[:300]
    transient = (code in _TRANSIENT_CODES or isinstance(err, (AwsConnectionError, HTTPClientError))
                 or (status or 0) >= 500)
    fixes = {
        "AccessDeniedException": "allow secretsmanager:GetSecretValue on this secret's ARN in the "
                                 "instance profile role's policy (and kms:Decrypt on the secret's "
                                 "KMS key if it is a customer managed key)",
        "ResourceNotFoundException": f"check that {variable} is the secret's exact name or ARN and "
                                     f"that the secret exists in {region} (AWS_REGION, or the "
                                     "region in the ARN)",
        "DecryptionFailure": "allow kms:Decrypt on the secret's KMS key in the instance profile "
                             "role's policy",
        "InvalidRequestException": "the secret is scheduled for deletion or otherwise unusable: "
                                   "restore it (aws secretsmanager restore-secret) or point "
                                   f"{variable} at another",
        "NoCredentialsError": "attach an instance profile with a role to the instances (or give "
                              "the process AWS credentials)",
    }
    if isinstance(err, (AwsConnectionError, HTTPClientError)):
        fix = (f"check that the instances can reach Secrets Manager in {region} (a NAT gateway or "
               "a secretsmanager VPC endpoint) and that AWS_REGION is right")
    elif transient:
        fix = "Secrets Manager is throttling or failing: a later attempt may succeed"
    elif status == 403 and code not in fixes:
        fix = fixes["AccessDeniedException"]
    else:
        fix = fixes.get(code, f"check {variable} and the instance profile role's access to it")
    cause = f"{code}: {detail}" if detail else code
    return CredentialsUnavailable(
        f"{variable}: cannot read secret {secret_id} ({cause}); {fix}.",
        reason="secret_unreadable", permanent=not transient, code=code)


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
                try:
                    self._token = self._client.generate_db_auth_token(
                        DBHostname=self._host, Port=self._port, DBUsername=self._user,
                        Region=self._region)
                except Exception as err:  # noqa: BLE001 - botocore's errors, sorted by aws_error
                    code = aws_error(err)
                    if code is None:
                        raise
                    raise CredentialsUnavailable(
                        f"DB_AUTH=iam: cannot sign a token for {self._user} ({code}); attach an "
                        "instance profile with a role to the instances (or give the process AWS "
                        "credentials)", reason="aws_credentials_missing", permanent=True,
                        code=code) from None
                self._issued_at = now
            return self._token

    def candidates(self) -> Iterator[Credentials]:
        yield Credentials(self._user, self.token())
        yield Credentials(self._user, self.token(fresh=True))

    def accepted(self, credentials: Credentials) -> None:
        pass


def region_for(settings: Settings, environ_region: str | None) -> str:
    """The secret's region when DB_SECRET_ID is an ARN, the database's when DB_AUTH=iam and
    RDS_HOSTNAME is an RDS endpoint, else AWS_REGION, else the endpoint's.

    A secret lives in the region its ARN names, and RDS checks an IAM token against the region
    its endpoint names, whatever region the environment runs in. botocore does not ask the
    instance metadata for a region (NoRegionError), so one of these must name it; Beanstalk
    sets AWS_REGION from 01-environment.config.
    """
    if settings.auth is AuthMode.SECRETS_MANAGER:
        match = _ARN_REGION.search(settings.secret_id or "")
        if match:
            return match[1]
    endpoint = _RDS_REGION.search(settings.host or "")
    if endpoint and (settings.auth is AuthMode.IAM or not environ_region):
        return endpoint[1]
    if environ_region:
        return environ_region
    if settings.auth is AuthMode.SECRETS_MANAGER:
        raise ConfigError(f"AWS_REGION: is required (got not set) when DB_AUTH=secretsmanager and "
                          f"DB_SECRET_ID ({settings.secret_id}) is a name, not an ARN; set AWS_REGION "
                          "to the secret's region, or DB_SECRET_ID to the secret's ARN.")
    raise ConfigError("AWS_REGION: is required (got not set) when DB_AUTH=iam and RDS_HOSTNAME "
                      "is not an *.<region>.rds.amazonaws.com endpoint; set it to the DB's region.")


def aws_error(err: BaseException) -> str | None:
    """The error code of a failed AWS call (AccessDeniedException...), None for anything else.

    Also for a CredentialsUnavailable, and for an error raised from one (DatabaseUnavailable).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(err.__cause__, CredentialsUnavailable):
        err = err.__cause__
    if isinstance(err, CredentialsUnavailable):
        return err.code or err.reason
    if isinstance(err, ClientError):
        return err.response.get("Error", {}).get("Code", "ClientError")
    if isinstance(err, BotoCoreError):
        return type(err).__name__
    return None


def aws_refusal(err: BaseException) -> str | None:
    """One line for an operator tool (migrate, bootstrap) when an AWS call failed, else None."""
    code = aws_error(err)
    if code is None:
        return None
    return (f"an AWS call was refused or failed ({code}): check the instance role's policy "
            "(scripts/provision writes it) and AWS_REGION")


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


def _client(service: str, region: str | None, timeout: float = 5, attempts: int = 3):
    """A client whose calls give up within seconds: botocore's defaults (60 s to connect and
    to read, per attempt) would let a black-holed endpoint hold a request, or a booting
    worker past gunicorn's timeout. Retries are botocore's standard mode (3 attempts)."""
    import boto3  # imported here so password mode never loads boto3
    from botocore.config import Config

    from app.logs import guard_wire_content

    guard_wire_content()  # also where no app logging is configured: the wire never reaches a log
    return boto3.session.Session().client(service, region_name=region, config=Config(
        connect_timeout=timeout, read_timeout=timeout,
        retries={"mode": "standard", "max_attempts": attempts}))


def provider_for(settings: Settings) -> CredentialProvider:
    """Build the provider DB_AUTH selects (AWS clients use the instance profile's credentials)."""
    if settings.auth is AuthMode.PASSWORD:
        assert settings.password is not None  # enforced by Settings
        return StaticPassword(settings.user, settings.password.get_secret_value())
    region = region_for(settings, settings.aws_region)
    if settings.auth is AuthMode.SECRETS_MANAGER:
        return SecretsManagerPassword(
            settings.secret_id, _client("secretsmanager", region, settings.connect_timeout),
            user=settings.user)
    return IamAuthToken(_client("rds", region), settings.host, settings.port, settings.user, region)


def complete_settings(settings: Settings, provider: CredentialProvider) -> Settings:
    """Fill host, port and database left unset by the environment from the secret.

    The user comes from the secret whenever it has one: it belongs with the password.
    """
    if not isinstance(provider, SecretsManagerPassword):
        return settings
    try:
        secret = provider.secret()
    except CredentialsUnavailable as err:
        raise ConfigError(str(err), transient=not err.permanent) from None
    # (field, the secret's key, used when): the environment wins, except for the user.
    found = {field: (key, secret[key]) for field, key, use in (
        ("host", "host", not settings.host),
        ("port", "port", "port" not in settings.model_fields_set),
        ("database", "dbname", not settings.database),
        ("user", "username", True),
    ) if use and secret.get(key) not in (None, "")}
    if settings.user and "user" in found and settings.user != found["user"][1]:
        log.warning("RDS_USERNAME is ignored: the secret's username comes with its password",
                    extra={"event": "config_override", "variable": "RDS_USERNAME",
                           "secret_id": provider.secret_id, "user": found["user"][1]})
    settings = complete_from_secret(settings, found, provider.secret_id)
    missing = [var for var, value in (("RDS_HOSTNAME", settings.host),
                                      ("RDS_DB_NAME", settings.database),
                                      ("RDS_USERNAME", settings.user)) if not value]
    if missing:
        raise ConfigError(", ".join(missing) + ": not set in the environment nor in the secret "
                          f"{provider.secret_id}; set them as environment properties.")
    return settings


def secret_reader(secret_id: str, region: str | None, variable: str) -> Callable[[], str | None]:
    """A function returning the AWSCURRENT SecretString of a secret that is not the database's.

    For the API keys' digests (app/auth.py caches and parses them). The secret's own region
    wins when `secret_id` is an ARN. Short timeouts: a request that refreshes the cache must
    not hang for botocore's default minute when Secrets Manager is slow. A failed call raises
    CredentialsUnavailable, whose message names `variable` and the fix for that failure.
    """
    match = _ARN_REGION.search(secret_id)
    region = match[1] if match else region
    if not region:
        raise ConfigError(f"AWS_REGION: is required (got not set) when {variable} ({secret_id}) is a "
                          f"name, not an ARN; set AWS_REGION to the secret's region, or {variable} to "
                          "the secret's ARN.")
    # One attempt: a refresh runs inside a client's request, and a failed one keeps the digests
    # already read and is tried again later (app/auth.py), so retries would only hold it up.
    client = _client("secretsmanager", region, timeout=5, attempts=1)

    def read() -> str | None:
        try:
            response = client.get_secret_value(SecretId=secret_id)
        except Exception as err:  # noqa: BLE001 - botocore's errors, sorted by aws_error
            code = aws_error(err)
            if code is None:
                raise
            raise _secret_failure(err, code, secret_id, region, variable) from None
        return response.get("SecretString")  # None: a binary secret

    return read
