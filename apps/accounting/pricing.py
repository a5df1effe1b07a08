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

from django.db import connection, transaction
from django.db.models import Q

from .models import PriceCatalog, PriceEntry

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("1e-10")
# Below this many picodollars every intermediate of cost_compute has at most 27 digits, so Decimal (28 significant
# digits) computes it exactly and the integer arithmetic of PriceBook.cost gives the same result.
EXACT_PICODOLLARS = 10**27
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

    def __init__(
        self, *, project_id: int | None, catalog: PriceCatalog | None, entries: list[PriceEntry] | None = None
    ):
        self.catalog = catalog
        self._entries = (
            _entries_load(catalog, [project_id] if project_id is not None else []) if entries is None else entries
        )
        self._candidates: dict[tuple[str, str], list[PriceEntry]] = {}
        self._millionths: dict[int, tuple[int | None, ...] | None] = {}

    @classmethod
    def for_projects(
        cls, project_ids: set[int], catalog: PriceCatalog | None, entries: list[PriceEntry] | None = None
    ) -> dict[int, PriceBook]:
        """One book per project from a single query (none when the entries are given)."""
        if entries is None:
            entries = _entries_load(catalog, project_ids)
        shared = [e for e in entries if e.project_id is None]
        return {
            project_id: cls(
                project_id=project_id,
                catalog=catalog,
                entries=shared + [e for e in entries if e.project_id == project_id],
            )
            for project_id in project_ids
        }

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
        for entry in candidates:
            if _effective(entry, at):
                return entry
        return None

    def cost(
        self,
        entry: PriceEntry,
        prompt: int,
        completion: int,
        cached: int,
        cache_write: int,
        reasoning: int,
        latency_ms: int | None,
    ) -> Decimal:
        """cost_compute(entry, Tokens(...), latency_ms) in integer arithmetic: the same Decimal, several times faster
        (ingestion prices every event of a batch).

        Prices have 6 decimals, so in millionths they are whole numbers and so is the cost in picodollars (1e-12);
        the one rounding is cost_compute's, half to even at 1e-10. Prices with more decimals, and sums too large for
        the exactness argument, go through cost_compute itself."""
        if entry.id is None:  # (id, not pk: pk is a property, and this runs for every event of a batch)
            prices = _millionths(entry)
        elif (prices := self._millionths.get(entry.id, _UNSEEN)) is _UNSEEN:
            prices = self._millionths[entry.id] = _millionths(entry)
        if prices is None:
            return cost_compute(entry, Tokens(prompt, completion, cached, cache_write, reasoning), latency_ms)
        input_, output, cached_input, cache_write_rate, reasoning_rate, per_request, per_second = prices
        if cached_input is None:
            total = prompt * input_
        else:
            cached_part = min(cached, prompt)
            total = (prompt - cached_part) * input_ + cached_part * cached_input
        if reasoning_rate is None:
            total += completion * output
        else:
            reasoning_part = min(reasoning, completion)
            total += (completion - reasoning_part) * output + reasoning_part * reasoning_rate
        total += cache_write * (cache_write_rate or 0) + per_request * 1_000_000
        if latency_ms and per_second:
            total += per_second * latency_ms * 1000
        if not -EXACT_PICODOLLARS < total < EXACT_PICODOLLARS:
            return cost_compute(entry, Tokens(prompt, completion, cached, cache_write, reasoning), latency_ms)
        quanta, rest = divmod(total, 100)  # picodollars to 1e-10, half to even like Decimal.quantize
        if rest > 50 or (rest == 50 and quanta & 1):
            quanta += 1
        return Decimal(quanta).scaleb(-10)


# The entries of the current catalog plus some projects' overrides, as last loaded by this process, under a digest of
# the rows: id, xmin (the transaction that wrote the row version) and ctid (where that version lies, new with every
# update, also within one transaction), so any edit, from the admin console, the API or SQL, changes the digest.
_CACHED_ENTRIES: dict[tuple, list[PriceEntry]] = {}
_CACHE_LIMIT = 256
_CURRENT_SQL = """
    SELECT c.id, c.version, e.digest FROM accounting_pricecatalog c CROSS JOIN LATERAL (
        SELECT md5(string_agg(id::text || '.' || xmin::text || '.' || ctid::text, ',' ORDER BY id)) AS digest
        FROM accounting_priceentry WHERE catalog_id = c.id OR project_id = ANY(%s)
    ) e ORDER BY c.version DESC LIMIT 1
"""


def books_current(project_ids: set[int]) -> tuple[int | None, dict[int, PriceBook]]:
    """The current catalog's version and a book per project. One small query when nothing changed since this process
    last loaded the same entries (ingestion prices every batch; reading and building the entries cost more)."""
    ids = sorted(project_ids)
    with connection.cursor() as cursor:
        cursor.execute(_CURRENT_SQL, [ids])
        found = cursor.fetchone()
    if found is None:  # no catalog at all: overrides only
        return None, PriceBook.for_projects(project_ids, None)
    catalog_id, version, digest = found
    key = (catalog_id, tuple(ids), digest)
    entries = _CACHED_ENTRIES.get(key)
    catalog = PriceCatalog(pk=catalog_id, version=version)
    if entries is None:
        if len(_CACHED_ENTRIES) >= _CACHE_LIMIT:
            _CACHED_ENTRIES.clear()
        entries = _CACHED_ENTRIES[key] = _entries_load(catalog, ids)
    return version, PriceBook.for_projects(project_ids, catalog, entries)


def _entries_load(catalog: PriceCatalog | None, project_ids) -> list[PriceEntry]:
    condition = Q(project_id__in=project_ids)
    if catalog is not None:
        condition |= Q(catalog=catalog)
    # Catalog entries first, then overrides, each in the model's order (pk breaks ties, so choices are stable).
    return sorted(
        PriceEntry.objects.filter(condition).order_by("model_pattern", "-effective_from", "pk"),
        key=lambda e: e.project_id is not None,
    )


_UNSEEN = object()


def _millionths(entry: PriceEntry) -> tuple[int | None, ...] | None:
    """The entry's prices (PRICE_FIELDS order) in millionths, or None if one has finer digits than that."""
    prices = []
    for name in PRICE_FIELDS:
        price = getattr(entry, name)
        if price is None:
            prices.append(None)
            continue
        if not isinstance(price, Decimal) or price < 0:  # negative: partial sums could outgrow the total
            return None
        millionths = price.scaleb(6)
        if millionths != millionths.to_integral_value():
            return None
        prices.append(int(millionths))
    return tuple(prices)


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
