"""Writes for accounting: price overrides, project settings, repricing. Budgets live in budgets.py."""

from __future__ import annotations

import datetime
from collections import defaultdict
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import connection, transaction

from apps.core.audit import audit_record, snapshot
from apps.core.models import Project
from apps.core.permissions import Action, check

from .ingestion import ROLLUP_TABLES
from .models import AccountingSettings, PriceCatalog, PriceEntry, UsageEvent
from .pricing import PRICE_FIELDS, PriceBook, Tokens, cost_compute

OVERRIDE_FIELDS = ["model_pattern", "provider", "currency", *PRICE_FIELDS, "effective_from", "effective_to"]


def _validate_pattern(pattern: str) -> None:
    if "*" in pattern[:-1]:
        raise ValidationError({"model_pattern": ["Use an exact name or a prefix ending in a single *."]})


@transaction.atomic
def price_override_create(*, user, project: Project, **fields) -> PriceEntry:
    check(user, Action.MANAGE, project)
    _validate_pattern(fields["model_pattern"])
    entry = PriceEntry(project=project, created_by=user if user.is_authenticated else None, **fields)
    entry.full_clean()
    entry.save()
    audit_record(
        actor=user, action="accounting.price_override.create", obj=entry, after=snapshot(entry, OVERRIDE_FIELDS)
    )
    return entry


@transaction.atomic
def price_override_update(*, user, entry: PriceEntry, **fields) -> PriceEntry:
    """Change an override. Costs already stored keep the price they were computed with; `reprice` recomputes."""
    check(user, Action.MANAGE, entry)
    if "model_pattern" in fields:
        _validate_pattern(fields["model_pattern"])
    before = snapshot(entry, OVERRIDE_FIELDS)
    for name, value in fields.items():
        setattr(entry, name, value)
    entry.full_clean()
    entry.save()
    audit_record(
        actor=user,
        action="accounting.price_override.update",
        obj=entry,
        before=before,
        after=snapshot(entry, OVERRIDE_FIELDS),
    )
    return entry


@transaction.atomic
def price_override_delete(*, user, entry: PriceEntry) -> None:
    check(user, Action.MANAGE, entry)
    if UsageEvent.objects.filter(price_entry=entry).exists():
        raise ValidationError("Stored costs were computed with this price; end it with effective_to instead.")
    audit_record(
        actor=user, action="accounting.price_override.delete", obj=entry, before=snapshot(entry, OVERRIDE_FIELDS)
    )
    entry.delete()


@transaction.atomic
def accounting_settings_update(*, user, project: Project, store_text: bool) -> AccountingSettings:
    check(user, Action.MANAGE, project)
    current, _ = AccountingSettings.objects.get_or_create(project=project)
    before = snapshot(current, ["store_text"])
    current.store_text = store_text
    current.save()
    audit_record(
        actor=user, action="accounting.settings.update", obj=current, before=before, after={"store_text": store_text}
    )
    return current


def reprice(
    *,
    project: Project,
    start: datetime.datetime,
    end: datetime.datetime,
    catalog_version: int,
    apply: bool = False,
) -> dict:
    """Recompute the computed cost of a project's events in [start, end) under a catalog version (with the
    project's overrides), and report the difference. History changes only with apply=True: then events get the new
    computed cost and price, and the rollups take the difference of each event's effective cost."""
    if end <= start:
        raise ValidationError("The period must end after it starts.")
    catalog = PriceCatalog.objects.filter(version=catalog_version).first()
    if catalog is None:
        raise ValidationError(f"No price catalog version {catalog_version}.")
    book = PriceBook(project_id=project.pk, catalog=catalog)
    events = UsageEvent.objects.filter(project=project, time__gte=start, time__lt=end).only(
        "id",
        "time",
        "model",
        "deployment",
        "provider",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "latency_ms",
        "computed_cost",
        "provided_cost",
        "cost",
        "price_entry_id",
        "user",
        "team",
        "token_id",
    )
    old_total = new_total = Decimal(0)
    count = changed = unpriced = 0
    by_model: dict[str, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    updates = []
    for event in events.iterator(chunk_size=5000):
        count += 1
        entry = book.resolve(event.model or event.deployment, event.provider, event.time)
        tokens = Tokens(
            event.prompt_tokens,
            event.completion_tokens,
            event.cached_tokens,
            event.cache_write_tokens,
            event.reasoning_tokens,
        )
        new = cost_compute(entry, tokens, event.latency_ms) if entry is not None else None
        unpriced += entry is None
        old = event.computed_cost or Decimal(0)
        old_total += old
        new_total += new or 0
        by_model[event.model or event.deployment][0] += old
        by_model[event.model or event.deployment][1] += new or 0
        if new != event.computed_cost or (entry.pk if entry else None) != event.price_entry_id:
            changed += 1
            if apply:
                updates.append((event, new, entry))
    if apply and updates:
        _apply_reprice(updates, catalog.version)
    return {
        "project": project.slug,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "catalog_version": catalog.version,
        "events": count,
        "changed": changed,
        "unpriced": unpriced,
        "computed_cost_before": str(old_total),
        "computed_cost_after": str(new_total),
        "difference": str(new_total - old_total),
        "by_model": {
            m: {"before": str(b), "after": str(a), "difference": str(a - b)} for m, (b, a) in by_model.items()
        },
        "applied": apply,
    }


@transaction.atomic
def _apply_reprice(updates: list, catalog_version: int) -> None:
    deltas = []
    for event, new, entry in updates:
        effective = event.provided_cost if event.provided_cost is not None else (new or Decimal(0))
        deltas.append((event, effective - event.cost))
        event.computed_cost, event.cost = new, effective
        event.price_entry_id = entry.pk if entry else None
        event.catalog_version = catalog_version if entry and entry.catalog_id else None
    UsageEvent.objects.bulk_update(
        [e for e, _, _ in updates], ["computed_cost", "cost", "price_entry_id", "catalog_version"], batch_size=2000
    )
    with connection.cursor() as cursor:
        for unit, (table, _) in ROLLUP_TABLES.items():
            cursor.executemany(
                f"UPDATE {table} SET cost = cost + %s WHERE bucket = date_trunc('{unit}', %s::timestamptz, 'UTC') "
                'AND project_id = %s AND model = %s AND deployment = %s AND "user" = %s AND team = %s '
                "AND token_id IS NOT DISTINCT FROM %s",
                [
                    (delta, e.time, e.project_id, e.model, e.deployment, e.user, e.team, e.token_id)
                    for e, delta in deltas
                    if delta
                ],
            )
