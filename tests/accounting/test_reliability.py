"""Usage accounting survives its consumer being killed and Redis being restarted: exact counts and token sums.

Real processes throughout: a persistent Redis (append-only file, fsync on every write) that the test kills and
starts again on the same port, the product under uvicorn (gateway + batch API), an OpenAI-compatible upstream,
and the `consume_usage` consumer, killed with SIGKILL while records flow and started again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from django.db.models import Sum

from apps.accounting.models import UsageEvent, UsageHourly
from apps.core.models import Role
from apps.core.services import api_token_create
from apps.deployments import services, targets
from controlplane.devstack import Redis
from tests.servers import ROOT, product_server, server_env, upstream_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

GATEWAY_REQUESTS = 150  # each: 2 prompt + 4 completion tokens (the upstream's answer)
BATCHES, PER_BATCH = 20, 100  # each event: 7 prompt + 11 completion tokens


def consumer(env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "consume_usage"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )


def test_nothing_lost_nothing_doubled(member_factory, project, tmp_path):
    user = member_factory(Role.MAINTAINER)
    redis_server = Redis(tmp_path / "redis", persistent=True)
    redis_url = redis_server.start()
    env_vars = {"REDIS_URL": redis_url, "USAGE_STREAM_CLAIM_IDLE_MS": "1000"}
    env = server_env(**env_vars)
    raw = api_token_create(user=user, name="load", scopes=["read", "write"])[1]
    headers = {"Authorization": f"Bearer {raw}"}
    errors: list[str] = []
    try:
        with upstream_server() as upstream, product_server(**env_vars) as url:
            deployment = services.deployment_create(
                user=user,
                project=project,
                data={"name": "echo", "target": "external", "upstream_url": upstream, "upstream_model": "echo-1"},
            )
            targets.revision_probe(deployment.revisions.get().pk)
            processes = [consumer(env)]

            def gateway_load():
                with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
                    for i in range(GATEWAY_REQUESTS):
                        body = {"model": "echo", "messages": [{"role": "user", "content": "hi there"}]}
                        response = http.post("/v1/chat/completions", json=body, headers={"x-request-id": f"gw-{i}"})
                        if response.status_code != 200:
                            errors.append(f"gateway {i}: {response.status_code} {response.text[:200]}")
                        time.sleep(0.01)

            def batch_load():
                with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
                    for b in range(BATCHES):
                        events = [
                            {"id": f"api-{b}-{i}", "model": "gpt-4o-mini", "prompt_tokens": 7, "completion_tokens": 11}
                            for i in range(PER_BATCH)
                        ]
                        for _attempt in range(20):  # a real client retries; ids make it idempotent
                            response = http.post(
                                "/api/v1/accounting/usage/events", json={"project": project.slug, "events": events}
                            )
                            if response.status_code == 200:
                                break
                            time.sleep(0.25)
                        else:
                            errors.append(f"batch {b}: {response.status_code}")
                        time.sleep(0.05)

            threads = [threading.Thread(target=gateway_load), threading.Thread(target=batch_load)]
            for thread in threads:
                thread.start()
            time.sleep(1.5)
            os.killpg(processes[-1].pid, signal.SIGKILL)  # the consumer dies wherever it is
            processes.append(consumer(env))
            time.sleep(1.5)
            redis_server.process.kill()  # Redis dies too, and comes back on the same port from its AOF
            redis_server.process.wait()
            time.sleep(1.0)
            redis_server.start(port=redis_server.port)
            time.sleep(1.0)
            os.killpg(processes[-1].pid, signal.SIGKILL)
            processes.append(consumer(env))
            for thread in threads:
                thread.join(timeout=180)
            expected = GATEWAY_REQUESTS + BATCHES * PER_BATCH
            deadline = time.monotonic() + 90
            while UsageEvent.objects.filter(project=project).count() < expected and time.monotonic() < deadline:
                time.sleep(0.5)
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(10)
    finally:
        redis_server.stop()

    assert not errors, errors[:5]
    events = UsageEvent.objects.filter(project=project)
    assert events.count() == GATEWAY_REQUESTS + BATCHES * PER_BATCH
    assert events.filter(deployment="echo").count() == GATEWAY_REQUESTS
    totals = events.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    assert totals == {
        "prompt": GATEWAY_REQUESTS * 2 + BATCHES * PER_BATCH * 7,
        "completion": GATEWAY_REQUESTS * 4 + BATCHES * PER_BATCH * 11,
    }
    rollup = UsageHourly.objects.filter(project=project).aggregate(
        requests=Sum("requests"), prompt=Sum("prompt_tokens")
    )
    assert rollup == {"requests": events.count(), "prompt": totals["prompt"]}
