"""The OpenAPI 3.1 document, generated from the pydantic models the routes validate with."""

from __future__ import annotations

from functools import lru_cache

from flask import Blueprint, jsonify
from pydantic import TypeAdapter

from app.health import Readiness
from app.users.schemas import (ID_MAX, ErrorResponse, ListQuery, User, UserCreate, UserPage,
                               UserPatch)

bp = Blueprint("openapi", __name__)

_REF = "#/components/schemas/{model}"


def _json(schema: str) -> dict:
    return {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}}


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"},
                                "description": "Seconds to wait before retrying."}}


def _error(description: str, *, retry: bool = False) -> dict:
    response = {"description": description, "content": _json("ErrorResponse")}
    if retry:
        response["headers"] = _RETRY_AFTER
    return response


_COMMON = {"401": {**_error("No valid API key (API_AUTH writes or all)."),
                   "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                                    "description": 'Bearer realm="api"'}}},
           "503": _error("Database busy or unavailable (database_busy, database_unavailable), or a "
                         "write it did not confirm, which may have been applied: read the resource "
                         "before sending it again (write_outcome_unknown).", retry=True),
           "500": _error("Unexpected error.")}
_BODY = {"400": _error("Body is not valid JSON."), "413": _error("Body too large."),
         "415": _error("Body is not application/json, or has a Content-Encoding."),
         "422": _error("Body fails validation.")}
# app/users/routes.py's IdConverter: anything else in the path is 404 not_found.
_ID = [{"name": "user_id", "in": "path", "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": ID_MAX}}]


@lru_cache(maxsize=1)
def document() -> dict:
    _, schemas = TypeAdapter.json_schemas(
        [(t.__name__, "validation" if t in (UserCreate, UserPatch) else "serialization",
          TypeAdapter(t)) for t in (User, UserCreate, UserPatch, UserPage, ErrorResponse,
                                    Readiness)],
        ref_template=_REF,
    )
    query = ListQuery.model_json_schema()["properties"]
    list_params = [{"name": name, "in": "query", "required": False, "schema": spec,
                    "description": spec.get("description", "")} for name, spec in query.items()]
    return {
        "openapi": "3.1.0",
        "info": {"title": "Users API", "version": "1.0.0",
                 "description": "Reference Flask API on Elastic Beanstalk with RDS MySQL."},
        "paths": {
            "/api/users": {
                "get": {"operationId": "listUsers", "parameters": list_params,
                        "responses": {"200": {"description": "A page of users.",
                                              "content": _json("UserPage")},
                                      "400": _error("Invalid query parameter."), **_COMMON}},
                "post": {"operationId": "createUser",
                         "requestBody": {"required": True, "content": _json("UserCreate")},
                         "responses": {"201": {"description": "Created.", "content": _json("User"),
                                               "headers": {"Location": {"schema": {"type": "string"}}}},
                                       "409": _error("Email already taken."), **_BODY, **_COMMON}},
            },
            "/api/users/{user_id}": {
                "parameters": _ID,
                "get": {"operationId": "getUser",
                        "responses": {"200": {"description": "The user.", "content": _json("User")},
                                      "404": _error("No such user."), **_COMMON}},
                "patch": {"operationId": "updateUser",
                          "requestBody": {"required": True, "content": _json("UserPatch")},
                          "responses": {"200": {"description": "Updated.", "content": _json("User")},
                                        "404": _error("No such user."),
                                        "409": _error("Email already taken."), **_BODY, **_COMMON}},
                "delete": {"operationId": "deleteUser",
                           "responses": {"204": {"description": "Deleted."},
                                         "404": _error("No such user."), **_COMMON}},
            },
            "/health": {"get": {"operationId": "health", "security": [], "responses": {
                "200": {"description": "The process serves requests (no database check)."}}}},
            "/health/ready": {"get": {"operationId": "ready", "security": [], "responses": {
                "200": {"description": "Ready: a pooled database connection works (database ok), "
                                       "or every connection is serving requests or the database "
                                       "gave up on the read (busy).",
                        "content": _json("Readiness")},
                "503": {"description": "Not ready: the database is unreachable or "
                                       "misconfigured (with Retry-After), or its schema is "
                                       "behind the code.",
                        "content": _json("Readiness"), "headers": _RETRY_AFTER}}}},
        },
        # app/auth.py: which requests need the key depends on API_AUTH (off, writes, all).
        "security": [{"apiKey": []}],
        "components": {"schemas": schemas["$defs"], "securitySchemes": {"apiKey": {
            "type": "http", "scheme": "bearer",
            "description": "A key from scripts/new-api-key. Needed for POST, PATCH and DELETE "
                           "with API_AUTH=writes, for every /api request with API_AUTH=all (the "
                           "Beanstalk default), never with off."}}},
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(document())
