"""Filling a version with bytes (from an upload or an import), then metadata, scan and the final status."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from django.db import transaction

from apps.core.jobs import JobError

from . import formats, scanning
from .ingest import IngestError, IngestResult, chunk_lock_shared, ingest_file
from .models import ModelVersion, VersionStatus

Progress = Callable[[int, str], None]


def version_fill(
    *, version: ModelVersion, sources: list[tuple[dict, Callable[[], Iterator[bytes]]]], progress: Progress
) -> ModelVersion:
    """Store every file of the version, verify each sha256, read metadata, scan, and set the status.

    `sources` pairs each manifest entry {path, size, sha256} with a function returning its bytes. Safe to
    run again: files stored by an earlier, interrupted attempt are replaced.
    """
    total = sum(entry["size"] for entry, _ in sources) or 1
    done = 0
    result = IngestResult()

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress(int(90 * done / total), f"storing {done / 2**20:,.0f} of {total / 2**20:,.0f} MiB")

    try:
        with transaction.atomic():
            chunk_lock_shared()
            version.files.all().delete()
            for entry, blocks in sources:
                ingest_file(
                    version=version,
                    path=entry["path"],
                    size=entry["size"],
                    sha256=entry["sha256"],
                    blocks=blocks(),
                    result=result,
                    on_bytes=advance,
                )
            paths = [entry["path"] for entry, _ in sources]
            version.metadata = formats.metadata_from_files(
                config=result.config, safetensors_headers=result.safetensors_headers, paths=paths
            )
            version.parameter_count = version.metadata.get("parameters")
            version.format = formats.detect_format(paths)
            version.new_bytes = result.new_bytes
            version.status, version.status_reason = VersionStatus.SCANNING, ""
            version.save()
    except IngestError as exc:
        _fail(version, str(exc))
        raise JobError(str(exc)) from None
    progress(92, "scanning pickle files")
    report = scanning.scan_version(version)
    version.scan_report = report
    if report.get("safe", False):
        version.status, version.status_reason = VersionStatus.READY, ""
    else:
        version.status = VersionStatus.QUARANTINED
        version.status_reason = report.get("summary", "The scan found unsafe imports.")
    version.save(update_fields=["scan_report", "status", "status_reason", "updated_at"])
    progress(100, f"{version.status}: {version.file_count} files, {version.new_bytes / 2**20:,.1f} MiB new")
    return version


def _fail(version: ModelVersion, reason: str) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.FAILED, status_reason=reason[:5000])
    version.status, version.status_reason = VersionStatus.FAILED, reason
