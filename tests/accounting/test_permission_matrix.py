"""The accounting routes in the permission matrix (format and cases: tests/core/test_permission_matrix.py)."""

from __future__ import annotations

import datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest

from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import Budget, DeploymentCostHourly, PriceEntry, UsageEvent
from apps.core.models import Role
from tests.core.test_permission_matrix import (  # noqa: F401  (world is a fixture used here)
    Rule,
    World,
    _list,
    check_matrix_case,
    matrix_cases,
    world,
)

EFFECTIVE = "2025-01-01T00:00:00Z"


def _accounting(w: World) -> SimpleNamespace:
    """One usage event, price override, budget and GPU cost row in the world's project, made on first use."""
    if "accounting" not in w.__dict__:
        robot = w.service_account.user
        usage_ingest(user=robot, events=[{"id": "m-0", "model": "gpt-4o", "prompt_tokens": 5}], project=w.project.slug)
        w.accounting = SimpleNamespace(
            event=UsageEvent.objects.get(event_id="m-0"),
            override=PriceEntry.objects.create(
                project=w.project,
                model_pattern="matrix-model",
                effective_from=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
            ),
            budget=Budget.objects.create(project=w.project, name="matrix", amount=10),
            gpu_cost=DeploymentCostHourly.objects.create(
                bucket=datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC),
                project=w.project,
                deployment_id=1,
                deployment="matrix",
                revision_id=1,
                revision=1,
                accelerator="A100-80GB",
                accelerator_count=1,
                hourly_price=Decimal(1),
                replica_seconds=Decimal(3600),
                accelerator_hours=Decimal(1),
                gpu_cost=Decimal(1),
                computed_at=datetime.datetime(2025, 1, 1, 1, tzinfo=datetime.UTC),
            ),
        )
    return w.accounting


SPEC: dict[tuple[str, str], Rule] = {
    ("accounting-api:usage-event-list", "GET"): _list(Role.VIEWER, lambda w: _accounting(w).event.pk),
    # Every event naming an invisible project is rejected, so the whole batch is a 400 that reads like a missing one.
    ("accounting-api:usage-event-list", "POST"): Rule(
        Role.DEVELOPER,
        200,
        lower=403,
        other=400,
        limited=400,
        scope="write",
        body=lambda w: {"project": w.project.slug, "events": [{"id": "m-1", "model": "gpt-4o", "prompt_tokens": 1}]},
    ),
    # Summaries are over what the caller can see: an outsider gets an empty 200 (tests/accounting/test_api.py).
    ("accounting-api:usage-summary", "GET"): Rule(Role.VIEWER, 200, other=200, limited=200),
    ("accounting-api:usage-summary-csv", "GET"): Rule(Role.VIEWER, 200, other=200, limited=200),
    # Rows of the visible projects; ?project= naming an invisible one is a 404 (tests/accounting/test_gpu_cost.py).
    ("accounting-api:usage-gpu-cost-list", "GET"): _list(Role.VIEWER, lambda w: _accounting(w).gpu_cost.pk),
    # Counting touches no project's data: any signed-in caller; compare without ?text= is the same 400 for all.
    ("accounting-api:token-count", "POST"): Rule(
        "anyone", 200, other=200, limited=200, body=lambda w: {"text": "hello world", "tokenizer": "cl100k_base"}
    ),
    ("accounting-api:token-compare", "GET"): Rule("anyone", 400, other=400, limited=400),
    ("accounting-api:price-list", "GET"): _list(Role.VIEWER, lambda w: _accounting(w).override.pk),
    ("accounting-api:price-list", "POST"): Rule(
        Role.ADMIN,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {
            "project": w.project.slug,
            "model_pattern": "gpt-4o",
            "input_per_million": "1",
            "effective_from": EFFECTIVE,
        },
    ),
    ("accounting-api:price-detail", "GET"): Rule(Role.VIEWER, 200),
    ("accounting-api:price-detail", "PATCH"): Rule(
        Role.ADMIN, 200, lower=403, scope="admin", body=lambda w: {"input_per_million": "3"}
    ),
    ("accounting-api:price-detail", "DELETE"): Rule(Role.ADMIN, 204, lower=403, scope="admin"),
    ("accounting-api:budget-list", "GET"): _list(Role.VIEWER, lambda w: _accounting(w).budget.pk),
    ("accounting-api:budget-list", "POST"): Rule(
        Role.ADMIN,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {"project": w.project.slug, "name": "monthly", "amount": "100", "thresholds": [50, 80]},
    ),
    ("accounting-api:budget-detail", "GET"): Rule(Role.VIEWER, 200),
    ("accounting-api:budget-detail", "PATCH"): Rule(
        Role.ADMIN, 200, lower=403, scope="admin", body=lambda w: {"amount": "20"}
    ),
    ("accounting-api:budget-detail", "DELETE"): Rule(Role.ADMIN, 204, lower=403, scope="admin"),
    ("accounting-api:budget-status", "GET"): Rule(Role.VIEWER, 200),
    ("accounting-api:accounting-settings", "GET"): Rule(Role.VIEWER, 200),
    ("accounting-api:accounting-settings", "PATCH"): Rule(
        Role.ADMIN, 200, lower=403, scope="admin", body=lambda w: {"store_text": True}
    ),
}

URL_KWARGS = {
    "accounting-api:accounting-settings": lambda w: {"slug": w.project.slug},
    "accounting-api:price-detail": lambda w: {"pk": _accounting(w).override.pk},
    "accounting-api:budget-detail": lambda w: {"pk": _accounting(w).budget.pk},
    "accounting-api:budget-status": lambda w: {"pk": _accounting(w).budget.pk},
}


@pytest.mark.parametrize(("name", "method", "case"), matrix_cases(SPEC))
def test_accounting_permission_matrix(world, name, method, case):  # noqa: F811
    _accounting(world)  # lists must find their rows before the request
    check_matrix_case(world, SPEC, URL_KWARGS, name, method, case)
