"""Local replicas: each GPU worker host runs a supervisor that starts, watches and stops model-server processes.

The database holds what should run (`Replica.desired`) and what does (`state`, `host`, `url`); each tick a
supervisor claims unplaced replicas, starts the ones it owns, checks readiness and health, restarts crashed ones
with backoff, and stops the ones no longer wanted. `reconcile` does the deployment-wide work (draining,
scale-to-zero, autoscaling, replicas of vanished hosts) once per tick across all hosts, under a Redis lock.

Model files are written once per version under RUNTIME_DIR, with every file's sha256 checked while writing and
a MANIFEST.json the model server checks again before loading.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import redis
from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.models import Worker
from apps.core.services import project_secret_value
from apps.registry.ingest import file_blocks
from apps.registry.models import ModelVersion

from . import services
from .models import Desired, Replica, Revision, State, Target
from .states import transition

logger = logging.getLogger(__name__)

LOAD_KEY = "gateway:load"  # hash: "<revision id>:<gateway pid>" → "<in-flight> <unix time of last request>"
LOG_TAIL_BYTES = 2000


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)


# Model files ---------------------------------------------------------------------------------------------------


def version_directory(version: ModelVersion) -> Path:
    """The version's files on local disk, written (and sha256-checked) on first use."""
    root = Path(settings.RUNTIME_DIR) / "models"
    target = root / f"v{version.pk}"
    if (target / "MANIFEST.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".v{version.pk}.{os.getpid()}.{threading.get_ident()}"
    shutil.rmtree(staging, ignore_errors=True)
    manifest = []
    for version_file in version.files.order_by("path"):
        path = staging / version_file.path  # registry paths are relative and free of '..'
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with path.open("wb") as out:
            for block in file_blocks(version_file):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != version_file.sha256:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"{version_file.path} does not match its sha256; the stored artifact is damaged.")
        manifest.append({"path": version_file.path, "sha256": version_file.sha256})
    (staging / "MANIFEST.json").write_text(json.dumps(manifest))
    try:
        staging.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return target


# Processes ------------------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Run in the child before exec: take SIGTERM when the supervising worker dies, so no replica is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    os.setsid()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _environment(revision: Revision) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update({k: str(v) for k, v in (revision.env or {}).items()})
    project = revision.deployment.project
    for env_name, secret_name in (revision.secret_refs or {}).items():
        value = project_secret_value(project=project, name=secret_name)
        if value is not None:
            environment[env_name] = value
    return environment


def replica_command(revision: Revision, model_dir: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "workers.model_server",
        "--model-dir", str(model_dir),
        "--name", revision.served_name,
        "--port", str(port),
        "--task", revision.task,
        "--dtype", revision.dtype,
        "--max-input-tokens", str(revision.max_input_tokens),
        "--max-total-tokens", str(revision.max_total_tokens),
        "--max-batch", str(revision.max_batch),
    ]  # fmt: skip


@dataclass
class _Running:
    process: subprocess.Popen
    port: int
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    health_failures: int = 0


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - LOG_TAIL_BYTES))
            return handle.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def backoff_seconds(restarts: int) -> float:
    return min(settings.RUNTIME_BACKOFF_SECONDS * 2 ** max(restarts - 1, 0), settings.RUNTIME_BACKOFF_MAX_SECONDS)


