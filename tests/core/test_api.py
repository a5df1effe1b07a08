"""API list behaviour: pagination, filters and ordering on each list, and pinned query counts that do not grow
with the number of rows."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.audit import audit_record
from apps.core.models import (
    ApiToken,
    Job,
    JobStatus,
    Membership,
    Project,
    Role,
    ServiceAccount,
    Worker,
)
from apps.core.tokens import token_display_prefix, token_generate, token_hash
from tests.factories import OrganizationFactory, ProjectFactory, TeamFactory, UserFactory


@pytest.fixture
def owner(project):
    """Owner of alpha's organization: admin on every project in it, no superuser shortcuts."""
    user = UserFactory(username="owner")
    project.organization.owners.add(user)
    return user


@pytest.fixture
def api(owner, client_for):
    return client_for(owner)


def results(response) -> list[dict]:
    assert response.status_code == 200, response.content
    return response.json()["results"]


def _jobs(project, n: int, **fields) -> list[Job]:
    return Job.objects.bulk_create(Job(project=project, job_type="core.device_check", **fields) for _ in range(n))


# Pagination -----------------------------------------------------------------------------------------------------


def test_pages_have_count_next_previous_results(project, api):
    _jobs(project, 5)
    first = api.get("/api/v1/jobs/", {"page_size": 2}).json()
    assert set(first) == {"count", "next", "previous", "results"}
    assert (first["count"], len(first["results"]), first["previous"]) == (5, 2, None)
    assert "page=2" in first["next"] and "page_size=2" in first["next"]
    last = api.get("/api/v1/jobs/", {"page_size": 2, "page": 3}).json()
    assert (len(last["results"]), last["next"]) == (1, None)
    assert "page=2" in last["previous"]


def test_default_page_size_is_50_and_page_size_is_capped_at_500(db, api):
    now = timezone.now()
    Worker.objects.bulk_create(Worker(hostname=f"w{i:04}", started_at=now, last_seen_at=now) for i in range(501))
    assert len(results(api.get("/api/v1/workers/"))) == 50
    page = api.get("/api/v1/workers/", {"page_size": 100_000}).json()
    assert (page["count"], len(page["results"])) == (501, 500)
    assert page["next"] is not None
    assert len(results(api.get("/api/v1/workers/", {"page_size": 500, "page": 2}))) == 1


def test_pages_ordered_by_a_shared_value_neither_repeat_nor_skip_rows(project, api):
    jobs = _jobs(project, 11, status=JobStatus.QUEUED)
    seen = []
    for page in (1, 2, 3, 4):
        seen += [
            j["id"] for j in results(api.get("/api/v1/jobs/", {"ordering": "status", "page_size": 3, "page": page}))
        ]
    assert sorted(seen) == sorted(str(j.pk) for j in jobs)


# Filters and ordering, per list ---------------------------------------------------------------------------------


def test_organization_ordering(owner, api, project):
    for name in ("Zeta", "Beta"):
        OrganizationFactory(name=name).owners.add(owner)
    names = [o["name"] for o in results(api.get("/api/v1/organizations/", {"ordering": "-name"}))]
    assert names == sorted(names, reverse=True) and "Zeta" in names and len(names) == 3


def test_project_filters_and_ordering(project, api):
    ProjectFactory(organization=project.organization, name="Gamma", slug="gamma")
    ProjectFactory(name="Elsewhere", slug="elsewhere")  # another organization: not visible
    assert [p["slug"] for p in results(api.get("/api/v1/projects/", {"ordering": "-slug"}))] == ["gamma", "alpha"]
    assert [p["slug"] for p in results(api.get("/api/v1/projects/", {"q": "GAM"}))] == ["gamma"]
    org = project.organization.slug
    assert len(results(api.get("/api/v1/projects/", {"organization": org}))) == 2
    assert results(api.get("/api/v1/projects/", {"organization": "nope"})) == []


def test_membership_filters_and_ordering(project, member_factory, api):
    member_factory(Role.VIEWER, username="vic")
    member_factory(Role.MAINTAINER, username="meg")
    team = TeamFactory(organization=project.organization, slug="ops")
    Membership.objects.create(project=project, team=team, role=Role.DEVELOPER)
    assert [m["user"] for m in results(api.get("/api/v1/memberships/", {"role": "maintainer"}))] == ["meg"]
    assert [m["team"] for m in results(api.get("/api/v1/memberships/", {"team": "ops"}))] == [team.pk]
    assert [m["role"] for m in results(api.get("/api/v1/memberships/", {"user": "vic", "project": "alpha"}))] == [
        "viewer"
    ]
    roles = [m["role"] for m in results(api.get("/api/v1/memberships/", {"ordering": "role"}))]
    assert roles == sorted(roles)


