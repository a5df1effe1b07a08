"""Writes for tenancy, access and tokens. Each function checks permissions, writes, and audits."""

from __future__ import annotations

import datetime
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.http import Http404
from django.utils import timezone

from . import crypto
from .audit import audit_record, snapshot
from .models import (
    ApiToken,
    Membership,
    ObjectGrant,
    Organization,
    Project,
    ProjectSecret,
    Role,
    ServiceAccount,
    Team,
    TokenScope,
)
from .permissions import Action, PermissionDenied, check, restrict, role_on_project, token_scopes_granted
from .tokens import token_display_prefix, token_generate, token_hash

User = get_user_model()


def _require_org_owner(user, organization: Organization) -> None:
    """Owners (and superusers) manage an organization; asked through `restrict` so a token's limits apply."""
    orgs = Organization.objects.filter(pk=organization.pk)
    if restrict(orgs, user, Action.MANAGE).exists():
        return
    if not restrict(orgs, user, Action.VIEW).exists():
        raise Http404("Not found.")
    token = getattr(user, "api_token", None)
    if token is not None and token.project_id is not None:
        raise PermissionDenied("A token limited to one project cannot manage its organization.")
    raise PermissionDenied("Only the organization's owners may do this.")


def _save_unique(obj: Model, message: str) -> None:
    """Save, turning a uniqueness violation into a validation error instead of a 500."""
    try:
        with transaction.atomic():
            obj.full_clean()
            obj.save()
    except IntegrityError as exc:
        raise ValidationError(message) from exc


# Organizations -------------------------------------------------------------------------------------------------


@transaction.atomic
def organization_create(*, user, name: str, slug: str) -> Organization:
    if not user.is_superuser:
        raise PermissionDenied("Only a site administrator may create organizations.")
    org = Organization(name=name, slug=slug)
    _save_unique(org, f"An organization with the slug '{slug}' already exists.")
    org.owners.add(user)
    audit_record(actor=user, action="organization.create", obj=org, after=snapshot(org))
    return org


@transaction.atomic
def organization_update(*, user, organization: Organization, name: str | None = None) -> Organization:
    _require_org_owner(user, organization)
    before = snapshot(organization)
    if name is not None:
        organization.name = name
    _save_unique(organization, "Could not update the organization.")
    audit_record(
        actor=user, action="organization.update", obj=organization, before=before, after=snapshot(organization)
    )
    return organization


@transaction.atomic
def organization_owner_set(*, user, organization: Organization, owner, is_owner: bool) -> None:
    _require_org_owner(user, organization)
    if not is_owner and organization.owners.count() == 1 and organization.owners.filter(pk=owner.pk).exists():
        raise ValidationError("An organization needs at least one owner.")
    (organization.owners.add if is_owner else organization.owners.remove)(owner)
    change = {"owner": owner.get_username()}
    audit_record(
        actor=user,
        action="organization.owner_add" if is_owner else "organization.owner_remove",
        obj=organization,
        before=None if is_owner else change,
        after=change if is_owner else None,
    )


# Projects ------------------------------------------------------------------------------------------------------


@transaction.atomic
def project_create(*, user, organization: Organization, name: str, slug: str, description: str = "") -> Project:
    _require_org_owner(user, organization)
    project = Project(organization=organization, name=name, slug=slug, description=description)
    _save_unique(project, f"A project with the slug '{slug}' or the name '{name}' already exists.")
    audit_record(actor=user, action="project.create", obj=project, after=snapshot(project))
    return project


@transaction.atomic
def project_update(*, user, project: Project, name: str | None = None, description: str | None = None) -> Project:
    check(user, Action.MANAGE, project)
    before = snapshot(project)
    if name is not None:
        project.name = name
    if description is not None:
        project.description = description
    _save_unique(project, f"A project named '{name}' already exists in this organization.")
    audit_record(actor=user, action="project.update", obj=project, before=before, after=snapshot(project))
    return project


@transaction.atomic
def project_delete(*, user, project: Project) -> None:
    _require_org_owner(user, project.organization)
    before = snapshot(project)
    audit_record(actor=user, action="project.delete", obj=project, before=before)
    account_users = list(project.service_accounts.values_list("user_id", flat=True))
    project.delete()
    User.objects.filter(pk__in=account_users).delete()  # service accounts exist only for their project


# Teams ---------------------------------------------------------------------------------------------------------


@transaction.atomic
def team_create(*, user, organization: Organization, name: str, slug: str, members: Iterable = ()) -> Team:
    _require_org_owner(user, organization)
    team = Team(organization=organization, name=name, slug=slug)
    _save_unique(team, f"A team with the slug '{slug}' already exists in this organization.")
    team.members.set(members)
    audit_record(
        actor=user,
        action="team.create",
        obj=team,
        after={**snapshot(team), "members": sorted(m.get_username() for m in team.members.all())},
    )
    return team