class Supervisor:
    """Supervises the replicas placed on one worker host."""

    def __init__(self, hostname: str):
        self.hostname = hostname
        self.running: dict[int, _Running] = {}

    # One pass ---------------------------------------------------------------------------------------------------

    def tick(self) -> None:
        close_old_connections()
        reconcile()
        self._claim()
        replicas = Replica.objects.filter(host=self.hostname).select_related(
            "revision__deployment__project", "revision__model_version"
        )
        for replica in replicas:
            try:
                self._step(replica)
            except Exception as exc:  # one bad replica must not stop the others
                logger.exception("supervising %s failed", replica)
                with contextlib.suppress(Exception):
                    self._crashed(replica, f"supervisor error: {exc}")
        for replica_id in set(self.running) - {r.pk for r in replicas}:  # rows deleted under us
            self._kill(replica_id)

    def _claim(self) -> None:
        with transaction.atomic():
            free = (
                Replica.objects.select_for_update(skip_locked=True)
                .filter(host="", desired=Desired.RUNNING, revision__deployment__target=Target.LOCAL)
                .order_by("pk")[:10]
            )
            for replica in free:
                replica.host = self.hostname
                replica.save(update_fields=["host", "updated_at"])

    def _step(self, replica: Replica) -> None:
        running = self.running.get(replica.pk)
        if replica.desired == Desired.STOPPED:
            if running:
                self._kill(replica.pk)
            if replica.state != State.STOPPED:
                with transaction.atomic():
                    transition(replica, State.STOPPED, "stopped", pid=None, url="", stopped_at=timezone.now())
            Replica.objects.filter(pk=replica.pk, desired=Desired.STOPPED).update(host="")
            return
        if running is None:
            if replica.state in (State.READY, State.STARTING) and replica.pid:
                # It was running under an earlier supervisor (worker restart): treat as a crash.
                self._crashed(replica, "the model server was lost when its worker restarted")
                return
            if replica.next_start_at and replica.next_start_at > timezone.now():
                return
            self._start(replica)
            return
        exit_code = running.process.poll()
        if exit_code is not None:
            tail = _log_tail(running.log_path)
            self.running.pop(replica.pk, None)
            self._crashed(replica, f"the model server exited with code {exit_code}: {tail[-600:]}")
            return
        url = f"http://{settings.RUNTIME_ADVERTISE_HOST}:{running.port}"
        if replica.state == State.STARTING or replica.state == State.PENDING:
            if _ready(url):
                with transaction.atomic():
                    transition(replica, State.READY, "ready", restarts=replica.restarts)
                    revision = Revision.objects.select_for_update().get(pk=replica.revision_id)
                    if revision.state == State.STARTING:
                        services.revision_became_ready(revision)
            elif time.monotonic() - running.started > settings.RUNTIME_START_TIMEOUT_SECONDS:
                self._kill(replica.pk)
                self._crashed(replica, f"not ready after {settings.RUNTIME_START_TIMEOUT_SECONDS} s")
        elif replica.state == State.READY:
            running.health_failures = 0 if _ready(url) else running.health_failures + 1
            if running.health_failures >= 3:
                self._kill(replica.pk)
                self._crashed(replica, "failed three health checks in a row")

    # Starting and stopping ------------------------------------------------------------------------------------

    def _start(self, replica: Replica) -> None:
        revision = replica.revision
        try:
            model_dir = version_directory(revision.model_version)
        except Exception as exc:
            self._crashed(replica, f"could not prepare the model files: {exc}")
            return
        port = _free_port()
        logs = Path(settings.RUNTIME_DIR) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"replica-{replica.pk}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                replica_command(revision, model_dir, port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_environment(revision),
                preexec_fn=_die_with_parent,
            )
        self.running[replica.pk] = _Running(process=process, port=port, log_path=log_path)
        url = f"http://{settings.RUNTIME_ADVERTISE_HOST}:{port}"
        with transaction.atomic():
            transition(
                replica,
                State.STARTING,
                f"model server starting on {self.hostname} (pid {process.pid})",
                pid=process.pid,
                url=url,
                started_at=timezone.now(),
                next_start_at=None,
            )

    def _crashed(self, replica: Replica, reason: str) -> None:
        """Count a failure; restart with backoff, or fail the replica (and a revision never ready) for good."""
        with transaction.atomic():
            replica = Replica.objects.select_for_update().select_related("revision__deployment").get(pk=replica.pk)
            restarts = replica.restarts + 1
            never_ready = replica.ready_at is None
            if never_ready and restarts >= settings.RUNTIME_MAX_FAILED_STARTS:
                transition(replica, State.FAILED, reason, pid=None, url="", restarts=restarts, desired=Desired.STOPPED)
                revision = Revision.objects.select_for_update().get(pk=replica.revision_id)
                if revision.state in (State.STARTING, State.PENDING):
                    services.revision_failed(revision, f"replica {replica.index} could not start: {reason}")
                return
            delay = backoff_seconds(restarts)
            transition(
                replica,
                State.STARTING,
                f"{reason} — restarting in {delay:.0f} s",
                pid=None,
                url="",
                restarts=restarts,
                next_start_at=timezone.now() + datetime.timedelta(seconds=delay),
            )

    def _kill(self, replica_id: int) -> None:
        running = self.running.pop(replica_id, None)
        if running is None:
            return
        process = running.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)

    def shutdown(self) -> None:
        """Stop every local process (worker shutdown); their replicas are placed again by the next supervisor."""
        for replica_id in list(self.running):
            self._kill(replica_id)
        with contextlib.suppress(Exception):
            close_old_connections()
            for replica in Replica.objects.filter(host=self.hostname).exclude(state=State.STOPPED):
                with transaction.atomic():
                    transition(replica, State.PENDING, f"worker {self.hostname} stopped", pid=None, url="")
            Replica.objects.filter(host=self.hostname).update(host="")


# Deployment-wide reconciliation ---------------------------------------------------------------------------------


def _gateway_load() -> dict[int, tuple[int, float]]:
    """Per revision: requests in flight across gateway processes, and the time of the last request."""
    load: dict[int, tuple[int, float]] = {}
    try:
        entries = redis_client().hgetall(LOAD_KEY)
    except redis.RedisError:
        return load
    now = time.time()
    for key, value in entries.items():
        revision_id, _, _pid = key.decode().partition(":")
        inflight, last = value.decode().split()
        previous = load.get(int(revision_id), (0, 0.0))
        fresh = now - float(last) < 30
        load[int(revision_id)] = (previous[0] + (int(inflight) if fresh else 0), max(previous[1], float(last)))
    return load


