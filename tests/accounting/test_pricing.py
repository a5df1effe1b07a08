import datetime
import random
from decimal import Decimal, InvalidOperation

import pytest
from django.core.exceptions import ValidationError
from django.db.models import ProtectedError

from apps.accounting import services
from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import PriceCatalog, PriceEntry, UsageDaily, UsageEvent
from apps.accounting.pricing import PriceBook, Tokens, catalog_load_default, cost_compute, price_resolve
from apps.core.models import AuditEvent

from .conftest import T0, event

pytestmark = pytest.mark.django_db


def test_the_most_specific_pattern_wins(catalog, project):
    mini = price_resolve(project_id=project.pk, model="gpt-4o-mini-2024-07-18", provider="openai", at=T0)
    full = price_resolve(project_id=project.pk, model="gpt-4o-2024-08-06", provider="openai", at=T0)
    assert mini.model_pattern == "gpt-4o-mini*" and full.model_pattern == "gpt-4o*"
    exact = PriceEntry.objects.create(
        catalog=catalog, model_pattern="gpt-4o-mini-2024-07-18", effective_from=T0 - datetime.timedelta(days=1)
    )
    assert price_resolve(project_id=project.pk, model="gpt-4o-mini-2024-07-18", provider="openai", at=T0) == exact
    assert price_resolve(project_id=project.pk, model="llama-3", provider="openai", at=T0) is None


def test_a_project_override_beats_the_catalog_and_stays_in_its_project(catalog, project, other_project):
    override = PriceEntry.objects.create(
        project=project, model_pattern="gpt-*", input_per_million=5, effective_from=T0 - datetime.timedelta(days=1)
    )
    assert price_resolve(project_id=project.pk, model="gpt-4o", provider="openai", at=T0) == override
    assert price_resolve(project_id=other_project.pk, model="gpt-4o", provider="openai", at=T0).catalog == catalog


def test_effective_dates_pick_the_price_of_the_time(catalog, project):
    PriceEntry.objects.filter(catalog=catalog, model_pattern="gpt-4o*").update(effective_to=T0)
    newer = PriceEntry.objects.create(
        catalog=catalog, model_pattern="gpt-4o*", provider="openai", input_per_million=1, effective_from=T0
    )
    before = price_resolve(project_id=project.pk, model="gpt-4o", provider="openai", at=T0 - datetime.timedelta(1))
    assert before.input_per_million == Decimal(2)
    assert price_resolve(project_id=project.pk, model="gpt-4o", provider="openai", at=T0) == newer


def test_cost_charges_cached_and_output_tokens_at_their_rates(catalog, project):
    entry = price_resolve(project_id=project.pk, model="gpt-4o", provider="openai", at=T0)
    # 800 uncached × 2 + 200 cached × 1 + 100 output × 10, per million
    assert cost_compute(entry, Tokens(prompt=1000, completion=100, cached=200)) == Decimal("0.0028")


def test_ingestions_integer_cost_is_cost_compute_to_the_digit():
    """Ingestion prices each event with PriceBook.cost (integers); it must equal cost_compute's Decimal, ties at the
    eleventh decimal rounded half to even, prices finer than millionths and huge sums handed to cost_compute."""
    book = PriceBook(project_id=None, catalog=None, entries=[])
    tie = PriceEntry(pk=1, input_per_million=Decimal("0.00005"), output_per_million=Decimal(0))
    assert [book.cost(tie, n, 0, 0, 0, 0, None) for n in (1, 3)] == [Decimal(0), Decimal("2e-10")]
    rng = random.Random(1)

    def price(optional: bool = False) -> Decimal | None:
        if optional and rng.random() < 0.3:
            return None
        return Decimal(rng.randrange(10 ** rng.choice([1, 3, 6, 10, 16]))).scaleb(-rng.choice([0, 6, 6, 6, 7]))

    for pk in range(2, 20_000):
        entry = PriceEntry(
            pk=pk,
            input_per_million=price(),
            output_per_million=price(),
            cached_input_per_million=price(optional=True),
            cache_write_per_million=price(optional=True),
            reasoning_per_million=price(optional=True),
            per_request=price(),
            per_second=price(),
        )
        tokens = [rng.randrange(rng.choice([10, 10_000, 2**53])) for _ in range(5)]
        latency = rng.choice([None, 0, rng.randrange(2**31)])
        try:
            expected = cost_compute(entry, Tokens(*tokens), latency)
        except InvalidOperation:  # beyond 28 digits: cost_compute cannot round it either
            with pytest.raises(InvalidOperation):
                book.cost(entry, *tokens, latency)
            continue
        assert book.cost(entry, *tokens, latency) == expected, (entry.__dict__, tokens, latency)


