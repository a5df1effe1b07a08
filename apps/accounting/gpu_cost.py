"""GPU-hour cost of self-hosted deployments, from the runtime's state events.

A replica runs from a `starting` (or `ready`/`draining`) event to its next `stopped`, `failed` or `pending` event;
one still running counts up to now. Each hour, a revision costs its replicas' running seconds × accelerators per
replica × the accelerator's hourly price / 3600. That cost is spread over the tokens the deployment served in the
hour (prompt + completion tokens of its usage rollups, as the usage summary counts them), which gives a cost per
1,000 tokens comparable with API models' prices. An hour with replicas up and no request is idle: all its cost is
idle spend.

Usage rollups know deployments, not revisions: when several revisions of a deployment ran in the same hour (a
rollout, a canary), the hour's requests and tokens are shared among them in proportion to their replica-seconds.

Rows are recomputed, by upsert, for a window of recent hours (the beat task every few minutes), so late usage and
state events are taken in. The accelerator's price is copied into each row when it is computed: a price edited in
the catalog applies to the hours still in the window, and hours before it keep the price they were computed with.
"""

from __future__ import annotations

import datetime
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import F, Sum
from django.utils import timezone

from apps.deployments.models import Replica, Revision, State, StateEvent

from .models import DeploymentCostHourly, UsageHourly
from .pricing import COST_QUANTUM

HOUR = datetime.timedelta(hours=1)
WINDOW_HOURS = 6
UP = frozenset({State.STARTING, State.READY, State.DRAINING})
DOWN = frozenset({State.STOPPED, State.FAILED, State.PENDING})
HOURS_QUANTUM = Decimal("1e-6")
# Any constant that no other advisory lock of the project uses: one refresh at a time, others skip.
LOCK_KEY = 0x67707563  # "gpuc"
Spans = list[tuple[int, datetime.datetime, datetime.datetime]]  # (replica id, from, to)
UPDATED_FIELDS = [
    "project", "deployment_id", "deployment", "revision", "accelerator", "accelerator_count", "hourly_price",
    "currency", "replica_seconds", "accelerator_hours", "gpu_cost", "requests", "tokens", "cost_per_1k_tokens",
    "idle", "idle_cost", "computed_at",
]  # fmt: skip


@dataclass(frozen=True)
class RefreshResult:
    start: datetime.datetime
    end: datetime.datetime
    rows: int
    deleted: int
    skipped: bool = False

    def as_dict(self) -> dict:
        return {
            "from": self.start.isoformat(),
            "to": self.end.isoformat(),
            "rows": self.rows,
            "deleted": self.deleted,
            "skipped": self.skipped,
        }


def hour_floor(moment: datetime.datetime) -> datetime.datetime:
    return moment.astimezone(datetime.UTC).replace(minute=0, second=0, microsecond=0)


def _hour_ceil(moment: datetime.datetime) -> datetime.datetime:
    floor = hour_floor(moment)
    return floor if floor == moment else floor + HOUR


def _seconds(delta: datetime.timedelta) -> Decimal:
    """Exact seconds of a timedelta (floats would make the cost drift by fractions of a cent)."""
    return Decimal(delta.days * 86400 + delta.seconds) + Decimal(delta.microseconds) / 1_000_000


# Running time ----------------------------------------------------------------------------------------------------


def replica_intervals(start: datetime.datetime, end: datetime.datetime) -> dict[int, Spans]:
    """{revision id: [(replica id, from, to)]}: when each replica ran within [start, end).

    Reads the events in the window, plus the last event before it for the replicas that may have been running
    when it began (those with an event in the window, and those up now): a bounded read however long the history.
    """
    events = list(
        StateEvent.objects.filter(replica__isnull=False, time__gte=start, time__lt=end)
        .order_by("time", "id")
        .values_list("replica_id", "revision_id", "state", "time")
    )
    candidates = {replica_id for replica_id, *_ in events}
    candidates |= set(Replica.objects.filter(state__in=UP).values_list("pk", flat=True))
    opened: dict[int, datetime.datetime] = {}
    revision_of: dict[int, int] = {}
    if candidates:
        before = (
            StateEvent.objects.filter(replica_id__in=candidates, time__lt=start)
            .order_by("replica_id", "-time", "-id")
            .distinct("replica_id")
            .values_list("replica_id", "revision_id", "state")
        )
        for replica_id, revision_id, state in before:
            revision_of[replica_id] = revision_id
            if state in UP:
                opened[replica_id] = start
    intervals: dict[int, Spans] = defaultdict(list)
    for replica_id, revision_id, state, time in events:
        revision_of[replica_id] = revision_id
        if state in UP:
            opened.setdefault(replica_id, time)  # a restart while running does not start the clock again
        elif state in DOWN and replica_id in opened:
            since = opened.pop(replica_id)
            if time > since:
                intervals[revision_id].append((replica_id, since, time))
    for replica_id, since in opened.items():
        if end > since:
            intervals[revision_of[replica_id]].append((replica_id, since, end))
    return intervals


def _hourly_seconds(intervals: Spans) -> dict[datetime.datetime, Decimal]:
    seconds: dict[datetime.datetime, Decimal] = defaultdict(Decimal)
    for _, since, until in intervals:
        bucket = hour_floor(since)
        while bucket < until:
            overlap = min(until, bucket + HOUR) - max(since, bucket)
            if overlap > datetime.timedelta(0):
                seconds[bucket] += _seconds(overlap)
            bucket += HOUR
    return seconds


def _shares(total: int, weights: list[Decimal]) -> list[int]:
    """`total` split in proportion to `weights`, in whole units that add up to it (largest remainder)."""
    weight_sum = sum(weights)
    if not total or not weight_sum:
        return [0] * len(weights)
    exact = [Decimal(total) * w / weight_sum for w in weights]
    shares = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares


