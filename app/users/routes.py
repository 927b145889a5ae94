"""HTTP routes for /api/users: validate, call the repository, shape the response."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, url_for
from pydantic import TypeAdapter
from werkzeug.exceptions import NotFound
from werkzeug.routing import BaseConverter

from app.db import get_db
from app.errors import APIError
from app.users import repository
from app.users.schemas import ID_MAX, ListQuery, User, UserCreate, UserPage, UserPatch
from app.validation import parse_body, parse_query


class IdConverter(BaseConverter):
    """A row id in a path: 1 to 2**64-1 (BIGINT UNSIGNED) in ASCII digits, else 404 not_found.

    Werkzeug's `int` converter takes any script's digits: /api/users/١٢٣ was user 123, one
    user under many URLs. Leading zeros are refused for the same reason.
    """

    regex = r"[1-9][0-9]{0,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number > ID_MAX:
            # Not ValidationError: Werkzeug would then report the path's other methods and
            # answer DELETE /api/users/18446744073709551616 with 405 instead of 404.
            raise NotFound()
        return number

    def to_url(self, value: int) -> str:
        return str(int(value))


bp = Blueprint("users", __name__, url_prefix="/api/users")
# Registered before the routes below are added (deferred functions run in order).
bp.record_once(lambda state: state.app.url_map.converters.update(id=IdConverter))

_user_json = TypeAdapter(User)
_page_json = TypeAdapter(UserPage)


def _json(adapter: TypeAdapter, value, status: int = 200) -> Response:
    # Ends with a newline like Flask's jsonify (errors, health), so curl's output ends its line.
    # content_type rather than mimetype: Werkzeug would work out the same header per response.
    return Response(adapter.dump_json(value) + b"\n", status=status, content_type="application/json")


def _not_found(user_id: int) -> APIError:
    return APIError(404, "user_not_found", f"No user with id {user_id}.")


@bp.get("")
def list_users():
    q = parse_query(ListQuery)
    rows = repository.list_users(get_db(), limit=q.limit, after=q.after)
    next_after = rows[-1]["id"] if len(rows) == q.limit else None
    return _json(_page_json, {"data": rows, "next_after": next_after})


@bp.get("/<id:user_id>")
def get_user(user_id: int):
    user = repository.get_user(get_db(), user_id)
    if user is None:
        raise _not_found(user_id)
    return _json(_user_json, user)


@bp.post("")
def create_user():
    body = parse_body(UserCreate)
    try:
        user = repository.create_user(get_db(), email=body.email, name=body.name)
    except repository.EmailTaken:
        raise APIError(409, "email_taken", "A user with this email already exists.") from None
    response = _json(_user_json, user, status=201)
    response.headers["Location"] = url_for("users.get_user", user_id=user["id"])
    return response


@bp.patch("/<id:user_id>")
def update_user(user_id: int):
    body = parse_body(UserPatch)
    try:
        user = repository.update_user(get_db(), user_id, body.model_dump(exclude_unset=True))
    except repository.EmailTaken:
        raise APIError(409, "email_taken", "A user with this email already exists.") from None
    if user is None:
        raise _not_found(user_id)
    return _json(_user_json, user)


@bp.delete("/<id:user_id>")
def delete_user(user_id: int):
    if not repository.delete_user(get_db(), user_id):
        raise _not_found(user_id)
    return current_app.response_class(status=204)  # the app's: no Content-Type for no body
