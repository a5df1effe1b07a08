"""Price resolution and cost arithmetic.

A price for (project, model, provider, time) is chosen in this order: a project override before the shared
catalog; an exact model name before a pattern, a longer pattern before a shorter one; the event's own provider
before "any provider" (an event that names no provider matches entries of any provider); among those, the entry
that took effect most recently (and is still effective at that time).
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from django.db import transaction

from .models import PriceCatalog, PriceEntry

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("1e-10")
DEFAULT_PRICES = Path(__file__).parent / "data" / "default_prices.json"


@dataclass(frozen=True)
class Tokens:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    cache_write: int = 0
    reasoning: int = 0


def pattern_matches(pattern: str, model: str) -> bool:
    if pattern.endswith("*"):
        return model.startswith(pattern[:-1])
    return pattern == model


def _rank(entry: PriceEntry, model: str, provider: str) -> tuple:
    exact = not entry.model_pattern.endswith("*")
    return (
        entry.project_id is not None,
        exact,
        len(entry.model_pattern),
        bool(provider) and entry.provider == provider,
        entry.effective_from,
    )


def _effective(entry: PriceEntry, at: datetime.datetime) -> bool:
    return entry.effective_from <= at and (entry.effective_to is None or at < entry.effective_to)


class PriceBook:
    """The entries of one catalog version plus a project's overrides, loaded once and resolved in memory.

    Ingestion resolves thousands of events per request; a book answers each from a memo of candidates per
    (model, provider), so a batch costs one query whatever its size.
    """

    def __init__(self, *, project_id: int | None, catalog: PriceCatalog | None):
        self.catalog = catalog
        entries = list(PriceEntry.objects.filter(catalog=catalog)) if catalog is not None else []
        if project_id is not None:
            entries += list(PriceEntry.objects.filter(project_id=project_id))
        self._entries = entries
        self._candidates: dict[tuple[str, str], list[PriceEntry]] = {}

    def resolve(self, model: str, provider: str, at: datetime.datetime) -> PriceEntry | None:
        key = (model, provider)
        candidates = self._candidates.get(key)
        if candidates is None:
            candidates = sorted(
                (
                    e
                    for e in self._entries
                    if pattern_matches(e.model_pattern, model)
                    and (not e.provider or not provider or e.provider == provider)
                ),
                key=lambda e: _rank(e, model, provider),
                reverse=True,
            )
            self._candidates[key] = candidates
        return next((e for e in candidates if _effective(e, at)), None)


def catalog_current() -> PriceCatalog | None:
    return PriceCatalog.objects.order_by("-version").first()


def price_resolve(
    *, project_id: int | None, model: str, provider: str = "", at: datetime.datetime, catalog_version: int | None = None
) -> PriceEntry | None:
    catalog = (
        PriceCatalog.objects.filter(version=catalog_version).first()
        if catalog_version is not None
        else catalog_current()
    )
    return PriceBook(project_id=project_id, catalog=catalog).resolve(model, provider, at)


def cost_compute(entry: PriceEntry, tokens: Tokens, latency_ms: int | None = None) -> Decimal:
    """Cost of one request. Cached input and reasoning tokens are parts of prompt and completion tokens (as
    providers report them) and are charged at their own rate where the entry has one."""
    cached = min(tokens.cached, tokens.prompt)
    cached_rate = entry.cached_input_per_million if entry.cached_input_per_million is not None else None
    uncached_prompt = tokens.prompt - cached if cached_rate is not None else tokens.prompt
    reasoning = min(tokens.reasoning, tokens.completion) if entry.reasoning_per_million is not None else 0
    total = (
        uncached_prompt * entry.input_per_million
        + (cached * cached_rate if cached_rate is not None else 0)
        + tokens.cache_write * (entry.cache_write_per_million or 0)
        + (tokens.completion - reasoning) * entry.output_per_million
        + reasoning * (entry.reasoning_per_million or 0)
    ) / MILLION
    total += entry.per_request
    if latency_ms and entry.per_second:
        total += entry.per_second * Decimal(latency_ms) / 1000
    return Decimal(total).quantize(COST_QUANTUM)


PRICE_FIELDS = (
    "input_per_million",
    "output_per_million",
    "cached_input_per_million",
    "cache_write_per_million",
    "reasoning_per_million",
    "per_request",
    "per_second",
)


def _entry_from_data(entry_model: type[PriceEntry], catalog: PriceCatalog, item: dict) -> PriceEntry:
    return entry_model(
        catalog=catalog,
        model_pattern=item["model"],
        provider=item.get("provider", ""),
        currency=item.get("currency", "USD"),
        effective_from=datetime.datetime.fromisoformat(item["effective_from"]).replace(tzinfo=datetime.UTC),
        effective_to=(
            datetime.datetime.fromisoformat(item["effective_to"]).replace(tzinfo=datetime.UTC)
            if item.get("effective_to")
            else None
        ),
        **{f: Decimal(str(item[f])) for f in PRICE_FIELDS if item.get(f) is not None},
    )


@transaction.atomic
def catalog_load(data: dict, *, catalog_model=PriceCatalog, entry_model=PriceEntry) -> tuple[PriceCatalog, bool]:
    """Create the catalog version described by `data` unless it exists. Returns (catalog, created).

    Idempotent: loading the same version again changes nothing, so published prices (and the costs computed
    from them) never change under anyone's feet; new prices come as a new version. The data migration passes
    its historical models.
    """
    catalog, created = catalog_model.objects.get_or_create(
        version=int(data["version"]), defaults={"description": data.get("description", "")[:200]}
    )
    if created:
        entry_model.objects.bulk_create(_entry_from_data(entry_model, catalog, item) for item in data["prices"])
    return catalog, created


def catalog_load_default(**models) -> tuple[PriceCatalog, bool]:
    return catalog_load(json.loads(DEFAULT_PRICES.read_text()), **models)
