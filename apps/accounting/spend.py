"""Reads behind the spend page: spend over time by model, deployment or team; tokens in and out; cost per 1,000
tokens of API models and of self-hosted deployments; top users and teams; budget burn-down; idle GPU spend.

The page takes the query parameters of `GET /api/v1/accounting/usage/summary` (from, to, model, deployment, user,
team, group_by) and reads through the same filter set and rollups, so its figures are the API's: a series of the
spend chart adds up to that group's cost in the summary, and a bucket's total is the summary's `group_by=day` (or
`hour`) cost. GPU cost is read through the filter set of `GET usage/gpu-cost` (project, deployment, from, to).
Every read is one aggregate query with a limit; budgets cost three queries each, for at most BUDGETS_SHOWN.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.postgres.aggregates import StringAgg
from django.db.models import F, QuerySet, Sum
from django.db.models.functions import Coalesce, Trunc
from django.http import QueryDict

from apps.core.models import Project
from apps.deployments.models import Deployment, Target

from . import budgets as budget_reads
from . import rollups, selectors
from .filters import DeploymentCostFilter, UsageSummaryFilter
from .models import BudgetPeriod, UsageDaily, UsageHourly

GROUPS = {"model": "Model", "deployment": "Deployment", "team": "Team"}
TOP_SERIES = 8
TOP_ROWS = 10
BUDGETS_SHOWN = 10
DEFAULT_DAYS = 30
MAX_DAYS = 366
HOURLY_UP_TO = datetime.timedelta(days=2)  # shorter periods are drawn by the hour
TOTAL_BUDGET_DAYS = 90  # a budget that never resets is drawn over its last days
FILTER_OPTIONS = 500
QUANTUM = Decimal("1e-10")
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Period:
    start: datetime.datetime
    end: datetime.datetime
    unit: str  # "hour" or "day"

    @property
    def step(self) -> datetime.timedelta:
        return HOUR if self.unit == "hour" else DAY

    @property
    def last(self) -> datetime.datetime:
        """The last bucket shown (the period's end is not included)."""
        return self.end - self.step

    def buckets(self) -> list[datetime.datetime]:
        out, moment = [], _floor(self.start, self.unit)
        while moment < self.end:
            out.append(moment)
            moment += self.step
        return out


@dataclass
class SpendReport:
    period: Period | None
    group_by: str
    errors: dict[str, list[str]] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    chart: dict[str, Any] = field(default_factory=dict)
    top_users: list[dict] = field(default_factory=list)
    top_teams: list[dict] = field(default_factory=list)
    api_models: list[dict] = field(default_factory=list)
    self_hosted: list[dict] = field(default_factory=list)
    budgets: list[dict] = field(default_factory=list)
    more_budgets: bool = False
    options: dict[str, list[str]] = field(default_factory=dict)

    @property
    def has_usage(self) -> bool:
        return bool(self.totals.get("requests") or self.totals.get("gpu_cost"))


def _floor(moment: datetime.datetime, unit: str) -> datetime.datetime:
    moment = moment.astimezone(datetime.UTC).replace(minute=0, second=0, microsecond=0)
    return moment if unit == "hour" else moment.replace(hour=0)


def _moment(raw: str | None, name: str, errors: dict) -> datetime.datetime | None:
    if not raw:
        return None
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        errors[name] = ["Give an ISO 8601 date or time."]
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


def period_parse(params: QueryDict, *, now: datetime.datetime) -> tuple[Period | None, dict[str, list[str]]]:
    """The period the page shows: `from` and `to` as the summary API takes them (`to` not included); by default
    the last DEFAULT_DAYS days, today included. Days are drawn by the hour up to two days long."""
    errors: dict[str, list[str]] = {}
    start, end = _moment(params.get("from"), "from", errors), _moment(params.get("to"), "to", errors)
    if errors:
        return None, errors
    end = end or _floor(now, "day") + DAY
    start = start or end - DEFAULT_DAYS * DAY
    if not all(rollups._aligned(moment, "hour") for moment in (start, end)):
        errors["from"] = ["Summaries start and end on whole hours (UTC)."]
    elif end <= start:
        errors["to"] = ["Give a `to` after `from`."]
    elif end - start > MAX_DAYS * DAY:
        errors["to"] = [f"Show at most {MAX_DAYS} days at a time."]
    if errors:
        return None, errors
    daily = rollups._aligned(start, "day") and rollups._aligned(end, "day") and end - start > HOURLY_UP_TO
    return Period(start=start, end=end, unit="day" if daily else "hour"), {}


def _params(params: QueryDict, project: Project, period: Period) -> QueryDict:
    data = params.copy()
    data["project"] = project.slug
    data["from"], data["to"] = period.start.isoformat(), period.end.isoformat()
    return data


# Usage ------------------------------------------------------------------------------------------------------------

TOKENS = {
    "prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
    "completion_tokens": Coalesce(Sum("completion_tokens"), 0),
}


def _per_1k(cost: Decimal, tokens: int) -> Decimal | None:
    return (cost * 1000 / tokens).quantize(QUANTUM) if tokens else None


def _spend_chart(queryset: QuerySet, group_by: str, period: Period) -> tuple[dict, dict]:
    """The stacked spend series (the top groups and "other"), tokens per bucket, and the period's totals."""
    buckets = period.buckets()
    index = {bucket: i for i, bucket in enumerate(buckets)}
    per_bucket = queryset.values("bucket").annotate(
        cost=Coalesce(Sum("cost"), Decimal(0)), requests=Coalesce(Sum("requests"), 0), **TOKENS
    )
    total = [Decimal(0)] * len(buckets)
    prompt, completion = [0] * len(buckets), [0] * len(buckets)
    totals = {"cost": Decimal(0), "requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for row in per_bucket.order_by():
        i = index[row["bucket"]]
        total[i], prompt[i], completion[i] = row["cost"], row["prompt_tokens"], row["completion_tokens"]
        for name in totals:
            totals[name] += row[name]
    ranked = (
        queryset.values(group_by).annotate(cost=Sum("cost")).filter(cost__gt=0).order_by("-cost", group_by)[:TOP_SERIES]
    )
    top = [row[group_by] for row in ranked]
    series = {key: [Decimal(0)] * len(buckets) for key in top}
    if top:
        rows = queryset.filter(**{f"{group_by}__in": top}).values("bucket", group_by).annotate(cost=Sum("cost"))
        for row in rows.order_by():
            series[row[group_by]][index[row["bucket"]]] = row["cost"]
    other = [t - sum(values[i] for values in series.values()) for i, t in enumerate(total)]
    spend = [{"key": key, "name": key or f"(no {group_by})", "values": values} for key, values in series.items()]
    if any(other):
        spend.append({"key": None, "name": "Other", "values": other})
    chart = {
        "buckets": [b.isoformat() for b in buckets],
        "unit": period.unit,
        "group_by": group_by,
        "spend": spend,
        "total": total,
        "tokens": {"prompt": prompt, "completion": completion},
    }
    return chart, totals


def _top(queryset: QuerySet, key: str) -> list[dict]:
    rows = (
        queryset.values(key)
        .annotate(cost=Sum("cost"), requests=Sum("requests"), **TOKENS)
        .order_by("-cost", key)[:TOP_ROWS]
    )
    out = []
    for row in rows:
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        out.append({"name": row[key], **row, "tokens": tokens, "cost_per_1k_tokens": _per_1k(row["cost"], tokens)})
    top_cost = max((row["cost"] for row in out), default=Decimal(0))
    for row in out:
        row["share"] = round(row["cost"] * 100 / top_cost) if top_cost else 0
    return out


def _api_models(queryset: QuerySet, project: Project) -> list[dict]:
    """Models priced by the catalog (API models, external deployments), without self-hosted deployments' usage."""
    self_hosted = Deployment.objects.filter(project=project).exclude(target=Target.EXTERNAL).values("slug")
    rows = (
        queryset.exclude(deployment__in=self_hosted)
        .values("model")
        .annotate(cost=Sum("cost"), **TOKENS)
        .filter(cost__gt=0)
        .order_by("-cost", "model")[:TOP_ROWS]
    )
    out = []
    for row in rows:
        tokens = row["prompt_tokens"] + row["completion_tokens"]
        out.append({"name": row["model"], "cost": row["cost"], "tokens": tokens, "value": _per_1k(row["cost"], tokens)})
    return out


# GPU cost ---------------------------------------------------------------------------------------------------------


def _gpu(queryset: QuerySet, period: Period) -> tuple[dict, list[dict], dict]:
    buckets = period.buckets()
    index = {bucket: i for i, bucket in enumerate(buckets)}
    busy, idle = [Decimal(0)] * len(buckets), [Decimal(0)] * len(buckets)
    totals = {"gpu_cost": Decimal(0), "idle_cost": Decimal(0)}
    per_bucket = (
        queryset.annotate(at=Trunc("bucket", period.unit, tzinfo=datetime.UTC))
        .values("at")
        .annotate(gpu_cost=Sum("gpu_cost"), idle_cost=Sum("idle_cost"))
        .order_by()
    )
    for row in per_bucket:
        i = index[row["at"]]
        busy[i], idle[i] = row["gpu_cost"] - row["idle_cost"], row["idle_cost"]
        totals["gpu_cost"] += row["gpu_cost"]
        totals["idle_cost"] += row["idle_cost"]
    rows = (
        queryset.values("deployment")
        .annotate(
            gpu_cost=Sum("gpu_cost"),
            idle_cost=Sum("idle_cost"),
            tokens=Sum("tokens"),
            requests=Sum("requests"),
            accelerator_hours=Sum("accelerator_hours"),
            accelerators=StringAgg(F("accelerator"), delimiter=", ", distinct=True, order_by=F("accelerator").asc()),
        )
        .order_by("-gpu_cost", "deployment")[:TOP_ROWS]
    )
    deployments = []
    for row in rows:
        row["value"] = _per_1k(row["gpu_cost"], row["tokens"])
        row["idle_share"] = round(row["idle_cost"] * 100 / row["gpu_cost"]) if row["gpu_cost"] else 0
        deployments.append({"name": row["deployment"], **row})
    return {"busy": busy, "idle": idle}, deployments, totals


# Budgets ----------------------------------------------------------------------------------------------------------


def _burn_down(budget, status, now: datetime.datetime) -> dict:
    """Cumulative spend through the budget's period (by the hour for a daily budget, else by the day), the
    forecast to its reset, and the limit."""
    unit = "hour" if budget.period == BudgetPeriod.DAILY else "day"
    rollup = UsageHourly if unit == "hour" else UsageDaily
    start = status.period_start
    if status.resets_at is None:
        start = max(start, _floor(now, "day") - (TOTAL_BUDGET_DAYS - 1) * DAY)
    step = HOUR if unit == "hour" else DAY
    rows = (
        budget_reads._scoped(rollup.objects.filter(bucket__gte=start, bucket__lte=now), budget)
        .values("bucket")
        .annotate(cost=Sum("cost"))
        .order_by()
    )
    spent_by_bucket = {row["bucket"]: row["cost"] for row in rows}
    cumulative = status.spent - sum(spent_by_bucket.values())  # spend before the drawn days of a total budget
    points = [(start, cumulative)]
    bucket = start
    while bucket <= now:
        cumulative += spent_by_bucket.get(bucket, Decimal(0))
        points.append((min(bucket + step, now), cumulative))
        bucket += step
    end = status.resets_at or now
    return {
        "unit": unit,
        "x": [p[0].isoformat() for p in points],
        "spent": [p[1] for p in points],
        "forecast": (
            {"x": [now.isoformat(), end.isoformat()], "y": [status.spent, status.forecast]}
            if status.forecast is not None
            else None
        ),
        "limit": {"x": [start.isoformat(), end.isoformat()], "y": [budget.amount, budget.amount]},
    }


def _budgets(user, project: Project, now: datetime.datetime) -> tuple[list[dict], bool]:
    budgets = list(selectors.budget_list(user=user).filter(project=project).order_by("name")[: BUDGETS_SHOWN + 1])
    out = []
    for budget in budgets[:BUDGETS_SHOWN]:
        status = budget_reads.budget_status(budget, now=now)
        out.append(
            {
                "id": budget.pk,
                "name": budget.name,
                "budget": budget,
                "status": status,
                "over_forecast": status.forecast is not None and status.forecast > budget.amount,
                "chart": _burn_down(budget, status, now),
            }
        )
    return out, len(budgets) > BUDGETS_SHOWN


# The report -------------------------------------------------------------------------------------------------------


def spend_report(*, user, project: Project, params: QueryDict, now: datetime.datetime) -> SpendReport:
    """Everything the spend page shows for the project under these filters (errors instead when they are invalid)."""
    group_by = params.get("group_by") or "model"
    period, errors = period_parse(params, now=now)
    if group_by not in GROUPS:
        errors["group_by"] = [f"Use one of: {', '.join(GROUPS)}."]
    report = SpendReport(period=period, group_by=group_by, errors=errors)
    if errors:
        return report
    data = _params(params, project, period)
    chart_rollup = UsageDaily if period.unit == "day" else UsageHourly
    usage = UsageSummaryFilter(data, queryset=selectors.rollup_list(user=user, model=chart_rollup))
    summary_rollup = rollups.rollup_model("model", period.start, period.end)  # what the summary API reads
    summary = UsageSummaryFilter(data, queryset=selectors.rollup_list(user=user, model=summary_rollup))
    gpu = DeploymentCostFilter(data, queryset=selectors.deployment_cost_list(user=user))
    for filterset in (usage, summary, gpu):
        if not filterset.is_valid():
            report.errors.update(filterset.errors)
    if report.errors:
        return report
    report.chart, totals = _spend_chart(usage.qs, group_by, period)
    gpu_series, report.self_hosted, gpu_totals = _gpu(gpu.qs, period)
    report.chart["gpu"] = gpu_series
    report.totals = {**totals, **gpu_totals}
    report.top_users = _top(summary.qs, "user")
    report.top_teams = _top(summary.qs, "team")
    report.api_models = _api_models(summary.qs, project)
    report.chart["cost_per_1k"] = [
        {"name": row["name"], "kind": kind, "value": row["value"]}
        for kind, rows in (("API model", report.api_models), ("Self-hosted", report.self_hosted))
        for row in rows
        if row["value"] is not None
    ]
    report.budgets, report.more_budgets = _budgets(user, project, now)
    report.chart["budgets"] = [{"id": b["id"], "name": b["name"], **b["chart"]} for b in report.budgets]
    report.options = _options(user, project, period)
    return report


def _options(user, project: Project, period: Period) -> dict[str, list[str]]:
    """Values seen in the period, offered as suggestions by the filter inputs."""
    rows = (
        selectors.rollup_list(user=user, model=rollups.rollup_model("model", period.start, period.end))
        .filter(project=project, bucket__gte=period.start, bucket__lt=period.end)
        .values_list("model", "deployment", "user", "team")
        .distinct()
        .order_by()[:FILTER_OPTIONS]
    )
    seen: dict[str, set[str]] = {"model": set(), "deployment": set(), "user": set(), "team": set()}
    for row in rows:
        for name, value in zip(seen, row, strict=True):
            if value:
                seen[name].add(value)
    return {name: sorted(values) for name, values in seen.items()}
