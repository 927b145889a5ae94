"""Turning request bodies and query strings into validated models, or into 4xx errors."""

from __future__ import annotations

from typing import TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from app.errors import APIError

M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M]) -> M:
    """Validate a JSON body: 415 if it is not JSON, 400 if it does not parse, 422 if invalid."""
    if request.mimetype != "application/json":
        raise APIError(415, "unsupported_media_type",
                       "Send the body as JSON with Content-Type: application/json.")
    raw = request.get_data(cache=False)  # werkzeug enforces MAX_CONTENT_LENGTH here (413)
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise APIError(400, "invalid_json", "The body is not valid JSON.") from None
        if any(e["type"] == "model_type" for e in errors):
            raise APIError(422, "validation_error", "The body must be a JSON object.",
                           [{"field": "", "message": "expected an object"}]) from None
        raise APIError(422, "validation_error", "The body is not valid.", _details(errors)) from None


def parse_query(model: type[M]) -> M:
    """Validate the query string: 400 invalid_parameter naming each bad parameter."""
    if not request.args:
        return model()
    try:
        return model.model_validate(request.args.to_dict(flat=True))
    except ValidationError as err:
        errors = err.errors(include_url=False, include_input=False, include_context=False)
        raise APIError(400, "invalid_parameter", "The query string is not valid.",
                       _details(errors)) from None


def _details(errors: list[dict]) -> list[dict[str, str]]:
    details = []
    for e in errors:
        field = ".".join(str(p) for p in e["loc"])
        message = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        details.append({"field": field, "message": message.removeprefix("Value error, ")})
    return details
