"""Model file formats: safetensors header validation, chunk boundaries, and metadata read from the files.

Chunking choice: a safetensors file is cut on tensor boundaries (small neighbouring tensors grouped up to
MIN_CHUNK, large tensors split into MAX_CHUNK pieces from the tensor's start). A fine-tune or merge rewrites whole
tensors and keeps shapes and order, so every unchanged tensor maps to the same chunk bytes as in its parent and
is stored once; only the header and changed tensors are new. Content-defined chunking would find the same
boundaries at the cost of a rolling hash over every byte in Python. Other files are cut into fixed FIXED_CHUNK
pieces, which dedupes identical files and identical prefixes.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Iterable

MIN_CHUNK = 4 * 1024 * 1024
MAX_CHUNK = 64 * 1024 * 1024
FIXED_CHUNK = 16 * 1024 * 1024
MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit

DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
# Sub-byte types count bits, not bytes.
DTYPE_BITS = {"F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}


class MalformedSafetensors(ValueError):
    """The file is not a valid safetensors file; the message says why."""


def parse_safetensors_header(prefix: bytes, file_size: int) -> tuple[int, dict]:
    """Validate a safetensors header. `prefix` holds at least the first 8 + header-length bytes.

    Returns (data_start, tensors) where tensors maps name -> {dtype, shape, data_offsets}.
    """
    if file_size < 8 or len(prefix) < 8:
        raise MalformedSafetensors("file shorter than the 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len == 0 or header_len > MAX_HEADER:
        raise MalformedSafetensors(f"header length {header_len} outside 1..{MAX_HEADER}")
    if 8 + header_len > file_size:
        raise MalformedSafetensors(f"header length {header_len} runs past the end of the {file_size}-byte file")
    if len(prefix) < 8 + header_len:
        raise ValueError("prefix too short: read 8 + header length bytes first")
    raw = prefix[8 : 8 + header_len]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedSafetensors(f"header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict):
        raise MalformedSafetensors("header is not a JSON object")
    data_size = file_size - 8 - header_len
    tensors: dict[str, dict] = {}
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise MalformedSafetensors("__metadata__ must map strings to strings")
            continue
        tensors[name] = _validate_tensor(name, info, data_size)
    spans = sorted((t["data_offsets"][0], t["data_offsets"][1], n) for n, t in tensors.items())
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise MalformedSafetensors(f"tensor {name!r} overlaps the previous tensor")
        if begin > position:
            raise MalformedSafetensors(f"gap of {begin - position} bytes before tensor {name!r}")
        position = end
    if position != data_size:
        raise MalformedSafetensors(f"tensors cover {position} of the {data_size} data bytes")
    return 8 + header_len, tensors


def _validate_tensor(name: str, info, data_size: int) -> dict:
    if not isinstance(info, dict):
        raise MalformedSafetensors(f"tensor {name!r}: entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or (dtype not in DTYPE_SIZES and dtype not in DTYPE_BITS):
        raise MalformedSafetensors(f"tensor {name!r}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise MalformedSafetensors(f"tensor {name!r}: shape must be a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise MalformedSafetensors(f"tensor {name!r}: data_offsets must be two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise MalformedSafetensors(f"tensor {name!r}: data_offsets {offsets} outside the {data_size} data bytes")
    elements = math.prod(shape)
    expected = elements * DTYPE_SIZES[dtype] if dtype in DTYPE_SIZES else math.ceil(elements * DTYPE_BITS[dtype] / 8)
    if end - begin != expected:
        raise MalformedSafetensors(
            f"tensor {name!r}: {dtype} {shape} needs {expected} bytes but data_offsets span {end - begin}"
        )
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def safetensors_boundaries(data_start: int, tensors: dict, file_size: int) -> list[int]:
    """Chunk end offsets for a safetensors file (see module docstring)."""
    cuts = [data_start]
    group_start = data_start
    for begin, end in sorted(tuple(t["data_offsets"]) for t in tensors.values()):
        begin, end = begin + data_start, end + data_start
        if end - begin > MAX_CHUNK:
            if begin > group_start:
                cuts.append(begin)
            cuts.extend(range(begin + MAX_CHUNK, end, MAX_CHUNK))
            cuts.append(end)
            group_start = end
        elif end - group_start >= MIN_CHUNK:
            cuts.append(end)
            group_start = end
    if cuts[-1] != file_size:
        cuts.append(file_size)
    return sorted({c for c in cuts if 0 < c <= file_size})


def fixed_boundaries(file_size: int) -> list[int]:
    return [*range(FIXED_CHUNK, file_size, FIXED_CHUNK), file_size] if file_size else []


# Metadata ------------------------------------------------------------------------------------------------------

_CONFIG_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden_size": ("hidden_size", "n_embd", "d_model", "dim"),
    "attention_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "kv_heads": ("num_key_value_heads", "n_kv_heads", "multi_query_group_num"),
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "max_context": ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim"),
}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer.model", "vocab.txt", "merges.txt", "vocab.json", "spiece.model"}
_DTYPE_NAMES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "U8": "uint8",
    "F8_E4M3": "float8_e4m3",
    "F8_E5M2": "float8_e5m2",
}


def metadata_from_files(*, config: dict | None, safetensors_headers: Iterable[dict], paths: Iterable[str]) -> dict:
    """Architecture, size and shape facts a planner needs, read from config.json and safetensors headers."""
    config = config or {}
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    meta: dict = {}
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures:
        meta["architecture"] = str(architectures[0])
    if config.get("model_type"):
        meta["model_type"] = str(config["model_type"])
    for field, keys in _CONFIG_KEYS.items():
        for key in keys:
            value = config.get(key, text_config.get(key))
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                meta[field] = value
                break
    if "attention_heads" in meta and "kv_heads" not in meta:
        meta["kv_heads"] = meta["attention_heads"]
    if "hidden_size" in meta and "attention_heads" in meta:
        meta["head_dim"] = int(config.get("head_dim") or meta["hidden_size"] // meta["attention_heads"])
    parameters, dtypes = 0, Counter()
    for tensors in safetensors_headers:
        for info in tensors.values():
            count = math.prod(info["shape"])
            parameters += count
            dtypes[info["dtype"]] += count
    if parameters:
        meta["parameters"] = parameters
        meta["dtype"] = _DTYPE_NAMES.get(dtypes.most_common(1)[0][0], dtypes.most_common(1)[0][0].lower())
    elif isinstance(config.get("torch_dtype") or config.get("dtype"), str):
        meta["dtype"] = config.get("torch_dtype") or config.get("dtype")
    names = {p.rsplit("/", 1)[-1] for p in paths}
    meta["tokenizer"] = bool(names & TOKENIZER_FILES)
    return meta


def detect_format(paths: Iterable[str]) -> str:
    suffixes = {p.rsplit(".", 1)[-1].lower() for p in paths if "." in p}
    for suffix, name in (("safetensors", "safetensors"), ("gguf", "gguf"), ("onnx", "onnx")):
        if suffix in suffixes:
            return name
    if suffixes & {"bin", "pt", "pth", "ckpt", "pkl"}:
        return "pytorch"
    return "other"
