"""Reads for accounting, already narrowed by the permissions module."""

from __future__ import annotations

from django.db.models import QuerySet

from apps.core.models import Project
from apps.core.permissions import Action, restrict
from apps.registry.models import ModelVersion

from .models import Budget, DeploymentCostHourly, PriceCatalog, PriceEntry, UsageEvent
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


def deployment_cost_list(*, user) -> QuerySet[DeploymentCostHourly]:
    return restrict(DeploymentCostHourly.objects.select_related("project"), user, Action.VIEW)


def tokenizer_version_list(*, user, project: Project) -> QuerySet[ModelVersion]:
    """The project's registered versions the user may see that ship their own tokenizer."""
    return restrict(
        ModelVersion.objects.filter(model__project=project, deleted_at__isnull=True, files__path="tokenizer.json")
        .select_related("model")
        .order_by("model__name", "-number"),
        user,
        Action.VIEW,
    )
