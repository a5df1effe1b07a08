"""Jobs end to end: a real Celery worker, real Redis broker and channel layer, the real database."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.utils import timezone

from apps.core import fleet, jobs
from apps.core.models import Job, JobStatus, Role, Worker
from apps.core.routing import websocket_urlpatterns
from tests.workers import celery_worker_process, flush_broker

ROOT = Path(__file__).resolve().parents[2]
GB = 1024


def gpu(free_gb: float, total_gb: float = 80, name: str = "NVIDIA A100-SXM4-80GB") -> dict:
    return {"index": 0, "kind": "cuda", "name": name, "total_mb": int(total_gb * GB), "free_mb": int(free_gb * GB)}


def heartbeat(hostname: str, devices: list[dict]) -> Worker:
    return fleet.worker_heartbeat(
        hostname=hostname, queues=["gpu", f"gpu.{hostname}"], devices=devices, pid=1, started_at=timezone.now()
    )


@pytest.fixture
def broker():
    client = flush_broker()
    yield client
    client.flushdb()


@pytest.fixture
def celery_worker(transactional_db, broker):
    """A real Celery worker process on the gpu and default queues, using the test database."""
    with celery_worker_process(node="gpu", queues="gpu,default,gpu.{host}") as process:
        yield process


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def test_gpu_job_waits_with_a_plain_message_until_a_worker_has_room(project, member_factory, broker):
    user = member_factory(Role.DEVELOPER)
    heartbeat("host-a", [gpu(free_gb=16, total_gb=16, name="Tesla T4")])

    job = jobs.job_create(user=user, project=project, job_type="core.device_check", gpu_memory_mb=40 * GB)
    jobs.job_dispatch(job.id)
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert job.task_id == ""
    assert job.message == "waiting: needs 40 GB free GPU memory; the largest free is 16 GB on host-a"

    heartbeat("host-b", [gpu(free_gb=75)])
    assert jobs.jobs_dispatch_waiting() == 1
    job.refresh_from_db()
    assert job.task_id and job.worker == "host-b"
    assert job.message == "queued on host-b"
    assert broker.llen("gpu.host-b") == 1 and broker.llen("gpu.host-a") == 0
    assert jobs.jobs_dispatch_waiting() == 0  # dispatched once only


def test_gpu_wait_message_without_any_gpu_worker(project, member_factory):
    user = member_factory(Role.DEVELOPER)
    fleet.worker_heartbeat(
        hostname="cpu-box",
        queues=["default"],
        pid=1,
        started_at=timezone.now(),
        devices=[{"index": 0, "kind": "cpu", "name": "x86_64", "total_mb": 8000, "free_mb": 4000}],
    )
    job = jobs.job_create(user=user, project=project, job_type="core.device_check", gpu_memory_mb=8 * GB)
    jobs.job_dispatch(job.id)
    job.refresh_from_db()
    assert job.message == "waiting: needs 8 GB free GPU memory; no live GPU worker"


def test_stale_workers_do_not_count(project, member_factory):
    user = member_factory(Role.DEVELOPER)
    heartbeat("old-host", [gpu(free_gb=80)])
    Worker.objects.filter(hostname="old-host").update(
        last_seen_at=timezone.now() - timezone.timedelta(seconds=settings.WORKER_STALE_SECONDS + 5)
    )
    assert fleet.workers_mark_stale(stale_after_seconds=settings.WORKER_STALE_SECONDS) == 1
    job = jobs.job_create(user=user, project=project, job_type="core.device_check", gpu_memory_mb=GB)
    jobs.job_dispatch(job.id)
    job.refresh_from_db()
    assert job.task_id == "" and "no live GPU worker" in job.message


def test_unknown_job_type_is_a_validation_error(project, member_factory, client_for):
    client = client_for(member_factory(Role.DEVELOPER))
    response = client.post("/api/v1/jobs/", {"project": "alpha", "job_type": "nope"}, format="json")
    assert response.status_code == 400
    assert "Unknown job type" in response.json()["error"]["message"]
    assert not Job.objects.exists()


async def _until_finished(communicator, job_id: str) -> list[dict]:
    messages = []
    while True:
        message = await communicator.receive_json_from(timeout=60)
        if message.get("type") != "job" or message["job"]["id"] != job_id:
            continue
        messages.append(message["job"])
        if message["job"]["status"] in ("succeeded", "failed", "cancelled"):
            return messages


async def _connect(path: str, user) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    connected, _ = await communicator.connect()
    assert connected
    return communicator


def test_job_runs_on_a_real_worker_and_streams_progress_over_websockets(project, member_factory, celery_worker):
    user = member_factory(Role.DEVELOPER)

    async def scenario():
        project_socket = await _connect("/ws/projects/alpha/events/", user)
        assert await project_socket.receive_json_from(timeout=5) == {"type": "hello", "project": "alpha"}
        job = await database_sync_to_async(jobs.job_create)(
            user=user, project=project, job_type="core.device_check", params={"size": 128, "iterations": 300}
        )
        job_socket = await _connect(f"/ws/jobs/{job.id}/", user)
        snapshot = await job_socket.receive_json_from(timeout=5)
        streamed = await _until_finished(project_socket, str(job.id))
        on_job_page = (
            await _until_finished(job_socket, str(job.id))
            if snapshot["job"]["status"] != "succeeded"
            else [snapshot["job"]]
        )
        await project_socket.disconnect()
        await job_socket.disconnect()
        return str(job.id), streamed, on_job_page

    job_id, streamed, on_job_page = async_to_sync(scenario)()
    progresses = [m["progress"] for m in streamed if m["status"] == "running"]
    assert [m["status"] for m in streamed][-1] == "succeeded"
    assert len(set(progresses)) > 10 and progresses == sorted(progresses)  # live, increasing progress
    assert streamed[-1]["progress"] == 100
    assert on_job_page[-1]["status"] == "succeeded"

    job = Job.objects.get(pk=job_id)
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert job.result["iterations"] == 300 and job.result["gflops"] > 0 and job.result["checksum_finite"]
    assert job.worker.startswith("gpu@testworker-")


def test_websocket_refuses_jobs_of_other_projects(project, other_project, member_factory):
    outsider = member_factory(Role.ADMIN, on=other_project)
    job = jobs.job_create(user=member_factory(Role.DEVELOPER), project=project, job_type="core.device_check")
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), f"/ws/jobs/{job.id}/")
    communicator.scope["user"] = outsider
    connected, code = async_to_sync(communicator.connect)()
    assert not connected and code == 4404


def test_failed_job_reports_a_clear_error_and_can_be_retried(project, member_factory, celery_worker):
    user = member_factory(Role.DEVELOPER)
    job = jobs.job_create(user=user, project=project, job_type="core.device_check", params={"size": 3})
    job = wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.FAILED).first())
    assert job.error == "size must be 16–16384 and iterations 1–10000."

    job.params = {"size": 32, "iterations": 5}
    Job.objects.filter(pk=job.pk).update(params=job.params)
    jobs.job_retry(user=user, job=job)
    job = wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.SUCCEEDED).first())
    assert job.attempts == 2 and job.error == ""


def test_job_survives_its_worker_being_killed(project, member_factory, celery_worker):
    """acks_late + reject_on_worker_lost: a job whose worker dies mid-way runs again and completes."""
    user = member_factory(Role.DEVELOPER)
    job = jobs.job_create(
        user=user, project=project, job_type="core.device_check", params={"size": 512, "iterations": 10000}
    )
    wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING, progress__gt=0).exists())
    child_pids = subprocess.run(["pgrep", "-P", str(celery_worker.pid)], capture_output=True, text=True).stdout.split()
    assert child_pids, "the prefork pool child was not found"
    os.kill(int(child_pids[0]), signal.SIGKILL)
    job = wait_for(lambda: Job.objects.filter(pk=job.pk, attempts=2, status=JobStatus.RUNNING).first())
    assert job.message.startswith("matmul") or job.message.startswith("running")
    jobs.job_cancel(user=user, job=job)
    job = wait_for(lambda: Job.objects.filter(pk=job.pk, status=JobStatus.CANCELLED).first())
    assert job.finished_at is not None


def test_an_idle_websocket_stays_open_and_still_receives_updates(transactional_db, project, member_factory, broker):
    """channels_redis blocks on Redis for 5 s per receive: an idle socket must outlive several of those reads."""
    user = member_factory(Role.DEVELOPER)

    async def scenario():
        socket = await _connect("/ws/projects/alpha/events/", user)
        assert await socket.receive_json_from(timeout=5) == {"type": "hello", "project": "alpha"}
        assert await socket.receive_nothing(timeout=12)  # idle across two blocking reads
        job = await database_sync_to_async(jobs.job_create)(user=user, project=project, job_type="core.device_check")
        update = await socket.receive_json_from(timeout=10)
        await socket.disconnect()
        return str(job.id), update

    job_id, update = async_to_sync(scenario)()
    assert update["type"] == "job" and update["job"]["id"] == job_id and update["job"]["status"] == "queued"
