"""One filter set per list: raw usage events, usage summaries, GPU cost, budgets and prices."""

import django_filters

from apps.core.filters import BooleanFilter

from .models import Budget, BudgetPeriod, BudgetScope, DeploymentCostHourly, PriceEntry, UsageEvent, UsageHourly


class _FromToFilter(django_filters.FilterSet):
    def __init__(self, data=None, *args, **kwargs):
        # `from` and `to` are Python keywords: the query string uses them, the filters are named start and end.
        if data is not None:
            data = data.copy()
            for outer, inner in (("from", "start"), ("to", "end")):
                if outer in data:
                    data[inner] = data.pop(outer)[-1]
        super().__init__(data, *args, **kwargs)


class _UsageFilter(_FromToFilter):
    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    model = django_filters.CharFilter(max_length=200)
    deployment = django_filters.CharFilter(max_length=200)
    user = django_filters.CharFilter(max_length=150)
    team = django_filters.CharFilter(max_length=100)


class UsageEventFilter(_UsageFilter):
    provider = django_filters.CharFilter(max_length=50)
    status = django_filters.CharFilter(max_length=20)
    is_error = BooleanFilter()
    event_id = django_filters.CharFilter(max_length=200)
    start = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="gte", label="from")
    end = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="lt", label="to")

    class Meta:
        model = UsageEvent
        fields = ["project", "model", "deployment", "provider", "user", "team", "status", "is_error", "event_id"]


class UsageSummaryFilter(_UsageFilter):
    """The same query parameters over the rollups (hourly or daily, chosen by the view)."""

    start = django_filters.IsoDateTimeFilter(field_name="bucket", lookup_expr="gte", label="from")
    end = django_filters.IsoDateTimeFilter(field_name="bucket", lookup_expr="lt", label="to")

    class Meta:
        model = UsageHourly
        fields = ["project", "model", "deployment", "user", "team"]


class DeploymentCostFilter(_FromToFilter):
    """GPU cost rows: the usage filters that apply to a deployment's hours (no model, user or team: GPU time is
    the deployment's)."""

    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    deployment = django_filters.CharFilter(max_length=200)
    idle = BooleanFilter()
    start = django_filters.IsoDateTimeFilter(field_name="bucket", lookup_expr="gte", label="from")
    end = django_filters.IsoDateTimeFilter(field_name="bucket", lookup_expr="lt", label="to")

    class Meta:
        model = DeploymentCostHourly
        fields = ["project", "deployment", "idle"]


class BudgetFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    scope = django_filters.ChoiceFilter(choices=BudgetScope.choices)
    period = django_filters.ChoiceFilter(choices=BudgetPeriod.choices)
    hard_limit = BooleanFilter()

    class Meta:
        model = Budget
        fields = ["project", "scope", "period", "hard_limit"]


class PriceFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    provider = django_filters.CharFilter(max_length=50)
    model = django_filters.CharFilter(field_name="model_pattern", lookup_expr="icontains", max_length=200)

    class Meta:
        model = PriceEntry
        fields = ["project", "provider", "model"]
