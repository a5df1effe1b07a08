"""Filters shared by the deployment pages and the API."""

import django_filters

from .models import Deployment, State, Target


class DeploymentFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug")
    target = django_filters.ChoiceFilter(choices=Target.choices)
    state = django_filters.ChoiceFilter(choices=State.choices, method="filter_state", label="Has a revision in state")
    q = django_filters.CharFilter(method="filter_q", label="Name or slug contains")

    class Meta:
        model = Deployment
        fields = ["project", "target", "state", "q"]

    def filter_state(self, queryset, name, value):
        return queryset.filter(revisions__state=value).distinct()

    def filter_q(self, queryset, name, value):
        return queryset.filter(name__icontains=value) | queryset.filter(slug__icontains=value)