def reconcile() -> None:
    """Draining → stopped, scale-to-zero, autoscaling and re-placing replicas of vanished hosts."""
    try:
        lock = redis_client().lock("deployments:reconcile", timeout=30, blocking=False)
        if not lock.acquire():
            return
    except redis.RedisError:
        return
    try:
        _finish_draining()
        _scale(_gateway_load())
        _replace_lost_hosts()
    finally:
        with contextlib.suppress(redis.RedisError):
            lock.release()


def _finish_draining() -> None:
    cutoff = timezone.now() - datetime.timedelta(seconds=settings.DEPLOYMENT_DRAIN_SECONDS)
    draining = Revision.objects.filter(state=State.DRAINING).select_related("deployment")
    for revision in draining:
        last_change = revision.state_events.order_by("-time").values_list("time", flat=True).first()
        if last_change and last_change > cutoff:
            continue
        with transaction.atomic():
            revision = Revision.objects.select_for_update().get(pk=revision.pk)
            if revision.state != State.DRAINING:
                continue
            revision.replicas.update(desired=Desired.STOPPED, updated_at=timezone.now())
            if not revision.replicas.exclude(state__in=[State.STOPPED, State.FAILED]).exists():
                transition(revision, State.STOPPED, "drained")
    # A draining revision whose replicas have all stopped is stopped.
    for revision in Revision.objects.filter(state=State.DRAINING, replicas__desired=Desired.STOPPED).distinct():
        if not revision.replicas.exclude(state__in=[State.STOPPED, State.FAILED]).exists():
            with transaction.atomic():
                transition(revision, State.STOPPED, "drained")


def _scale(load: dict[int, tuple[int, float]]) -> None:
    now = time.time()
    serving = Revision.objects.filter(
        state=State.READY, deployment__target=Target.LOCAL, deployment__deleted_at__isnull=True
    ).select_related("deployment")
    for revision in serving:
        inflight, last = load.get(revision.pk, (0, 0.0))
        running = revision.replicas.filter(desired=Desired.RUNNING).count()
        woken = revision.last_request_at or revision.ready_at or timezone.now()
        last_activity = max(last, woken.timestamp(), (revision.ready_at or woken).timestamp())
        starting = revision.replicas.filter(desired=Desired.RUNNING).exclude(state=State.READY).exists()
        idle = inflight == 0 and not starting and now - last_activity > (revision.scale_to_zero_seconds or 0)
        if revision.scale_to_zero_seconds and running and idle:
            with transaction.atomic():
                services.replicas_scale(Revision.objects.select_for_update().get(pk=revision.pk), 0)
            _note(revision, f"idle for {revision.scale_to_zero_seconds} s: scaled to zero")
            continue
        if running == 0:
            continue  # scaled to zero: the gateway wakes it
        wanted = max(revision.min_replicas, 1, math.ceil(inflight / revision.target_concurrency))
        wanted = min(wanted, revision.max_replicas)
        if wanted > running or (wanted < running and now - last > 60):
            with transaction.atomic():
                services.replicas_scale(Revision.objects.select_for_update().get(pk=revision.pk), wanted)
            _note(revision, f"scaled from {running} to {wanted} replicas ({inflight} requests in flight)")


def _note(revision: Revision, message: str) -> None:
    from .models import StateEvent

    StateEvent.objects.create(
        deployment_id=revision.deployment_id,
        revision=revision,
        state=revision.state,
        reason=message,
        time=timezone.now(),
    )


def _replace_lost_hosts() -> None:
    """Replicas on hosts whose worker stopped heart-beating go back to the pool to be placed again."""
    cutoff = timezone.now() - datetime.timedelta(seconds=settings.WORKER_STALE_SECONDS)
    gone = Worker.objects.filter(Q(last_seen_at__lt=cutoff) | Q(stopped_at__isnull=False)).values("hostname")
    lost = Replica.objects.exclude(host="").filter(host__in=gone)
    for replica in lost.select_related("revision__deployment"):
        with transaction.atomic():
            if replica.state not in (State.STOPPED, State.FAILED, State.PENDING):
                transition(replica, State.PENDING, f"host {replica.host} is gone", pid=None, url="")
            Replica.objects.filter(pk=replica.pk).update(host="")


# The supervisor thread of a GPU worker --------------------------------------------------------------------------

_stop = threading.Event()
_current: Supervisor | None = None


def start_thread(hostname: str) -> None:
    global _current
    _current = Supervisor(hostname)

    def loop():
        while not _stop.is_set():
            try:
                _current.tick()
            except Exception:
                logger.warning("supervisor tick failed", exc_info=True)
            _stop.wait(settings.RUNTIME_SUPERVISE_SECONDS)

    threading.Thread(target=loop, name="controlplane-supervisor", daemon=True).start()


def stop_thread() -> None:
    _stop.set()
    if _current is not None:
        _current.shutdown()
