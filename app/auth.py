"""API keys: who may change users (API_AUTH=writes) or also read them (API_AUTH=all).

Clients send `Authorization: Bearer <key>`. The server holds only the keys' SHA-256 digests,
from API_KEY_SHA256 and/or a Secrets Manager secret (API_KEYS_SECRET_ID, re-read every
SECRET_TTL so a rotation needs no restart); several digests may be valid at once, which is
how a key is rotated. A plain SHA-256 is enough: the keys are 256-bit random values, not
passwords, so a leaked digest cannot be brute-forced, and a slow hash (bcrypt, argon2) would
only add its cost to every request. The presented key's digest is compared with every
configured digest in constant time (hmac.compare_digest, no early exit).

Every endpoint is guarded except OPEN_BLUEPRINTS (/health, which the load balancer checks,
and /openapi.json), CORS preflights and unknown routes (their 404/405 reveal nothing). A key
never reaches a log or a response.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable

from flask import Flask, g, request

from app import credentials
from app.config import ConfigError, Settings
from app.errors import APIError

log = logging.getLogger(__name__)

MODES = ("off", "writes", "all")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
OPEN_BLUEPRINTS = frozenset({"health", "openapi"})
# How long the secret's digests are trusted before a request reads the secret again, and how
# soon a failed read is retried (meanwhile the last digests read stay in force).
SECRET_TTL = 5 * 60
SECRET_RETRY = 30
SECRET_FIELD = "api_key_sha256"
REALM = 'Bearer realm="api"'
_clock = time.monotonic  # what KeyDigests measures the TTL with (tests replace it)
# RFC 6750 b64token, bounded: nothing else can be a key this module made.
_MAX_KEY = 256
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")


def new_key() -> str:
    """A new API key: 32 random bytes, URL-safe base64 (43 characters, never mistaken for a digest)."""
    return secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """What the server stores for a key: SHA-256 of its UTF-8 bytes, lower-case hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(digest: str) -> str:
    """A short name for a key in logs: the start of its digest (the key itself is never logged)."""
    return digest[:8]


def _parse_secret(text: object, secret_id: str) -> tuple[str, ...]:
    """The digests of a secret {"api_key_sha256": ["<64 hex>", ...]}; ValueError says what is wrong."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    digests = value.get(SECRET_FIELD) if isinstance(value, dict) else None
    if not isinstance(digests, list):
        raise ValueError(f"secret {secret_id} is not a JSON object with a list {SECRET_FIELD!r} "
                         f'(expected {{"{SECRET_FIELD}": ["<sha-256 hex>", ...]}})')
    bad = [n for n, d in enumerate(digests, 1)
           if not (isinstance(d, str) and len(d) == 64 and not d.strip("0123456789abcdefABCDEF"))]
    if bad:
        raise ValueError(f"secret {secret_id}: {SECRET_FIELD} item(s) {bad} are not SHA-256 hex digests "
                         "(not shown); put digests there, never the keys themselves")
    return tuple(d.lower() for d in digests)


class KeyDigests:
    """The accepted digests: API_KEY_SHA256's, plus the secret's, re-read after SECRET_TTL.

    The secret is read once at startup (a missing, unreadable or malformed one stops the app).
    Later, one request at a time refreshes it while the others keep using the digests in
    force; a failed refresh keeps them and is retried after SECRET_RETRY, so a Secrets
    Manager outage does not lock every client out.
    """

    def __init__(self, fixed: tuple[str, ...], secret_id: str | None = None,
                 read: Callable[[], str | None] | None = None, ttl: float = SECRET_TTL,
                 retry: float = SECRET_RETRY, clock: Callable[[], float] | None = None):
        self.fixed = fixed
        self.secret_id = secret_id
        self.clock = clock or _clock
        self._read, self._ttl, self._retry = read, ttl, retry
        self._lock = threading.Lock()
        self._refreshing = False
        self._from_secret: tuple[str, ...] = ()
        self._next_read = float("inf")
        if read is not None:
            try:
                self._from_secret = self._fetch()
            except ValueError as err:
                raise ConfigError(f"API_KEYS_SECRET_ID: {err}") from None
            except credentials.CredentialsUnavailable as err:
                # The message names the fix for this failure (a policy, the name, the network).
                hint = (" The instance role may read the secret that ApiKeysSecretName in "
                        ".ebextensions/01-environment.config names (04)." if err.permanent else "")
                raise ConfigError(f"{err}{hint}", transient=not err.permanent) from None
            self._next_read = self.clock() + ttl

    def _fetch(self) -> tuple[str, ...]:
        return _parse_secret(self._read(), self.secret_id)

    def current(self) -> tuple[str, ...]:
        with self._lock:
            due = self.clock() >= self._next_read and not self._refreshing
            if due:
                self._refreshing = True
        if due:
            self._refresh()
        return self.fixed + self._from_secret

    def _refresh(self) -> None:
        digests, delay = None, self._ttl
        try:
            digests = self._fetch()
        except Exception as err:  # noqa: BLE001 - any failure keeps the digests in force
            delay = self._retry
            log.warning("could not refresh the API keys' secret; the digests read before stay in force",
                        extra={"event": "api_keys_refresh_failed", "secret_id": self.secret_id,
                               "error": credentials.aws_error(err) or str(err)})
        with self._lock:
            if digests is not None:
                if set(digests) != set(self._from_secret):
                    log.info("API keys changed in the secret", extra={
                        "event": "api_keys_changed", "secret_id": self.secret_id,
                        "key_ids": [key_id(d) for d in digests]})
                self._from_secret = digests
            self._next_read = self.clock() + delay
            self._refreshing = False


def _unauthorized(reason: str) -> APIError:
    """401 with the RFC 6750 challenge; `invalid_token` when a key was presented but refused."""
    challenge = REALM if reason == "missing" else f'{REALM}, error="invalid_token"'
    message = ("This request needs an API key: send Authorization: Bearer <key>." if reason == "missing"
               else "The API key is not valid.")
    log.warning("request refused: %s API key", reason,
                extra={"event": "auth_failed", "reason": reason, "method": request.method,
                       "path": request.path})
    return APIError(401, "unauthorized", message, headers={"WWW-Authenticate": challenge})


def _presented_key() -> str | None:
    """The bearer token, None when the header is absent; ValueError when it is not one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if (scheme.lower() != "bearer" or not token or len(token) > _MAX_KEY
            or not set(token) <= _TOKEN_CHARS):
        raise ValueError("malformed")
    return token


