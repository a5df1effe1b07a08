"""The one permissions module. Every API view, page, selector and consumer asks here.

A user's role on a project comes from a direct membership, a team membership, organization ownership
(admin on every project of the organization) or superuser status. A per-object grant adds a role on one
object. An API token narrows this further: to its scopes and, optionally, to one project.

Objects a user may not view are reported as missing (404), never as forbidden.
"""

from __future__ import annotations

from enum import StrEnum

from django.contrib.contenttypes.models import ContentType
from django.db.models import CharField, Exists, Model, OuterRef, Q, QuerySet
from django.db.models.functions import Cast
from django.http import Http404

from .models import ApiToken, Membership, ObjectGrant, Organization, Project, Role, TokenScope


class Action(StrEnum):
    VIEW = "view"
    INVOKE = "invoke"
    CHANGE = "change"
    DELETE = "delete"
    DEPLOY = "deploy"
    PROMOTE = "promote"
    MANAGE = "manage"


# The weakest project role allowed to take each action.
ACTION_MIN_ROLE: dict[Action, Role] = {
    Action.VIEW: Role.VIEWER,
    Action.INVOKE: Role.DEVELOPER,
    Action.CHANGE: Role.DEVELOPER,
    Action.DELETE: Role.MAINTAINER,
    Action.DEPLOY: Role.MAINTAINER,
    Action.PROMOTE: Role.MAINTAINER,
    Action.MANAGE: Role.ADMIN,
}

# The token scope each action needs.
ACTION_SCOPE: dict[Action, TokenScope] = {
    Action.VIEW: TokenScope.READ,
    Action.INVOKE: TokenScope.WRITE,
    Action.CHANGE: TokenScope.WRITE,
    Action.DELETE: TokenScope.WRITE,
    Action.DEPLOY: TokenScope.WRITE,
    Action.PROMOTE: TokenScope.WRITE,
    Action.MANAGE: TokenScope.ADMIN,
}


class PermissionDenied(Exception):
    """The user may see the object but not take this action on it (HTTP 403)."""


def _token(user) -> ApiToken | None:
    return getattr(user, "api_token", None)


def token_scopes_granted(token: ApiToken) -> set[str]:
    """The scopes a token holds, with the ones its scopes imply (admin implies write implies read)."""
    implied = {TokenScope.ADMIN: {"admin", "write", "read"}, TokenScope.WRITE: {"write", "read"}}
    return set().union(*(implied.get(TokenScope(s), {s}) for s in token.scopes if s in TokenScope.values))


def token_allows(token: ApiToken | None, action: Action) -> bool:
    if token is None:
        return True
    return ACTION_SCOPE[Action(action)] in token_scopes_granted(token)


def _roles_at_least(role: Role) -> list[str]:
    return [r for r in Role.values if Role.rank(r) >= Role.rank(role)]


def project_ids(user, action: Action | str) -> QuerySet | None:
    """Ids of projects on which the user may take the action, or None meaning every project (superuser)."""
    action = Action(action)
    if not user or not user.is_authenticated or not user.is_active:
        return Project.objects.none().values("pk")
    token = _token(user)
    if not token_allows(token, action):
        return Project.objects.none().values("pk")
    roles = _roles_at_least(ACTION_MIN_ROLE[action])
    if user.is_superuser:
        qs = None
    else:
        qs = Project.objects.filter(
            Q(organization__owners=user)
            | Q(memberships__user=user, memberships__role__in=roles)
            | Q(memberships__team__members=user, memberships__role__in=roles)
        ).values("pk")
    if token is not None and token.project_id is not None:
        base = Project.objects.filter(pk=token.project_id)
        qs = base.filter(pk__in=qs).values("pk") if qs is not None else base.values("pk")
    return qs


