"""API tokens: hashed at rest, shown once, expiring and revocable, scoped, project-limited, and never able to mint a
token that reaches further than the one used to create it."""

from __future__ import annotations

import datetime
import hashlib
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.core.models import ApiToken, AuditEvent, Job, Membership, Project, Role, ServiceAccount
from tests.factories import TeamFactory, UserFactory


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def assert_401(response) -> None:
    assert response.status_code == 401, response.content
    assert response["WWW-Authenticate"] == "Bearer"
    assert set(response.json()["error"]) == {"code", "message", "details"}


@pytest.fixture
def alice(project, member_factory):
    return member_factory(Role.DEVELOPER, username="alice")


# Storage and display --------------------------------------------------------------------------------------------


def test_secret_is_shown_once_and_stored_only_as_a_hash(alice, client_for):
    response = client_for(alice).post("/api/v1/tokens/", {"name": "laptop", "scopes": ["read"]}, format="json")
    assert response.status_code == 201
    created = response.json()
    raw = created["token"]
    assert raw.startswith("cpt_") and len(raw) > 40
    assert created["key_prefix"] == raw[:12]

    token = ApiToken.objects.get(pk=created["id"])
    assert token.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    secret_part = raw.removeprefix("cpt_")
    with connection.cursor() as cursor:  # every column of the row, and the whole audit log, as text
        cursor.execute("SELECT row(t.*)::text FROM core_apitoken t WHERE id = %s", [token.pk])
        row_text = cursor.fetchone()[0]
        cursor.execute("SELECT coalesce(string_agg(row(a.*)::text, ''), '') FROM core_auditevent a")
        audit_text = cursor.fetchone()[0]
    assert secret_part[:20] not in row_text and secret_part[-20:] not in row_text
    assert secret_part[:20] not in audit_text and token.key_hash not in audit_text

    reader = bearer(raw)
    listed = reader.get("/api/v1/tokens/")
    detail = reader.get(f"/api/v1/tokens/{token.pk}/")
    assert listed.status_code == detail.status_code == 200
    for response in (listed, detail):
        assert secret_part not in response.content.decode()
        assert "key_hash" not in response.content.decode()
    assert "token" not in detail.json()
    assert all("token" not in item for item in listed.json()["results"])


def test_display_prefix_is_not_enough_to_authenticate(alice, client_for):
    raw = client_for(alice).post("/api/v1/tokens/", {"name": "x", "scopes": ["read"]}, format="json").json()["token"]
    assert_401(bearer(raw[:12]).get("/api/v1/projects/"))
    assert_401(bearer(raw + "x").get("/api/v1/projects/"))
    assert bearer(raw).get("/api/v1/projects/").status_code == 200


# Life cycle -----------------------------------------------------------------------------------------------------


def test_expired_token_is_401(alice, client_for):
    client = client_for(alice)
    expires = (timezone.now() + datetime.timedelta(hours=1)).isoformat()
    created = client.post(
        "/api/v1/tokens/", {"name": "short", "scopes": ["read"], "expires_at": expires}, format="json"
    ).json()
    assert bearer(created["token"]).get("/api/v1/projects/").status_code == 200
    ApiToken.objects.filter(pk=created["id"]).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert_401(bearer(created["token"]).get("/api/v1/projects/"))


def test_expiry_in_the_past_is_refused(alice, client_for):
    past = (timezone.now() - datetime.timedelta(minutes=1)).isoformat()
    response = client_for(alice).post(
        "/api/v1/tokens/", {"name": "x", "scopes": ["read"], "expires_at": past}, format="json"
    )
    assert response.status_code == 400
    assert "future" in response.json()["error"]["message"]


@pytest.mark.parametrize("how", ["revoke", "delete"])
def test_revoked_token_is_401(alice, client_for, how):
    client = client_for(alice)
    created = client.post("/api/v1/tokens/", {"name": "ci", "scopes": ["read"]}, format="json").json()
    other = bearer(created["token"])
    assert other.get("/api/v1/projects/").status_code == 200
    if how == "revoke":
        response = client.post(f"/api/v1/tokens/{created['id']}/revoke/")
        assert response.status_code == 200 and response.json()["is_active"] is False
    else:
        assert client.delete(f"/api/v1/tokens/{created['id']}/").status_code == 204
    assert ApiToken.objects.get(pk=created["id"]).revoked_at is not None
    assert_401(other.get("/api/v1/projects/"))
    assert AuditEvent.objects.filter(action="api_token.revoke", object_id=str(created["id"])).count() == 1


