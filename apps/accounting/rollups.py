"""Rollup reads (summaries) and raw-event retention."""

from __future__ import annotations

import datetime
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.utils import timezone

from .models import UsageDaily, UsageEvent, UsageHourly

GROUPS = {
    "model": "model",
    "deployment": "deployment",
    "user": "user",
    "team": "team",
    "project": "project__slug",
    "day": "bucket",
    "hour": "bucket",
}
PRUNE_BATCH = 50_000


def _aligned(moment: datetime.datetime | None, unit: str) -> bool:
    if moment is None:
        return True
    moment = moment.astimezone(datetime.UTC)
    return moment.minute == moment.second == moment.microsecond == 0 and (unit == "hour" or moment.hour == 0)


def rollup_model(group_by: str, start: datetime.datetime | None, end: datetime.datetime | None):
    """Daily rollups answer unless the grouping or the period needs hours; periods must align to hours."""
    if group_by != "hour" and _aligned(start, "day") and _aligned(end, "day"):
        return UsageDaily
    return UsageHourly


def summarize(queryset: QuerySet, group_by: str) -> list[dict]:
    """Sums per group of a rollup (or raw event) queryset, largest cost first (time groups in time order)."""
    key = GROUPS[group_by]
    rows = (
        queryset.values(group=F(key))
        .annotate(
            cost=Coalesce(Sum("cost"), Decimal(0)),
            prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
            completion_tokens=Coalesce(Sum("completion_tokens"), 0),
            cached_tokens=Coalesce(Sum("cached_tokens"), 0),
            reasoning_tokens=Coalesce(Sum("reasoning_tokens"), 0),
            requests=_requests(queryset),
            errors=_errors(queryset),
        )
        .order_by("group" if group_by in ("day", "hour") else "-cost", "group")
    )
    out = []
    for row in rows:
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        group = row.pop("group")
        out.append(
            {
                group_by: group.isoformat() if isinstance(group, datetime.datetime) else group,
                **row,
                "cost": str(row["cost"]),
                "cost_per_1k_tokens": str((row["cost"] * 1000 / tokens).quantize(Decimal("1e-10"))) if tokens else None,
            }
        )
    return out


def _requests(queryset: QuerySet):
    return Coalesce(Sum("requests"), 0) if queryset.model is not UsageEvent else Count("id")


def _errors(queryset: QuerySet):
    from django.db.models import Q

    if queryset.model is not UsageEvent:
        return Coalesce(Sum("errors"), 0)
    return Count("id", filter=Q(is_error=True))


def raw_events_group(queryset: QuerySet, group_by: str, unit: str = "day") -> QuerySet:
    """Raw events annotated with the bucket a rollup would put them in (for comparisons and the benchmark)."""
    from django.db.models.functions import Trunc

    return queryset.annotate(bucket=Trunc("time", unit, tzinfo=datetime.UTC))


def usage_events_prune(*, now: datetime.datetime | None = None) -> int:
    """Delete raw events older than the retention, in batches so no statement holds locks for long."""
    cutoff = (now or timezone.now()) - datetime.timedelta(days=settings.ACCOUNTING_RAW_RETENTION_DAYS)
    deleted = 0
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "DELETE FROM accounting_usageevent WHERE id IN "
                "(SELECT id FROM accounting_usageevent WHERE time < %s LIMIT %s)",
                [cutoff, PRUNE_BATCH],
            )
            deleted += cursor.rowcount
            if cursor.rowcount < PRUNE_BATCH:
                return deleted
