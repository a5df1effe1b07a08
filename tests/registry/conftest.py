"""Registry fixtures: a private artifact store per test and helpers that build real model files."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_save

from apps.registry import storage


@pytest.fixture(autouse=True)
def artifact_store(settings, tmp_path):
    settings.ARTIFACT_STORE_URL = f"file://{tmp_path / 'artifacts'}"
    storage._cached_store.cache_clear()
    yield Path(tmp_path / "artifacts")
    storage._cached_store.cache_clear()


def tensors(count: int = 20, elements: int = 1_048_576, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(elements, generator=generator) for i in range(count)}


def safetensors_bytes(named: dict[str, torch.Tensor]) -> bytes:
    return safetensors_save(named)


def manifest_entry(path: str, data: bytes) -> dict:
    return {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def parts_of(data: bytes, part_size: int) -> list[bytes]:
    return [data[i : i + part_size] for i in range(0, len(data), part_size)] or [b""]


def stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
