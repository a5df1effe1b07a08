"""Writing audit events. Every service that changes state calls `audit_record` in the same transaction."""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Iterable
from typing import Any

from django.db.models import Model

from . import context
from .models import AuditEvent, Organization, Project

SECRET_FIELDS = {"key_hash", "password", "secret", "encrypted_value", "value_encrypted"}


def _plain(value: Any) -> Any:
    if isinstance(value, Model):
        return value.pk
    if isinstance(value, datetime.datetime | datetime.date | uuid.UUID | decimal.Decimal):
        return str(value)
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    return value


def snapshot(obj: Model | None, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The concrete field values of obj that an audit diff compares; secrets are left out."""
    if obj is None:
        return {}
    names = fields or [f.attname for f in obj._meta.concrete_fields]
    return {name: _plain(getattr(obj, name)) for name in names if name not in SECRET_FIELDS}


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, list[Any]]:
    keys = set(before) | set(after)
    return {k: [before.get(k), after.get(k)] for k in sorted(keys) if before.get(k) != after.get(k)}


def _scope_of(obj: Model | None) -> tuple[Organization | None, Project | None]:
    if obj is None:
        return None, None
    if isinstance(obj, Project):
        return obj.organization, obj
    if isinstance(obj, Organization):
        return obj, None
    project = getattr(obj, "project", None)
    if isinstance(project, Project):
        return project.organization, project
    organization = getattr(obj, "organization", None)
    return (organization if isinstance(organization, Organization) else None), None


def audit_record(
    *,
    actor,
    action: str,
    obj: Model | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    project: Project | None = None,
    organization: Organization | None = None,
) -> AuditEvent:
    """Append one audit event. `actor` is the acting user (None for the system); its API token is taken from it."""
    ctx = context.current()
    obj_org, obj_project = _scope_of(obj)
    project = project or obj_project
    organization = organization or obj_org or (project.organization if project else None)
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    token = getattr(user, "api_token", None) if user else None
    label = user.get_username() if user else "system"
    if token is not None:
        label = f"{label} (token {token.key_prefix})"
    return AuditEvent.objects.create(
        actor=user,
        actor_label=label[:200],
        token=token,
        action=action,
        object_type=object_type or (obj._meta.label_lower if obj is not None else ""),
        object_id=str(object_id if object_id is not None else (obj.pk if obj is not None else "")),
        object_repr=str(obj)[:200] if obj is not None else "",
        organization=organization,
        project=project,
        changes=diff(before or {}, after or {}),
        request_id=ctx.request_id if ctx else "",
        ip_address=ctx.ip_address if ctx else None,
    )