@transaction.atomic
def team_update(
    *, user, team: Team, name: str | None = None, members: Iterable | None = None, **limits: int | None
) -> Team:
    """Rename, change members, or set the gateway rate limits (`requests_per_minute`, `tokens_per_minute`)."""
    _require_org_owner(user, team.organization)
    before = {**snapshot(team), "members": sorted(m.get_username() for m in team.members.all())}
    if name is not None:
        team.name = name
    for field, value in limits.items():
        if field not in ("requests_per_minute", "tokens_per_minute"):
            raise TypeError(f"unknown team field {field}")
        setattr(team, field, value)
    _save_unique(team, "Could not update the team.")
    if members is not None:
        team.members.set(members)
    after = {**snapshot(team), "members": sorted(m.get_username() for m in team.members.all())}
    audit_record(actor=user, action="team.update", obj=team, before=before, after=after)
    return team


@transaction.atomic
def team_delete(*, user, team: Team) -> None:
    _require_org_owner(user, team.organization)
    audit_record(actor=user, action="team.delete", obj=team, before=snapshot(team))
    team.delete()


# Memberships ---------------------------------------------------------------------------------------------------


def _guard_last_admin(membership: Membership, new_role: str | None) -> None:
    """A project keeps at least one admin membership unless an organization owner manages it."""
    if membership.role != Role.ADMIN or new_role == Role.ADMIN:
        return
    others = Membership.objects.filter(project=membership.project, role=Role.ADMIN).exclude(pk=membership.pk)
    if not others.exists() and not membership.project.organization.owners.exists():
        raise ValidationError("A project needs at least one admin.")


@transaction.atomic
def membership_create(*, user, project: Project, role: str, member=None, team: Team | None = None) -> Membership:
    check(user, Action.MANAGE, project)
    if (member is None) == (team is None):
        raise ValidationError("Give either a user or a team.")
    if team is not None and team.organization_id != project.organization_id:
        raise ValidationError("The team belongs to another organization.")
    if role not in Role.values:
        raise ValidationError(f"Unknown role '{role}'.")
    membership = Membership(project=project, user=member, team=team, role=role)
    _save_unique(membership, "This user or team is already a member of the project.")
    audit_record(actor=user, action="membership.create", obj=membership, after=snapshot(membership))
    return membership


@transaction.atomic
def membership_update(*, user, membership: Membership, role: str) -> Membership:
    check(user, Action.MANAGE, membership.project)
    if role not in Role.values:
        raise ValidationError(f"Unknown role '{role}'.")
    _guard_last_admin(membership, role)
    before = snapshot(membership)
    membership.role = role
    membership.save(update_fields=["role", "updated_at"])
    audit_record(actor=user, action="membership.update", obj=membership, before=before, after=snapshot(membership))
    return membership


@transaction.atomic
def membership_delete(*, user, membership: Membership) -> None:
    check(user, Action.MANAGE, membership.project)
    _guard_last_admin(membership, None)
    audit_record(actor=user, action="membership.delete", obj=membership, before=snapshot(membership))
    membership.delete()


# Per-object grants ---------------------------------------------------------------------------------------------


@transaction.atomic
def object_grant_create(*, user, obj: Model, role: str, grantee=None, team: Team | None = None) -> ObjectGrant:
    project = obj if isinstance(obj, Project) else obj.project
    check(user, Action.MANAGE, project)
    if (grantee is None) == (team is None):
        raise ValidationError("Give either a user or a team.")
    grant = ObjectGrant(
        project=project,
        content_type=ContentType.objects.get_for_model(obj),
        object_id=str(obj.pk),
        user=grantee,
        team=team,
        role=role,
    )
    _save_unique(grant, "Could not create the grant.")
    audit_record(actor=user, action="grant.create", obj=grant, after=snapshot(grant))
    return grant


@transaction.atomic
def object_grant_delete(*, user, grant: ObjectGrant) -> None:
    check(user, Action.MANAGE, grant.project)
    audit_record(actor=user, action="grant.delete", obj=grant, before=snapshot(grant))
    grant.delete()


# Service accounts and API tokens -------------------------------------------------------------------------------


@transaction.atomic
def service_account_create(*, user, project: Project, name: str, role: str = Role.DEVELOPER) -> ServiceAccount:
    check(user, Action.MANAGE, project)
    username = f"svc-{project.slug}-{name}"[:150]
    if User.objects.filter(username=username).exists():
        raise ValidationError(f"A service account named '{name}' already exists in this project.")
    account_user = User.objects.create(username=username)
    account_user.set_unusable_password()
    account_user.save(update_fields=["password"])
    account = ServiceAccount(project=project, user=account_user, name=name, created_by=user)
    _save_unique(account, f"A service account named '{name}' already exists in this project.")
    Membership.objects.create(project=project, user=account_user, role=role)
    audit_record(actor=user, action="service_account.create", obj=account, after={**snapshot(account), "role": role})
    return account


