"""Upload protocol, chunk store dedupe, integrity checks and garbage collection, on the real database."""

from __future__ import annotations

import datetime
import json

import pytest
import torch
from django.core.exceptions import ValidationError
from django.utils import timezone

from apps.core.models import Job, JobStatus, Role
from apps.registry import gc, uploads
from apps.registry.ingest import file_blocks
from apps.registry.models import Chunk, ModelVersion, UploadStatus, VersionStatus
from apps.registry.services import upload_open, version_delete
from apps.registry.tasks import job_complete_upload

from .conftest import manifest_entry, parts_of, safetensors_bytes, stream, tensors

PART = 8 * 1024 * 1024
CONFIG = json.dumps(
    {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": 20,
        "n_embd": 1024,
        "n_head": 16,
        "n_positions": 2048,
        "vocab_size": 50257,
    }
).encode()


@pytest.fixture
def developer(project, member_factory, settings):
    settings.UPLOAD_PART_SIZE = PART
    return member_factory(Role.DEVELOPER)


def push(user, project, files: dict[str, bytes], name="tiny-gpt", reverse=True, **fields) -> ModelVersion:
    """Open an upload, send every part (in reverse order, the first part twice), complete, run the job."""
    upload = upload_open(
        user=user, project=project, name=name, files=[manifest_entry(p, d) for p, d in files.items()], **fields
    )
    order = sorted(enumerate(upload.manifest), reverse=reverse)
    for index, entry in order:
        pieces = parts_of(files[entry["path"]], upload.part_size)
        for number in reversed(range(len(pieces))) if reverse else range(len(pieces)):
            uploads.upload_part_put(
                user=user,
                upload=upload,
                file_index=index,
                part_number=number,
                stream=stream(pieces[number]),
                content_length=len(pieces[number]),
            )
        uploads.upload_part_put(
            user=user,
            upload=upload,
            file_index=index,
            part_number=0,
            stream=stream(pieces[0]),
            content_length=len(pieces[0]),
        )  # idempotent resend
    assert uploads.upload_progress(upload)["complete"]
    job = uploads.upload_complete(user=user, upload=upload)
    job_complete_upload(str(job.id))
    job.refresh_from_db()
    assert job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED)
    return ModelVersion.objects.get(pk=upload.version_id)


def test_upload_stores_verifies_and_reads_metadata(project, developer):
    weights = safetensors_bytes(tensors())
    version = push(developer, project, {"model.safetensors": weights, "config.json": CONFIG})
    assert version.status == VersionStatus.READY, version.status_reason
    assert version.number == 1 and version.format == "safetensors"
    assert version.metadata["parameters"] == 20 * 1_048_576
    assert version.metadata["layers"] == 20 and version.metadata["hidden_size"] == 1024
    assert version.metadata["kv_heads"] == 16 and version.metadata["max_context"] == 2048
    assert version.metadata["dtype"] == "float32" and version.metadata["tokenizer"] is False
    assert version.new_bytes == len(weights) + len(CONFIG)
    stored = version.files.get(path="model.safetensors")
    assert b"".join(file_blocks(stored)) == weights
    assert b"".join(file_blocks(stored, 5_000_000, 13_000_123)) == weights[5_000_000:13_000_123]
    assert version.upload.status == UploadStatus.COMPLETED


def test_identical_reupload_stores_no_new_bytes(project, developer):
    weights = safetensors_bytes(tensors())
    push(developer, project, {"model.safetensors": weights})
    chunks_before = Chunk.objects.count()
    second = push(developer, project, {"model.safetensors": weights}, reverse=False)
    assert second.status == VersionStatus.READY and second.number == 2
    assert second.new_bytes == 0 and Chunk.objects.count() == chunks_before


def test_derivative_with_ten_percent_changed_tensors_stores_at_most_fifteen_percent(project, developer):
    base = tensors()
    parent = push(developer, project, {"model.safetensors": safetensors_bytes(base)})
    tuned = dict(base)
    for name in ("layers.3.weight", "layers.11.weight"):  # 2 of 20 tensors = 10 %
        tuned[name] = base[name] + 0.01 * torch.ones_like(base[name])
    child_bytes = safetensors_bytes(tuned)
    child = push(
        developer, project, {"model.safetensors": child_bytes}, name="tiny-gpt-tuned", parents=[(parent, "fine-tune")]
    )
    assert child.status == VersionStatus.READY
    assert child.new_bytes <= 0.15 * len(child_bytes)
    assert child.new_bytes >= 2 * 4 * 1_048_576  # the two changed tensors really are new
    assert child.parent_links.get().parent == parent


