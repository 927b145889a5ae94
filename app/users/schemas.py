"""Request and response shapes for /api/users; the OpenAPI document is generated from them."""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated

from typing_extensions import NotRequired, TypedDict

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, EmailStr, Field,
                      StringConstraints, field_validator, model_validator)

NAME_MAX = 100  # users.name is VARCHAR(100): characters (code points), as len() counts
# Characters a name never needs and that corrupt what displays or logs it: C0/C1 controls
# (NUL, ESC, CR/LF, DEL...), surrogates, line and paragraph separators. Format characters
# (Cf) stay allowed: ZWJ builds emoji sequences and ZWNJ is needed in Persian and Indic names.
_FORBIDDEN_IN_NAMES = {"Cc", "Cs", "Zl", "Zp"}
# What shows nothing on its own: format characters (ZWSP, ZWJ, BOM, word joiner), spaces
# stripping leaves inside, combining marks with no letter to sit on, and the Hangul fillers
# (letters by category, blank by design). A name needs one character besides these.
_INVISIBLE_CATEGORIES = {"Cf", "Zs", "Mn", "Me"}
_BLANK_LETTERS = {"\u115f", "\u1160", "\u3164", "\uffa0"}


def _visible(c: str) -> bool:
    return c not in _BLANK_LETTERS and unicodedata.category(c) not in _INVISIBLE_CATEGORIES


def _clean_name(value: str) -> str:
    """NFC, so that one name has one spelling; then the checks NFC could change."""
    if any(unicodedata.category(c) in _FORBIDDEN_IN_NAMES for c in value):
        raise ValueError("must not contain control characters or line breaks")
    if not any(_visible(c) for c in value):  # "\u200b" passed min_length: blank, yet stored
        raise ValueError("must contain a visible character")
    value = unicodedata.normalize("NFC", value)
    if len(value) > NAME_MAX:  # NFC may lengthen a few scripts' letters (U+0958 -> 2)
        raise ValueError(f"must be at most {NAME_MAX} characters")
    return value


Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX),
                 AfterValidator(_clean_name)]


def _bare_address(value: object) -> object:
    """An address alone: EmailStr would take `Mallory <ada@example.com>` (or `<ada@...>`) as
    ada@example.com and drop the rest. '<' and '>' are never part of an address."""
    if isinstance(value, str) and ("<" in value or ">" in value):
        raise ValueError("must be an address alone, such as ada@example.com, without a name "
                         "or angle brackets")
    return value


Email = Annotated[EmailStr, BeforeValidator(_bare_address), Field(max_length=254)]

# Ids are BIGINT UNSIGNED.
ID_MAX = 2**64 - 1
_DIGITS = re.compile(r"[0-9]+")


def _ascii_digits(value: object) -> object:
    """Query numbers are plain digits: int() would also take ' 1', '1_0' and '١٠'.

    Leading zeros count for nothing (limit=010 is 10). Past 20 significant digits a number is
    above every parameter's maximum: 21 of them are enough for the range check to say so,
    without building a 5000-digit int.
    """
    if isinstance(value, str):
        if not _DIGITS.fullmatch(value):
            raise ValueError("must be a whole number written with the digits 0-9")
        return int(value.lstrip("0")[:21] or "0")
    return value


QueryInt = Annotated[int, BeforeValidator(_ascii_digits)]


class UserCreate(BaseModel):
    """Body of POST /api/users."""

    model_config = ConfigDict(extra="forbid", strict=True)
    email: Email
    name: Name


def _patch_schema(schema: dict) -> None:
    """What the validators refuse, in the OpenAPI document too: no null (_not_null), at least
    one field (_not_empty).

    The None defaults only mark a field as not given; pydantic would document them as
    `anyOf: [..., {"type": "null"}]` with `default: null`.
    """
    for field in schema["properties"].values():
        field.pop("default")
        field.update(next(s for s in field.pop("anyOf") if s.get("type") != "null"))
    schema["minProperties"] = 1


class UserPatch(BaseModel):
    """Body of PATCH /api/users/{id}: the fields to change, at least one."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_patch_schema)
    email: Email | None = None
    name: Name | None = None

    @field_validator("email", "name", mode="before")
    @classmethod
    def _not_null(cls, value):
        """Given, a field must hold a value (the columns are NOT NULL); the error names it."""
        if value is None:
            raise ValueError("cannot be null")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> UserPatch:
        if not self.model_fields_set:
            raise ValueError("give at least one of: email, name")
        return self


class ListQuery(BaseModel):
    """Query string of GET /api/users: keyset pagination by id, oldest first."""

    model_config = ConfigDict(extra="forbid")
    limit: QueryInt = Field(20, ge=1, le=100, description="Page size (1-100).")
    after: QueryInt = Field(0, ge=0, le=ID_MAX,
                            description="Return users with an id greater than this; "
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
        description="Pass as ?after= for the next page; null when this page has fewer than "
                    "`limit` users. A full page may be the last: the next one is then empty.")]


class _ErrorDetail(TypedDict):
    field: str
    message: str


class _ErrorBody(TypedDict):
    code: Annotated[str, Field(description="Stable, machine-readable cause.")]
    message: str
    details: NotRequired[list[_ErrorDetail]]  # validation errors only


class ErrorResponse(TypedDict):
    error: _ErrorBody
