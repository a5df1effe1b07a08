"""Jobs: creation, dispatch to a worker with room, progress reporting and the task wrapper every job uses.

A job that needs GPU memory is sent to the queue of one worker host whose largest free device has room.
When none has, the job stays queued with a plain message and the dispatcher (beat, every 10 s, and every
worker heartbeat) tries again.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from celery import current_task
from celery.exceptions import SoftTimeLimitExceeded
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from .audit import audit_record, snapshot
from .models import Job, JobStatus, Project, Worker
from .permissions import Action, check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobType:
    name: str
    task: str
    queue: str
    description: str


JOB_TYPES: dict[str, JobType] = {}


def job_type_register(name: str, *, task: str, queue: str, description: str) -> None:
    JOB_TYPES[name] = JobType(name=name, task=task, queue=queue, description=description)


class JobError(Exception):
    """A failure with a message meant for the user; the job fails with exactly this message."""


# Groups on the channel layer ------------------------------------------------------------------------------------


def job_group(job_id) -> str:
    return f"job.{job_id}"


def project_group(project_id) -> str:
    return f"project.{project_id}"


def job_payload(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "project": job.project_id,
        "job_type": job.job_type,
        "status": job.status,
        "progress": job.progress,
        "message": job.message,
        "error": job.error,
        "result": job.result,
        "worker": job.worker,
        "updated_at": job.updated_at.isoformat() if job.updated_at else None,
    }


def job_broadcast(job: Job) -> None:
    """Push the job's state to its page and its project's stream. Never fails the job if Redis is away."""
    layer = get_channel_layer()
    if layer is None:
        return
    event = {"type": "job.update", "job": job_payload(job)}
    try:
        async_to_sync(layer.group_send)(job_group(job.id), event)
        async_to_sync(layer.group_send)(project_group(job.project_id), event)
    except Exception:  # the persisted state is the truth; live push is best effort
        logger.warning("Could not push progress of job %s", job.id, exc_info=True)


def _save(job: Job, *fields: str) -> None:
    job.save(update_fields=[*fields, "updated_at"])
    transaction.on_commit(lambda: job_broadcast(job))


# Creating and dispatching --------------------------------------------------------------------------------------


@transaction.atomic
def job_create(*, user, project: Project, job_type: str, params: dict | None = None, gpu_memory_mb: int = 0) -> Job:
    check(user, Action.CHANGE, project)
    kind = JOB_TYPES.get(job_type)
    if kind is None:
        raise ValidationError(f"Unknown job type '{job_type}'. Known: {', '.join(sorted(JOB_TYPES))}.")
    if gpu_memory_mb < 0 or gpu_memory_mb > 10_000_000:
        raise ValidationError("gpu_memory_mb must be between 0 and 10000000.")
    job = Job.objects.create(
        project=project,
        job_type=job_type,
        params=params or {},
        queue=kind.queue,
        gpu_memory_mb=gpu_memory_mb,
        created_by=user if getattr(user, "is_authenticated", False) else None,
        message="queued",
    )
    audit_record(actor=user, action="job.create", obj=job, after=snapshot(job, ["job_type", "params", "gpu_memory_mb"]))
    transaction.on_commit(lambda: job_dispatch(job.id))
    return job


def _gb(mb: int) -> str:
    value = mb / 1024
    return f"{value:.0f} GB" if value >= 10 or value == int(value) else f"{value:.1f} GB"


def live_workers():
    cutoff = timezone.now() - timedelta(seconds=settings.WORKER_STALE_SECONDS)
    return Worker.objects.filter(last_seen_at__gte=cutoff, stopped_at__isnull=True)


def choose_gpu_worker(gpu_memory_mb: int) -> tuple[Worker | None, str]:
    """The live GPU worker with the most free memory on one device if it fits, else None and why not."""
    candidates = [w for w in live_workers() if w.has_gpu and any(q.startswith("gpu.") for q in w.queues)]
    if not candidates:
        return None, f"waiting: needs {_gb(gpu_memory_mb)} free GPU memory; no live GPU worker"
    best = max(candidates, key=lambda w: w.largest_free_gpu_mb)
    if best.largest_free_gpu_mb < gpu_memory_mb:
        return None, (
            f"waiting: needs {_gb(gpu_memory_mb)} free GPU memory; the largest free is "
            f"{_gb(best.largest_free_gpu_mb)} on {best.hostname}"
        )
    return best, ""


def job_dispatch(job_id) -> Job | None:
    """Send a queued job to Celery once. Safe to call repeatedly and concurrently."""
    from controlplane.celery import app

    with transaction.atomic():
        job = Job.objects.select_for_update(skip_locked=True).filter(pk=job_id).first()
        if job is None or job.status != JobStatus.QUEUED or job.task_id:
            return job
        queue = job.queue
        if job.gpu_memory_mb:
            worker, why_not = choose_gpu_worker(job.gpu_memory_mb)
            if worker is None:
                if job.message != why_not:
                    job.message = why_not
                    _save(job, "message")
                return job
            queue = next(q for q in worker.queues if q.startswith("gpu."))
            job.worker = worker.hostname
        result = app.send_task(JOB_TYPES[job.job_type].task, args=[str(job.id)], queue=queue)
        job.task_id = result.id
        job.message = f"queued on {job.worker}" if job.worker else "queued"
        _save(job, "task_id", "message", "worker")
        return job


def jobs_dispatch_waiting() -> int:
    """Dispatch queued jobs not sent yet, and re-send those whose message has sat unclaimed for too long
    (a broker restart without persistence loses it). A superseded message is ignored when it runs."""
    stale = timezone.now() - timedelta(seconds=settings.JOB_REDISPATCH_SECONDS)
    Job.objects.filter(status=JobStatus.QUEUED, updated_at__lt=stale).exclude(task_id="").update(task_id="")
    sent = 0
    for job_id in Job.objects.filter(status=JobStatus.QUEUED, task_id="").values_list("pk", flat=True)[:500]:
        job = job_dispatch(job_id)
        sent += bool(job and job.task_id)
    return sent


@transaction.atomic
def job_cancel(*, user, job: Job) -> Job:
    check(user, Action.CHANGE, job)
    if job.is_finished:
        raise ValidationError(f"The job has already {job.status}.")
    before = snapshot(job, ["status"])
    job.status = JobStatus.CANCELLED
    job.message = "cancelled"
    job.finished_at = timezone.now()
    _save(job, "status", "message", "finished_at")
    if job.task_id:
        from controlplane.celery import app

        transaction.on_commit(lambda: app.control.revoke(job.task_id))
    audit_record(actor=user, action="job.cancel", obj=job, before=before, after=snapshot(job, ["status"]))
    return job


@transaction.atomic
def job_retry(*, user, job: Job) -> Job:
    """Queue a failed or cancelled job again with the same parameters."""
    check(user, Action.CHANGE, job)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ValidationError("Only failed or cancelled jobs can be retried.")
    before = snapshot(job, ["status"])
    job.status, job.task_id, job.error, job.progress, job.message = JobStatus.QUEUED, "", "", 0, "queued"
    job.result = None
    job.started_at = job.finished_at = None
    _save(job, "status", "task_id", "error", "progress", "message", "result", "started_at", "finished_at")
    audit_record(actor=user, action="job.retry", obj=job, before=before, after=snapshot(job, ["status"]))
    transaction.on_commit(lambda: job_dispatch(job.id))
    return job


# Running -------------------------------------------------------------------------------------------------------


class JobContext:
    """What a running job sees: its parameters and a way to report progress."""

    # A tight loop may report thousands of times; the database and the websockets get at most one update per
    # percent step or per this many seconds, so slow listeners are not flooded and never miss the end.
    MIN_INTERVAL_SECONDS = 1.0

    def __init__(self, job: Job):
        self.job = job
        self.params = job.params
        self._last_sent = 0.0

    def progress(self, percent: int, message: str = "") -> None:
        """Persist and push progress; raises JobCancelled when someone cancelled the job meanwhile."""
        percent = max(0, min(100, int(percent)))
        now = time.monotonic()
        if percent == self.job.progress and now - self._last_sent < self.MIN_INTERVAL_SECONDS:
            return
        updated = Job.objects.filter(pk=self.job.pk, status=JobStatus.RUNNING).update(
            progress=percent, message=message[:500], updated_at=timezone.now()
        )
        if not updated:
            raise JobCancelled()
        self._last_sent = now
        self.job.progress, self.job.message = percent, message[:500]
        job_broadcast(self.job)


class JobCancelled(Exception):
    pass


def _start(job_id: str) -> Job | None:
    task_id = current_task.request.id if current_task else None
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.is_finished:  # redelivered after completion, or cancelled: nothing to do
            return None
        if task_id and job.task_id and task_id != job.task_id:  # a superseded message after a re-dispatch
            return None
        job.status = JobStatus.RUNNING
        job.attempts += 1
        job.started_at = timezone.now()
        job.worker = (current_task.request.hostname if current_task else None) or socket.gethostname()
        job.message = "running" if job.attempts == 1 else f"running (attempt {job.attempts})"
        job.error = ""
        _save(job, "status", "attempts", "started_at", "worker", "message", "error")
    return job


def _finish(job: Job, *, status: str, message: str, result: Any = None, error: str = "") -> None:
    with transaction.atomic():
        # Only a running job finishes; a cancellation that raced the task wins.
        current = Job.objects.select_for_update().get(pk=job.pk)
        if current.status != JobStatus.RUNNING:
            return
        current.status, current.message, current.result, current.error = status, message[:500], result, error
        current.finished_at = timezone.now()
        if status == JobStatus.SUCCEEDED:
            current.progress = 100
        _save(current, "status", "message", "result", "error", "finished_at", "progress")


def job_task(func: Callable[[JobContext], Any]) -> Callable[[str], None]:
    """Wrap a job body: mark running, run, record the result or a clear error. Idempotent on redelivery."""

    @functools.wraps(func)
    def run(job_id: str) -> None:
        job = _start(job_id)
        if job is None:
            return
        try:
            result = func(JobContext(job))
        except JobCancelled:
            return
        except JobError as exc:
            _finish(job, status=JobStatus.FAILED, message="failed", error=str(exc))
        except SoftTimeLimitExceeded:
            _finish(
                job,
                status=JobStatus.FAILED,
                message="failed",
                error=f"Timed out after {settings.CELERY_TASK_SOFT_TIME_LIMIT} s.",
            )
        except Exception as exc:
            logger.exception("Job %s failed", job_id)
            _finish(job, status=JobStatus.FAILED, message="failed", error=f"{type(exc).__name__}: {exc}")
        else:
            _finish(job, status=JobStatus.SUCCEEDED, message="done", result=result)

    return run
