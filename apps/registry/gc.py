"""Garbage collection: purge versions soft-deleted longer than the retention period, free unreferenced chunks."""

from __future__ import annotations

import datetime

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from .ingest import CHUNK_LOCK
from .models import Chunk, FileChunk, ModelVersion
from .storage import chunk_key, get_store


def registry_gc(*, now: datetime.datetime | None = None) -> dict:
    """Returns {"versions_purged", "chunks_freed", "bytes_freed"}."""
    now = now or timezone.now()
    cutoff = now - datetime.timedelta(days=settings.VERSION_RETENTION_DAYS)
    store = get_store()
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [CHUNK_LOCK])  # no ingest runs meanwhile
        _, deleted = ModelVersion.objects.filter(deleted_at__lt=cutoff).delete()
        orphans = Chunk.objects.filter(~Exists(FileChunk.objects.filter(chunk=OuterRef("pk"))))
        freed = list(orphans.values_list("digest", "size"))
        Chunk.objects.filter(digest__in=[d for d, _ in freed]).delete()
    for digest, _ in freed:  # after commit: a crash here leaves stray blobs, never dangling references
        store.delete(chunk_key(digest))
    return {
        "versions_purged": deleted.get("registry.ModelVersion", 0),
        "chunks_freed": len(freed),
        "bytes_freed": sum(size for _, size in freed),
    }
