"""Celery entry points for accounting: thin wrappers around services."""

import datetime

from celery import shared_task
from django.core.exceptions import ValidationError

from apps.core import jobs
from apps.core.permissions import Action, can
from controlplane.celery import QueueName

from . import budgets, gpu_cost, rollups, services

jobs.job_type_register(
    "accounting.reprice",
    task="apps.accounting.tasks.job_reprice",
    queue=QueueName.DEFAULT,
    description="Recompute a period's costs under a price catalog version: params from, to, catalog_version, "
    "apply (false: report the difference only).",
)


def _moment(value, name: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise jobs.JobError(f"{name}: give an ISO 8601 time.")
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


@shared_task(name="apps.accounting.tasks.job_reprice", acks_late=True)
@jobs.job_task
def job_reprice(job: jobs.JobContext) -> dict:
    params = job.params
    apply = params.get("apply") is True
    if apply and not (job.job.created_by and can(job.job.created_by, Action.MANAGE, job.job.project)):
        raise jobs.JobError("Applying new prices to stored costs needs the admin role on the project.")
    try:
        version = int(params["catalog_version"])
    except (KeyError, TypeError, ValueError):
        raise jobs.JobError("catalog_version: give a catalog version number.")
    try:
        return services.reprice(
            project=job.job.project,
            start=_moment(params.get("from"), "from"),
            end=_moment(params.get("to"), "to"),
            catalog_version=version,
            apply=apply,
        )
    except ValidationError as exc:
        raise jobs.JobError("; ".join(exc.messages))


@shared_task(name="apps.accounting.tasks.usage_prune")
def usage_prune() -> int:
    return rollups.usage_events_prune()


@shared_task(name="apps.accounting.tasks.budgets_evaluate")
def budgets_evaluate() -> int:
    return budgets.budgets_evaluate()


@shared_task(name="apps.accounting.tasks.usage_stream_drain", ignore_result=True)
def usage_stream_drain() -> dict:
    """Store the gateway's usage records (every second from beat; several workers may drain at once)."""
    from .usage_stream import drain

    result = drain(max_batches=200)
    return {"read": result.read, "stored": result.stored, "duplicates": result.duplicates}


@shared_task(name="apps.accounting.tasks.gpu_cost_refresh", ignore_result=True)
def gpu_cost_refresh() -> dict:
    """Recompute the GPU-hour cost of the recent hours from the state events (every few minutes from beat)."""
    return gpu_cost.gpu_cost_refresh().as_dict()