def test_token_of_a_deactivated_user_is_401(alice, client_for):
    client = client_for(alice)
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert_401(client.get("/api/v1/projects/"))


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer a b", "Bearer cpt_unknown", "Bearer not-a-token", "Bearer cpt_" + "x" * 500]
)
def test_malformed_or_unknown_credentials_are_401(db, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_401(client.get("/api/v1/projects/"))


def test_last_used_at_is_stamped_at_most_once_a_minute(alice, client_for):
    client = client_for(alice)
    token = ApiToken.objects.get(user=alice)
    assert token.last_used_at is None
    assert client.get("/api/v1/projects/").status_code == 200
    token.refresh_from_db()
    first = token.last_used_at
    assert first is not None and (timezone.now() - first).total_seconds() < 5
    client.get("/api/v1/projects/")
    token.refresh_from_db()
    assert token.last_used_at == first  # within the minute: no write per request
    two_minutes_ago = timezone.now() - datetime.timedelta(minutes=2)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=two_minutes_ago)
    client.get("/api/v1/projects/")
    token.refresh_from_db()
    assert token.last_used_at > two_minutes_ago + datetime.timedelta(seconds=100)


# Scopes ---------------------------------------------------------------------------------------------------------


def test_read_scope_cannot_write(alice, client_for):
    response = client_for(alice, scopes=["read"]).post(
        "/api/v1/jobs/", {"project": "alpha", "job_type": "core.device_check"}, format="json"
    )
    assert response.status_code == 403
    assert "'write'" in response.json()["error"]["message"]
    assert not Job.objects.exists()


def test_write_scope_cannot_manage_members_and_admin_scope_can(project, member_factory, client_for):
    admin_user = member_factory(Role.ADMIN)
    newcomer = UserFactory(username="newcomer")
    body = {"project": "alpha", "user": "newcomer", "role": "viewer"}
    response = client_for(admin_user, scopes=["read", "write"]).post("/api/v1/memberships/", body, format="json")
    assert response.status_code == 403
    assert "'admin'" in response.json()["error"]["message"]
    assert not Membership.objects.filter(user=newcomer).exists()
    response = client_for(admin_user, scopes=["admin"]).post("/api/v1/memberships/", body, format="json")
    assert response.status_code == 201
    assert Membership.objects.get(user=newcomer).role == Role.VIEWER


def test_scope_does_not_raise_a_role(alice, client_for):
    """An admin-scoped token of a developer is still a developer."""
    response = client_for(alice, scopes=["admin"]).patch("/api/v1/projects/alpha/", {"name": "Mine"}, format="json")
    assert response.status_code == 403
    assert Project.objects.get(slug="alpha").name == "Alpha"


# A token cannot mint a wider one --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("held", "asked"), [(["read", "write"], ["admin"]), (["write"], ["read", "admin"]), (["read"], ["write"])]
)
def test_token_cannot_create_a_token_with_more_scopes(project, member_factory, client_for, held, asked):
    client = client_for(member_factory(Role.ADMIN), scopes=held)
    before = ApiToken.objects.count()
    response = client.post("/api/v1/tokens/", {"name": "wider", "scopes": asked}, format="json")
    assert response.status_code == 403
    assert ApiToken.objects.count() == before


