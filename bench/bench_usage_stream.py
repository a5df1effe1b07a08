"""Sustained storing of the gateway's usage records by the stream consumer (Redis stream → PostgreSQL).

`BENCH_STREAM_RECORDS` (50,000) gateway-shaped records are written to the usage stream the way the gateway writes
them (pipelined XADD), then one consumer drains them in batches of 1,000 (read, validate, price, one idempotent
insert with rollups, acknowledge). The baseline in the same run is the batch API's service (usage_ingest) on the
same events without the stream, so the figure shows what the stream and its acknowledgements cost.
"""

import os
import time
import uuid

import orjson
import redis
from django.conf import settings
from django.contrib.auth import get_user_model

from apps.accounting.ingestion import usage_ingest
from apps.accounting.usage_stream import drain
from apps.core.models import Membership, Organization, Project, Role

RECORDS = int(os.environ.get("BENCH_STREAM_RECORDS", "50000"))


def _record(project_id: int, i: int) -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "time": time.time(),
        "project_id": project_id,
        "deployment": "chat",
        "deployment_id": 1,
        "revision": 1 + i % 2,
        "revision_id": 1 + i % 2,
        "model_version_id": None,
        "model": "tiny-gpt2:1",
        "provider": "self-hosted",
        "endpoint": "chat",
        "user": f"user-{i % 50}",
        "user_id": 1,
        "team": f"team-{i % 5}",
        "token_id": 1,
        "prompt_tokens": 20 + i % 100,
        "completion_tokens": 5 + i % 50,
        "cached_tokens": 0,
        "latency_ms": 40 + i % 30,
        "ttft_ms": 10,
        "status": "ok",
        "http_status": 200,
        "tags": ["bench"],
        "shadow": False,
    }


def run() -> dict:
    org = Organization.objects.create(name="Stream bench", slug="stream-bench")
    project = Project.objects.create(organization=org, name="Stream", slug="stream-bench")
    user = get_user_model().objects.create(username="stream-bench")
    Membership.objects.create(project=project, user=user, role=Role.DEVELOPER)
    client = redis.Redis.from_url(settings.REDIS_URL)
    stream = settings.GATEWAY_USAGE_STREAM
    client.delete(stream)

    started = time.perf_counter()
    for start in range(0, RECORDS, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + 1000, RECORDS)):
            pipe.xadd(stream, {"r": orjson.dumps(_record(project.pk, i))})
        pipe.execute()
    write_s = time.perf_counter() - started

    started = time.perf_counter()
    stored = 0
    while True:
        result = drain(max_batches=50)
        stored += result.stored
        if not result.read:
            break
    drain_s = time.perf_counter() - started

    # Baseline: the same kind of events straight into the ingestion service, batches of 1,000.
    events = [
        {"id": f"direct-{i}", "time": time.time(), "model": "tiny-gpt2:1", "deployment": "chat", "user": "u",
         "prompt_tokens": 20, "completion_tokens": 5, "latency_ms": 40}
        for i in range(min(RECORDS, 20000))
    ]  # fmt: skip
    started = time.perf_counter()
    for start in range(0, len(events), 1000):
        usage_ingest(user=user, events=events[start : start + 1000], project=project.slug)
    direct_s = time.perf_counter() - started
    return {
        "records": RECORDS,
        "stored": stored,
        "gateway_style_xadd_per_s": round(RECORDS / write_s),
        "consumer_events_per_s": round(stored / drain_s),
        "direct_ingest_events_per_s": round(len(events) / direct_s),
        "left_in_stream": client.xlen(stream),
    }