# Rows ------------------------------------------------------------------------------------------------------------


def compute_rows(
    start: datetime.datetime, end: datetime.datetime, *, now: datetime.datetime
) -> list[DeploymentCostHourly]:
    """Unsaved rows for the hours from `start` (an hour) up to `end` (at most now): one per revision and hour."""
    intervals = replica_intervals(start, end)
    revisions = {r.pk: r for r in Revision.objects.filter(pk__in=intervals).select_related("deployment", "accelerator")}
    seconds = {rid: _hourly_seconds(spans) for rid, spans in intervals.items() if rid in revisions}
    usage = _deployment_usage(start, end, revisions.values())
    # Group revision-hours by deployment-hour, to share out the deployment's usage of that hour.
    per_deployment_hour: dict[tuple[int, datetime.datetime], list[tuple[int, Decimal]]] = defaultdict(list)
    for revision_id, by_hour in seconds.items():
        for bucket, secs in by_hour.items():
            per_deployment_hour[(revisions[revision_id].deployment_id, bucket)].append((revision_id, secs))
    rows = []
    for (_, bucket), parts in sorted(per_deployment_hour.items(), key=lambda item: (item[0][1], item[0][0])):
        deployment = revisions[parts[0][0]].deployment
        requests, tokens = usage.get((deployment.project_id, deployment.slug, bucket), (0, 0))
        weights = [secs for _, secs in parts]
        shares = zip(parts, _shares(requests, weights), _shares(tokens, weights), strict=True)
        for (revision_id, secs), request_share, token_share in shares:
            revision = revisions[revision_id]
            rows.append(_row(revision, bucket, secs, request_share, token_share, idle=not requests, now=now))
    return rows


def _row(revision: Revision, bucket: datetime.datetime, seconds: Decimal, requests: int, tokens: int, *, idle: bool,
         now: datetime.datetime) -> DeploymentCostHourly:  # fmt: skip
    accelerator = revision.accelerator
    device_seconds = seconds * revision.accelerator_count
    cost = (device_seconds * accelerator.hourly_price / 3600).quantize(COST_QUANTUM)
    return DeploymentCostHourly(
        bucket=bucket,
        project_id=revision.deployment.project_id,
        deployment_id=revision.deployment_id,
        deployment=revision.deployment.slug,
        revision_id=revision.pk,
        revision=revision.number,
        accelerator=accelerator.name,
        accelerator_count=revision.accelerator_count,
        hourly_price=accelerator.hourly_price,
        currency=accelerator.currency,
        replica_seconds=seconds.quantize(HOURS_QUANTUM),
        accelerator_hours=(device_seconds / 3600).quantize(HOURS_QUANTUM),
        gpu_cost=cost,
        requests=requests,
        tokens=tokens,
        cost_per_1k_tokens=(cost * 1000 / tokens).quantize(COST_QUANTUM) if tokens else None,
        idle=idle,
        idle_cost=cost if idle else Decimal(0),
        computed_at=now,
    )


def _deployment_usage(start, end, revisions) -> dict[tuple[int, str, datetime.datetime], tuple[int, int]]:
    """{(project id, deployment slug, hour): (requests, tokens)} from the hourly usage rollups."""
    revisions = list(revisions)
    if not revisions:
        return {}
    rows = (
        UsageHourly.objects.filter(
            bucket__gte=start,
            bucket__lt=end,
            project_id__in={r.deployment.project_id for r in revisions},
            deployment__in={r.deployment.slug for r in revisions},
        )
        .values("project_id", "deployment", "bucket")
        .annotate(requests=Sum("requests"), tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
    )
    return {(r["project_id"], r["deployment"], r["bucket"]): (r["requests"], r["tokens"]) for r in rows}


# The refresh -----------------------------------------------------------------------------------------------------


def gpu_cost_refresh(
    *,
    start: datetime.datetime | None = None,
    end: datetime.datetime | None = None,
    now: datetime.datetime | None = None,
) -> RefreshResult:
    """Recompute the hourly rows of the hours from `start` to `end` (default: the last WINDOW_HOURS hours and the
    current one). Both are widened to whole hours; the current hour counts up to now.

    Idempotent: the rows of those hours are upserted and rows no longer backed by running time are deleted, so
    running it again, or after late events, leaves exactly what the events say. One refresh runs at a time; a
    concurrent call returns at once with `skipped`.
    """
    now = now or timezone.now()
    start = hour_floor(start) if start is not None else hour_floor(now) - WINDOW_HOURS * HOUR
    end = now if end is None else min(_hour_ceil(end), now)
    if end <= start:
        return RefreshResult(start=start, end=end, rows=0, deleted=0)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
            if not cursor.fetchone()[0]:
                return RefreshResult(start=start, end=end, rows=0, deleted=0, skipped=True)
        rows = compute_rows(start, end, now=now)
        if rows:
            DeploymentCostHourly.objects.bulk_create(
                rows, update_conflicts=True, unique_fields=["bucket", "revision_id"], update_fields=UPDATED_FIELDS
            )
        kept = {(row.bucket, row.revision_id) for row in rows}
        existing = DeploymentCostHourly.objects.filter(bucket__gte=start, bucket__lt=end).values_list(
            "pk", "bucket", "revision_id"
        )
        stale = [pk for pk, bucket, revision_id in existing if (bucket, revision_id) not in kept]
        if stale:
            DeploymentCostHourly.objects.filter(pk__in=stale).delete()
    return RefreshResult(start=start, end=end, rows=len(rows), deleted=len(stale))