def test_team_filters_and_ordering(project, api):
    TeamFactory(organization=project.organization, name="B-team")
    TeamFactory(organization=project.organization, name="A-team")
    TeamFactory(name="Hidden")  # another organization
    assert [t["name"] for t in results(api.get("/api/v1/teams/", {"ordering": "name"}))] == ["A-team", "B-team"]
    assert len(results(api.get("/api/v1/teams/", {"organization": project.organization.slug}))) == 2
    assert results(api.get("/api/v1/teams/", {"organization": "other"})) == []


def test_service_account_ordering(project, api):
    for name in ("zed", "amy"):
        api.post("/api/v1/service-accounts/", {"project": "alpha", "name": name}, format="json")
    assert [a["name"] for a in results(api.get("/api/v1/service-accounts/", {"ordering": "-name"}))] == ["zed", "amy"]


def test_token_filters_and_ordering(owner, project, other_project, api, client_for):
    Membership.objects.create(project=other_project, user=owner, role=Role.VIEWER)
    api.post("/api/v1/tokens/", {"name": "b-alpha", "scopes": ["read"], "project": "alpha"}, format="json")
    api.post("/api/v1/tokens/", {"name": "a-beta", "scopes": ["read"], "project": "beta"}, format="json")
    revoked = api.post("/api/v1/tokens/", {"name": "c-old", "scopes": ["read"]}, format="json").json()
    api.post(f"/api/v1/tokens/{revoked['id']}/revoke/")
    assert [t["name"] for t in results(api.get("/api/v1/tokens/", {"project": "beta"}))] == ["a-beta"]
    assert [t["name"] for t in results(api.get("/api/v1/tokens/", {"active": "false"}))] == ["c-old"]
    active = [t["name"] for t in results(api.get("/api/v1/tokens/", {"active": "true", "ordering": "name"}))]
    assert active == ["a-beta", "b-alpha", "test"]


def test_audit_event_filters_and_ordering(owner, project, api):
    t0 = timezone.now()
    api.patch("/api/v1/projects/alpha/", {"description": "one"}, format="json", HTTP_X_REQUEST_ID="req-1")
    api.post("/api/v1/jobs/", {"project": "alpha", "job_type": "core.device_check"}, format="json")
    assert {e["action"] for e in results(api.get("/api/v1/audit-events/", {"action": "project."}))} == {
        "project.update"
    }
    assert [e["action"] for e in results(api.get("/api/v1/audit-events/", {"request_id": "req-1"}))] == [
        "project.update"
    ]
    assert [e["action"] for e in results(api.get("/api/v1/audit-events/", {"object_type": "core.job"}))] == [
        "job.create"
    ]
    assert len(results(api.get("/api/v1/audit-events/", {"project": "alpha", "actor": "owner"}))) == 2
    assert len(results(api.get("/api/v1/audit-events/", {"object_id": str(project.pk)}))) == 1
    assert len(results(api.get("/api/v1/audit-events/", {"since": t0.isoformat()}))) == 2
    assert results(api.get("/api/v1/audit-events/", {"until": t0.isoformat()})) == []
    ordered = [
        e["action"] for e in results(api.get("/api/v1/audit-events/", {"ordering": "action", "project": "alpha"}))
    ]
    assert ordered == ["job.create", "project.update"]


def test_job_filters_and_ordering(project, other_project, api):
    done = _jobs(project, 1, status=JobStatus.SUCCEEDED, progress=100)[0]
    _jobs(project, 2, progress=10)
    _jobs(other_project, 1)  # not visible
    assert [j["id"] for j in results(api.get("/api/v1/jobs/", {"status": "succeeded"}))] == [str(done.pk)]
    assert len(results(api.get("/api/v1/jobs/", {"project": "alpha", "job_type": "core.device_check"}))) == 3
    assert results(api.get("/api/v1/jobs/", {"project": "beta"})) == []
    assert results(api.get("/api/v1/jobs/", {"ordering": "-progress"}))[0]["id"] == str(done.pk)


