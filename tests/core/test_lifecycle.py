import datetime

from django.contrib.auth import get_user_model
from django.utils import timezone

from apps.core import services
from apps.core.models import ApiToken, AuditEvent, Role


def test_deleting_a_project_removes_its_service_accounts(project, org, member_factory):
    owner = member_factory(Role.ADMIN)
    org.owners.add(owner)
    account = services.service_account_create(user=owner, project=project, name="ci")
    services.api_token_create(user=owner, owner=account.user, name="ci", scopes=["read"])
    services.project_delete(user=owner, project=project)
    assert not get_user_model().objects.filter(pk=account.user_id).exists()
    assert not ApiToken.objects.filter(user_id=account.user_id).exists()
    assert AuditEvent.objects.filter(action="project.delete").count() == 1  # history outlives the project


def test_a_token_cannot_mint_one_that_outlives_it(project, member_factory, client_for):
    user = member_factory(Role.DEVELOPER)
    parent, _ = services.api_token_create(
        user=user, name="short", scopes=["read", "write"], expires_at=timezone.now() + datetime.timedelta(days=1)
    )
    user.api_token = parent
    child, _ = services.api_token_create(user=user, name="child", scopes=["read"])
    assert child.expires_at == parent.expires_at
    later, _ = services.api_token_create(
        user=user, name="later", scopes=["read"], expires_at=timezone.now() + datetime.timedelta(days=30)
    )
    assert later.expires_at == parent.expires_at


def test_project_secret_values_are_encrypted_and_never_shown(project, member_factory, client_for):
    from apps.core.models import ProjectSecret
    from apps.core.services import project_secret_value

    client = client_for(member_factory(Role.ADMIN))
    created = client.post(
        "/api/v1/secrets/", {"project": "alpha", "name": "HF_TOKEN", "value": "hf_TOPSECRET"}, format="json"
    )
    assert created.status_code == 201 and "value" not in created.json()
    listed = client.get("/api/v1/secrets/")
    detail = client.get(f"/api/v1/secrets/{created.json()['id']}/")
    audit = client.get("/api/v1/audit-events/?action=project_secret.")
    for response in (created, listed, detail, audit):
        assert "hf_TOPSECRET" not in response.content.decode()
    stored = ProjectSecret.objects.get()
    assert "hf_TOPSECRET" not in stored.encrypted_value
    assert project_secret_value(project=project, name="HF_TOKEN") == "hf_TOPSECRET"
    bad = client.post("/api/v1/secrets/", {"project": "alpha", "name": "lower", "value": "x"}, format="json")
    assert bad.status_code == 400 and "UPPER_SNAKE_CASE" in bad.json()["error"]["message"]


def test_changes_made_in_the_admin_are_audited(client, org):
    from django.contrib.auth import get_user_model

    from apps.registry.models import ScanPolicy

    admin_user = get_user_model().objects.create_superuser("root", "root@example.com", "correct-horse-battery")
    client.force_login(admin_user)
    response = client.post(
        "/admin/registry/scanpolicy/add/", {"organization": org.pk, "allowed_globals": '["mylib.*"]'}
    )
    assert response.status_code == 302, response.content[:500]
    policy = ScanPolicy.objects.get(organization=org)
    event = AuditEvent.objects.get(action="scanpolicy.create.admin")
    assert event.actor == admin_user and event.object_id == str(policy.pk)
    assert event.changes["allowed_globals"] == [None, ["mylib.*"]]
    client.post(f"/admin/registry/scanpolicy/{policy.pk}/delete/", {"post": "yes"})
    assert not ScanPolicy.objects.exists()
    assert AuditEvent.objects.filter(action="scanpolicy.delete.admin", object_id=str(policy.pk)).exists()
