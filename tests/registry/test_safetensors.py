"""safetensors header validation: a corpus of malformed files, each rejected with a clear reason naming the file."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from apps.core.models import Job, JobStatus, Role
from apps.registry import formats
from apps.registry.ingest import file_blocks
from apps.registry.models import UploadStatus, VersionStatus

from .test_ingest import push

A = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
B = {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}


def build(header, data: bytes = b"\x00" * 16, declared_length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if declared_length is None else declared_length
    return struct.pack("<Q", length) + raw + data


# id -> (file bytes, what the reason must say)
MALFORMED = {
    "shorter-than-length-field": (b"\x05\x00\x00", "file shorter than the 8-byte header length"),
    "header-length-zero": (build(b"", declared_length=0), "header length 0 outside 1..104857600"),
    "header-length-huge": (build({"a": A}, declared_length=formats.MAX_HEADER + 1), "outside 1..104857600"),
    "header-past-eof": (build({"a": A}, declared_length=10_000), "runs past the end of the"),
    "header-not-json": (build(b'{"a": {"dtype": "F32",'), "header is not UTF-8 JSON"),
    "header-not-utf8": (build(b'{"\xff": 1}'), "header is not UTF-8 JSON"),
    "header-not-object": (build([A, B]), "header is not a JSON object"),
    "entry-not-object": (build({"a": [0, 8]}, b"\x00" * 8), "tensor 'a': entry is not an object"),
    "unknown-dtype": (build({"a": {**A, "dtype": "F7"}, "b": B}), "tensor 'a': unknown dtype 'F7'"),
    "dtype-not-a-string": (build({"a": {**A, "dtype": ["F32"]}, "b": B}), "tensor 'a': unknown dtype ['F32']"),
    "bool-in-shape": (build({"a": {**A, "shape": [True, 2]}, "b": B}), "shape must be a list of non-negative"),
    "negative-shape": (build({"a": {**A, "shape": [-2]}, "b": B}), "shape must be a list of non-negative"),
    "offsets-not-integers": (build({"a": {**A, "data_offsets": [0, 8.0]}, "b": B}), "must be two integers"),
    "shape-offsets-mismatch": (
        build({"a": {**A, "shape": [3]}, "b": B}),
        "tensor 'a': F32 [3] needs 12 bytes but data_offsets span 8",
    ),
    "overlapping-tensors": (
        build({"a": A, "b": {**B, "data_offsets": [4, 12]}, "c": {**A, "data_offsets": [8, 16]}}),
        "overlaps the previous tensor",
    ),
    "offsets-out-of-range": (build({"a": A, "b": {**B, "data_offsets": [8, 16]}}, b"\x00" * 12), "outside the 12"),
    "offsets-reversed": (build({"a": {**A, "data_offsets": [8, 0]}, "b": B}), "data_offsets [8, 0] outside"),
    "gap-between-tensors": (
        build({"a": A, "b": {**B, "data_offsets": [12, 20]}}, b"\x00" * 20),
        "gap of 4 bytes before tensor 'b'",
    ),
    "trailing-bytes": (build({"a": A, "b": B}, b"\x00" * 20), "tensors cover 16 of the 20 data bytes"),
    "metadata-not-strings": (
        build({"__metadata__": {"format": 1}, "a": A, "b": B}),
        "__metadata__ must map strings to strings",
    ),
}


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.DEVELOPER)


def test_valid_header_parses():
    data = build({"__metadata__": {"format": "pt"}, "b": B, "a": A})
    start, tensors = formats.parse_safetensors_header(data, len(data))
    assert start == len(data) - 16
    assert tensors == {"a": A, "b": B}


def test_real_file_header_parses():
    weights = {"w": torch.zeros(3, 5), "b": torch.ones(7, dtype=torch.bfloat16), "e": torch.zeros(0)}
    data = safetensors_save(weights, metadata={"format": "pt"})
    _, tensors = formats.parse_safetensors_header(data, len(data))
    assert tensors["w"]["shape"] == [3, 5] and tensors["b"]["dtype"] == "BF16" and tensors["e"]["shape"] == [0]


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_header_is_rejected(case):
    data, reason = MALFORMED[case]
    with pytest.raises(formats.MalformedSafetensors) as caught:
        formats.parse_safetensors_header(data, len(data))
    assert reason in str(caught.value)


def test_short_prefix_is_a_caller_error():
    data = build({"a": A, "b": B})
    with pytest.raises(ValueError, match="prefix too short") as caught:
        formats.parse_safetensors_header(data[:20], len(data))
    assert not isinstance(caught.value, formats.MalformedSafetensors)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_upload_fails_with_the_file_named(project, developer, case):
    data, reason = MALFORMED[case]
    version = push(developer, project, {"model.safetensors": data, "config.json": b"{}"}, name=case)
    assert version.status == VersionStatus.FAILED
    assert version.status_reason.startswith("model.safetensors: malformed safetensors: ")
    assert reason in version.status_reason
    assert not version.files.exists()
    assert version.upload.status == UploadStatus.FAILED and version.upload.error == version.status_reason
    job = Job.objects.get(params__upload_id=str(version.upload.pk))
    assert job.status == JobStatus.FAILED and job.error == version.status_reason


def test_valid_upload_becomes_ready(project, developer):
    weights = {"embed.weight": torch.randn(16, 8), "norm.weight": torch.ones(8, dtype=torch.float16)}
    data = safetensors_save(weights)
    version = push(developer, project, {"model.safetensors": data}, name="valid")
    assert version.status == VersionStatus.READY, version.status_reason
    assert version.metadata["parameters"] == 16 * 8 + 8 and version.format == "safetensors"
    assert version.scan_report["summary"] == "no pickle files"
    stored = b"".join(file_blocks(version.files.get(path="model.safetensors")))
    assert torch.equal(safetensors_load(stored)["embed.weight"], weights["embed.weight"])
