"""One filter set per list, shared by the API and the pages."""

import datetime

import django_filters
from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.utils import timezone
from django_filters.widgets import BooleanWidget

from .models import ApiToken, AuditEvent, Job, JobStatus, Membership, Project, Role, Team, Worker

BOOLEAN_VALUES = {"": None, "true": True, "false": False, "1": True, "0": False}


class StrictBooleanWidget(BooleanWidget):
    """Hands an unrecognised value on as it came, for the field to refuse, instead of turning it into "no filter"."""

    def value_from_datadict(self, data, files, name):
        value = data.get(name)
        if isinstance(value, str) and value.lower() not in BOOLEAN_VALUES:
            return value
        return super().value_from_datadict(data, files, name)


class StrictBooleanField(forms.NullBooleanField):
    widget = StrictBooleanWidget

    def to_python(self, value):
        if isinstance(value, str) and value.lower() not in BOOLEAN_VALUES:
            raise ValidationError("Use true or false.", code="invalid")
        return super().to_python(value)


class BooleanFilter(django_filters.BooleanFilter):
    """true/false (or 1/0); anything else is a 400, where django-filter would silently not filter."""

    field_class = StrictBooleanField


class ProjectFilter(django_filters.FilterSet):
    organization = django_filters.CharFilter(field_name="organization__slug", max_length=50)
    q = django_filters.CharFilter(method="search", max_length=100, label="Name or slug contains")

    class Meta:
        model = Project
        fields = ["organization", "q"]

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(slug__icontains=value))


class MembershipFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    role = django_filters.ChoiceFilter(choices=Role.choices)
    user = django_filters.CharFilter(field_name="user__username", max_length=150)
    team = django_filters.CharFilter(field_name="team__slug", max_length=50)

    class Meta:
        model = Membership
        fields = ["project", "role", "user", "team"]


class TeamFilter(django_filters.FilterSet):
    organization = django_filters.CharFilter(field_name="organization__slug", max_length=50)

    class Meta:
        model = Team
        fields = ["organization"]


class ApiTokenFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    active = BooleanFilter(method="filter_active")

    class Meta:
        model = ApiToken
        fields = ["project", "active"]

    def filter_active(self, queryset, name, value):
        now = timezone.now()
        live = Q(revoked_at__isnull=True) & (Q(expires_at__isnull=True) | Q(expires_at__gt=now))
        return queryset.filter(live) if value else queryset.exclude(live)


class AuditEventFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    action = django_filters.CharFilter(lookup_expr="startswith", max_length=100)
    object_type = django_filters.CharFilter(max_length=100)
    object_id = django_filters.CharFilter(max_length=64)
    actor = django_filters.CharFilter(field_name="actor_label", lookup_expr="startswith", max_length=150)
    request_id = django_filters.CharFilter(max_length=64)
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = AuditEvent
        fields = ["project", "action", "object_type", "object_id", "actor", "request_id", "since", "until"]


class JobFilter(django_filters.FilterSet):
    project = django_filters.CharFilter(field_name="project__slug", max_length=50)
    status = django_filters.ChoiceFilter(choices=JobStatus.choices)
    job_type = django_filters.CharFilter(max_length=100)

    class Meta:
        model = Job
        fields = ["project", "status", "job_type"]


class WorkerFilter(django_filters.FilterSet):
    alive = BooleanFilter(method="filter_alive")
    queue = django_filters.CharFilter(method="filter_queue", max_length=200)

    class Meta:
        model = Worker
        fields = ["alive", "queue"]

    def filter_alive(self, queryset, name, value):
        cutoff = timezone.now() - datetime.timedelta(seconds=settings.WORKER_STALE_SECONDS)
        live = Q(last_seen_at__gte=cutoff, stopped_at__isnull=True)
        return queryset.filter(live) if value else queryset.exclude(live)

    def filter_queue(self, queryset, name, value):
        return queryset.filter(queues__contains=[value])
