"""Every write leaves exactly one audit event (who, what, which object, which project, before/after); the audit log
cannot be changed by any path; per-object grants open one object and nothing else."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.db import DatabaseError, connection, transaction
from django.test import RequestFactory

from apps.core import jobs, services
from apps.core.models import AuditEvent, Job, JobStatus, Membership, ObjectGrant, Organization, Project, Role, Team
from tests.factories import TeamFactory, UserFactory

User = get_user_model()

# Services that write but are deliberately not audited, with the reason.
NOT_AUDITED = {
    "api_token_authenticate": "stamps last_used_at at most once a minute; an event per request would drown the log",
    "project_secret_value": "reads (decrypts) a secret for server-side use; writes nothing",
}


@dataclass
class Ctx:
    root: Any
    owner: Any
    admin: Any
    developer: Any
    bob: Any
    org: Organization
    project: Project
    job: Job


@pytest.fixture
def ctx(project, member_factory) -> Ctx:
    owner = UserFactory(username="owner")
    project.organization.owners.add(owner)
    return Ctx(
        root=UserFactory(username="root", is_superuser=True),
        owner=owner,
        admin=member_factory(Role.ADMIN, username="admin"),
        developer=member_factory(Role.DEVELOPER, username="dev"),
        bob=UserFactory(username="bob"),
        org=project.organization,
        project=project,
        job=Job.objects.create(project=project, job_type="core.device_check"),
    )


@dataclass
class Expect:
    actor: Any
    action: str
    obj: Any  # the object the event names (its type and id are checked)
    project: Project | None
    changes: dict[str, list]  # a subset of the event's changes, {field: [before, after]}
    organization: Organization | None = None  # default: the project's


def _grant(c: Ctx) -> ObjectGrant:
    return services.object_grant_create(user=c.admin, obj=c.job, role=Role.VIEWER, grantee=c.bob)


def _team(c: Ctx) -> Team:
    team = TeamFactory(organization=c.org, name="Ops", slug="ops")
    team.members.add(c.bob)
    return team


def _gamma(c: Ctx) -> Project:
    return Project.objects.create(organization=c.org, name="Gamma", slug="gamma")


def _membership(c: Ctx) -> Membership:
    return Membership.objects.create(project=c.project, user=c.bob, role=Role.VIEWER)


def _failed_job(c: Ctx) -> Job:
    return Job.objects.create(project=c.project, job_type="core.device_check", status=JobStatus.FAILED, error="boom")


def _org_create(c):
    org = services.organization_create(user=c.root, name="Acme", slug="acme")
    return Expect(c.root, "organization.create", org, None, {"name": [None, "Acme"], "slug": [None, "acme"]}, org)


def _org_update(c):
    old = c.org.name
    org = services.organization_update(user=c.owner, organization=c.org, name="Renamed")
    return Expect(c.owner, "organization.update", org, None, {"name": [old, "Renamed"]}, c.org)


def _owner_add(c):
    services.organization_owner_set(user=c.owner, organization=c.org, owner=c.bob, is_owner=True)
    return Expect(c.owner, "organization.owner_add", c.org, None, {"owner": [None, "bob"]}, c.org)


def _owner_remove(c):
    c.org.owners.add(c.bob)
    services.organization_owner_set(user=c.owner, organization=c.org, owner=c.bob, is_owner=False)
    return Expect(c.owner, "organization.owner_remove", c.org, None, {"owner": ["bob", None]}, c.org)


def _project_create(c):
    project = services.project_create(user=c.owner, organization=c.org, name="Gamma", slug="gamma")
    return Expect(c.owner, "project.create", project, project, {"slug": [None, "gamma"], "name": [None, "Gamma"]})


def _project_update(c):
    project = services.project_update(user=c.admin, project=c.project, description="New words")
    return Expect(c.admin, "project.update", project, c.project, {"description": ["", "New words"]})


def _project_delete(c):
    gamma = _gamma(c)
    services.project_delete(user=c.owner, project=copy.copy(gamma))
    assert not Project.objects.filter(slug="gamma").exists()
    return Expect(c.owner, "project.delete", gamma, gamma, {"slug": ["gamma", None]})


def _team_create(c):
    team = services.team_create(user=c.owner, organization=c.org, name="Ops", slug="ops", members=[c.bob])
    return Expect(c.owner, "team.create", team, None, {"slug": [None, "ops"], "members": [None, ["bob"]]}, c.org)


def _team_update(c):
    team = services.team_update(user=c.owner, team=_team(c), name="Operations", members=[])
    changes = {"name": ["Ops", "Operations"], "members": [["bob"], []]}
    return Expect(c.owner, "team.update", team, None, changes, c.org)


def _team_delete(c):
    team = _team(c)
    services.team_delete(user=c.owner, team=copy.copy(team))
    return Expect(c.owner, "team.delete", team, None, {"slug": ["ops", None]}, c.org)


def _membership_create(c):
    m = services.membership_create(user=c.admin, project=c.project, role=Role.DEVELOPER, member=c.bob)
    return Expect(
        c.admin, "membership.create", m, c.project, {"role": [None, "developer"], "user_id": [None, c.bob.pk]}
    )


def _membership_update(c):
    m = services.membership_update(user=c.admin, membership=_membership(c), role=Role.MAINTAINER)
    return Expect(c.admin, "membership.update", m, c.project, {"role": ["viewer", "maintainer"]})


def _membership_delete(c):
    m = _membership(c)
    services.membership_delete(user=c.admin, membership=copy.copy(m))
    return Expect(c.admin, "membership.delete", m, c.project, {"role": ["viewer", None]})


def _grant_create(c):
    grant = _grant(c)
    return Expect(
        c.admin, "grant.create", grant, c.project, {"object_id": [None, str(c.job.pk)], "role": [None, "viewer"]}
    )


def _grant_delete(c):
    grant = _grant(c)
    services.object_grant_delete(user=c.admin, grant=copy.copy(grant))
    return Expect(c.admin, "grant.delete", grant, c.project, {"object_id": [str(c.job.pk), None]})


def _service_account_create(c):
    account = services.service_account_create(user=c.admin, project=c.project, name="ci", role=Role.MAINTAINER)
    return Expect(
        c.admin, "service_account.create", account, c.project, {"name": [None, "ci"], "role": [None, "maintainer"]}
    )


def _token_create(c):
    token, _ = services.api_token_create(user=c.admin, name="ci", scopes=["write", "read"], project=c.project)
    return Expect(c.admin, "api_token.create", token, c.project, {"scopes": [None, ["read", "write"]]})


def _token_revoke(c):
    token, _ = services.api_token_create(user=c.admin, name="ci", scopes=["read"])
    token = services.api_token_revoke(user=c.admin, token=token)
    return Expect(c.admin, "api_token.revoke", token, None, {"revoked_at": [None, str(token.revoked_at)]})


def _secret_create(c):
    secret = services.project_secret_set(user=c.admin, project=c.project, name="HF_TOKEN", value="hf_s3cret")
    return Expect(c.admin, "project_secret.create", secret, c.project, {"name": [None, "HF_TOKEN"]})


def _secret_update(c):
    services.project_secret_set(user=c.admin, project=c.project, name="HF_TOKEN", value="hf_old")
    secret = services.project_secret_set(user=c.admin, project=c.project, name="HF_TOKEN", value="hf_s3cret")
    return Expect(c.admin, "project_secret.update", secret, c.project, {"value": [None, "(encrypted)"]})


def _secret_delete(c):
    secret = services.project_secret_set(user=c.admin, project=c.project, name="HF_TOKEN", value="hf_s3cret")
    services.project_secret_delete(user=c.admin, secret=copy.copy(secret))
    return Expect(c.admin, "project_secret.delete", secret, c.project, {"name": ["HF_TOKEN", None]})


def _job_create(c):
    job = jobs.job_create(user=c.developer, project=c.project, job_type="core.device_check", params={"size": 64})
    return Expect(c.developer, "job.create", job, c.project, {"params": [None, {"size": 64}]})


def _job_cancel(c):
    job = jobs.job_cancel(user=c.developer, job=c.job)
    return Expect(c.developer, "job.cancel", job, c.project, {"status": ["queued", "cancelled"]})


def _job_retry(c):
    job = jobs.job_retry(user=c.developer, job=_failed_job(c))
    return Expect(c.developer, "job.retry", job, c.project, {"status": ["failed", "queued"]})


# service (":variant") -> the call under test, returning what its event must say
CASES: dict[str, Callable[[Ctx], Expect]] = {
    "organization_create": _org_create,
    "organization_update": _org_update,
    "organization_owner_set:add": _owner_add,
    "organization_owner_set:remove": _owner_remove,
    "project_create": _project_create,
    "project_update": _project_update,
    "project_delete": _project_delete,
    "team_create": _team_create,
    "team_update": _team_update,
    "team_delete": _team_delete,
    "membership_create": _membership_create,
    "membership_update": _membership_update,
    "membership_delete": _membership_delete,
    "object_grant_create": _grant_create,
    "object_grant_delete": _grant_delete,
    "service_account_create": _service_account_create,
    "api_token_create": _token_create,
    "api_token_revoke": _token_revoke,
    "project_secret_set:create": _secret_create,
    "project_secret_set:update": _secret_update,
    "project_secret_delete": _secret_delete,
    "jobs.job_create": _job_create,
    "jobs.job_cancel": _job_cancel,
    "jobs.job_retry": _job_retry,
}
# Calls whose set-up goes through another audited service first: that event comes before the one under test.
EVENTS_BEFORE = {
    "object_grant_delete": 1,
    "api_token_revoke": 1,
    "project_secret_set:update": 1,
    "project_secret_delete": 1,
}


def test_every_public_service_is_covered():
    public = {
        name
        for name, func in inspect.getmembers(services, inspect.isfunction)
        if func.__module__ == services.__name__ and not name.startswith("_")
    }
    covered = {name.split(":")[0] for name in CASES if not name.startswith("jobs.")}
    assert public - set(NOT_AUDITED) == covered


@pytest.mark.parametrize("name", list(CASES))
def test_service_writes_exactly_one_audit_event(ctx, name):
    call = CASES[name]
    before = AuditEvent.objects.count()
    expect = call(ctx)
    events = list(AuditEvent.objects.order_by("id")[before:])
    assert len(events) == 1 + EVENTS_BEFORE.get(name, 0), [e.action for e in events]
    event = events[-1]
    assert event.action == expect.action
    assert event.actor_id == expect.actor.pk
    assert event.actor_label == expect.actor.username
    assert event.object_type == expect.obj._meta.label_lower
    assert event.object_id == str(expect.obj.pk)
    assert event.project_id == (expect.project.pk if expect.project else None)
    organization = expect.organization or (expect.project.organization if expect.project else None)
    assert event.organization_id == (organization.pk if organization else None)
    for field, pair in expect.changes.items():
        assert event.changes.get(field) == pair, (field, event.changes)
    assert all(isinstance(v, list) and len(v) == 2 and v[0] != v[1] for v in event.changes.values())
    assert "key_hash" not in event.changes
    assert "s3cret" not in str(event.changes) and "encrypted_value" not in event.changes
    assert event.request_id == "" and event.ip_address is None  # no request: called directly


def test_api_call_records_request_id_and_ip(project, member_factory, client_for):
    client = client_for(member_factory(Role.DEVELOPER))
    body = {"project": "alpha", "job_type": "core.device_check"}
    response = client.post(
        "/api/v1/jobs/", body, format="json", HTTP_X_REQUEST_ID="req-42.abc", REMOTE_ADDR="203.0.113.7"
    )
    assert response.status_code == 201
    assert response["X-Request-ID"] == "req-42.abc"
    event = AuditEvent.objects.get(action="job.create")
    assert (event.request_id, event.ip_address) == ("req-42.abc", "203.0.113.7")
    assert event.object_id == response.json()["id"]
    assert event.token_id is not None and "(token cpt_" in event.actor_label


def test_generated_request_id_is_returned_and_recorded(project, member_factory, client_for):
    client = client_for(member_factory(Role.DEVELOPER))
    job = Job.objects.create(project=project, job_type="core.device_check")
    # an ill-formed incoming id is replaced, not trusted
    response = client.post(f"/api/v1/jobs/{job.pk}/cancel/", HTTP_X_REQUEST_ID="bad id; drop table")
    assert response.status_code == 200
    request_id = response["X-Request-ID"]
    assert len(request_id) == 32 and request_id != "bad id; drop table"
    assert AuditEvent.objects.get(action="job.cancel").request_id == request_id


# The audit log is append-only -----------------------------------------------------------------------------------


@pytest.fixture
def event(project, member_factory):
    services.project_update(user=member_factory(Role.ADMIN), project=project, description="x")
    return AuditEvent.objects.get(action="project.update")


def test_event_cannot_be_saved_again_or_deleted_through_the_model(event):
    event.action = "forged"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "project.update"


@pytest.mark.parametrize("operation", ["queryset_update", "queryset_delete", "raw_update", "raw_delete"])
def test_database_refuses_update_and_delete(event, operation):
    run = {
        "queryset_update": lambda: AuditEvent.objects.filter(pk=event.pk).update(action="forged"),
        "queryset_delete": lambda: AuditEvent.objects.filter(pk=event.pk).delete(),
        "raw_update": lambda: connection.cursor().execute("UPDATE core_auditevent SET action = 'forged'"),
        "raw_delete": lambda: connection.cursor().execute("DELETE FROM core_auditevent"),
    }[operation]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        run()
    assert AuditEvent.objects.get(pk=event.pk).action == "project.update"


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_api_cannot_change_events(event, project, client_for, method):
    owner = UserFactory(username="owner")
    project.organization.owners.add(owner)
    client = client_for(owner)
    assert client.get(f"/api/v1/audit-events/{event.pk}/").status_code == 200
    response = getattr(client, method)(f"/api/v1/audit-events/{event.pk}/", {"action": "forged"}, format="json")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert client.post("/api/v1/audit-events/", {"action": "forged"}, format="json").status_code == 405
    assert AuditEvent.objects.get(pk=event.pk).action == "project.update"


def test_admin_cannot_add_change_or_delete_events(event, client):
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    model_admin = admin.site._registry[AuditEvent]
    request = RequestFactory().get("/admin/")
    request.user = root
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, event)
    assert not model_admin.has_delete_permission(request, event)
    client.force_login(root)
    base = f"/admin/core/auditevent/{event.pk}"
    assert client.get(f"{base}/change/").status_code == 200  # viewing is allowed, read-only
    assert client.post(f"{base}/change/", {"action": "forged"}).status_code == 403
    assert client.post(f"{base}/delete/", {"post": "yes"}).status_code == 403
    # the bulk "delete selected" action is not offered: posting it deletes nothing
    response = client.post("/admin/core/auditevent/", {"action": "delete_selected", "_selected_action": [event.pk]})
    assert response.status_code < 500
    assert "delete_selected" not in model_admin.get_actions(request)
    assert AuditEvent.objects.filter(pk=event.pk, action="project.update").exists()


# Per-object grants ----------------------------------------------------------------------------------------------


def test_object_grant_opens_one_job_and_nothing_else(project, member_factory, client_for):
    admin_user = member_factory(Role.ADMIN)
    granted, other = (Job.objects.create(project=project, job_type="core.device_check") for _ in range(2))
    guest = UserFactory(username="guest")  # no membership anywhere
    services.object_grant_create(user=admin_user, obj=granted, role=Role.VIEWER, grantee=guest)
    client = client_for(guest)

    assert client.get(f"/api/v1/jobs/{granted.pk}/").status_code == 200
    assert client.get(f"/api/v1/jobs/{other.pk}/").status_code == 404
    listed = client.get("/api/v1/jobs/").json()
    assert [job["id"] for job in listed["results"]] == [str(granted.pk)]
    # a viewer grant lets the guest see the job, not act on it; the project itself stays invisible
    assert client.post(f"/api/v1/jobs/{granted.pk}/cancel/").status_code == 403
    assert client.get(f"/api/v1/projects/{project.slug}/").status_code == 404
    assert client.get("/api/v1/projects/").json()["count"] == 0


def test_team_grant_reaches_team_members(project, member_factory, client_for):
    admin_user = member_factory(Role.ADMIN)
    job = Job.objects.create(project=project, job_type="core.device_check")
    guest = UserFactory(username="guest")
    team = TeamFactory(organization=project.organization)
    team.members.add(guest)
    services.object_grant_create(user=admin_user, obj=job, role=Role.DEVELOPER, team=team)
    client = client_for(guest)
    assert client.get(f"/api/v1/jobs/{job.pk}/").status_code == 200
    assert client.post(f"/api/v1/jobs/{job.pk}/cancel/").status_code == 200  # developer on this job only
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED


def test_object_grant_needs_project_admin(project, member_factory):
    job = Job.objects.create(project=project, job_type="core.device_check")
    maintainer = member_factory(Role.MAINTAINER)
    with pytest.raises(services.PermissionDenied):
        services.object_grant_create(user=maintainer, obj=job, role=Role.VIEWER, grantee=UserFactory())
    assert not ObjectGrant.objects.exists()
    assert not AuditEvent.objects.filter(action="grant.create").exists()
