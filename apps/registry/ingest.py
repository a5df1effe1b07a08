"""Turning a byte stream into stored chunks: hash, cut, store what is new, record the file's chunk list.

Used by upload completion (bytes from the staged parts) and by imports (bytes from a directory or the Hub).
Memory stays bounded by the largest chunk (64 MiB), whatever the file size.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from django.db import connection, transaction

from . import formats
from .models import Chunk, FileChunk, ModelVersion, VersionFile
from .storage import chunk_key, get_store

# Completion holds this advisory lock shared, garbage collection exclusively: GC never frees a chunk that an
# ingest is about to reference.
CHUNK_LOCK = 7_301_100


class IngestError(Exception):
    """The bytes do not match what was announced; the message names the file."""


@dataclass
class IngestResult:
    new_bytes: int = 0
    safetensors_headers: list[dict] = field(default_factory=list)
    config: dict | None = None


class _Reader:
    """Sequential reads of exact sizes over an iterator of byte blocks."""

    def __init__(self, blocks: Iterator[bytes]):
        self.blocks = blocks
        self.buffer = bytearray()

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            block = next(self.blocks, None)
            if block is None:
                break
            self.buffer += block
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


def chunk_lock_shared() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [CHUNK_LOCK])


def ingest_file(
    *,
    version: ModelVersion,
    path: str,
    size: int,
    sha256: str,
    blocks: Iterator[bytes],
    result: IngestResult,
    on_bytes: Callable[[int], None] | None = None,
) -> VersionFile:
    store = get_store()
    reader = _Reader(blocks)
    file_hash = hashlib.sha256()
    head = reader.read(min(size, 8))
    boundaries = formats.fixed_boundaries(size)
    if path.lower().endswith(".safetensors"):
        if len(head) == 8:
            header_len = int.from_bytes(head, "little")
            if 0 < header_len <= formats.MAX_HEADER and header_len + 8 <= size:
                head += reader.read(header_len)
        try:
            data_start, tensors = formats.parse_safetensors_header(head, size)
        except formats.MalformedSafetensors as exc:
            raise IngestError(f"{path}: malformed safetensors: {exc}") from None
        boundaries = formats.safetensors_boundaries(data_start, tensors, size)
        result.safetensors_headers.append(tensors)
    pending = io.BytesIO(head)
    pending.seek(0, io.SEEK_END)
    rows: list[FileChunk] = []
    version_file = VersionFile.objects.create(version=version, path=path, size=size, sha256=sha256)
    offset = 0
    for index, end in enumerate(boundaries):
        need = end - offset - pending.tell()
        if need > 0:
            data = reader.read(need)
            if len(data) < need:
                raise IngestError(f"{path}: ended after {offset + pending.tell() + len(data)} of {size} bytes")
            pending.write(data)
        payload = pending.getvalue()
        piece, rest = payload[: end - offset], payload[end - offset :]
        file_hash.update(piece)
        digest = hashlib.sha256(piece).hexdigest()
        result.new_bytes += _store_chunk(store, digest, piece)
        rows.append(FileChunk(file=version_file, index=index, offset=offset, chunk_id=digest))
        offset = end
        pending = io.BytesIO(rest)
        pending.seek(0, io.SEEK_END)
        if on_bytes:
            on_bytes(len(piece))
    if pending.tell() or reader.read(1):
        raise IngestError(f"{path}: more than the announced {size} bytes")
    actual = file_hash.hexdigest()
    if actual != sha256:
        raise IngestError(f"{path}: sha256 mismatch (announced {sha256}, received {actual})")
    FileChunk.objects.bulk_create(rows, batch_size=2000)
    if path.rsplit("/", 1)[-1] == "config.json" and size <= 5 * 1024 * 1024:
        result.config = _read_json(version_file)
    return version_file


def _store_chunk(store, digest: str, piece: bytes) -> int:
    """Store the chunk unless it exists; returns the new bytes written."""
    if Chunk.objects.filter(digest=digest).exists():
        return 0
    store.put(chunk_key(digest), io.BytesIO(piece), len(piece))
    with transaction.atomic():
        _, created = Chunk.objects.get_or_create(digest=digest, defaults={"size": len(piece)})
    return len(piece) if created else 0


def file_blocks(version_file: VersionFile, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes of a stored file (optionally a range [start, end)), streamed chunk by chunk."""
    store = get_store()
    end = version_file.size if end is None else min(end, version_file.size)
    if start >= end:
        return
    earliest = start - max(formats.MAX_CHUNK, formats.MAX_HEADER + 8)  # no chunk is longer than this
    chunks = (
        FileChunk.objects.filter(file=version_file, offset__lt=end, offset__gt=earliest)
        .select_related("chunk")
        .order_by("index")
    )
    for piece in chunks.iterator(chunk_size=2000):
        piece_end = piece.offset + piece.chunk.size
        if piece_end <= start:
            continue
        yield from store.read(
            chunk_key(piece.chunk_id), max(0, start - piece.offset), min(piece.chunk.size, end - piece.offset)
        )


def _read_json(version_file: VersionFile) -> dict | None:
    try:
        value = json.loads(b"".join(file_blocks(version_file)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None
