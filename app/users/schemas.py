"""Request and response shapes for /api/users; the OpenAPI document is generated from them."""

from __future__ import annotations

from typing import Annotated

from typing_extensions import TypedDict

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Email = Annotated[EmailStr, Field(max_length=254)]


class UserCreate(BaseModel):
    """Body of POST /api/users."""

    model_config = ConfigDict(extra="forbid", strict=True)
    email: Email
    name: Name


class UserPatch(BaseModel):
    """Body of PATCH /api/users/{id}: the fields to change, at least one."""

    model_config = ConfigDict(extra="forbid", strict=True)
    email: Email | None = None
    name: Name | None = None

    @model_validator(mode="after")
    def _not_empty(self) -> UserPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of: email, name")
        if any(getattr(self, f) is None for f in self.model_fields_set):
            raise ValueError("email and name cannot be null")
        return self


class ListQuery(BaseModel):
    """Query string of GET /api/users: keyset pagination by id, oldest first."""

    model_config = ConfigDict(extra="forbid")
    limit: int = Field(20, ge=1, le=100, description="Page size (1-100).")
    after: int = Field(0, ge=0, description="Return users with an id greater than this; "
                                            "pass the previous page's next_after.")


# Responses are TypedDicts: rows from the repository serialise as they are, with no
# per-row model instances on the hot path.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"},
                                 description="UTC, ISO 8601 (YYYY-MM-DDTHH:MM:SSZ).")]


class User(TypedDict):
    id: int
    email: str
    name: str
    created_at: Timestamp
    updated_at: Timestamp


class UserPage(TypedDict):
    data: list[User]
    next_after: Annotated[int | None, Field(
        description="Pass as ?after= for the next page; null on the last page.")]


class _ErrorDetail(TypedDict):
    field: str
    message: str


class _ErrorBody(TypedDict, total=False):
    code: Annotated[str, Field(description="Stable, machine-readable cause.")]
    message: str
    details: list[_ErrorDetail]


class ErrorResponse(TypedDict):
    error: _ErrorBody
