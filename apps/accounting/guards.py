"""Checks the gateway runs before sending a request: hard-limit budgets and per-token / per-team rate limits.

Each guard answers `check(ctx)` with None (go ahead) or a Refusal (429 with the reason and the reset time), and may
`settle(ctx, usage)` after the answer to count what the request used. Both are named in GATEWAY_GUARDS.

Budgets: the spend check reads the rollups, so its verdict per (project, user, team, token, deployment) is kept
for GATEWAY_BUDGET_CHECK_SECONDS; a budget that runs out blocks within that time (plus the usage consumer's lag).
Rate limits: fixed one-minute windows in Redis (`INCR` + `EXPIRE`), shared by every gateway process; tokens per
minute count the tokens requests used in the window, so the request that crosses the limit still completes and
the next ones are refused until the window resets.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time

import redis.asyncio as aioredis
from django.conf import settings
from django.contrib.auth import get_user_model

from apps.core.models import ApiToken, Project, Team
from apps.deployments.gateway.app import GuardContext, Refusal
from apps.deployments.gateway.directory import TimedCache, database

from .budgets import budget_check
from .models import Budget

logger = logging.getLogger(__name__)


def _budget_refusal(key: tuple) -> Refusal | None:
    project_id, user_id, team_id, token_id, deployment = key
    if not Budget.objects.filter(hard_limit=True).exists():
        return None
    project = Project.objects.select_related("organization").get(pk=project_id)
    exceeded = budget_check(
        project=project,
        user=get_user_model()(pk=user_id),
        team=Team(pk=team_id) if team_id else None,
        token=ApiToken(pk=token_id),
        deployment=deployment,
    )
    if exceeded is None:
        return None
    reset = exceeded.resets_at.timestamp() if exceeded.resets_at else time.time() + 86400 * 365
    return Refusal(message=exceeded.message, reset_at=reset, code="budget_exceeded")


class BudgetGuard:
    def __init__(self):
        ttl = settings.GATEWAY_BUDGET_CHECK_SECONDS
        self.verdicts = TimedCache(ttl, stale=ttl > 0)  # 0: read the spend on every request

    async def check(self, ctx: GuardContext) -> Refusal | None:
        principal = ctx.principal
        key = (ctx.route.project_id, principal.user_id, principal.team_id, principal.token_id, ctx.route.slug)
        refusal = await self.verdicts.get(key, lambda k: database(_budget_refusal)(k))
        if refusal is not None and refusal.reset_at <= time.time():
            self.verdicts.forget(key)  # the period turned over: look again
            refusal = await self.verdicts.get(key, lambda k: database(_budget_refusal)(k))
        return refusal


def _window() -> tuple[int, float]:
    minute = int(time.time() // 60)
    return minute, (minute + 1) * 60.0


def _reset_text(reset_at: float) -> str:
    return datetime.datetime.fromtimestamp(reset_at, tz=datetime.UTC).isoformat()


class RateLimitGuard:
    def __init__(self):
        self.client: aioredis.Redis | None = None
        self.pending: set[asyncio.Task] = set()

    def _redis(self) -> aioredis.Redis:
        if self.client is None:
            self.client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
        return self.client

    async def check(self, ctx: GuardContext) -> Refusal | None:
        limits = ctx.principal.limits
        if not limits:
            return None
        minute, reset = _window()
        pipe = self._redis().pipeline(transaction=False)
        for limit in limits:
            if limit.requests_per_minute:
                pipe.incr(f"ratelimit:{limit.key}:requests:{minute}")
                pipe.expire(f"ratelimit:{limit.key}:requests:{minute}", 120)
            if limit.tokens_per_minute:
                pipe.get(f"ratelimit:{limit.key}:tokens:{minute}")
        try:
            results = iter(await pipe.execute())
        except Exception:  # Redis away: let traffic through rather than fail every request
            logger.warning("rate limits not checked: Redis unavailable", exc_info=True)
            return None
        for limit in limits:
            if limit.requests_per_minute:
                count = next(results)
                next(results)
                if count > limit.requests_per_minute:
                    return Refusal(
                        f"Rate limit of {limit.requests_per_minute} requests per minute for {limit.label} reached; "
                        f"it resets at {_reset_text(reset)}.",
                        reset,
                    )
            if limit.tokens_per_minute:
                used = int(next(results) or 0)
                if used >= limit.tokens_per_minute:
                    return Refusal(
                        f"Rate limit of {limit.tokens_per_minute} tokens per minute for {limit.label} reached "
                        f"({used} used); it resets at {_reset_text(reset)}.",
                        reset,
                    )
        return None

    def settle(self, ctx: GuardContext, usage: dict) -> None:
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
        limits = [limit for limit in ctx.principal.limits if limit.tokens_per_minute]
        if not tokens or not limits:
            return
        task = asyncio.create_task(self._count(limits, tokens))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _count(self, limits, tokens: int) -> None:
        minute, _ = _window()
        pipe = self._redis().pipeline(transaction=False)
        for limit in limits:
            pipe.incrby(f"ratelimit:{limit.key}:tokens:{minute}", tokens)
            pipe.expire(f"ratelimit:{limit.key}:tokens:{minute}", 120)
        try:
            await pipe.execute()
        except Exception:
            logger.warning("could not count tokens for rate limits", exc_info=True)
