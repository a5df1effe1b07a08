"""Token-authenticated, permission-filtered API reads: the path every API call takes.

Compares, in the same run, a list of jobs through the full stack (bearer token → hash lookup →
`restrict()` → paginated JSON) against the baseline of the same ORM query with no access control,
so the figure shows what authentication and tenancy cost per request.
"""

import statistics
import time

from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

from apps.core.models import Job, Membership, Organization, Project, Role
from apps.core.permissions import Action, restrict
from apps.core.services import api_token_create

PROJECTS = 50
JOBS_PER_PROJECT = 200
MEMBER_OF = 5
REQUESTS = 300


def _seed():
    User = get_user_model()
    with transaction.atomic():
        org = Organization.objects.create(name="Bench", slug="bench-org")
        projects = Project.objects.bulk_create(
            Project(organization=org, name=f"P{i}", slug=f"bench-{i}") for i in range(PROJECTS)
        )
        user = User.objects.create(username="bench-user")
        Membership.objects.bulk_create(
            Membership(project=p, user=user, role=Role.DEVELOPER) for p in projects[:MEMBER_OF]
        )
        Job.objects.bulk_create(
            Job(project=p, job_type="core.device_check", message="queued")
            for p in projects
            for _ in range(JOBS_PER_PROJECT)
        )
    _, raw = api_token_create(user=user, name="bench", scopes=["read"])
    return user, raw


def _time(fn, n):
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p95_ms": round(samples[int(0.95 * len(samples)) - 1], 3),
        "per_s": round(1000 / statistics.mean(samples), 1),
    }


def run() -> dict:
    user, raw = _seed()
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.get("/api/v1/jobs/?page_size=50")
    assert response.status_code == 200 and response.json()["count"] == MEMBER_OF * JOBS_PER_PROJECT

    def api_list():
        client.get("/api/v1/jobs/?page_size=50")

    def baseline_query():
        list(Job.objects.select_related("project", "created_by").order_by("-created_at")[:50])

    def restricted_query():
        list(
            restrict(Job.objects.select_related("project", "created_by"), user, Action.VIEW).order_by("-created_at")[
                :50
            ]
        )

    for fn in (api_list, baseline_query, restricted_query):  # warm up
        fn()
    api = _time(api_list, REQUESTS)
    baseline = _time(baseline_query, REQUESTS)
    restricted = _time(restricted_query, REQUESTS)
    return {
        "rows": PROJECTS * JOBS_PER_PROJECT,
        "api_list_jobs_p50_ms": api["p50_ms"],
        "api_list_jobs_p95_ms": api["p95_ms"],
        "api_list_jobs_requests_per_s (1 client)": api["per_s"],
        "orm_restricted_query_p50_ms": restricted["p50_ms"],
        "baseline_unrestricted_query_p50_ms": baseline["p50_ms"],
        "access_control_overhead_p50_ms": round(restricted["p50_ms"] - baseline["p50_ms"], 3),
    }
