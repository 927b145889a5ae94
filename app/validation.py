"""Turning request bodies and query strings into validated models, or into 4xx errors."""

from __future__ import annotations

import json
from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import APIError

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M]) -> M:
    """Validate a JSON body: 501 for a transfer coding but chunked, 415 if it is not JSON or is
    encoded, 400 if it does not parse, 422 if invalid."""
    codings = request.headers.get("Transfer-Encoding")
    if codings and any(c.strip().lower() not in ("chunked", "identity") for c in codings.split(",")):
        # gunicorn refuses unknown transfer codings (501) but takes gzip, deflate and compress
        # before chunked, removes only the chunking and hands on the body still coded.
        raise APIError(501, "not_implemented",
                       "The request uses an unsupported transfer coding or method.")
    if request.mimetype != "application/json":
        raise APIError(415, "unsupported_media_type",
                       "Send the body as JSON with Content-Type: application/json.")
    if (request.content_encoding or "identity").strip().lower() != "identity":
        # Nothing here decodes a content coding: a gzipped body would read as invalid JSON, and
        # one that claims br but is plain would be stored. 415 (RFC 9110 8.4), and the one
        # coding taken (RFC 7694).
        raise APIError(415, "unsupported_media_type",
                       "Send the body uncompressed: Content-Encoding is not supported.",
                       headers={"Accept-Encoding": "identity"})
    raw = _read_body()
    try:
        parsed = model.model_validate_json(raw)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise APIError(400, "invalid_json", "The body is not valid JSON.") from None
        if any(e["type"] == "model_type" for e in errors):
            raise APIError(422, "validation_error", "The body must be a JSON object.",
                           [{"field": "", "message": "expected an object"}]) from None
        raise APIError(422, "validation_error", "The body is not valid.", _details(errors)) from None
    _reject_duplicate_keys(raw)
    return parsed


def _read_body() -> bytes:
    """The body, never more than MAX_CONTENT_LENGTH: 413 beyond it, however it was sent.

    Werkzeug answers 413 itself for a Content-Length over the limit, but a chunked body
    (no Content-Length; gunicorn sets wsgi.input_terminated) is silently cut at the limit,
    and a cut body can still parse. One more byte from the server's stream tells them apart.
    """
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(raw) >= limit:
        if request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge()
    return raw


def _reject_duplicate_keys(raw: bytes) -> None:
    """400 for a key given twice in one object.

    JSON parsers disagree on `{"name": "a", "name": "b"}` (pydantic keeps the last, others the
    first), so a proxy or audit log and this app could read different values; I-JSON
    (RFC 7493) forbids duplicates. Runs only on bodies that already validated: small and flat.
    """
    def pairs_hook(pairs: list[tuple[str, object]]) -> dict:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise APIError(400, "invalid_json",
                               f"The body is not valid JSON: the key {json.dumps(key)} "
                               "appears more than once.")
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):  # pydantic parsed it; the stdlib may be stricter
        raise APIError(400, "invalid_json", "The body is not valid JSON.") from None


def parse_query(model: type[M]) -> M:
    """Validate the query string: 400 invalid_parameter naming each bad parameter.

    A parameter given twice (?limit=1&limit=1000) is refused rather than resolved: which of
    the two a cache, proxy or firewall in front looked at is anyone's guess. Raw bytes that
    are not UTF-8 (?\xff=1; percent-escapes decode leniently) make Werkzeug raise
    UnicodeDecodeError: refused here, not a 500.
    """
    try:
        args = request.args
    except UnicodeDecodeError:
        raise APIError(400, "invalid_parameter", "The query string is not valid UTF-8.") from None
    if not args:
        return model()
    given: dict[str, str] = {}
    repeated = []
    for name, values in args.lists():
        if len(values) > 1:
            repeated.append(name)
        given[name] = values[0]
    if repeated:
        raise APIError(400, "invalid_parameter", "The query string is not valid.",
                       _capped([{"field": name, "message": "given more than once"} for name in repeated]))
    try:
        return model.model_validate(given)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
        raise APIError(400, "invalid_parameter", "The query string is not valid.",
                       _details(errors)) from None


# An error lists at most this many problems. A 14 KB body of 1,500 unknown keys
# ({"k0":0,"k1":0,...}) was answered with a detail for each, 65 KB of them.
MAX_DETAILS = 20


def _capped(details: list[dict[str, str]]) -> list[dict[str, str]]:
    """The first MAX_DETAILS problems, then one entry that counts the rest."""
    if len(details) <= MAX_DETAILS:
        return details
    rest = len(details) - MAX_DETAILS
    return [*details[:MAX_DETAILS], {"field": "", "message": f"{rest} more problem(s) not listed"}]


def _details(errors: list[dict]) -> list[dict[str, str]]:
    details = []
    for e in errors:
        field = ".".join(str(p) for p in e["loc"])
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        details.append({"field": field, "message": message.removeprefix("Value error, ")})
    return _capped(details)
