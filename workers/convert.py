"""Converting pickle checkpoints to safetensors. Runs inside Celery workers; plain paths in, plain data out.

Each checkpoint is loaded with torch's weights-only unpickler (tensors, containers and dtypes; never arbitrary
callables), and only after its sha256 matches the registry's record, so the bytes loaded are the bytes that were
scanned. Outputs mirror the input names (`pytorch_model-00001-of-00002.bin` -> `model-00001-of-00002.safetensors`,
`pytorch_model.bin.index.json` -> `model.safetensors.index.json` with its weight map rewritten); every other file
is copied unchanged.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from workers.files import file_sha256

WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_SUFFIX = ".index.json"


class ConversionError(Exception):
    """The checkpoint cannot be converted; the message names the file and says why."""


def safetensors_name(path: str) -> str:
    """`dir/pytorch_model-00001-of-00002.bin` -> `dir/model-00001-of-00002.safetensors`; other stems are kept."""
    directory, _, base = path.rpartition("/")
    stem = base
    for suffix in WEIGHT_SUFFIXES:
        if base.lower().endswith(suffix):
            stem = base[: -len(suffix)]
            break
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model") :]
    return f"{directory}/{stem}.safetensors" if directory else f"{stem}.safetensors"


def convert_to_safetensors(
    *,
    source_dir: Path,
    out_dir: Path,
    files: list[dict],
    weights: list[str],
    progress: Callable[[int, str], None] | None = None,
) -> dict:
    """Convert `weights` (paths under source_dir) to safetensors in out_dir and copy the other `files` there.

    `files` is the source manifest [{path, size, sha256}]. Returns {"files": the output manifest, "converted":
    {source path: output path}}.
    """
    by_path = {entry["path"]: entry for entry in files}
    renamed = {path: safetensors_name(path) for path in weights}
    outputs = _plan_outputs(files, renamed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for done, path in enumerate(sorted(weights)):
        if progress:
            progress(int(100 * done / len(weights)), f"converting {path}")
        source = source_dir / path
        _verify_sha256(source, by_path[path]["sha256"], path)
        tensors = _load_state_dict(source, path)
        target = out_dir / renamed[path]
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(target), metadata={"format": "pt"})
        del tensors
    for source_path, output_path in outputs.items():
        if source_path in renamed:
            continue
        target = out_dir / output_path
        target.parent.mkdir(parents=True, exist_ok=True)
        if output_path != source_path:
            target.write_bytes(_rewrite_index(source_dir / source_path, source_path, renamed))
        else:
            shutil.copyfile(source_dir / source_path, target)
    if progress:
        progress(100, f"converted {len(weights)} file{'s' if len(weights) != 1 else ''}")
    manifest = [_manifest_entry(out_dir, output_path) for output_path in sorted(outputs.values())]
    return {"files": manifest, "converted": dict(sorted(renamed.items()))}


def _plan_outputs(files: list[dict], renamed: dict[str, str]) -> dict[str, str]:
    """Source path -> output path for every file, refusing two files that would land on one name."""
    outputs: dict[str, str] = {}
    for entry in files:
        path = entry["path"]
        if path in renamed:
            outputs[path] = renamed[path]
        elif path.endswith(INDEX_SUFFIX) and path[: -len(INDEX_SUFFIX)].lower().endswith(WEIGHT_SUFFIXES):
            outputs[path] = safetensors_name(path[: -len(INDEX_SUFFIX)]) + INDEX_SUFFIX
        else:
            outputs[path] = path
    seen: dict[str, str] = {}
    for source_path, output_path in outputs.items():
        if output_path in seen:
            raise ConversionError(f"{source_path} and {seen[output_path]} would both be written as {output_path}.")
        seen[output_path] = source_path
    return outputs


def _verify_sha256(path: Path, expected: str, name: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise ConversionError(f"{name}: sha256 {actual} does not match the registry's {expected}.")


def _load_state_dict(path: Path, name: str) -> dict[str, torch.Tensor]:
    # mmap keeps a zip checkpoint's tensors on disk until they are written; the legacy format cannot be mapped.
    mmap = zipfile.is_zipfile(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ... for what it refuses to load
        raise ConversionError(f"{name}: torch.load(weights_only=True) refused it: {exc}") from None
    state = loaded
    if isinstance(loaded, Mapping) and not _is_state_dict(loaded) and _is_state_dict(loaded.get("state_dict")):
        state = loaded["state_dict"]  # a training checkpoint: the weights, without optimizer state
    if not _is_state_dict(state):
        raise ConversionError(f"{name}: holds a {type(loaded).__name__} that is not a mapping of names to tensors.")
    tensors: dict[str, torch.Tensor] = {}
    storages: set[tuple[str, int]] = set()
    for key, tensor in state.items():
        tensor = tensor.detach()
        storage = (tensor.device.type, tensor.untyped_storage().data_ptr())
        # safetensors refuses tensors that share memory (tied weights): each gets its own copy.
        tensor = tensor.clone() if storage in storages and tensor.numel() else tensor.contiguous()
        storages.add(storage)
        tensors[key] = tensor
    return tensors


def _is_state_dict(value) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _rewrite_index(path: Path, name: str, renamed: dict[str, str]) -> bytes:
    try:
        index = json.loads(path.read_text("utf-8"))
        weight_map = index["weight_map"]
        directory = name.rpartition("/")[0]
        prefix = f"{directory}/" if directory else ""
        index["weight_map"] = {
            tensor: renamed.get(prefix + shard, prefix + shard).removeprefix(prefix)
            for tensor, shard in weight_map.items()
        }
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConversionError(f"{name}: not a weight index with a weight_map ({type(exc).__name__}).") from None
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()


def _manifest_entry(out_dir: Path, path: str) -> dict:
    target = out_dir / path
    return {"path": path, "size": target.stat().st_size, "sha256": file_sha256(target)}
