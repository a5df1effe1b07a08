"""Consuming the gateway's usage records (a Redis stream) in batches, losing none and storing none twice.

Records are read through a consumer group. A batch is stored (one idempotent statement: events are unique per
project and event id) and only then acknowledged and deleted from the stream. A consumer that dies between
reading and acknowledging leaves its records pending; the next consumer claims records pending for longer than
CLAIM_IDLE_MS and stores them again, which the unique event id turns into no-ops. If Redis itself restarts, the
stream survives to the extent Redis persists it (the devstack and docker-compose run Redis with AOF on).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from dataclasses import dataclass

import orjson
import redis
from django.conf import settings

from apps.core.models import Project

from . import ingestion, tokenizers

logger = logging.getLogger(__name__)
GROUP = "accounting"
BATCH = 1000


@dataclass
class DrainResult:
    read: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=30)


def _ensure_group(client: redis.Redis, stream: str) -> None:
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _events(entries: list, slugs: dict[int, str]) -> tuple[list[dict], list[bytes]]:
    """Gateway records → accounting events (the same validation as the batch API)."""
    events, ids = [], []
    for entry_id, fields in entries:
        ids.append(entry_id)
        try:
            record = orjson.loads(fields[b"r"])
        except (KeyError, orjson.JSONDecodeError):
            logger.error("dropping unreadable usage record %s", entry_id)
            continue
        slug = slugs.get(record.get("project_id"))
        if slug is None:
            continue  # the project was deleted since
        event = {
            "id": record["event_id"],
            "time": record["time"],
            "project": slug,
            "model": record.get("model") or record.get("deployment", ""),
            "deployment": record.get("deployment", ""),
            "provider": record.get("provider", ""),
            "user": record.get("user", ""),
            "team": record.get("team", ""),
            "token_id": record.get("token_id"),
            "cached_tokens": record.get("cached_tokens") or 0,
            "latency_ms": record.get("latency_ms"),
            "ttft_ms": record.get("ttft_ms"),
            "status": record.get("status", "ok"),
            "tags": record.get("tags") or [],
            "metadata": {
                key: record.get(key)
                for key in (
                    "revision",
                    "revision_id",
                    "model_version_id",
                    "endpoint",
                    "http_status",
                    "shadow",
                    "user_id",
                    "deployment_id",
                )
            },
        }
        for name in ("prompt_tokens", "completion_tokens"):
            if record.get(name) is not None:
                event[name] = record[name]
        if "input_text" in record and (event.get("prompt_tokens") is None or event.get("completion_tokens") is None):
            event["input_text"] = record["input_text"]
            event["output_text"] = record.get("output_text", "")
            if record.get("model_version_id"):
                event["tokenizer"] = f"{tokenizers.REGISTRY_PREFIX}{record['model_version_id']}"
        events.append(event)
    return events, ids


def _store(client: redis.Redis, stream: str, entries: list, result: DrainResult) -> None:
    project_ids = set()
    for _, fields in entries:
        with contextlib.suppress(KeyError, orjson.JSONDecodeError):
            project_ids.add(orjson.loads(fields[b"r"]).get("project_id"))
    slugs = dict(
        Project.objects.filter(pk__in=[p for p in project_ids if isinstance(p, int)]).values_list("pk", "slug")
    )
    events, ids = _events(entries, slugs)
    for start in range(0, len(events), settings.ACCOUNTING_MAX_BATCH):
        outcome = ingestion.usage_ingest(user=None, events=events[start : start + settings.ACCOUNTING_MAX_BATCH])
        result.stored += len(outcome.accepted)
        result.duplicates += len(outcome.duplicates)
        result.rejected += len(outcome.rejected)
        for rejected in outcome.rejected:
            logger.error("usage record %s rejected: %s", rejected.get("id"), rejected.get("reason"))
    # Stored: now acknowledge and delete. A crash before this means the batch is claimed and stored again.
    _acknowledge(client, stream, ids)
    result.read += len(ids)


def _acknowledge(client: redis.Redis, stream: str, ids: list[bytes]) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.xack(stream, GROUP, *ids)
    pipe.xdel(stream, *ids)
    pipe.execute()


def drain(*, max_batches: int = 1000, block_ms: int | None = None, consumer: str | None = None) -> DrainResult:
    """Store what the stream holds (records pending too long with a dead consumer first), batch by batch."""
    stream = settings.GATEWAY_USAGE_STREAM
    client = _client()
    _ensure_group(client, stream)
    consumer = consumer or consumer_name()
    result = DrainResult()
    # Records a dead consumer read but never acknowledged.
    cursor = "0-0"
    while True:
        cursor, claimed, *_ = client.xautoclaim(
            stream, GROUP, consumer, settings.USAGE_STREAM_CLAIM_IDLE_MS, start_id=cursor, count=BATCH
        )
        if claimed:
            _store(client, stream, [e for e in claimed if e[1]], result)
            gone = [e[0] for e in claimed if not e[1]]
            if gone:
                client.xack(stream, GROUP, *gone)
        if cursor in (b"0-0", "0-0"):
            break
    for _ in range(max_batches):
        answer = client.xreadgroup(GROUP, consumer, {stream: ">"}, count=BATCH, block=block_ms)
        if not answer:
            break
        entries = answer[0][1]
        if not entries:
            break
        _store(client, stream, entries, result)
    return result
