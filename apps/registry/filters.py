"""One filter set per registry list, shared by the API and the pages."""

from __future__ import annotations

import django_filters
from django.db.models import Exists, OuterRef, Q, QuerySet

from apps.core.filters import BooleanFilter

from .models import (
    Lineage,
    ModelFormat,
    ModelVersion,
    Origin,
    Promotion,
    PromotionStatus,
    RegisteredModel,
    Relation,
    Task,
    VersionStatus,
)

MAX_PARAMETERS = 2**62


def _has_parent_with(relation: str) -> Exists:
    return Exists(Lineage.objects.filter(child_id=OuterRef("pk"), relation=relation))


class RegisteredModelFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", max_length=100, label="Name or description contains")
    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    tag = django_filters.CharFilter(method="filter_tag", max_length=64)
    alias = django_filters.CharFilter(field_name="aliases__name", max_length=64)
    task = django_filters.ChoiceFilter(choices=Task.choices)
    origin = django_filters.ChoiceFilter(choices=Origin.choices)
    restricted = BooleanFilter()
    # The version criteria below select models with at least one live version that meets all of them together;
    # `filter_queryset` applies them as one condition, so each method here leaves the queryset alone.
    status = django_filters.ChoiceFilter(choices=VersionStatus.choices, method="version_criterion")
    # Not "format": DRF reads ?format= to pick a renderer.
    model_format = django_filters.ChoiceFilter(
        choices=ModelFormat.choices, method="version_criterion", label="Has a version in this format"
    )
    min_parameters = django_filters.NumberFilter(
        min_value=0, max_value=MAX_PARAMETERS, method="version_criterion", label="At least this many parameters"
    )
    max_parameters = django_filters.NumberFilter(
        min_value=0, max_value=MAX_PARAMETERS, method="version_criterion", label="At most this many parameters"
    )
    relation = django_filters.ChoiceFilter(
        choices=Relation.choices, method="version_criterion", label="Has a version derived with this relation"
    )

    class Meta:
        model = RegisteredModel
        fields = [
            "q",
            "project",
            "tag",
            "alias",
            "task",
            "origin",
            "restricted",
            "status",
            "model_format",
            "min_parameters",
            "max_parameters",
            "relation",
        ]

    def search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(Q(name__icontains=value) | Q(description__icontains=value))

    def filter_tag(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(tags__contains=[value])

    def version_criterion(self, queryset: QuerySet, name: str, value) -> QuerySet:
        return queryset

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = super().filter_queryset(queryset)
        data = self.form.cleaned_data
        versions = ModelVersion.objects.filter(model_id=OuterRef("pk"), deleted_at__isnull=True)
        narrowed = False
        for field, lookup in (
            ("status", "status"),
            ("model_format", "format"),
            ("min_parameters", "parameter_count__gte"),
            ("max_parameters", "parameter_count__lte"),
        ):
            if data.get(field) not in (None, ""):
                versions = versions.filter(**{lookup: data[field]})
                narrowed = True
        if data.get("relation"):
            versions = versions.filter(_has_parent_with(data["relation"]))
            narrowed = True
        return queryset.filter(Exists(versions)) if narrowed else queryset


class ModelVersionFilter(django_filters.FilterSet):
    q = django_filters.CharFilter(method="search", max_length=100, label="Model name or description contains")
    model = django_filters.NumberFilter(field_name="model_id", min_value=1, max_value=2**63 - 1, label="Model id")
    model_name = django_filters.CharFilter(field_name="model__name", max_length=128)
    project = django_filters.CharFilter(field_name="model__project__slug", max_length=50)
    status = django_filters.ChoiceFilter(choices=VersionStatus.choices)
    model_format = django_filters.ChoiceFilter(
        field_name="format", choices=ModelFormat.choices, label="Format (not ?format=, which picks the renderer)"
    )
    tag = django_filters.CharFilter(method="filter_tag", max_length=64)
    alias = django_filters.CharFilter(field_name="aliases__name", max_length=64)
    min_parameters = django_filters.NumberFilter(
        field_name="parameter_count", lookup_expr="gte", min_value=0, max_value=MAX_PARAMETERS
    )
    max_parameters = django_filters.NumberFilter(
        field_name="parameter_count", lookup_expr="lte", min_value=0, max_value=MAX_PARAMETERS
    )
    relation = django_filters.ChoiceFilter(
        choices=Relation.choices, method="filter_relation", label="Has a parent with this relation"
    )
    include_deleted = BooleanFilter(method="keep_deleted", label="Include soft-deleted versions")

    class Meta:
        model = ModelVersion
        fields = [
            "q",
            "model",
            "model_name",
            "project",
            "status",
            "model_format",
            "tag",
            "alias",
            "min_parameters",
            "max_parameters",
            "relation",
            "include_deleted",
        ]

    def __init__(self, data=None, *args, **kwargs):
        # Always bound: an unbound filter set skips `filter_queryset`, which would list deleted versions.
        super().__init__({} if data is None else data, *args, **kwargs)

    def search(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(Q(model__name__icontains=value) | Q(description__icontains=value))

    def filter_tag(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(tags__contains=[value])

    def filter_relation(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(_has_parent_with(value))

    def keep_deleted(self, queryset: QuerySet, name: str, value: bool) -> QuerySet:
        return queryset  # applied in filter_queryset, which must also act when the parameter is absent

    def filter_queryset(self, queryset: QuerySet) -> QuerySet:
        queryset = super().filter_queryset(queryset)
        if not self.form.cleaned_data.get("include_deleted"):
            queryset = queryset.filter(deleted_at__isnull=True)
        return queryset


class PromotionFilter(django_filters.FilterSet):
    model = django_filters.NumberFilter(field_name="model_id", min_value=1, max_value=2**63 - 1, label="Model id")
    project = django_filters.CharFilter(field_name="model__project__slug", max_length=50)
    alias = django_filters.CharFilter(max_length=64)
    status = django_filters.ChoiceFilter(choices=PromotionStatus.choices)

    class Meta:
        model = Promotion
        fields = ["model", "project", "alias", "status"]
