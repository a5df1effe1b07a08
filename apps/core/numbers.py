"""Whole numbers read from text that a user sent (query parameters, names such as registry:<id>)."""

from __future__ import annotations


def whole_number(raw: str, *, upper: int) -> int | None:
    """`raw` as a whole number from 0 to upper - 1, or None.

    int() decides, not str.isdigit(): isdigit also accepts characters int() refuses, such as "²", and so turned
    such input into a 500. int() also caps the digits it reads (ValueError beyond 4,300)."""
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 0 <= value < upper else None
