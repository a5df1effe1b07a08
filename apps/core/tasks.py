"""Celery entry points for core: thin wrappers around services."""

from celery import shared_task
from django.conf import settings

from controlplane.celery import QueueName
from workers.devices import device_check

from . import fleet, jobs

jobs.job_type_register(
    "core.device_check",
    task="apps.core.tasks.job_device_check",
    queue=QueueName.GPU,
    description="Run a matrix-multiply self-check on a worker's device and report its throughput.",
)


@shared_task(name="apps.core.tasks.job_device_check", acks_late=True)
@jobs.job_task
def job_device_check(job: jobs.JobContext) -> dict:
    size = int(job.params.get("size", 1024))
    iterations = int(job.params.get("iterations", 20))
    if not (16 <= size <= 16384 and 1 <= iterations <= 10_000):
        raise jobs.JobError("size must be 16–16384 and iterations 1–10000.")
    return device_check(size=size, iterations=iterations, progress=job.progress)


@shared_task(name="apps.core.tasks.jobs_dispatch_waiting")
def jobs_dispatch_waiting() -> int:
    return jobs.jobs_dispatch_waiting()


@shared_task(name="apps.core.tasks.workers_mark_stale")
def workers_mark_stale() -> int:
    return fleet.workers_mark_stale(stale_after_seconds=settings.WORKER_STALE_SECONDS)