class Guard:
    """The before_request check: returns nothing when the request may go on, else raises 401."""

    def __init__(self, mode: str, keys: KeyDigests):
        self.mode = mode
        self.keys = keys

    def needs_key(self) -> bool:
        if self.mode == "off" or request.url_rule is None or request.method == "OPTIONS":
            return False
        if request.blueprint in OPEN_BLUEPRINTS or request.endpoint == "static":
            return False
        return self.mode == "all" or request.method not in SAFE_METHODS

    def check(self) -> None:
        if not self.needs_key():
            return
        try:
            key = _presented_key()
        except ValueError:
            raise _unauthorized("malformed") from None
        if key is None:
            raise _unauthorized("missing")
        digest = key_digest(key)
        matched = None
        for candidate in self.keys.current():  # every one: the time taken does not tell which
            if hmac.compare_digest(digest, candidate):
                matched = candidate
        if matched is None:
            raise _unauthorized("unknown")
        g.api_key_id = key_id(matched)
        if request.method not in SAFE_METHODS:
            log.info("authenticated", extra={"event": "authenticated", "key_id": g.api_key_id,
                                             "method": request.method, "path": request.path})


def init_app(app: Flask, settings: Settings) -> Guard:
    """Guard the app as API_AUTH says; reads the keys' secret now, so a bad one stops startup."""
    keys = KeyDigests(settings.api_key_hashes)
    if settings.api_auth != "off" and settings.api_keys_secret_id:
        read = credentials.secret_reader(settings.api_keys_secret_id, settings.aws_region,
                                         "API_KEYS_SECRET_ID")
        keys = KeyDigests(settings.api_key_hashes, settings.api_keys_secret_id, read)
    if settings.api_auth != "off" and not keys.current():
        raise ConfigError(f"API_KEYS_SECRET_ID: secret {settings.api_keys_secret_id} lists no "
                          f"digest and API_KEY_SHA256 is not set: API_AUTH={settings.api_auth} "
                          "would refuse every request; add a digest from scripts/new-api-key")
    guard = Guard(settings.api_auth, keys)
    app.extensions["api_auth"] = guard
    if settings.api_auth != "off":  # off: no hook at all, not one that returns at once
        app.before_request(guard.check)
    if settings.api_auth == "off":
        log.warning("API_AUTH=off: anyone who can reach the app may read, change and delete users",
                    extra={"event": "api_auth", "mode": "off",
                           "ignored": [v for v, s in (("API_KEY_SHA256", settings.api_key_sha256),
                                                      ("API_KEYS_SECRET_ID", settings.api_keys_secret_id))
                                       if s]})
    else:
        log.info("API keys required", extra={
            "event": "api_auth", "mode": settings.api_auth,
            "protected": "every /api request" if settings.api_auth == "all" else "POST, PATCH, DELETE",
            "key_ids": [key_id(d) for d in keys.current()], "secret_id": settings.api_keys_secret_id})
    return guard
