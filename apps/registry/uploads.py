"""The resumable upload protocol: parts in any order (each idempotent), status, completion as a job."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from apps.core import jobs
from apps.core.audit import audit_record
from apps.core.models import Job
from apps.core.permissions import Action, check

from .models import Upload, UploadPart, UploadStatus
from .storage import get_store, part_key


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


def expected_part_size(upload: Upload, file_index: int, part_number: int) -> int:
    if not 0 <= file_index < len(upload.manifest):
        raise ValidationError(f"file index {file_index} is outside 0..{len(upload.manifest) - 1}.")
    size = upload.manifest[file_index]["size"]
    parts = part_count(size, upload.part_size)
    if not 0 <= part_number < parts:
        raise ValidationError(
            f"part {part_number} is outside 0..{parts - 1} for {upload.manifest[file_index]['path']}."
        )
    return min(upload.part_size, size - part_number * upload.part_size)


class _HashingReader:
    """Reads exactly `limit` bytes from a request stream while hashing them; raises if the body is short."""

    def __init__(self, stream, limit: int):
        self.stream, self.remaining, self.hash = stream, limit, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        size = self.remaining if size is None or size < 0 else min(size, self.remaining)
        data = self.stream.read(size)
        if not data:
            raise ValidationError(f"The body ended {self.remaining} bytes early.")
        self.remaining -= len(data)
        self.hash.update(data)
        return data


def _require_open(upload: Upload) -> None:
    if upload.status != UploadStatus.OPEN:
        raise ValidationError(f"The upload is {upload.status}.")
    if upload.expires_at <= timezone.now():
        raise ValidationError("The upload has expired; open a new one.")


def upload_part_put(
    *,
    user,
    upload: Upload,
    file_index: int,
    part_number: int,
    stream,
    content_length: int | None,
    sha256: str | None = None,
) -> UploadPart:
    """Store one part. Sending the same part again replaces it; nothing is buffered whole in memory."""
    check(user, Action.CHANGE, upload)
    _require_open(upload)
    expected = expected_part_size(upload, file_index, part_number)
    if content_length is not None and content_length != expected:
        raise ValidationError(
            f"Part {part_number} of file {file_index} must be {expected} bytes, not {content_length}."
        )
    reader = _HashingReader(stream, expected)
    key = part_key(upload.id, file_index, part_number)
    get_store().put(key, reader, expected)
    digest = reader.hash.hexdigest()
    if reader.remaining:
        raise ValidationError("The part body is shorter than its announced size.")
    if sha256 and sha256.lower() != digest:
        # The bad bytes replaced any earlier copy of this part: it is missing again until sent anew.
        get_store().delete(key)
        UploadPart.objects.filter(upload=upload, file_index=file_index, part_number=part_number).delete()
        raise ValidationError(f"Part sha256 mismatch: header says {sha256}, body hashes to {digest}.")
    part, _ = UploadPart.objects.update_or_create(
        upload=upload,
        file_index=file_index,
        part_number=part_number,
        defaults={"size": expected, "sha256": digest},
    )
    return part


def upload_progress(upload: Upload) -> dict:
    """Which parts have arrived and which are missing, per file."""
    received: dict[int, set[int]] = {}
    for file_index, part_number in upload.parts.values_list("file_index", "part_number"):
        received.setdefault(file_index, set()).add(part_number)
    files, total_parts, done_parts, done_bytes = [], 0, 0, 0
    for index, entry in enumerate(upload.manifest):
        count = part_count(entry["size"], upload.part_size)
        have = received.get(index, set())
        missing = [n for n in range(count) if n not in have]
        total_parts += count
        done_parts += count - len(missing)
        done_bytes += sum(min(upload.part_size, entry["size"] - n * upload.part_size) for n in have if n < count)
        files.append(
            {
                "index": index,
                "path": entry["path"],
                "size": entry["size"],
                "parts": count,
                "received": sorted(have),
                "missing": missing,
            }
        )
    return {
        "parts": total_parts,
        "received_parts": done_parts,
        "received_bytes": done_bytes,
        "complete": done_parts == total_parts,
        "files": files,
    }


@transaction.atomic
def upload_complete(*, user, upload: Upload) -> Job:
    """Check every part arrived, then start the job that verifies hashes, stores chunks and scans."""
    check(user, Action.CHANGE, upload)
    upload = Upload.objects.select_for_update().get(pk=upload.pk)
    _require_open(upload)
    progress = upload_progress(upload)
    if not progress["complete"]:
        missing = [(f["path"], f["missing"][:5]) for f in progress["files"] if f["missing"]]
        raise ValidationError(
            f"{progress['parts'] - progress['received_parts']} parts are missing, e.g. {missing[:3]}."
        )
    upload.status = UploadStatus.COMPLETING
    upload.save(update_fields=["status", "updated_at"])
    audit_record(
        actor=user,
        action="upload.complete",
        obj=upload,
        project=upload.version.model.project,
        after={"version": str(upload.version)},
    )
    return jobs.job_create(
        user=user,
        project=upload.version.model.project,
        job_type="registry.complete_upload",
        params={"upload_id": str(upload.id)},
    )


def staged_blocks(upload: Upload, file_index: int) -> Iterator[bytes]:
    store = get_store()
    for part_number in range(part_count(upload.manifest[file_index]["size"], upload.part_size)):
        yield from store.read(part_key(upload.id, file_index, part_number))


def uploads_expire() -> int:
    """Expire open uploads past their deadline and drop their staged parts; returns how many."""
    count = 0
    for upload in Upload.objects.filter(status=UploadStatus.OPEN, expires_at__lt=timezone.now()).select_related(
        "version"
    ):
        get_store().delete_prefix(f"uploads/{upload.id}/")
        upload.parts.all().delete()
        upload.status = UploadStatus.EXPIRED
        upload.save(update_fields=["status", "updated_at"])
        version = upload.version
        version.status, version.status_reason = "failed", "The upload expired before it was completed."
        version.save(update_fields=["status", "status_reason", "updated_at"])
        count += 1
    return count
