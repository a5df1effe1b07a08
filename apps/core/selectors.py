"""Reads for core. Every list a user sees comes from here, already narrowed by the permissions module."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from .models import (
    ApiToken,
    AuditEvent,
    Job,
    Membership,
    Organization,
    Project,
    ProjectSecret,
    ServiceAccount,
    Team,
    Worker,
)
from .permissions import Action, project_ids, restrict


def organization_list(*, user) -> QuerySet[Organization]:
    return restrict(Organization.objects.all(), user, Action.VIEW)


def project_list(*, user, action: Action = Action.VIEW) -> QuerySet[Project]:
    return restrict(Project.objects.select_related("organization"), user, action)


def membership_list(*, user) -> QuerySet[Membership]:
    return restrict(Membership.objects.select_related("project", "user", "team"), user, Action.VIEW)


def team_list(*, user) -> QuerySet[Team]:
    """Teams of the organizations the user can see."""
    return Team.objects.filter(organization__in=organization_list(user=user)).prefetch_related("members")


def service_account_list(*, user) -> QuerySet[ServiceAccount]:
    return restrict(ServiceAccount.objects.select_related("project", "user"), user, Action.MANAGE)


def project_secret_list(*, user) -> QuerySet[ProjectSecret]:
    """Secrets (names only) of the projects the user administers."""
    return restrict(ProjectSecret.objects.select_related("project"), user, Action.MANAGE)


def api_token_list(*, user) -> QuerySet[ApiToken]:
    """The user's own tokens and those of service accounts in projects the user administers."""
    if not user.is_authenticated:
        return ApiToken.objects.none()
    managed = project_ids(user, Action.MANAGE)
    others = (
        Q(user__service_account__project__in=managed) if managed is not None else Q(user__service_account__isnull=False)
    )
    tokens = ApiToken.objects.filter(Q(user=user) | others).select_related("user", "project")
    acting = getattr(user, "api_token", None)
    if acting is not None and acting.project_id is not None:
        tokens = tokens.filter(project_id=acting.project_id)  # a project-limited token sees nothing beyond it
    return tokens


def audit_event_list(*, user) -> QuerySet[AuditEvent]:
    """Project events for project admins; organization-level events for organization owners."""
    if not user.is_authenticated:
        return AuditEvent.objects.none()
    project_events = restrict(AuditEvent.objects.filter(project__isnull=False), user, Action.MANAGE)
    org_events = AuditEvent.objects.filter(
        project__isnull=True, organization__in=restrict(Organization.objects.all(), user, Action.MANAGE)
    )
    return project_events | org_events


def job_list(*, user) -> QuerySet[Job]:
    return restrict(Job.objects.select_related("project", "created_by"), user, Action.VIEW)


def worker_list(*, user) -> QuerySet[Worker]:
    return Worker.objects.all() if user.is_authenticated else Worker.objects.none()


def project_for_user(*, user, slug: str, action: Action = Action.VIEW) -> Project | None:
    return project_list(user=user, action=action).filter(slug=slug).first()
