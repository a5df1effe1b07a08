"""Writes for the registry: models, versions, uploads, imports, lineage, aliases and promotions, deletion."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.core.audit import audit_record, snapshot
from apps.core.models import Project
from apps.core.permissions import Action, PermissionDenied, check

from .models import (
    Alias,
    Lineage,
    ModelVersion,
    Promotion,
    PromotionStatus,
    RegisteredModel,
    Relation,
    Upload,
    VersionStatus,
)

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MAX_FILES = 10_000
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _clean_path(path: str) -> str:
    """A relative POSIX path inside the version: no absolute paths, no '..', no empty parts."""
    if not isinstance(path, str) or not path or len(path) > 1000 or "\\" in path or "\x00" in path:
        raise ValidationError(f"Invalid file path {path!r}.")
    parts = path.split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValidationError(f"Invalid file path {path!r}: use a relative path without '.' or '..' parts.")
    return path


def validate_manifest(files: Iterable[dict]) -> list[dict]:
    cleaned, seen = [], set()
    for entry in files:
        if not isinstance(entry, dict):
            raise ValidationError("Each file must be an object with path, size and sha256.")
        path = _clean_path(entry.get("path"))
        size, sha = entry.get("size"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > 2**62:
            raise ValidationError(f"{path}: size must be a non-negative integer.")
        if not isinstance(sha, str) or not SHA256_RE.match(sha.lower()):
            raise ValidationError(f"{path}: sha256 must be 64 hexadecimal characters.")
        if path in seen:
            raise ValidationError(f"{path}: listed twice.")
        seen.add(path)
        cleaned.append({"path": path, "size": size, "sha256": sha.lower()})
    if not cleaned:
        raise ValidationError("A version needs at least one file.")
    if len(cleaned) > MAX_FILES:
        raise ValidationError(f"A version may hold at most {MAX_FILES} files.")
    return sorted(cleaned, key=lambda f: f["path"])


# Models --------------------------------------------------------------------------------------------------------


@transaction.atomic
def registered_model_create(
    *,
    user,
    project: Project,
    name: str,
    description: str = "",
    task: str = "",
    license: str = "",
    origin: str = "",
    tags: list[str] | None = None,
    restricted: bool = False,
) -> RegisteredModel:
    check(user, Action.CHANGE, project)
    if restricted:  # as for changing the flag later: only project admins may hide a model from the project
        check(user, Action.MANAGE, project)
    if not NAME_RE.match(name or ""):
        raise ValidationError("Model names use letters, digits, '.', '_' or '-' (at most 128, starting alphanumeric).")
    model = RegisteredModel(
        project=project,
        name=name,
        description=description,
        license=license,
        tags=_clean_tags(tags),
        owner=user if user.is_authenticated else None,
        restricted=restricted,
    )
    if task:
        model.task = task
    if origin:
        model.origin = origin
    try:
        with transaction.atomic():
            model.full_clean()
            model.save()
    except IntegrityError:
        raise ValidationError(f"A model named '{name}' already exists in this project.") from None
    audit_record(actor=user, action="registered_model.create", obj=model, after=snapshot(model))
    return model


@transaction.atomic
def registered_model_update(*, user, model: RegisteredModel, **changes) -> RegisteredModel:
    check(user, Action.CHANGE, model)
    if "restricted" in changes:
        check(user, Action.MANAGE, model.project)
    before = snapshot(model)
    for field in ("description", "task", "license", "origin", "restricted"):
        if field in changes and changes[field] is not None:
            setattr(model, field, changes[field])
    if changes.get("tags") is not None:
        model.tags = _clean_tags(changes["tags"])
    model.full_clean()
    model.save()
    audit_record(actor=user, action="registered_model.update", obj=model, before=before, after=snapshot(model))
    return model


def _clean_tags(tags) -> list[str]:
    tags = tags or []
    if not isinstance(tags, list) or len(tags) > 50 or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in tags):
        raise ValidationError("Tags are a list of at most 50 strings of 1–64 characters.")
    return sorted(set(tags))


# Versions and uploads ------------------------------------------------------------------------------------------


def _next_number(model: RegisteredModel) -> int:
    RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
    return (model.versions.aggregate(n=Max("number"))["n"] or 0) + 1


def _model_for_push(*, user, project: Project, name: str, task: str = "") -> RegisteredModel:
    model = RegisteredModel.objects.filter(project=project, name=name).first()
    if model is None:
        return registered_model_create(user=user, project=project, name=name, task=task)
    check(user, Action.CHANGE, model)
    return model


@transaction.atomic
def version_create(
    *,
    user,
    project: Project,
    name: str,
    files: list[dict],
    source_uri: str = "",
    description: str = "",
    tags: list[str] | None = None,
    mlflow_run_id: str = "",
    parents: list[tuple[ModelVersion, str]] = (),
    task: str = "",
) -> ModelVersion:
    """A new version in the `uploading` state, with its manifest checked and its lineage recorded."""
    check(user, Action.CHANGE, project)
    manifest = validate_manifest(files)
    model = _model_for_push(user=user, project=project, name=name, task=task)
    if mlflow_run_id and not re.match(r"^[A-Za-z0-9_-]{1,64}$", mlflow_run_id):
        raise ValidationError("mlflow_run_id must be 1–64 letters, digits, '-' or '_'.")
    version = ModelVersion.objects.create(
        model=model,
        number=_next_number(model),
        source_uri=source_uri[:1000],
        description=description,
        tags=_clean_tags(tags),
        mlflow_run_id=mlflow_run_id,
        created_by=user if user.is_authenticated else None,
        total_size=sum(f["size"] for f in manifest),
        file_count=len(manifest),
    )
    for parent, relation in parents:
        lineage_add(user=user, child=version, parent=parent, relation=relation, audit=False)
    audit_record(
        actor=user,
        action="model_version.create",
        obj=version,
        project=project,
        after={
            **snapshot(version, ["number", "source_uri", "total_size", "file_count", "mlflow_run_id"]),
            "parents": [f"{p.model.name}:{p.number} ({r})" for p, r in parents],
        },
    )
    version._manifest = manifest
    return version


@transaction.atomic
def upload_open(*, user, project: Project, name: str, files: list[dict], **version_fields) -> Upload:
    version = version_create(user=user, project=project, name=name, files=files, **version_fields)
    upload = Upload.objects.create(
        version=version,
        manifest=version._manifest,
        part_size=settings.UPLOAD_PART_SIZE,
        expires_at=timezone.now() + datetime.timedelta(hours=settings.UPLOAD_EXPIRY_HOURS),
        created_by=user if user.is_authenticated else None,
    )
    audit_record(
        actor=user,
        action="upload.open",
        obj=upload,
        project=project,
        after={"version": str(version), "files": len(upload.manifest), "bytes": version.total_size},
    )
    return upload


def lineage_add(*, user, child: ModelVersion, parent: ModelVersion, relation: str, audit: bool = True) -> Lineage:
    check(user, Action.VIEW, parent)
    if relation not in Relation.values:
        raise ValidationError(f"Unknown relation '{relation}'. Use one of: {', '.join(Relation.values)}.")
    if parent.pk == child.pk:
        raise ValidationError("A version cannot be its own parent.")
    if child.pk in _ancestor_ids(parent):
        raise ValidationError("That link would make a cycle in the lineage.")
    link, _ = Lineage.objects.get_or_create(child=child, parent=parent, defaults={"relation": relation})
    if audit:
        audit_record(actor=user, action="lineage.add", obj=child, after={"parent": str(parent), "relation": relation})
    return link


def _ancestor_ids(version: ModelVersion) -> set[int]:
    seen, frontier = set(), {version.pk}
    while frontier:
        parents = set(Lineage.objects.filter(child_id__in=frontier).values_list("parent_id", flat=True)) - seen
        seen |= parents
        frontier = parents
    return seen


# Aliases and promotions ----------------------------------------------------------------------------------------


def _is_protected(alias: str) -> bool:
    return alias in settings.PROTECTED_ALIASES


@transaction.atomic
def alias_set(*, user, version: ModelVersion, alias: str, reason: str = "") -> Promotion:
    """Point an alias at a version. Protected aliases need a maintainer and, if configured, a second approver."""
    if not ALIAS_RE.match(alias or ""):
        raise ValidationError("Alias names use lowercase letters, digits, '_' or '-' (at most 64).")
    if version.deleted_at is not None or version.status != VersionStatus.READY:
        raise ValidationError(f"Only ready versions can take an alias; {version} is {version.status}.")
    model = version.model
    protected = _is_protected(alias)
    check(user, Action.PROMOTE if protected else Action.CHANGE, version)
    current = Alias.objects.select_for_update().filter(model=model, name=alias).first()
    promotion = Promotion.objects.create(
        model=model,
        alias=alias,
        from_version=current.version if current else None,
        to_version=version,
        reason=reason[:1000],
        requested_by=user,
        status=PromotionStatus.PENDING if protected and settings.PROTECTED_ALIAS_APPROVAL else PromotionStatus.APPLIED,
    )
    if promotion.status == PromotionStatus.APPLIED:
        _apply(promotion, decided_by=user)
    audit_record(
        actor=user,
        action="alias.request" if promotion.status == PromotionStatus.PENDING else "alias.move",
        obj=model,
        object_type="registry.alias",
        object_id=f"{model.pk}:{alias}",
        before={"version": promotion.from_version.number if promotion.from_version else None},
        after={"version": version.number, "reason": reason, "status": promotion.status},
    )
    return promotion


def _apply(promotion: Promotion, *, decided_by) -> None:
    Alias.objects.update_or_create(
        model=promotion.model, name=promotion.alias, defaults={"version": promotion.to_version}
    )
    promotion.status = PromotionStatus.APPLIED
    promotion.decided_by = decided_by
    promotion.decided_at = timezone.now()
    promotion.save(update_fields=["status", "decided_by", "decided_at", "updated_at"])


@transaction.atomic
def promotion_decide(*, user, promotion: Promotion, approve: bool) -> Promotion:
    check(user, Action.PROMOTE, promotion.model)
    if promotion.status != PromotionStatus.PENDING:
        raise ValidationError(f"This promotion is already {promotion.status}.")
    if promotion.requested_by_id == user.pk:
        raise PermissionDenied("A second maintainer must approve a move you requested.")
    if approve:
        if promotion.to_version.deleted_at is not None or promotion.to_version.status != VersionStatus.READY:
            raise ValidationError("The target version is no longer ready.")
        current = Alias.objects.select_for_update().filter(model=promotion.model, name=promotion.alias).first()
        promotion.from_version = current.version if current else None
        promotion.save(update_fields=["from_version"])
        _apply(promotion, decided_by=user)
    else:
        promotion.status = PromotionStatus.REJECTED
        promotion.decided_by = user
        promotion.decided_at = timezone.now()
        promotion.save(update_fields=["status", "decided_by", "decided_at", "updated_at"])
    audit_record(
        actor=user,
        action="alias.approve" if approve else "alias.reject",
        obj=promotion.model,
        object_type="registry.alias",
        object_id=f"{promotion.model_id}:{promotion.alias}",
        after={"version": promotion.to_version.number, "status": promotion.status},
    )
    return promotion


@transaction.atomic
def alias_delete(*, user, model: RegisteredModel, alias: str) -> None:
    check(user, Action.PROMOTE if _is_protected(alias) else Action.CHANGE, model)
    current = Alias.objects.filter(model=model, name=alias).first()
    if current is None:
        raise ValidationError(f"No alias '{alias}'.")
    audit_record(
        actor=user,
        action="alias.delete",
        obj=model,
        object_type="registry.alias",
        object_id=f"{model.pk}:{alias}",
        before={"version": current.version.number},
    )
    current.delete()


# Deletion ------------------------------------------------------------------------------------------------------


@transaction.atomic
def version_delete(*, user, version: ModelVersion) -> ModelVersion:
    """Soft delete: hidden at once, bytes freed by garbage collection after the retention period."""
    check(user, Action.DELETE, version)
    protected = Alias.objects.filter(version=version, name__in=settings.PROTECTED_ALIASES).values_list(
        "name", flat=True
    )
    if protected:
        raise ValidationError(f"{version} is behind the protected alias '{protected[0]}'; move it first.")
    if version.deleted_at is None:
        Alias.objects.filter(version=version).delete()
        version.deleted_at = timezone.now()
        version.save(update_fields=["deleted_at", "updated_at"])
        audit_record(
            actor=user,
            action="model_version.delete",
            obj=version,
            project=version.model.project,
            after={"deleted_at": str(version.deleted_at)},
        )
    return version
