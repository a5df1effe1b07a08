"""Off the request path: usage records to a Redis stream, and each revision's load for the autoscaler.

A request appends its record to an in-process buffer and returns; a background task writes the buffer to the
stream (`XADD`, pipelined) every few milliseconds. Accounting consumes the stream in batches with a consumer
group, so a consumer that dies mid-batch leaves its records pending to be claimed again (see
apps/accounting/usage_stream.py). If Redis is away the buffer is kept (up to a bound) and written when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import defaultdict

import orjson
import redis.asyncio as aioredis
from django.conf import settings

from ..supervisor import LOAD_KEY

logger = logging.getLogger(__name__)
FLUSH_SECONDS = 0.01
MAX_BUFFERED = 200_000
LOAD_SECONDS = 1.0


class Recorder:
    def __init__(self):
        self.buffer: list[bytes] = []
        self.inflight: dict[int, int] = defaultdict(int)
        self.peak: dict[int, int] = defaultdict(int)
        self.last_request: dict[int, float] = {}
        self.client: aioredis.Redis | None = None
        self.tasks: list[asyncio.Task] = []
        self.wake = asyncio.Event()
        self.dropped = 0

    def start(self) -> None:
        if self.tasks:
            return
        self.client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
        self.tasks = [asyncio.create_task(self._flush_loop()), asyncio.create_task(self._load_loop())]

    # Usage records ---------------------------------------------------------------------------------------------

    def record(self, record: dict) -> None:
        if len(self.buffer) >= MAX_BUFFERED:
            self.dropped += 1  # Redis has been away for a long time; say so in the log rather than grow forever
            if self.dropped % 1000 == 1:
                logger.error("usage buffer full: %s records dropped", self.dropped)
            return
        self.buffer.append(orjson.dumps(record))
        if len(self.buffer) >= 500:
            self.wake.set()

    async def _flush_loop(self) -> None:
        stream = settings.GATEWAY_USAGE_STREAM
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), FLUSH_SECONDS)
            self.wake.clear()
            if not self.buffer:
                continue
            batch, self.buffer = self.buffer, []
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for item in batch:
                        pipe.xadd(stream, {"r": item})
                    await pipe.execute()
            except Exception:
                logger.warning("could not write %s usage records; keeping them", len(batch), exc_info=True)
                self.buffer[:0] = batch
                await asyncio.sleep(0.5)

    async def flush(self) -> None:
        """Write what is buffered now (tests and shutdown)."""
        self.wake.set()
        for _ in range(500):
            if not self.buffer:
                return
            await asyncio.sleep(0.01)

    # Load, for autoscaling and scale-to-zero ---------------------------------------------------------------

    def begin(self, revision_id: int) -> None:
        count = self.inflight[revision_id] + 1
        self.inflight[revision_id] = count
        self.peak[revision_id] = max(self.peak[revision_id], count)
        self.last_request[revision_id] = time.time()

    def end(self, revision_id: int) -> None:
        self.inflight[revision_id] -= 1

    async def _load_loop(self) -> None:
        pid = os.getpid()
        while True:
            await asyncio.sleep(LOAD_SECONDS)
            if not self.last_request:
                continue
            fields = {
                f"{revision_id}:{pid}": f"{self.peak.get(revision_id, 0)} {last:.3f}"
                for revision_id, last in self.last_request.items()
            }
            self.peak = defaultdict(int, {k: v for k, v in self.inflight.items() if v > 0})
            try:
                await self.client.hset(LOAD_KEY, mapping=fields)
            except Exception:
                logger.warning("could not publish gateway load", exc_info=True)