def test_wrong_sha256_fails_the_version_with_the_file_named(project, developer):
    weights = safetensors_bytes(tensors(count=2))
    upload = upload_open(
        user=developer,
        project=project,
        name="bad",
        files=[{**manifest_entry("model.safetensors", weights), "sha256": "0" * 64}],
    )
    for number, piece in enumerate(parts_of(weights, upload.part_size)):
        uploads.upload_part_put(
            user=developer,
            upload=upload,
            file_index=0,
            part_number=number,
            stream=stream(piece),
            content_length=len(piece),
        )
    job = uploads.upload_complete(user=developer, upload=upload)
    job_complete_upload(str(job.id))
    job = Job.objects.get(pk=job.pk)
    version = ModelVersion.objects.get(pk=upload.version_id)
    assert job.status == JobStatus.FAILED and "model.safetensors: sha256 mismatch" in job.error
    assert version.status == VersionStatus.FAILED and "sha256 mismatch" in version.status_reason
    assert not version.files.exists()


def test_parts_are_checked_and_completion_needs_all_of_them(project, developer):
    data = b"x" * (PART + 10)
    upload = upload_open(user=developer, project=project, name="blob", files=[manifest_entry("blob.bin", data)])
    with pytest.raises(ValidationError, match="must be 10 bytes"):
        uploads.upload_part_put(
            user=developer, upload=upload, file_index=0, part_number=1, stream=stream(b"x" * 11), content_length=11
        )
    with pytest.raises(ValidationError, match="outside"):
        uploads.upload_part_put(
            user=developer, upload=upload, file_index=0, part_number=2, stream=stream(b""), content_length=0
        )
    with pytest.raises(ValidationError, match="sha256 mismatch"):
        uploads.upload_part_put(
            user=developer,
            upload=upload,
            file_index=0,
            part_number=1,
            stream=stream(b"y" * 10),
            content_length=10,
            sha256="0" * 64,
        )
    uploads.upload_part_put(
        user=developer, upload=upload, file_index=0, part_number=1, stream=stream(b"x" * 10), content_length=10
    )
    progress = uploads.upload_progress(upload)
    assert progress["files"][0]["missing"] == [0] and progress["received_bytes"] == 10
    with pytest.raises(ValidationError, match="1 parts are missing"):
        uploads.upload_complete(user=developer, upload=upload)


def test_expired_uploads_are_cleaned_up(project, developer, artifact_store):
    data = b"z" * 100
    upload = upload_open(user=developer, project=project, name="stale", files=[manifest_entry("z.bin", data)])
    uploads.upload_part_put(
        user=developer, upload=upload, file_index=0, part_number=0, stream=stream(data), content_length=100
    )
    assert any((artifact_store / "uploads").rglob("*"))
    type(upload).objects.filter(pk=upload.pk).update(expires_at=timezone.now() - datetime.timedelta(minutes=1))
    assert uploads.uploads_expire() == 1
    upload.refresh_from_db()
    assert upload.status == UploadStatus.EXPIRED and upload.version.status == VersionStatus.FAILED
    assert not any(p.is_file() for p in (artifact_store / "uploads").rglob("*"))


def test_garbage_collection_frees_only_unreferenced_chunks_after_retention(
    project, developer, settings, member_factory
):
    base = tensors(count=10)
    first = push(developer, project, {"model.safetensors": safetensors_bytes(base)})
    tuned = {**base, "layers.0.weight": base["layers.0.weight"] * 2}
    second = push(developer, project, {"model.safetensors": safetensors_bytes(tuned)})
    maintainer = member_factory(Role.MAINTAINER)
    version_delete(user=maintainer, version=second)
    assert gc.registry_gc() == {"versions_purged": 0, "chunks_freed": 0, "bytes_freed": 0}  # still retained
    later = timezone.now() + datetime.timedelta(days=settings.VERSION_RETENTION_DAYS, minutes=1)
    report = gc.registry_gc(now=later)
    assert report["versions_purged"] == 1
    assert report["bytes_freed"] == second.new_bytes == 4 * 1_048_576 and report["chunks_freed"] == 1
    stored = first.files.get()
    assert b"".join(file_blocks(stored)) == safetensors_bytes(base)  # the parent is intact
