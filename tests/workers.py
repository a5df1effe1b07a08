"""A real Celery worker process for tests: the test database, the test Redis, queues of the test's choosing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis
from django.conf import settings
from django.db import connection

from apps.core.models import Worker

ROOT = Path(__file__).resolve().parents[1]


def flush_broker() -> redis.Redis:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.flushdb()
    return client


@contextlib.contextmanager
def celery_worker_process(*, node: str, queues: str, extra_env: dict[str, str] | None = None) -> Iterator:
    """Start `celery worker -n <node>@<unique host> -Q <queues>` and wait for its first heartbeat."""
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings.test",
        "WORKER_HEARTBEAT_SECONDS": "1",
        **(extra_env or {}),
    }
    host = f"testworker-{uuid.uuid4().hex[:6]}"
    hostname = f"{node}@{host}"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "controlplane",
            "worker",
            "-n",
            hostname,
            "-Q",
            queues.replace("{host}", host),
            "--concurrency",
            "1",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not Worker.objects.filter(hostname=hostname).exists():
            assert process.poll() is None, "the worker exited during start-up"
            assert time.monotonic() < deadline, "the worker sent no heartbeat within 60 s"
            time.sleep(0.3)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
