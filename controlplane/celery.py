"""The Celery app: queue names, routes and the one beat schedule."""

import logging
import os
import threading
from enum import StrEnum

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings.dev")
logger = logging.getLogger(__name__)


class QueueName(StrEnum):
    DEFAULT = "default"
    GPU = "gpu"
    MONITORING = "monitoring"


def host_queue(hostname: str) -> str:
    """Queue served by one GPU worker host only; the dispatcher sends a job there when that host has room."""
    return f"{QueueName.GPU}.{hostname}"


app = Celery("controlplane")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Queues are created on demand (exchange and routing key = queue name), host queues included.
app.conf.task_default_queue = QueueName.DEFAULT.value
app.conf.task_routes = {
    "apps.core.tasks.job_device_check": {"queue": QueueName.GPU.value},
    "apps.core.tasks.jobs_dispatch_waiting": {"queue": QueueName.DEFAULT.value},
    "apps.core.tasks.workers_mark_stale": {"queue": QueueName.MONITORING.value},
}

# The whole beat schedule. Each entry expires so a backlog after an outage does not pile up.
app.conf.beat_schedule = {
    "dispatch-waiting-jobs": {
        "task": "apps.core.tasks.jobs_dispatch_waiting",
        "schedule": 10.0,
        "options": {"expires": 9},
    },
    "registry-gc": {
        "task": "apps.registry.tasks.registry_gc",
        "schedule": 3600.0,
        "options": {"expires": 3500},
    },
    "expire-uploads": {
        "task": "apps.registry.tasks.uploads_expire",
        "schedule": 900.0,
        "options": {"expires": 800},
    },
    "mark-stale-workers": {
        "task": "apps.core.tasks.workers_mark_stale",
        "schedule": 30.0,
        "options": {"expires": 29},
    },
    "evaluate-budgets": {
        "task": "apps.accounting.tasks.budgets_evaluate",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "poll-kubernetes-revisions": {
        "task": "apps.deployments.tasks.clusters_poll",
        "schedule": 15.0,
        "options": {"expires": 14},
    },
    "refresh-gpu-cost": {
        "task": "apps.accounting.tasks.gpu_cost_refresh",
        "schedule": 300.0,
        "options": {"expires": 290},
    },
    "drain-gateway-usage": {
        "task": "apps.accounting.tasks.usage_stream_drain",
        "schedule": 1.0,
        "options": {"expires": 5},
    },
    "prune-usage-events": {
        "task": "apps.accounting.tasks.usage_prune",
        "schedule": 3600.0,
        "options": {"expires": 3500},
    },
}
app.autodiscover_tasks()


# Worker heartbeat: every worker reports its queues and devices so jobs can be placed where they fit.
_heartbeat_stop = threading.Event()


@signals.worker_ready.connect
def _start_heartbeat(sender, **_):
    from django.utils import timezone

    hostname = sender.hostname
    queues = [queue.name for queue in sender.task_consumer.queues]
    started_at = timezone.now()

    def beat():
        from django.db import close_old_connections

        from apps.core.fleet import worker_heartbeat
        from apps.core.jobs import jobs_dispatch_waiting
        from workers.devices import discover_devices

        while not _heartbeat_stop.is_set():
            try:
                close_old_connections()
                worker_heartbeat(
                    hostname=hostname, queues=queues, devices=discover_devices(), pid=os.getpid(), started_at=started_at
                )
                jobs_dispatch_waiting()
            except Exception:
                logger.warning("heartbeat failed", exc_info=True)
            _heartbeat_stop.wait(_heartbeat_seconds())

    threading.Thread(target=beat, name="controlplane-heartbeat", daemon=True).start()
    if QueueName.GPU.value in queues:  # GPU workers run the local model-server replicas
        from apps.deployments.supervisor import start_thread

        start_thread(hostname)


@signals.worker_shutdown.connect
def _stop_heartbeat(sender, **_):
    _heartbeat_stop.set()
    try:
        from apps.deployments.supervisor import stop_thread

        stop_thread()
    except Exception:
        logger.warning("could not stop the replica supervisor", exc_info=True)
    try:
        from apps.core.fleet import worker_stopped

        worker_stopped(hostname=sender.hostname)
    except Exception:
        logger.warning("could not record worker shutdown", exc_info=True)


def _heartbeat_seconds() -> int:
    from django.conf import settings

    return settings.WORKER_HEARTBEAT_SECONDS
