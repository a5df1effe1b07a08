import datetime
from decimal import Decimal

import pytest

from apps.accounting.models import PriceCatalog, PriceEntry
from apps.core.models import Role

T0 = datetime.datetime(2025, 3, 1, tzinfo=datetime.UTC)


@pytest.fixture
def catalog(db):
    """A catalog newer than the shipped one, with round prices that make costs easy to check."""
    catalog = PriceCatalog.objects.create(version=100, description="test")
    PriceEntry.objects.create(
        catalog=catalog,
        model_pattern="gpt-4o*",
        provider="openai",
        input_per_million=Decimal("2"),
        output_per_million=Decimal("10"),
        cached_input_per_million=Decimal("1"),
        effective_from=T0 - datetime.timedelta(days=365),
    )
    PriceEntry.objects.create(
        catalog=catalog,
        model_pattern="gpt-4o-mini*",
        provider="openai",
        input_per_million=Decimal("0.2"),
        output_per_million=Decimal("0.8"),
        effective_from=T0 - datetime.timedelta(days=365),
    )
    return catalog


@pytest.fixture
def writer(member_factory, client_for):
    return client_for(member_factory(Role.DEVELOPER))


def event(i, **fields):
    return {
        "id": f"ev-{i}",
        "time": (T0 + datetime.timedelta(minutes=i)).isoformat(),
        "model": "gpt-4o",
        "provider": "openai",
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "user": "alice",
        **fields,
    }
