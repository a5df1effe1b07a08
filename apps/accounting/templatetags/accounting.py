"""Number formats of the accounting pages: amounts of money from fractions of a cent up, and token counts."""

from __future__ import annotations

from decimal import Decimal

from django import template

register = template.Library()

SMALLEST = Decimal("0.000001")


@register.filter
def money(value) -> str:
    """Two decimals from 1 up; below that enough decimals to show two significant digits (at most six)."""
    if value is None or value == "":
        return "—"
    amount = Decimal(value)
    if amount == 0:
        return "0.00"
    if abs(amount) >= 1:
        return f"{amount:,.2f}"
    if abs(amount) < SMALLEST:
        return f"<{SMALLEST}" if amount > 0 else f"-<{SMALLEST}"
    places = min(max(2, -amount.adjusted() + 1), 6)
    return f"{amount:,.{places}f}"


@register.filter
def count(value) -> str:
    """A whole number with thousands separators."""
    return "—" if value is None else f"{int(value):,}"


@register.filter
def compact(value) -> str:
    """A large count in a few characters: 12.3k, 4.5M, 1.2B."""
    if value is None:
        return "—"
    number = int(value)
    for size, suffix in ((10**9, "B"), (10**6, "M"), (10**4, "k")):
        if abs(number) >= size:
            return f"{number / size:.1f}{suffix}"
    return f"{number:,}"
