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
