"""Celery entry points for deployments; the work is in targets.py."""

from celery import shared_task

from . import targets


@shared_task(acks_late=True)
def revision_apply(revision_id: int) -> None:
    targets.revision_apply(revision_id)


@shared_task(acks_late=True)
def revision_probe(revision_id: int) -> None:
    targets.revision_probe(revision_id)


@shared_task(ignore_result=True)
def clusters_poll() -> int:
    """Kubernetes revisions become ready when their InferenceService says so (beat, every 15 s)."""
    return targets.clusters_poll()
