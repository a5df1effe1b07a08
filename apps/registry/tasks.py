"""Celery entry points for the registry: thin wrappers around services."""

from celery import shared_task

from apps.core import jobs
from controlplane.celery import QueueName

from . import gc, uploads
from .models import Upload, UploadStatus
from .storage import get_store
from .versions import version_fill

jobs.job_type_register(
    "registry.complete_upload",
    task="apps.registry.tasks.job_complete_upload",
    queue=QueueName.DEFAULT,
    description="Verify an upload's files, store them as deduplicated chunks, read metadata and scan.",
)


@shared_task(name="apps.registry.tasks.job_complete_upload", acks_late=True)
@jobs.job_task
def job_complete_upload(job: jobs.JobContext) -> dict:
    upload = Upload.objects.select_related("version__model").get(pk=job.params["upload_id"])
    sources = [(entry, lambda i=i: uploads.staged_blocks(upload, i)) for i, entry in enumerate(upload.manifest)]
    try:
        version = version_fill(version=upload.version, sources=sources, progress=job.progress)
    except jobs.JobError as exc:
        Upload.objects.filter(pk=upload.pk).update(status=UploadStatus.FAILED, error=str(exc))
        raise
    Upload.objects.filter(pk=upload.pk).update(status=UploadStatus.COMPLETED)
    upload.parts.all().delete()
    get_store().delete_prefix(f"uploads/{upload.id}/")
    return {
        "version": version.number,
        "status": version.status,
        "new_bytes": version.new_bytes,
        "total_size": version.total_size,
    }


@shared_task(name="apps.registry.tasks.registry_gc")
def registry_gc() -> dict:
    return gc.registry_gc()


@shared_task(name="apps.registry.tasks.uploads_expire")
def uploads_expire() -> int:
    return uploads.uploads_expire()