def _normalise_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = sorted(set(scopes))
    unknown = [s for s in scopes if s not in TokenScope.values]
    if unknown or not scopes:
        raise ValidationError(f"Scopes must be a non-empty subset of {', '.join(TokenScope.values)}.")
    return scopes


def _guard_token_widening(user, *, scopes: list[str], project: Project | None) -> None:
    """A request made with a token cannot mint a token that reaches further than the one it came with."""
    acting = getattr(user, "api_token", None)
    if acting is None:
        return
    missing = set(scopes) - token_scopes_granted(acting)
    if missing:
        raise PermissionDenied(f"This token cannot create a token with the scope(s) {', '.join(sorted(missing))}.")
    if acting.project_id is not None and (project is None or project.pk != acting.project_id):
        raise PermissionDenied("A token limited to one project can create tokens limited to that project only.")


@transaction.atomic
def api_token_create(
    *,
    user,
    name: str,
    scopes: Iterable[str],
    project: Project | None = None,
    expires_at: datetime.datetime | None = None,
    owner=None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> tuple[ApiToken, str]:
    """Create a token for `owner` (default: the acting user; a service account needs project admin).

    Returns the token and its secret, which is never retrievable again.
    """
    owner = owner or user
    scopes = _normalise_scopes(scopes)
    if project is not None:
        check(user, Action.VIEW, project)
    if owner.pk != user.pk:
        account = getattr(owner, "service_account", None)
        if account is None:
            raise PermissionDenied("You may create tokens for yourself or for a service account only.")
        check(user, Action.MANAGE, account.project)
        project = account.project
    _guard_token_widening(user, scopes=scopes, project=project)
    if TokenScope.ADMIN in scopes and project is not None and role_on_project(owner, project) != Role.ADMIN:
        raise ValidationError("Only a project admin may hold an admin-scoped token for the project.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError("The expiry must be in the future.")
    acting_token = getattr(user, "api_token", None)
    if acting_token is not None and acting_token.expires_at is not None:
        # A token never mints one that outlives it.
        expires_at = min(expires_at or acting_token.expires_at, acting_token.expires_at)
    raw = token_generate()
    token = ApiToken(
        user=owner,
        project=project,
        name=name,
        key_prefix=token_display_prefix(raw),
        key_hash=token_hash(raw),
        scopes=scopes,
        expires_at=expires_at,
        created_by=user,
        requests_per_minute=requests_per_minute,
        tokens_per_minute=tokens_per_minute,
    )
    token.full_clean()
    token.save()
    audit_record(actor=user, action="api_token.create", obj=token, project=project, after=snapshot(token))
    return token, raw


@transaction.atomic
def api_token_revoke(*, user, token: ApiToken) -> ApiToken:
    if token.user_id != user.pk:
        account = getattr(token.user, "service_account", None)
        if account is None:
            raise PermissionDenied("You may revoke your own tokens only.")
        check(user, Action.MANAGE, account.project)
    if token.revoked_at is None:
        before = snapshot(token)
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at", "updated_at"])
        audit_record(actor=user, action="api_token.revoke", obj=token, before=before, after=snapshot(token))
    return token


def api_token_authenticate(raw: str) -> ApiToken | None:
    """The live token for a raw secret, or None. Updates last-used time at most once a minute."""
    if not raw.startswith(ApiToken.PREFIX) or len(raw) > 200:
        return None
    token = ApiToken.objects.select_related("user", "project").filter(key_hash=token_hash(raw)).first()
    now = timezone.now()
    if token is None or token.revoked_at is not None or (token.expires_at and token.expires_at <= now):
        return None
    if not token.user.is_active:
        return None
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


# Project secrets -----------------------------------------------------------------------------------------------


@transaction.atomic
def project_secret_set(*, user, project: Project, name: str, value: str) -> ProjectSecret:
    """Create or replace a secret. The value is encrypted; the audit log records only that it changed."""
    check(user, Action.MANAGE, project)
    if not value or len(value) > 10_000:
        raise ValidationError("A secret value must be 1–10000 characters.")
    secret = ProjectSecret.objects.filter(project=project, name=name).first()
    created = secret is None
    secret = secret or ProjectSecret(project=project, name=name, created_by=user)
    secret.encrypted_value = crypto.encrypt(value)
    secret.full_clean()
    secret.save()
    audit_record(
        actor=user,
        action="project_secret.create" if created else "project_secret.update",
        obj=secret,
        after={"name": name, "value": "(encrypted)"},
    )
    return secret


@transaction.atomic
def project_secret_delete(*, user, secret: ProjectSecret) -> None:
    check(user, Action.MANAGE, secret.project)
    audit_record(actor=user, action="project_secret.delete", obj=secret, before={"name": secret.name})
    secret.delete()


def project_secret_value(*, project: Project, name: str) -> str | None:
    """The decrypted value for server-side use (imports, deployments); never return it to a client."""
    secret = ProjectSecret.objects.filter(project=project, name=name).first()
    return crypto.decrypt(secret.encrypted_value) if secret else None
