"""Converting a version's pickle weights to safetensors, registered as a new version with relation `converted`.

The service checks and enqueues; the job copies the version's files to a temporary directory, lets the worker
convert them (workers/convert.py, which loads with torch's weights-only unpickler), and stores the result through
the same path as an upload, so the new version gets its metadata, scan and status like any other.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

from celery import shared_task
from django.core.exceptions import ValidationError
from django.db import transaction

from apps.core import jobs
from apps.core.audit import audit_record
from apps.core.models import Job
from apps.core.permissions import Action, check
from controlplane.celery import QueueName

from .ingest import file_blocks
from .models import ModelVersion, Relation, VersionStatus
from .scanning import is_pickle_path
from .services import version_create
from .versions import version_fill

JOB_TYPE = "registry.convert_safetensors"
READ_BLOCK = 1024 * 1024

jobs.job_type_register(
    JOB_TYPE,
    task="apps.registry.convert.job_convert_safetensors",
    queue=QueueName.DEFAULT,
    description="Convert a cleanly scanned pickle checkpoint to safetensors, as a new version.",
)


def conversion_refusal(version: ModelVersion) -> str | None:
    """Why the version cannot be converted, or None when it can."""
    if version.deleted_at is not None:
        return f"{version} is deleted."
    if version.status != VersionStatus.READY:
        reason = f": {version.status_reason}" if version.status_reason else ""
        return f"Only ready versions with a clean scan can be converted; {version} is {version.status}{reason}"
    if version.scan_report.get("safe") is not True:
        return f"{version} has no clean scan report; it cannot be converted."
    if not any(is_pickle_path(path) for path in version.files.values_list("path", flat=True)):
        return f"{version} has no pickle weight files to convert."
    return None


@transaction.atomic
def version_convert_to_safetensors(*, user, version: ModelVersion) -> Job:
    """Start the job that converts the version's pickle weights to a new safetensors version."""
    check(user, Action.CHANGE, version)
    refusal = conversion_refusal(version)
    if refusal:
        raise ValidationError(refusal)
    audit_record(
        actor=user,
        action="model_version.convert",
        obj=version,
        project=version.model.project,
        after={"version": str(version), "to": "safetensors"},
    )
    return jobs.job_create(
        user=user, project=version.model.project, job_type=JOB_TYPE, params={"version_id": version.pk}
    )


@shared_task(name="apps.registry.convert.job_convert_safetensors", acks_late=True)
@jobs.job_task
def job_convert_safetensors(job: jobs.JobContext) -> dict:
    from workers.convert import ConversionError, convert_to_safetensors  # torch is only needed by this job

    version = ModelVersion.objects.select_related("model__project").get(pk=job.params["version_id"])
    refusal = conversion_refusal(version)
    if refusal:
        raise jobs.JobError(refusal)
    user = job.job.created_by
    if user is None:
        raise jobs.JobError("The user who asked for this conversion no longer exists.")
    stored = list(version.files.order_by("path"))
    weights = [f.path for f in stored if is_pickle_path(f.path)]
    with tempfile.TemporaryDirectory(prefix="convert-") as tmp:
        source_dir, out_dir = Path(tmp) / "source", Path(tmp) / "out"
        total = sum(f.size for f in stored) or 1
        copied, reported = 0, -1
        for version_file in stored:
            target = source_dir / version_file.path  # paths were checked to be relative, without '..'
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                for block in file_blocks(version_file):
                    out.write(block)
            copied += version_file.size
            percent = int(20 * copied / total)
            if percent != reported:  # one update per percent, however many small files
                job.progress(percent, f"copied {version_file.path}")
                reported = percent
        try:
            result = convert_to_safetensors(
                source_dir=source_dir,
                out_dir=out_dir,
                files=[{"path": f.path, "size": f.size, "sha256": f.sha256} for f in stored],
                weights=weights,
                progress=lambda percent, message: job.progress(20 + percent * 30 // 100, message),
            )
        except ConversionError as exc:
            raise jobs.JobError(str(exc)) from None
        child = _child_version(job, version, user, result["files"])
        sources = [(entry, lambda path=out_dir / entry["path"]: _read(path)) for entry in result["files"]]
        version_fill(
            version=child,
            sources=sources,
            progress=lambda percent, message: job.progress(50 + percent // 2, message),
        )
    return {"version": child.number, "status": child.status, "converted": result["converted"]}


def _child_version(job: jobs.JobContext, parent: ModelVersion, user, files: list[dict]) -> ModelVersion:
    """The version this job creates; a retried job refills the one its earlier attempt created."""
    source_uri = f"job://{job.job.pk}"
    existing = parent.child_links.filter(relation=Relation.CONVERTED, child__source_uri=source_uri).first()
    if existing is not None:
        return existing.child
    return version_create(
        user=user,
        project=parent.model.project,
        name=parent.model.name,
        files=files,
        source_uri=source_uri,
        description=f"Converted to safetensors from version {parent.number}.",
        tags=list(parent.tags),
        mlflow_run_id=parent.mlflow_run_id,
        parents=[(parent, Relation.CONVERTED)],
    )


def _read(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            yield block