def test_token_can_create_a_narrower_token(alice, client_for):
    response = client_for(alice, scopes=["write"]).post(
        "/api/v1/tokens/", {"name": "ro", "scopes": ["read"]}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["scopes"] == ["read"]


def test_project_limited_token_cannot_create_an_unlimited_or_foreign_token(
    project, other_project, member_factory, client_for
):
    user = member_factory(Role.DEVELOPER)
    Membership.objects.create(project=other_project, user=user, role=Role.DEVELOPER)
    client = client_for(user, scopes=["read", "write"], project=project)
    before = ApiToken.objects.count()
    assert client.post("/api/v1/tokens/", {"name": "x", "scopes": ["read"]}, format="json").status_code == 403
    assert (
        client.post("/api/v1/tokens/", {"name": "x", "scopes": ["read"], "project": "beta"}, format="json").status_code
        == 400
    )  # beta reads as missing to this token
    assert ApiToken.objects.count() == before
    response = client.post("/api/v1/tokens/", {"name": "x", "scopes": ["read"], "project": "alpha"}, format="json")
    assert response.status_code == 201 and response.json()["project"] == "alpha"


# Project limits -------------------------------------------------------------------------------------------------


def test_project_limited_token_sees_only_its_project(project, other_project, member_factory, client_for):
    user = member_factory(Role.ADMIN)
    Membership.objects.create(project=other_project, user=user, role=Role.ADMIN)
    unlimited = client_for(user)
    assert {p["slug"] for p in unlimited.get("/api/v1/projects/").json()["results"]} == {"alpha", "beta"}
    client_for(user, scopes=["read"], project=other_project)  # a token of the same user for the other project

    limited = client_for(user, project=project)
    assert [p["slug"] for p in limited.get("/api/v1/projects/").json()["results"]] == ["alpha"]
    assert limited.get("/api/v1/projects/beta/").status_code == 404
    assert limited.get(f"/api/v1/organizations/{other_project.organization.slug}/").status_code == 404
    assert [o["slug"] for o in limited.get("/api/v1/organizations/").json()["results"]] == [project.organization.slug]
    # its own user's tokens for other projects are not shown either
    assert {t["project"] for t in limited.get("/api/v1/tokens/").json()["results"]} == {"alpha"}
    assert len(unlimited.get("/api/v1/tokens/").json()["results"]) == 3


def test_project_limited_token_of_an_owner_cannot_manage_the_organization(project, other_project, client_for):
    owner = UserFactory(username="owner")
    project.organization.owners.add(owner)
    Membership.objects.create(project=other_project, user=owner, role=Role.ADMIN)
    org = project.organization.slug
    team_body = {"organization": org, "name": "Ops", "slug": "ops"}

    limited_here = client_for(owner, project=project)
    assert limited_here.get(f"/api/v1/organizations/{org}/").status_code == 200
    response = limited_here.post("/api/v1/teams/", team_body, format="json")
    assert response.status_code == 403
    assert "limited to one project" in response.json()["error"]["message"]
    assert limited_here.delete("/api/v1/projects/alpha/").status_code == 403

    limited_elsewhere = client_for(owner, project=other_project)
    response = limited_elsewhere.post("/api/v1/teams/", team_body, format="json")
    assert response.status_code == 400 and "does not exist" in response.json()["error"]["message"]
    assert limited_elsewhere.patch(f"/api/v1/organizations/{org}/", {"name": "X"}, format="json").status_code == 404

    assert client_for(owner).post("/api/v1/teams/", team_body, format="json").status_code == 201


def test_team_list_follows_the_token_project(project, other_project, client_for):
    owner = UserFactory(username="owner")
    project.organization.owners.add(owner)
    Membership.objects.create(project=other_project, user=owner, role=Role.VIEWER)
    team = TeamFactory(organization=project.organization)
    assert [t["id"] for t in client_for(owner).get("/api/v1/teams/").json()["results"]] == [team.pk]
    assert client_for(owner, scopes=["read"], project=other_project).get("/api/v1/teams/").json()["results"] == []


# Service accounts -----------------------------------------------------------------------------------------------


def test_service_account_token_acts_within_its_role(project, other_project, member_factory, client_for):
    admin_client = client_for(member_factory(Role.ADMIN))
    response = admin_client.post("/api/v1/service-accounts/", {"project": "alpha", "name": "ci"}, format="json")
    assert response.status_code == 201
    account = ServiceAccount.objects.get(pk=response.json()["id"])
    assert response.json()["username"] == "svc-alpha-ci"
    assert not account.user.has_usable_password()
    assert Membership.objects.get(user=account.user).role == Role.DEVELOPER

    response = admin_client.post(
        "/api/v1/tokens/", {"name": "deploy", "scopes": ["read", "write"], "service_account": account.pk}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["user"] == "svc-alpha-ci" and response.json()["project"] == "alpha"
    robot = bearer(response.json()["token"])

    job = {"project": "alpha", "job_type": "core.device_check"}
    assert robot.post("/api/v1/jobs/", job, format="json").status_code == 201  # developer: may run jobs
    assert robot.patch("/api/v1/projects/alpha/", {"name": "x"}, format="json").status_code == 403
    assert robot.post("/api/v1/jobs/", {**job, "project": "beta"}, format="json").status_code == 400
    assert robot.get("/api/v1/projects/beta/").status_code == 404
    assert robot.get("/api/v1/service-accounts/").status_code == 403
    event = AuditEvent.objects.get(action="job.create")
    assert event.actor_id == account.user_id and event.actor_label.startswith("svc-alpha-ci (token cpt_")


def test_only_project_admins_create_service_account_tokens(project, member_factory, client_for):
    admin_client = client_for(member_factory(Role.ADMIN))
    account_id = admin_client.post(
        "/api/v1/service-accounts/", {"project": "alpha", "name": "ci"}, format="json"
    ).json()["id"]
    maintainer = client_for(member_factory(Role.MAINTAINER))
    response = maintainer.post(
        "/api/v1/tokens/", {"name": "x", "scopes": ["read"], "service_account": account_id}, format="json"
    )
    assert response.status_code == 403
    assert not ApiToken.objects.filter(user__service_account=account_id).exists()


# manage.py create_token -----------------------------------------------------------------------------------------


def test_create_token_command_prints_a_working_token(alice):
    out = StringIO()
    call_command("create_token", "--user", "alice", "--project", "alpha", "--scopes", "read,write", stdout=out)
    raw = out.getvalue().strip()
    assert raw.startswith("cpt_")
    token = ApiToken.objects.get(key_hash=hashlib.sha256(raw.encode()).hexdigest())
    assert token.scopes == ["read", "write"] and token.project.slug == "alpha"
    client = bearer(raw)
    assert (
        client.post("/api/v1/jobs/", {"project": "alpha", "job_type": "core.device_check"}, format="json").status_code
        == 201
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody"], "No user 'nobody'"),
        (["--user", "alice", "--project", "nope"], "No project 'nope'"),
        (["--user", "alice", "--scopes", "read,sudo"], "Scopes must be"),
        (["--user", "alice", "--scopes", ","], "Scopes must be"),
        (["--user", "alice", "--project", "beta"], "not a member"),
        (["--user", "alice", "--project", "alpha", "--scopes", "admin"], "Only a project admin"),
    ],
)
def test_create_token_command_errors(alice, other_project, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_token", *args, stdout=StringIO())
    assert not ApiToken.objects.exists()
