"""Hashing files on disk in bounded memory: used by workers, imports, the demo seed, cpctl and the benchmarks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

BLOCK = 4 * 1024 * 1024


def file_hasher(path: Path, on_bytes: Callable[[int], None] | None = None):
    """A sha256 object fed with the whole file (callers resuming a download keep feeding it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
            if on_bytes:
                on_bytes(len(block))
    return digest


def file_sha256(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    return file_hasher(path, on_bytes).hexdigest()
