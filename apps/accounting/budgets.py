"""Budgets: spend per period from the rollups, a forecast, threshold alerts (e-mail + webhook), and the check
the gateway calls before serving a request."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from decimal import Decimal

import requests
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from apps.core.audit import audit_record, snapshot
from apps.core.models import ApiToken, Project, Team
from apps.core.permissions import Action, check, role_on_project

from .models import Budget, BudgetAlert, BudgetPeriod, BudgetScope, UsageDaily, UsageHourly

logger = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5
FORECAST_WINDOW = datetime.timedelta(hours=24)
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)  # the one period of a "total" budget
BUDGET_FIELDS = [
    "name", "scope", "organization_id", "team_id", "user_id", "token_id", "deployment", "period", "amount",
    "thresholds", "hard_limit", "alert_emails", "webhook_url",
]  # fmt: skip


@dataclass(frozen=True)
class BudgetExceeded:
    budget: Budget
    spent: Decimal
    resets_at: datetime.datetime | None
    message: str


# Periods and spend -----------------------------------------------------------------------------------------------


def period_bounds(period: str, now: datetime.datetime) -> tuple[datetime.datetime, datetime.datetime | None]:
    """(start, reset time) of the period holding `now`, in UTC; a total budget never resets."""
    day = now.astimezone(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == BudgetPeriod.DAILY:
        return day, day + datetime.timedelta(days=1)
    if period == BudgetPeriod.WEEKLY:
        start = day - datetime.timedelta(days=day.weekday())
        return start, start + datetime.timedelta(days=7)
    if period == BudgetPeriod.MONTHLY:
        start = day.replace(day=1)
        return start, (start + datetime.timedelta(days=32)).replace(day=1)
    return EPOCH, None


def _scoped(queryset: QuerySet, budget: Budget) -> QuerySet:
    """The rollup rows a budget counts."""
    scope = budget.scope
    if scope == BudgetScope.ORGANIZATION:
        return queryset.filter(project__organization_id=budget.organization_id or budget.project.organization_id)
    if scope == BudgetScope.TEAM:
        return queryset.filter(project__organization_id=budget.team.organization_id, team=budget.team.slug)
    if scope == BudgetScope.USER:
        return queryset.filter(project__organization_id=budget.project.organization_id, user=budget.user.get_username())
    if scope == BudgetScope.TOKEN:
        return queryset.filter(token_id=budget.token_id)
    if scope == BudgetScope.DEPLOYMENT:
        return queryset.filter(project_id=budget.project_id, deployment=budget.deployment)
    return queryset.filter(project_id=budget.project_id)


def _sum(queryset: QuerySet) -> Decimal:
    return queryset.aggregate(total=Sum("cost"))["total"] or Decimal(0)


@dataclass(frozen=True)
class BudgetStatus:
    budget: Budget
    period_start: datetime.datetime
    resets_at: datetime.datetime | None
    spent: Decimal
    forecast: Decimal | None
    percent: Decimal
    thresholds_crossed: list[int]
    exceeded: bool


def budget_status(budget: Budget, *, now: datetime.datetime | None = None) -> BudgetStatus:
    now = now or timezone.now()
    start, resets_at = period_bounds(budget.period, now)
    # Day-aligned periods are read from the daily rollup; its rows for the current day are current too.
    spent = _sum(_scoped(UsageDaily.objects.filter(bucket__gte=start), budget))
    forecast = None
    if resets_at is not None:
        window_start = max(start, now - FORECAST_WINDOW)
        recent = _sum(_scoped(UsageHourly.objects.filter(bucket__gte=window_start), budget))
        elapsed = max((now - window_start).total_seconds(), 3600.0)  # the current hour counts as a whole hour
        rate = recent / Decimal(elapsed)
        forecast = (spent + rate * Decimal((resets_at - now).total_seconds())).quantize(Decimal("0.0001"))
    percent = (spent * 100 / budget.amount).quantize(Decimal("0.01")) if budget.amount else Decimal(100)
    return BudgetStatus(
        budget=budget,
        period_start=start,
        resets_at=resets_at,
        spent=spent,
        forecast=forecast,
        percent=percent,
        thresholds_crossed=sorted(t for t in budget.thresholds if percent >= t),
        exceeded=spent >= budget.amount,
    )


# The gateway's check ---------------------------------------------------------------------------------------------


def budgets_applying(*, project: Project, user=None, team: Team | None = None, token: ApiToken | None = None,
                     deployment: str = "") -> QuerySet[Budget]:  # fmt: skip
    """Budgets that a request in this project by this user/team/token to this deployment counts against."""
    condition = Q(scope=BudgetScope.PROJECT, project=project) | Q(
        scope=BudgetScope.ORGANIZATION, project__organization_id=project.organization_id
    )
    if team is not None:
        condition |= Q(scope=BudgetScope.TEAM, team=team)
    if user is not None and getattr(user, "pk", None):
        condition |= Q(scope=BudgetScope.USER, user=user, project__organization_id=project.organization_id)
    if token is not None:
        condition |= Q(scope=BudgetScope.TOKEN, token=token)
    if deployment:
        condition |= Q(scope=BudgetScope.DEPLOYMENT, project=project, deployment=deployment)
    return Budget.objects.filter(condition).select_related("project", "team", "user")


def budget_check(*, project: Project, user=None, team: Team | None = None, token: ApiToken | None = None,
                 deployment: str = "") -> BudgetExceeded | None:  # fmt: skip
    """None when the request may go ahead; else the first spent hard-limit budget and when it resets."""
    now = timezone.now()
    for budget in budgets_applying(project=project, user=user, team=team, token=token, deployment=deployment).filter(
        hard_limit=True
    ):
        status = budget_status(budget, now=now)
        if status.exceeded:
            resets = f"it resets at {status.resets_at.isoformat()}" if status.resets_at else "it does not reset"
            return BudgetExceeded(
                budget=budget,
                spent=status.spent,
                resets_at=status.resets_at,
                message=(
                    f"Budget '{budget.name}' ({budget.get_period_display().lower()}, {budget.amount} USD) is spent "
                    f"({status.spent.quantize(Decimal('0.0001'))} USD); {resets}."
                ),
            )
    return None


# Alerts ----------------------------------------------------------------------------------------------------------


def _alert_text(budget: Budget, alert: BudgetAlert, status: BudgetStatus) -> str:
    return (
        f"Budget '{budget.name}' of project {budget.project.slug} has reached {alert.threshold}% "
        f"({status.spent.quantize(Decimal('0.0001'))} of {budget.amount} USD, {budget.get_period_display().lower()})."
        + (f" Forecast for the period: {status.forecast} USD." if status.forecast is not None else "")
    )


def _deliver(alert: BudgetAlert, status: BudgetStatus) -> None:
    budget = alert.budget
    text = _alert_text(budget, alert, status)
    if budget.alert_emails and alert.email_sent_at is None:
        try:
            send_mail(f"[budget] {budget.name}: {alert.threshold}% reached", text, None, budget.alert_emails)
            alert.email_sent_at = timezone.now()
        except Exception:  # a mail server outage must not stop other alerts; the next evaluation retries
            logger.warning("Budget alert e-mail for %s failed", budget.pk, exc_info=True)
    if budget.webhook_url and alert.webhook_sent_at is None:
        payload = {
            "budget": budget.pk,
            "name": budget.name,
            "project": budget.project.slug,
            "threshold": alert.threshold,
            "period_start": alert.period_start.isoformat(),
            "resets_at": status.resets_at.isoformat() if status.resets_at else None,
            "spent": str(status.spent),
            "amount": str(budget.amount),
            "forecast": str(status.forecast) if status.forecast is not None else None,
            "message": text,
        }
        try:
            requests.post(budget.webhook_url, json=payload, timeout=WEBHOOK_TIMEOUT_S).raise_for_status()
            alert.webhook_sent_at, alert.webhook_error = timezone.now(), ""
        except requests.RequestException as exc:
            alert.webhook_error = str(exc)[:2000]
            logger.warning("Budget alert webhook for %s failed (retried next evaluation): %s", budget.pk, exc)
    alert.save(update_fields=["email_sent_at", "webhook_sent_at", "webhook_error"])


def budget_evaluate(budget: Budget, *, now: datetime.datetime | None = None) -> list[BudgetAlert]:
    """Record each newly crossed threshold once per period and deliver alerts not delivered yet."""
    status = budget_status(budget, now=now)
    delivered = []
    for threshold in status.thresholds_crossed:
        try:
            with transaction.atomic():
                alert, _ = BudgetAlert.objects.get_or_create(
                    budget=budget,
                    period_start=status.period_start,
                    threshold=threshold,
                    defaults={"spent": status.spent},
                )
        except IntegrityError:  # a concurrent evaluation recorded it first; it delivers
            continue
        pending = (budget.alert_emails and alert.email_sent_at is None) or (
            budget.webhook_url and alert.webhook_sent_at is None
        )
        if pending:
            _deliver(alert, status)
            delivered.append(alert)
    return delivered


def budgets_evaluate() -> int:
    """Evaluate every budget with thresholds (the beat task, every minute). Returns the alerts delivered."""
    now = timezone.now()
    count = 0
    for budget in Budget.objects.exclude(thresholds=[]).select_related("project", "team", "user"):
        count += len(budget_evaluate(budget, now=now))
    return count


# Writes ----------------------------------------------------------------------------------------------------------


def _validate(budget: Budget) -> None:
    errors = {}
    target = {
        BudgetScope.TEAM: budget.team_id,
        BudgetScope.USER: budget.user_id,
        BudgetScope.TOKEN: budget.token_id,
        BudgetScope.DEPLOYMENT: budget.deployment,
    }
    for scope, value in target.items():
        field = "deployment" if scope == BudgetScope.DEPLOYMENT else scope.value
        if budget.scope == scope and not value:
            errors[field] = [f"A {scope.label.lower()} budget names its {scope.label.lower()}."]
        elif budget.scope != scope and value:
            errors[field] = [f"Only a {scope.label.lower()} budget names a {scope.label.lower()}."]
    if budget.team_id and budget.team.organization_id != budget.project.organization_id:
        errors["team"] = ["The team belongs to another organization."]
    if budget.user_id and role_on_project(budget.user, budget.project) is None:
        errors["user"] = ["The user is not a member of the project."]
    if budget.token_id and budget.token.project_id not in (None, budget.project_id):
        errors["token"] = ["The token is limited to another project."]
    thresholds = budget.thresholds
    if not isinstance(thresholds, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds
    ):
        errors["thresholds"] = ["Give a list of whole percentages from 1 to 1000, e.g. [50, 80]."]
    else:
        budget.thresholds = sorted(set(thresholds))
    if errors:
        raise ValidationError(errors)
    if budget.scope == BudgetScope.ORGANIZATION:
        budget.organization_id = budget.project.organization_id
    budget.full_clean()


@transaction.atomic
def budget_create(*, user, project: Project, fields: dict) -> Budget:
    """`fields` are the budget's own (its `user` is the budget's target, not the acting user)."""
    check(user, Action.MANAGE, project)
    budget = Budget(project=project, created_by=user if user.is_authenticated else None, **fields)
    _validate(budget)
    budget.save()
    audit_record(actor=user, action="accounting.budget.create", obj=budget, after=snapshot(budget, BUDGET_FIELDS))
    return budget


@transaction.atomic
def budget_update(*, user, budget: Budget, fields: dict) -> Budget:
    check(user, Action.MANAGE, budget)
    before = snapshot(budget, BUDGET_FIELDS)
    for name, value in fields.items():
        setattr(budget, name, value)
    _validate(budget)
    budget.save()
    audit_record(
        actor=user, action="accounting.budget.update", obj=budget, before=before, after=snapshot(budget, BUDGET_FIELDS)
    )
    return budget


@transaction.atomic
def budget_delete(*, user, budget: Budget) -> None:
    check(user, Action.MANAGE, budget)
    audit_record(actor=user, action="accounting.budget.delete", obj=budget, before=snapshot(budget, BUDGET_FIELDS))
    budget.delete()