def test_worker_filters_and_ordering(db, api):
    now = timezone.now()
    Worker.objects.create(hostname="b-live", queues=["default", "gpu.b"], started_at=now, last_seen_at=now)
    Worker.objects.create(
        hostname="a-stale", queues=["default"], started_at=now, last_seen_at=now - datetime.timedelta(hours=1)
    )
    assert [w["hostname"] for w in results(api.get("/api/v1/workers/", {"alive": "true"}))] == ["b-live"]
    assert [w["hostname"] for w in results(api.get("/api/v1/workers/", {"alive": "false"}))] == ["a-stale"]
    assert [w["hostname"] for w in results(api.get("/api/v1/workers/", {"queue": "gpu.b"}))] == ["b-live"]
    assert [w["hostname"] for w in results(api.get("/api/v1/workers/", {"ordering": "-last_seen_at"}))] == [
        "b-live",
        "a-stale",
    ]


# Query counts ---------------------------------------------------------------------------------------------------


def _orgs(ctx, n):
    for _ in range(n):
        org = OrganizationFactory()
        org.owners.add(ctx["owner"], UserFactory())


def _projects(ctx, n):
    Project.objects.bulk_create(
        Project(organization=ctx["org"], name=f"P{i}-{ctx['seq']}", slug=f"p{i}-{ctx['seq']}") for i in range(n)
    )


def _memberships(ctx, n):
    for _ in range(n):
        Membership.objects.create(project=ctx["project"], user=UserFactory(), role=Role.DEVELOPER)
        Membership.objects.create(project=ctx["project"], team=TeamFactory(organization=ctx["org"]))


def _teams(ctx, n):
    for _ in range(n):
        TeamFactory(organization=ctx["org"]).members.add(UserFactory(), UserFactory())


def _service_accounts(ctx, n):
    for _ in range(n):
        user = UserFactory()
        ServiceAccount.objects.create(project=ctx["project"], user=user, name=user.username)


def _tokens(ctx, n):
    for _ in range(n):
        user = UserFactory()
        ServiceAccount.objects.create(project=ctx["project"], user=user, name=user.username)
        raw = token_generate()
        ApiToken.objects.create(
            user=user,
            project=ctx["project"],
            name="t",
            key_prefix=token_display_prefix(raw),
            key_hash=token_hash(raw),
            scopes=["read"],
        )


def _events(ctx, n):
    for _ in range(n):
        audit_record(actor=ctx["owner"], action="test.event", obj=ctx["project"])
        audit_record(actor=ctx["owner"], action="test.org_event", obj=ctx["org"])


def _job_rows(ctx, n):
    Job.objects.bulk_create(
        Job(project=ctx["project"], job_type="core.device_check", created_by=UserFactory()) for _ in range(n)
    )


def _workers(ctx, n):
    now = timezone.now()
    Worker.objects.bulk_create(
        Worker(hostname=f"w-{ctx['seq']}-{i}", started_at=now, last_seen_at=now) for i in range(n)
    )


# list -> (rows to add, the queries one page costs whatever the number of rows). Pinned: a change here is a
# deliberate decision, not an accident; a count that grows with the rows is an N+1.
LISTS: dict[str, tuple[Callable, int]] = {
    # token lookup, COUNT, the page (with its joins) [, one prefetch]
    "organizations": (_orgs, 4),  # + owners
    "projects": (_projects, 3),
    "memberships": (_memberships, 3),
    "teams": (_teams, 4),  # + members
    "service-accounts": (_service_accounts, 3),
    "tokens": (_tokens, 3),
    "audit-events": (_events, 3),
    "jobs": (_job_rows, 3),
    "workers": (_workers, 3),
}


def _queries(client, url: str) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(captured), response.json()["count"]


@pytest.mark.parametrize("name", list(LISTS))
def test_list_query_count_is_pinned_and_flat(owner, project, api, name):
    make, pinned = LISTS[name]
    ctx = {"owner": owner, "org": project.organization, "project": project, "seq": 0}
    url = f"/api/v1/{name}/"
    api.get(url)  # the token's first use stamps last_used_at; measure the steady state
    make(ctx, 1)
    few, count_few = _queries(api, url)
    ctx["seq"] = 1
    make(ctx, 19)
    many, count_many = _queries(api, url)
    assert count_many >= count_few + 19
    assert (few, many) == (pinned, pinned)


def test_api_root_links_to_the_api_not_to_same_named_pages(api):
    """The pages use the plain names (token-list, job-detail, ...); the API's are namespaced, so links stay in it."""
    links = api.get("/api/v1/").json()
    assert links["tokens"].endswith("/api/v1/tokens/") and links["workers"].endswith("/api/v1/workers/")
    assert all("/api/v1/" in url for url in links.values())