def role_on_project(user, project: Project) -> Role | None:
    """The strongest role the user holds on the project, ignoring token limits."""
    if not user or not user.is_authenticated or not user.is_active:
        return None
    if user.is_superuser or project.organization.owners.filter(pk=user.pk).exists():
        return Role.ADMIN
    roles = (
        Membership.objects.filter(project=project)
        .filter(Q(user=user) | Q(team__members=user))
        .values_list("role", flat=True)
    )
    return max(roles, key=Role.rank, default=None)


def _grants(user, model: type[Model], action: Action) -> QuerySet:
    roles = _roles_at_least(ACTION_MIN_ROLE[action])
    grants = ObjectGrant.objects.filter(content_type=ContentType.objects.get_for_model(model), role__in=roles).filter(
        Q(user=user) | Q(team__members=user)
    )
    token = _token(user)
    if token is not None and token.project_id is not None:
        grants = grants.filter(project_id=token.project_id)
    return grants


def restrict(queryset: QuerySet, user, action: Action | str = Action.VIEW) -> QuerySet:
    """Narrow a queryset to the objects the user may take `action` on.

    A model declares `project_path` (the lookup to its project). A model with `restricted_field` hides
    restricted objects from everyone but project admins and grantees; `grant_via` = (lookup of the id, model)
    lets a grant on a parent object (a registered model) cover its children (its versions).
    """
    action = Action(action)
    model = queryset.model
    if model is Organization:
        return _restrict_organizations(queryset, user, action)
    path = getattr(model, "project_path", None)
    if path is None:
        raise TypeError(f"{model.__name__} is not project-scoped; give it a project_path or handle it here")
    ids = project_ids(user, action)
    if ids is None:
        return queryset
    condition = Q(**{f"{path}__in": ids})
    restricted_field = getattr(model, "restricted_field", None)
    if restricted_field:
        admin_ids = project_ids(user, Action.MANAGE)
        condition &= Q(**{restricted_field: False}) | Q(**{f"{path}__in": admin_ids})
    if model is not Project and user.is_authenticated and token_allows(_token(user), action):
        id_path, grant_model = getattr(model, "grant_via", ("pk", model))
        id_as_text = Cast(OuterRef(id_path), output_field=CharField())
        condition |= Q(Exists(_grants(user, grant_model, action).filter(object_id=id_as_text)))
    return queryset.filter(condition)


def _restrict_organizations(queryset: QuerySet, user, action: Action) -> QuerySet:
    token = _token(user)
    if not user or not user.is_authenticated or not token_allows(token, action):
        return queryset.none()
    if token is not None and token.project_id is not None:
        # A token limited to one project sees that project's organization and manages no organization: teams
        # and new projects reach beyond its project.
        if action != Action.VIEW:
            return queryset.none()
        return queryset.filter(
            pk__in=Project.objects.filter(pk__in=project_ids(user, action)).values("organization_id")
        )
    if user.is_superuser:
        return queryset
    owned = Organization.owners.through.objects.filter(user=user).values("organization_id")
    condition = Q(pk__in=owned)
    if action == Action.VIEW:
        condition |= Q(pk__in=Project.objects.filter(pk__in=project_ids(user, Action.VIEW)).values("organization_id"))
    return queryset.filter(condition)


def can(user, action: Action | str, obj: Model) -> bool:
    model = type(obj)
    return restrict(model._default_manager.filter(pk=obj.pk), user, action).exists()


def check(user, action: Action | str, obj: Model) -> None:
    """Raise Http404 when the user may not see obj, PermissionDenied when they may see it but not act."""
    if not can(user, Action.VIEW, obj):
        raise Http404("Not found.")
    if Action(action) != Action.VIEW and not can(user, action, obj):
        raise PermissionDenied(
            token_scope_error(user, action) or f"You may not {action} this {type(obj)._meta.verbose_name}."
        )


def token_scope_error(user, action: Action | str) -> str | None:
    """A message when the request's token lacks the scope for the action, else None."""
    token = _token(user)
    if token is not None and not token_allows(token, Action(action)):
        return f"This token lacks the '{ACTION_SCOPE[Action(action)]}' scope."
    return None
