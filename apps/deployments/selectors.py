"""Reads for deployments, already narrowed by the permissions module."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from apps.core.permissions import Action, restrict

from .models import Accelerator, Cluster, Deployment, Replica, Revision, StateEvent


def deployment_list(*, user) -> QuerySet[Deployment]:
    revisions = Revision.objects.select_related("model_version__model", "accelerator").prefetch_related(
        Prefetch("replicas", queryset=Replica.objects.order_by("index"))
    )
    return restrict(
        Deployment.objects.filter(deleted_at__isnull=True).select_related("project", "cluster"), user, Action.VIEW
    ).prefetch_related(Prefetch("revisions", queryset=revisions))


def state_event_list(*, deployment: Deployment) -> QuerySet[StateEvent]:
    return deployment.state_events.select_related("revision", "replica").order_by("-time", "-id")


def accelerator_list() -> QuerySet[Accelerator]:
    return Accelerator.objects.all()


def cluster_list(*, user) -> QuerySet[Cluster]:
    return restrict(Cluster.objects.select_related("project"), user, Action.VIEW)
