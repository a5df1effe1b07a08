"""Dashboard pages: access matrix, forms, the one-time token secret, the login rate limit and the audit log."""

from __future__ import annotations

import datetime
import json
import time
import uuid

import pytest
from django.urls import reverse
from django.utils import timezone

from apps.core import services, views
from apps.core.models import ApiToken, AuditEvent, Job, JobStatus, Membership, Role, Worker
from apps.core.tokens import token_hash

from ..factories import MembershipFactory, TeamFactory, UserFactory

PASSWORD = "correct-horse-battery"


@pytest.fixture
def viewer(member_factory):
    return member_factory(Role.VIEWER, username="viewer")


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.DEVELOPER, username="developer")


@pytest.fixture
def outsider(member_factory, other_project):
    """An admin of another project: sees none of project alpha."""
    return member_factory(Role.ADMIN, on=other_project, username="outsider")


@pytest.fixture
def job(project):
    return Job.objects.create(project=project, job_type="core.device_check", params={"size": 512}, message="queued")


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


def project_urls(job: Job) -> dict[str, str]:
    return {
        "project-home": reverse("project-home", args=["alpha"]),
        "job-list": reverse("job-list", args=["alpha"]),
        "job-detail": reverse("job-detail", args=["alpha", job.id]),
        "member-list": reverse("member-list", args=["alpha"]),
        "audit-list": reverse("audit-list", args=["alpha"]),
    }


PROJECT_PAGES = ["project-home", "job-list", "job-detail", "member-list", "audit-list"]
GLOBAL_PAGES = ["token-list", "worker-list"]


# Access matrix -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PROJECT_PAGES)
def test_project_page_loads_for_project_admin(login, admin_user, job, name):
    response = login(admin_user).get(project_urls(job)[name])
    assert response.status_code == 200
    assert b"Alpha" in response.content


@pytest.mark.parametrize("name", [p for p in PROJECT_PAGES if p != "audit-list"])
def test_project_page_loads_for_viewer(login, viewer, job, name):
    assert login(viewer).get(project_urls(job)[name]).status_code == 200


@pytest.mark.parametrize("name", PROJECT_PAGES)
def test_project_page_is_404_for_user_of_another_project(login, outsider, job, name):
    response = login(outsider).get(project_urls(job)[name])
    assert response.status_code == 404
    assert b"Page not found" in response.content
    assert b"Alpha" not in response.content


@pytest.mark.parametrize("name", GLOBAL_PAGES)
def test_global_page_loads_for_member(login, viewer, name):
    assert login(viewer).get(reverse(name)).status_code == 200


@pytest.mark.parametrize("name", [*PROJECT_PAGES, *GLOBAL_PAGES, "home"])
def test_anonymous_is_redirected_to_login(client, job, name):
    url = project_urls(job)[name] if name in PROJECT_PAGES else reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


