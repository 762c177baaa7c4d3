"""The category every entry is tagged with."""

from __future__ import annotations

from enum import StrEnum

from secure_kv.errors import InvalidInputError, InvalidTypeError

__all__ = [
    "CATEGORIES_BY_CODE",
    "CATEGORY_BY_VALUE",
    "CATEGORY_CODES",
    "CODE_BY_VALUE",
    "Category",
    "parse_category",
]


class Category(StrEnum):
    """What kind of state an entry holds; it decides auditing, expiry and display.

    ``TOKEN``: a credential; masked in the CLI, every read audited.
    ``PREFERENCE``: user or plugin settings; the default.
    ``CACHE``: derived data that always expires.
    """

    TOKEN = "token"  # noqa: S105 (a category name, not a password)
    PREFERENCE = "preference"
    CACHE = "cache"


# One byte per category in the sealed record's associated data (see docs/architecture.md).
CATEGORY_CODES: dict[Category, int] = {
    Category.TOKEN: 1,
    Category.PREFERENCE: 2,
    Category.CACHE: 3,
}
CATEGORIES_BY_CODE = {code: category for category, code in CATEGORY_CODES.items()}
# By the stored string, for rows read back: hashing a Category runs Enum.__hash__ in Python.
CATEGORY_BY_VALUE = {category.value: category for category in Category}
CODE_BY_VALUE = {category.value: code for category, code in CATEGORY_CODES.items()}


def parse_category(value: object) -> Category:
    """Accept a :class:`Category` or its plain string value."""
    if isinstance(value, Category):
        return value
    if isinstance(value, str):
        found = CATEGORY_BY_VALUE.get(value)
        if found is None:
            raise InvalidInputError(
                # The given string is not echoed: a misplaced argument could be a secret.
                f"unknown category: use one of {', '.join(CATEGORY_BY_VALUE)} (lower case)"
            )
        return found
    raise InvalidTypeError(
        f"category must be a secure_kv.Category or one of {', '.join(CATEGORY_BY_VALUE)}, "
        f"not {type(value).__name__}"
    )