def test_the_shipped_catalog_is_loaded_once_with_dated_prices(db):
    catalog, created = catalog_load_default()
    assert not created and PriceCatalog.objects.filter(version=catalog.version).count() == 1
    old = price_resolve(
        project_id=None, model="gpt-4o", provider="openai", at=datetime.datetime(2024, 6, 1, tzinfo=datetime.UTC)
    )
    new = price_resolve(
        project_id=None, model="gpt-4o", provider="openai", at=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    )
    assert (old.input_per_million, new.input_per_million) == (Decimal(5), Decimal("2.5"))


def test_changing_a_price_keeps_stored_costs_and_reprice_reports_then_applies(catalog, project, admin_user):
    usage_ingest(user=admin_user, events=[event(i) for i in range(3)], project=project.slug)
    stored = list(UsageEvent.objects.values_list("computed_cost", flat=True))
    assert stored == [Decimal("0.003")] * 3  # 1000 × 2 + 100 × 10 per million

    newer = PriceCatalog.objects.create(version=101)
    PriceEntry.objects.create(
        catalog=newer,
        model_pattern="gpt-4o*",
        input_per_million=4,
        output_per_million=20,
        effective_from=T0 - datetime.timedelta(1),
    )
    override = services.price_override_create(
        user=admin_user,
        project=project,
        model_pattern="gpt-4o-mini",
        input_per_million=Decimal(1),
        effective_from=T0,
    )
    assert AuditEvent.objects.filter(action="accounting.price_override.create", object_id=str(override.pk)).exists()
    assert list(UsageEvent.objects.values_list("computed_cost", flat=True)) == stored

    period = {"project": project, "start": T0, "end": T0 + datetime.timedelta(days=1), "catalog_version": 101}
    report = services.reprice(**period)
    assert (report["events"], report["changed"], Decimal(report["difference"])) == (3, 3, Decimal("0.009"))
    assert list(UsageEvent.objects.values_list("computed_cost", flat=True)) == stored  # a report mutates nothing

    services.reprice(**period, apply=True)
    assert set(UsageEvent.objects.values_list("computed_cost", "catalog_version")) == {(Decimal("0.006"), 101)}
    assert UsageDaily.objects.get().cost == Decimal("0.018")


def test_ingestion_prices_with_the_entries_as_they_are_now(catalog, project, admin_user):
    """Ingestion keeps the price entries between batches: every kind of edit must still reach the next batch,
    also one made in the same transaction (a row's xmin stays the same there)."""

    def cost_of_next(i: int) -> Decimal:
        usage_ingest(user=admin_user, events=[event(i)], project=project.slug)
        return UsageEvent.objects.get(event_id=f"ev-{i}").computed_cost

    assert cost_of_next(0) == Decimal("0.003")
    entry = PriceEntry.objects.get(catalog=catalog, model_pattern="gpt-4o*")
    entry.input_per_million = Decimal("4")
    entry.save()  # as the admin console does
    assert cost_of_next(1) == Decimal("0.005")
    PriceEntry.objects.filter(pk=entry.pk).update(output_per_million=Decimal("20"))  # no updated_at bump
    assert cost_of_next(2) == Decimal("0.006")
    services.price_override_create(
        user=admin_user, project=project, model_pattern="gpt-4o", input_per_million=Decimal(1),
        effective_from=T0 - datetime.timedelta(days=1),
    )  # fmt: skip
    assert cost_of_next(3) == Decimal("0.001")
    PriceCatalog.objects.create(version=101)  # a newer, empty catalog: only the override prices now
    assert cost_of_next(4) == Decimal("0.001")
    PriceEntry.objects.filter(project=project).update(effective_to=T0 - datetime.timedelta(hours=1))
    assert cost_of_next(5) is None


def test_raw_events_past_retention_are_pruned_and_rollups_stay(settings, catalog, project, admin_user):
    from django.utils import timezone

    from apps.accounting.rollups import usage_events_prune

    settings.ACCOUNTING_RAW_RETENTION_DAYS = 30
    now = timezone.now()
    old, recent = (now - datetime.timedelta(days=40)).isoformat(), now.isoformat()
    usage_ingest(user=admin_user, events=[event(1, time=old), event(2, time=recent)], project=project.slug)
    assert usage_events_prune(now=now) == 1
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["ev-2"]
    assert sum(UsageDaily.objects.values_list("requests", flat=True)) == 2


def test_a_price_that_priced_stored_events_cannot_be_deleted(catalog, project, admin_user):
    """The database does not check events' price references (ingestion speed); Django's PROTECT and the service do."""
    used, unused = (
        services.price_override_create(
            user=admin_user, project=project, model_pattern=name, input_per_million=Decimal(1), effective_from=T0
        )
        for name in ("gpt-4o", "o3")
    )
    usage_ingest(user=admin_user, events=[event(0)], project=project.slug)
    assert UsageEvent.objects.get().price_entry_id == used.pk
    with pytest.raises(ValidationError):
        services.price_override_delete(user=admin_user, entry=used)
    with pytest.raises(ProtectedError):
        used.delete()  # as the admin console would
    services.price_override_delete(user=admin_user, entry=unused)
    assert set(PriceEntry.objects.filter(project=project)) == {used}