@pytest.mark.parametrize(
    "url",
    [
        "/p/alpha/jobs/device-check/",
        "/p/alpha/members/add/",
        "/switch/",
        "/tokens/",
    ],
)
def test_anonymous_posts_are_redirected_to_login(client, project, url):
    response = client.post(url, {"project": "alpha", "username": "x", "role": "admin", "name": "t", "scopes": "read"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert not Membership.objects.filter(user__username="x").exists()


def test_viewer_does_not_see_audit_log(login, viewer, job):
    client = login(viewer)
    assert client.get(reverse("audit-list", args=["alpha"])).status_code == 404
    assert b"Audit log" not in client.get(reverse("project-home", args=["alpha"])).content


def test_ids_too_large_for_the_database_are_404(login, admin_user, project):
    client = login(admin_user)
    assert client.post("/tokens/99999999999999999999999/revoke/").status_code == 404
    assert client.post("/p/alpha/members/99999999999999999999999/remove/").status_code == 404
    assert client.post("/p/alpha/members/999999999/remove/").status_code == 404


def test_server_error_page_is_html_and_api_error_stays_json(rf):
    page = views.server_error(rf.get("/p/alpha/"))
    assert page.status_code == 500
    assert b"Something went wrong" in page.content
    api = views.server_error(rf.get("/api/v1/projects/"))
    assert api.status_code == 500
    assert json.loads(api.content)["error"]["code"] == "server_error"


def test_unknown_page_is_html_404_and_api_404_stays_json(login, viewer):
    client = login(viewer)
    page = client.get("/no-such-page/")
    assert page.status_code == 404
    assert page["Content-Type"].startswith("text/html")
    api = client.get("/api/v1/no-such-thing/")
    assert api.status_code == 404
    assert api.json()["error"]["code"] == "not_found"


# Home, switcher, layout ----------------------------------------------------------------------------------------


def test_home_redirects_to_first_project_then_to_last_visited(login, viewer, other_project):
    MembershipFactory(project=other_project, user=viewer, role=Role.VIEWER)
    client = login(viewer)
    assert client.get(reverse("home"))["Location"] == reverse("project-home", args=["alpha"])
    client.get(reverse("project-home", args=["beta"]))
    assert client.get(reverse("home"))["Location"] == reverse("project-home", args=["beta"])


def test_home_without_projects_shows_empty_state(login, db):
    response = login(UserFactory()).get(reverse("home"))
    assert response.status_code == 200
    assert b"No projects yet" in response.content


def test_switcher_stores_project_and_refuses_invisible_one(login, viewer, other_project):
    MembershipFactory(project=other_project, user=viewer, role=Role.VIEWER)
    client = login(viewer)
    response = client.post(reverse("project-switch"), {"project": "beta"})
    assert response["Location"] == reverse("project-home", args=["beta"])
    assert client.session["project"] == "beta"

    hidden = services.project_create(
        user=UserFactory(is_superuser=True), organization=other_project.organization, name="Hidden", slug="hidden"
    )
    assert client.post(reverse("project-switch"), {"project": hidden.slug}).status_code == 404
    assert client.session["project"] == "beta"


def test_layout_lists_projects_and_links_that_work(login, admin_user, project):
    content = login(admin_user).get(reverse("project-home", args=["alpha"])).content.decode()
    assert 'id="project-switcher"' in content
    assert '<option value="alpha" selected>' in content
    for name in ("job-list", "member-list", "audit-list"):
        assert reverse(name, args=["alpha"]) in content
    assert reverse("token-list") in content and reverse("worker-list") in content and "/api/docs/" in content
    assert 'href="/admin/"' not in content  # staff only
    assert 'action="/logout/"' in content


def test_staff_see_the_admin_link(login, admin_user):
    admin_user.is_staff = True
    admin_user.save(update_fields=["is_staff"])
    assert b'href="/admin/"' in login(admin_user).get(reverse("project-home", args=["alpha"])).content


def test_logout_is_a_post(login, viewer):
    client = login(viewer)
    assert client.get(reverse("logout")).status_code == 405
    assert client.post(reverse("logout"))["Location"] == reverse("login")
    assert client.get(reverse("token-list")).status_code == 302


# Jobs ----------------------------------------------------------------------------------------------------------


def test_empty_job_list_says_so(login, viewer):
    response = login(viewer).get(reverse("job-list", args=["alpha"]))
    assert b"No jobs yet" in response.content
    assert b"Run device check" not in response.content  # viewers may not run jobs


def test_developer_runs_device_check(login, developer, project):
    client = login(developer)
    assert b"Run device check" in client.get(reverse("job-list", args=["alpha"])).content
    response = client.post(reverse("job-device-check", args=["alpha"]))
    job = Job.objects.get(project=project)
    assert response["Location"] == reverse("job-detail", args=["alpha", job.id])
    assert (job.job_type, job.params, job.created_by) == (
        "core.device_check",
        {"size": 512, "iterations": 50},
        developer,
    )
    assert AuditEvent.objects.filter(action="job.create", object_id=str(job.id)).exists()


def test_viewer_cannot_run_device_check(login, viewer, project):
    response = login(viewer).post(reverse("job-device-check", args=["alpha"]))
    assert response.status_code == 403
    assert not Job.objects.exists()


def test_job_list_filters_and_rejects_bad_filters(login, viewer, project, job):
    Job.objects.create(project=project, job_type="core.device_check", status=JobStatus.FAILED, error="boom")
    client = login(viewer)
    failed = client.get(reverse("job-list", args=["alpha"]), {"status": "failed"})
    assert failed.status_code == 200
    assert failed.content.count(b"data-job-id=") == 1
    assert client.get(reverse("job-list", args=["alpha"])).content.count(b"data-job-id=") == 2
    bad = client.get(reverse("job-list", args=["alpha"]), {"status": "exploded"})
    assert bad.status_code == 400
    assert b"not valid" in bad.content


def test_job_list_htmx_request_gets_only_the_table(login, viewer, job):
    response = login(viewer).get(reverse("job-list", args=["alpha"]), HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    assert response.content.lstrip().startswith(b'<div id="job-table"')
    assert "HX-Request" in response["Vary"]


def test_htmx_history_restore_gets_the_whole_page(login, viewer, job):
    response = login(viewer).get(
        reverse("job-list", args=["alpha"]), HTTP_HX_REQUEST="true", HTTP_HX_HISTORY_RESTORE_REQUEST="true"
    )
    assert b"<html" in response.content


def test_job_detail_shows_state_and_live_socket(login, developer, job):
    Job.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, progress=40, message="step 2 of 5")
    content = login(developer).get(reverse("job-detail", args=["alpha", job.id])).content.decode()
    assert f'data-job-socket="/ws/jobs/{job.id}/"' in content
    assert 'aria-valuenow="40"' in content and "step 2 of 5" in content
    assert "js/jobs.js" in content


def test_unknown_job_is_404(login, viewer, project):
    assert login(viewer).get(reverse("job-detail", args=["alpha", uuid.uuid4()])).status_code == 404


def test_cancel_and_retry(login, developer, job):
    client = login(developer)
    response = client.post(reverse("job-cancel", args=["alpha", job.id]))
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED

    again = client.post(reverse("job-cancel", args=["alpha", job.id]))
    assert again.status_code == 400
    assert b"already cancelled" in again.content

    client.post(reverse("job-retry", args=["alpha", job.id]))
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    not_retryable = client.post(reverse("job-retry", args=["alpha", job.id]))
    assert not_retryable.status_code == 400
    assert b"Only failed or cancelled jobs" in not_retryable.content


def test_viewer_cannot_cancel(login, viewer, job):
    assert login(viewer).post(reverse("job-cancel", args=["alpha", job.id])).status_code == 403
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED


# Members -------------------------------------------------------------------------------------------------------


def test_admin_adds_changes_and_removes_a_member(login, admin_user, project):
    newcomer = UserFactory(username="newcomer")
    client = login(admin_user)
    response = client.post(reverse("member-add", args=["alpha"]), {"username": "newcomer", "role": "developer"})
    assert response["Location"] == reverse("member-list", args=["alpha"])
    membership = Membership.objects.get(project=project, user=newcomer)
    assert membership.role == Role.DEVELOPER

    client.post(reverse("member-update", args=["alpha", membership.pk]), {"role": "maintainer"})
    membership.refresh_from_db()
    assert membership.role == Role.MAINTAINER

    client.post(reverse("member-remove", args=["alpha", membership.pk]))
    assert not Membership.objects.filter(pk=membership.pk).exists()
    actions = list(AuditEvent.objects.filter(object_type="core.membership").values_list("action", flat=True))
    assert sorted(actions) == ["membership.create", "membership.delete", "membership.update"]


def test_admin_adds_a_team(login, admin_user, project):
    team = TeamFactory(organization=project.organization, name="ML platform")
    response = login(admin_user).post(reverse("member-add", args=["alpha"]), {"team": team.pk, "role": "viewer"})
    assert response.status_code == 302
    assert Membership.objects.filter(project=project, team=team, role=Role.VIEWER).exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"username": "nobody", "role": "viewer"}, "No active user is called"),
        ({"username": "", "role": "viewer"}, "Give either a username or a team"),
        ({"username": "viewer", "role": "overlord"}, "Select a valid choice"),
        ({"username": "viewer", "role": "viewer"}, "already"),
        ({"team": "999999", "role": "viewer"}, "Select a valid choice"),
    ],
)
def test_bad_member_input_is_a_form_error(login, admin_user, viewer, data, message):
    before = Membership.objects.count()
    response = login(admin_user).post(reverse("member-add", args=["alpha"]), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Membership.objects.count() == before


def test_team_of_another_organization_cannot_be_added(login, admin_user, project):
    foreign = TeamFactory()
    response = login(admin_user).post(reverse("member-add", args=["alpha"]), {"team": foreign.pk, "role": "viewer"})
    assert response.status_code == 400
    assert not Membership.objects.filter(team=foreign).exists()


def test_last_admin_cannot_be_demoted_or_removed(login, admin_user, project):
    membership = Membership.objects.get(project=project, user=admin_user)
    client = login(admin_user)
    demote = client.post(reverse("member-update", args=["alpha", membership.pk]), {"role": "viewer"})
    assert demote.status_code == 400
    assert b"at least one admin" in demote.content
    bad_role = client.post(reverse("member-update", args=["alpha", membership.pk]), {"role": "root"})
    assert bad_role.status_code == 400
    remove = client.post(reverse("member-remove", args=["alpha", membership.pk]))
    assert remove.status_code == 400
    membership.refresh_from_db()
    assert membership.role == Role.ADMIN


def test_non_admin_sees_members_without_management_forms(login, viewer, admin_user):
    client = login(viewer)
    page = client.get(reverse("member-list", args=["alpha"]))
    assert b"project-admin" in page.content
    assert b"Add a member" not in page.content
    response = client.post(reverse("member-add", args=["alpha"]), {"username": "viewer", "role": "admin"})
    assert response.status_code == 403
    assert client.post(reverse("member-add", args=["alpha"]), {"role": "overlord"}).status_code == 403
    assert Membership.objects.get(user=viewer).role == Role.VIEWER


def test_outsider_cannot_manage_members(login, outsider, admin_user, project):
    membership = Membership.objects.get(project=project, user=admin_user)
    client = login(outsider)
    assert (
        client.post(reverse("member-add", args=["alpha"]), {"username": "outsider", "role": "admin"}).status_code == 404
    )
    assert client.post(reverse("member-remove", args=["alpha", membership.pk])).status_code == 404
    assert Membership.objects.filter(pk=membership.pk).exists()


# API tokens ----------------------------------------------------------------------------------------------------


def test_token_secret_is_shown_only_in_the_creation_response(login, viewer, project):
    client = login(viewer)
    response = client.post(reverse("token-list"), {"name": "ci", "scopes": ["read", "write"], "project": "alpha"})
    assert response.status_code == 201
    secret = response.context["secret"]
    token = ApiToken.objects.get(user=viewer)
    assert token.key_hash == token_hash(secret)
    assert (token.name, token.scopes, token.project) == ("ci", ["read", "write"], project)
    assert secret in response.content.decode()
    assert "will not be shown again" in response.content.decode()
    assert "no-store" in response["Cache-Control"]

    listing = client.get(reverse("token-list")).content.decode()
    assert secret not in listing
    assert token.key_prefix in listing
    assert all(secret not in str(value) for value in client.session.values())
    assert secret not in client.get(reverse("project-home", args=["alpha"])).content.decode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "", "scopes": ["read"]}, "This field is required"),
        ({"name": "t", "scopes": []}, "This field is required"),
        ({"name": "t", "scopes": ["root"]}, "Select a valid choice"),
        ({"name": "t", "scopes": ["read"], "project": "beta"}, "Select a valid choice"),
        ({"name": "t", "scopes": ["admin"], "project": "alpha"}, "Only a project admin"),
        ({"name": "t", "scopes": ["read"], "expires_on": "2001-01-01"}, "after today"),
        ({"name": "t", "scopes": ["read"], "expires_on": "tomorrow"}, "Enter a valid date"),
    ],
)
def test_bad_token_input_is_a_form_error(login, viewer, other_project, data, message):
    response = login(viewer).post(reverse("token-list"), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not ApiToken.objects.exists()


def test_token_expiry_date(login, viewer):
    day = timezone.localdate() + datetime.timedelta(days=30)
    login(viewer).post(reverse("token-list"), {"name": "t", "scopes": ["read"], "expires_on": day.isoformat()})
    token = ApiToken.objects.get()
    assert timezone.localtime(token.expires_at).date() == day


def test_revoke_own_token_but_not_anothers(login, viewer, admin_user):
    mine, _ = services.api_token_create(user=viewer, name="mine", scopes=["read"])
    theirs, _ = services.api_token_create(user=admin_user, name="theirs", scopes=["read"])
    client = login(viewer)
    assert client.post(reverse("token-revoke", args=[mine.pk]))["Location"] == reverse("token-list")
    assert client.post(reverse("token-revoke", args=[theirs.pk])).status_code == 404
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.revoked_at is not None and theirs.revoked_at is None
    assert b"Revoked" in client.get(reverse("token-list")).content


def test_token_list_empty_state_and_filter(login, viewer):
    client = login(viewer)
    assert b"No tokens yet" in client.get(reverse("token-list")).content
    services.api_token_create(user=viewer, name="live-one", scopes=["read"])
    revoked, _ = services.api_token_create(user=viewer, name="dead-one", scopes=["read"])
    services.api_token_revoke(user=viewer, token=revoked)
    active = client.get(reverse("token-list"), {"active": "true"}).content
    assert b"live-one" in active and b"dead-one" not in active


# Login rate limit ----------------------------------------------------------------------------------------------


def _login(client, username, password, ip="127.0.0.1"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_login_works_and_bad_password_is_a_form_error(client, viewer):
    bad = _login(client, "viewer", "wrong")
    assert bad.status_code == 400
    assert b"correct username and password" in bad.content
    good = _login(client, "viewer", PASSWORD)
    assert good.status_code == 302
    assert good["Location"] == reverse("home")


def test_login_is_refused_after_five_failures_even_with_the_right_password(client, viewer):
    for _ in range(5):
        assert _login(client, "viewer", "wrong").status_code == 400
    refused = _login(client, "viewer", PASSWORD)
    assert refused.status_code == 429
    assert b"Too many failed sign-in attempts" in refused.content
    assert "_auth_user_id" not in client.session
    # Another address gets no further with this username.
    assert _login(client, "viewer", PASSWORD, ip="10.0.0.9").status_code == 429


def test_login_is_refused_for_an_address_that_tried_many_usernames(client, viewer):
    for n in range(5):
        _login(client, f"guess{n}", "wrong", ip="10.0.0.7")
    assert _login(client, "viewer", PASSWORD, ip="10.0.0.7").status_code == 429
    assert _login(client, "viewer", PASSWORD, ip="10.0.0.8").status_code == 302


def test_login_window_passes(client, viewer, settings):
    settings.LOGIN_RATE_LIMIT = {"attempts": 2, "window_seconds": 1}
    _login(client, "viewer", "wrong")
    _login(client, "viewer", "wrong")
    assert _login(client, "viewer", PASSWORD).status_code == 429
    time.sleep(1.2)
    assert _login(client, "viewer", PASSWORD).status_code == 302


# Audit log -----------------------------------------------------------------------------------------------------


def test_audit_log_is_filtered_and_shows_changes(login, admin_user, viewer, project):
    membership = Membership.objects.get(user=viewer)
    services.membership_update(user=admin_user, membership=membership, role=Role.DEVELOPER)
    services.api_token_create(user=admin_user, name="ops", scopes=["read"], project=project)
    client = login(admin_user)

    everything = client.get(reverse("audit-list", args=["alpha"])).content.decode()
    assert "membership.update" in everything and "api_token.create" in everything

    memberships = client.get(reverse("audit-list", args=["alpha"]), {"action": "membership."}).content.decode()
    assert "membership.update" in memberships and "api_token.create" not in memberships
    assert '<td class="before">viewer</td>' in memberships and '<td class="after">developer</td>' in memberships

    by_actor = client.get(reverse("audit-list", args=["alpha"]), {"actor": "nobody"}).content.decode()
    assert "No audit events match" in by_actor

    future = (timezone.now() + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert (
        "No audit events match" in client.get(reverse("audit-list", args=["alpha"]), {"since": future}).content.decode()
    )
    assert "membership.update" in client.get(reverse("audit-list", args=["alpha"]), {"until": future}).content.decode()


def test_audit_log_bad_filter_is_400(login, admin_user):
    response = login(admin_user).get(reverse("audit-list", args=["alpha"]), {"since": "last tuesday"})
    assert response.status_code == 400
    assert b"not valid" in response.content


def test_audit_log_is_paginated(login, admin_user, project):
    for n in range(30):
        services.project_update(user=admin_user, project=project, description=f"v{n}")
    client = login(admin_user)
    first = client.get(reverse("audit-list", args=["alpha"])).content.decode()
    assert first.count("project.update") == 25
    assert "Page 1 of 2" in first
    assert client.get(reverse("audit-list", args=["alpha"]), {"page": 2}).content.decode().count("project.update") == 5


# Workers -------------------------------------------------------------------------------------------------------


def test_worker_list_shows_the_fleet(login, viewer):
    now = timezone.now()
    Worker.objects.create(
        hostname="gpu-host-1",
        queues=["default", "gpu.gpu-host-1"],
        pid=42,
        started_at=now,
        last_seen_at=now - datetime.timedelta(seconds=12),
        devices=[{"index": 0, "kind": "cuda", "name": "NVIDIA H200", "total_mb": 143360, "free_mb": 102400}],
    )
    Worker.objects.create(
        hostname="old-host", queues=["default"], started_at=now, last_seen_at=now - datetime.timedelta(hours=3)
    )
    client = login(viewer)
    content = client.get(reverse("worker-list")).content.decode()
    assert "gpu-host-1" in content and "NVIDIA H200" in content
    assert "100.0 GB free of 140.0 GB" in content
    assert "12 s ago" in content and "3 h ago" in content
    assert content.count("badge-succeeded") == 1 and "Stale" in content
    alive = client.get(reverse("worker-list"), {"alive": "true"}).content.decode()
    assert "gpu-host-1" in alive and "old-host" not in alive
    refresh = client.get(reverse("worker-list"), HTTP_HX_REQUEST="true").content.decode()
    assert refresh.lstrip().startswith('<section id="worker-table"') and "gpu-host-1" in refresh


def test_worker_list_empty_state(login, viewer):
    assert b"No workers yet" in login(viewer).get(reverse("worker-list")).content
