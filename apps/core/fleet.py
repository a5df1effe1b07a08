"""The worker fleet: heartbeats from Celery workers and what they report about their devices."""

from __future__ import annotations

import datetime

from django.utils import timezone

from .models import Worker


def worker_heartbeat(
    *, hostname: str, queues: list[str], devices: list[dict], pid: int | None, started_at: datetime.datetime
) -> Worker:
    now = timezone.now()
    worker, _ = Worker.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": sorted(queues),
            "devices": devices,
            "pid": pid,
            "started_at": started_at,
            "last_seen_at": now,
            "stopped_at": None,
        },
    )
    return worker


def worker_stopped(*, hostname: str) -> None:
    Worker.objects.filter(hostname=hostname).update(stopped_at=timezone.now())


def workers_mark_stale(*, stale_after_seconds: int) -> int:
    """Workers silent for longer than the threshold are marked stopped; returns how many."""
    cutoff = timezone.now() - datetime.timedelta(seconds=stale_after_seconds)
    return Worker.objects.filter(last_seen_at__lt=cutoff, stopped_at__isnull=True).update(stopped_at=timezone.now())
