"""Registry list API at 10,000 versions (200 models): p50/p95 latency and SQL queries per request.

Requests go through the full stack (bearer token → `restrict()` → filters → pagination → JSON) with Django's test
client. The query counts of page 1 and page 100 show that a list costs the same number of queries however deep
the page and however many rows: related rows come from select_related/prefetch_related, counts from subqueries.
Rows are bulk-inserted (versions without files: the lists never read files) and rolled back at the end.
"""

import statistics
import time

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.core.models import Membership, Organization, Project, Role
from apps.core.services import api_token_create
from apps.registry.models import Alias, Lineage, ModelVersion, Promotion, RegisteredModel, VersionStatus

MODELS = 200
VERSIONS_PER_MODEL = 50
PAGE_SIZE = 50
REQUESTS = 100


class _Rollback(Exception):
    """Raised to undo the seeded rows once the figures are taken."""


def _seed() -> str:
    User = get_user_model()
    org = Organization.objects.create(name="Bench registry", slug="bench-registry-org")
    project = Project.objects.create(organization=org, name="Registry bench", slug="bench-registry")
    user = User.objects.create(username="bench-registry-user")
    Membership.objects.create(project=project, user=user, role=Role.DEVELOPER)
    models = RegisteredModel.objects.bulk_create(
        RegisteredModel(project=project, name=f"model-{i:03d}", tags=["bench", f"family-{i % 10}"])
        for i in range(MODELS)
    )
    versions = ModelVersion.objects.bulk_create(
        (
            ModelVersion(
                model=model,
                number=number,
                status=VersionStatus.READY,
                format="safetensors",
                parameter_count=1_000_000 * number,
                total_size=4_000_000 * number,
                file_count=3,
                metadata={"layers": 2 + number % 30, "hidden_size": 1024, "parameters": 1_000_000 * number},
                scan_report={"safe": True, "summary": "no pickle files", "files": []},
            )
            for model in models
            for number in range(1, VERSIONS_PER_MODEL + 1)
        ),
        batch_size=2000,
    )
    by_model = [versions[i : i + VERSIONS_PER_MODEL] for i in range(0, len(versions), VERSIONS_PER_MODEL)]
    # Each version is a fine-tune of the one before; the newest takes `production`, with its promotion.
    Lineage.objects.bulk_create(
        (
            Lineage(child=chain[n], parent=chain[n - 1], relation="fine-tune")
            for chain in by_model
            for n in range(1, len(chain))
        ),
        batch_size=2000,
    )
    Alias.objects.bulk_create(
        Alias(model=m, name="production", version=chain[-1]) for m, chain in zip(models, by_model, strict=True)
    )
    Promotion.objects.bulk_create(
        Promotion(model=m, alias="production", to_version=chain[-1], requested_by=user)
        for m, chain in zip(models, by_model, strict=True)
    )
    with connection.cursor() as cursor:
        # Planner statistics, as autovacuum keeps them on a live database; without them the freshly inserted rows
        # are estimated at a few dozen and the plans measured would be ones production never runs.
        for model in (RegisteredModel, ModelVersion, Lineage, Alias, Promotion):
            cursor.execute(f"ANALYZE {model._meta.db_table}")
    _, raw = api_token_create(user=user, name="bench", scopes=["read"])
    return raw


def _time(client: Client, url: str) -> dict:
    client.get(url)  # warm up
    samples = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.content[:300]
    samples.sort()
    return {"p50_ms": round(statistics.median(samples), 2), "p95_ms": round(samples[int(0.95 * len(samples)) - 1], 2)}


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    return len(captured)


def run() -> dict:
    figures: dict = {}
    try:
        with transaction.atomic():
            raw = _seed()
            client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
            versions = f"/api/v1/registry/versions/?page_size={PAGE_SIZE}"
            models = f"/api/v1/registry/models/?page_size={PAGE_SIZE}"
            total = client.get(versions).json()["count"]
            assert total == MODELS * VERSIONS_PER_MODEL, total
            deep = f"{versions}&page=100"
            filtered = f"{versions}&min_parameters=10000000&relation=fine-tune&model_name=model-042"
            timings = {
                "versions page 1": _time(client, versions),
                "versions page 100": _time(client, deep),
                "versions filtered": _time(client, filtered),
                "models page 1": _time(client, models),
            }
            figures["versions"] = total
            figures["models"] = MODELS
            for name, timing in timings.items():
                figures[f"{name} p50_ms"] = timing["p50_ms"]
                figures[f"{name} p95_ms"] = timing["p95_ms"]
            figures["versions page 1 sql_queries"] = _queries(client, versions)
            figures["versions page 100 sql_queries"] = _queries(client, deep)
            figures["models page 1 sql_queries"] = _queries(client, models)
            figures["models page 4 sql_queries"] = _queries(client, f"{models}&page=4")
            assert figures["versions page 1 sql_queries"] == figures["versions page 100 sql_queries"]
            assert figures["models page 1 sql_queries"] == figures["models page 4 sql_queries"]
            raise _Rollback
    except _Rollback:
        pass
    return figures
