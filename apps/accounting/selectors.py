"""Reads for accounting, already narrowed by the permissions module."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.core.permissions import Action, restrict

from .models import Budget, PriceCatalog, PriceEntry, UsageEvent
from .pricing import catalog_current


def price_list(*, user, catalog_version: int | None = None) -> QuerySet[PriceEntry]:
    """The shared catalog's entries (the current version unless one is named) and the visible project overrides."""
    catalog = (
        PriceCatalog.objects.filter(version=catalog_version).first()
        if catalog_version is not None
        else catalog_current()
    )
    overrides = restrict(PriceEntry.objects.filter(project__isnull=False), user, Action.VIEW)
    if not user.is_authenticated:
        return PriceEntry.objects.none()
    return (PriceEntry.objects.filter(catalog=catalog) | overrides).select_related("catalog", "project")


def usage_event_list(*, user) -> QuerySet[UsageEvent]:
    return restrict(UsageEvent.objects.select_related("project"), user, Action.VIEW)


def rollup_list(*, user, model) -> QuerySet:
    return restrict(model.objects.all(), user, Action.VIEW)


def budget_list(*, user) -> QuerySet[Budget]:
    return restrict(Budget.objects.select_related("project", "team", "user", "token"), user, Action.VIEW)
