"""Converting a cleanly scanned pickle checkpoint to safetensors, as a new version with relation `converted`."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from django.core.exceptions import ValidationError
from django.http import Http404
from safetensors.torch import load as safetensors_load

from apps.core.models import AuditEvent, Job, JobStatus, Role
from apps.core.permissions import PermissionDenied
from apps.registry.convert import job_convert_safetensors, version_convert_to_safetensors
from apps.registry.ingest import file_blocks
from apps.registry.models import ModelVersion, Relation, VersionStatus
from workers.convert import ConversionError, convert_to_safetensors, safetensors_name

from . import malicious
from .conftest import safetensors_bytes, tensors
from .test_ingest import push

CONFIG = json.dumps({"architectures": ["TinyModel"], "hidden_size": 8, "num_attention_heads": 2}).encode()
TOKENIZER = json.dumps({"model": {"vocab": {"a": 0}}}).encode()


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.DEVELOPER)


def stored(version: ModelVersion, path: str) -> bytes:
    return b"".join(file_blocks(version.files.get(path=path)))


def run_conversion(user, version: ModelVersion) -> tuple[Job, ModelVersion | None]:
    job = version_convert_to_safetensors(user=user, version=version)
    job_convert_safetensors(str(job.id))
    job.refresh_from_db()
    child = ModelVersion.objects.filter(parent_links__parent=version).first()
    return job, child


def test_benign_state_dict_converts_to_a_ready_safetensors_version(project, developer):
    weights = malicious.state_dict(seed=1)
    files = {"pytorch_model.bin": malicious.torch_zip(weights), "config.json": CONFIG, "tokenizer.json": TOKENIZER}
    parent = push(developer, project, files, name="tiny")
    assert parent.status == VersionStatus.READY and parent.format == "pytorch"

    job, child = run_conversion(developer, parent)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result == {
        "version": 2,
        "status": "ready",
        "converted": {"pytorch_model.bin": "model.safetensors"},
    }
    assert child.status == VersionStatus.READY and child.format == "safetensors"
    assert child.parent_links.get().relation == Relation.CONVERTED
    assert set(child.files.values_list("path", flat=True)) == {"model.safetensors", "config.json", "tokenizer.json"}
    converted = safetensors_load(stored(child, "model.safetensors"))
    assert converted.keys() == weights.keys()
    assert all(torch.equal(converted[name], tensor) for name, tensor in weights.items())
    assert child.metadata["parameters"] == sum(t.numel() for t in weights.values())
    assert child.metadata["tokenizer"] is True and child.scan_report["summary"] == "no pickle files"
    assert stored(child, "config.json") == CONFIG
    assert child.new_bytes == child.files.get(path="model.safetensors").size  # config and tokenizer dedupe
    assert AuditEvent.objects.filter(action="model_version.convert", object_id=str(parent.pk)).exists()


def test_sharded_mixed_format_checkpoint_keeps_its_shard_names(project, developer):
    weights = malicious.state_dict(seed=2)
    weights["head.weight"] = weights["embed.weight"]  # tied weights share storage
    names = sorted(weights)
    first, second = dict.fromkeys(names[:3]), dict.fromkeys(names[3:])
    shards = {
        "pytorch_model-00001-of-00002.bin": malicious.torch_zip({k: weights[k] for k in first}),
        "pytorch_model-00002-of-00002.bin": malicious.torch_legacy({k: weights[k] for k in second}),
    }
    index = {
        "metadata": {},
        "weight_map": {k: s for s, part in zip(shards, (first, second), strict=True) for k in part},
    }
    files = {**shards, "pytorch_model.bin.index.json": json.dumps(index).encode(), "config.json": CONFIG}
    parent = push(developer, project, files, name="sharded")
    assert parent.status == VersionStatus.READY, parent.status_reason

    job, child = run_conversion(developer, parent)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert child.status == VersionStatus.READY, child.status_reason
    assert set(child.files.values_list("path", flat=True)) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "config.json",
    }
    new_index = json.loads(stored(child, "model.safetensors.index.json"))
    assert set(new_index["weight_map"].values()) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    loaded = {}
    for shard in set(new_index["weight_map"].values()):
        loaded |= safetensors_load(stored(child, shard))
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in weights.items())
    assert {new_index["weight_map"][k] for k in first} == {"model-00001-of-00002.safetensors"}


def test_training_checkpoint_converts_its_state_dict(project, developer):
    weights = malicious.state_dict(seed=3)
    checkpoint = malicious.torch_zip({"state_dict": weights, "epoch": 7})
    parent = push(developer, project, {"last.ckpt": checkpoint}, name="ckpt")
    job, child = run_conversion(developer, parent)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.result["converted"] == {"last.ckpt": "last.safetensors"}
    converted = safetensors_load(stored(child, "last.safetensors"))
    assert all(torch.equal(converted[name], tensor) for name, tensor in weights.items())


def test_quarantined_version_is_refused(project, developer):
    sample = malicious.payloads()["torch-zip-nested"]
    parent = push(developer, project, {sample.path: sample.data}, name="evil")
    assert parent.status == VersionStatus.QUARANTINED
    with pytest.raises(ValidationError) as caught:
        version_convert_to_safetensors(user=developer, version=parent)
    assert caught.value.messages == [
        "Only ready versions with a clean scan can be converted; "
        "evil:1 is quarantined: pytorch_model.bin imports posix.system"
    ]
    assert not Job.objects.filter(job_type="registry.convert_safetensors").exists()


def test_version_without_pickles_is_refused(project, developer):
    parent = push(developer, project, {"model.safetensors": safetensors_bytes(tensors(count=1, elements=8))})
    with pytest.raises(ValidationError, match="has no pickle weight files to convert"):
        version_convert_to_safetensors(user=developer, version=parent)


def test_conversion_needs_change_permission(project, developer, member_factory, other_project):
    parent = push(developer, project, {"pytorch_model.bin": malicious.torch_zip(malicious.state_dict())}, name="p")
    with pytest.raises(PermissionDenied):
        version_convert_to_safetensors(user=member_factory(Role.VIEWER), version=parent)
    with pytest.raises(Http404):
        version_convert_to_safetensors(user=member_factory(Role.DEVELOPER, on=other_project), version=parent)


def test_job_rechecks_the_version_when_it_runs(project, developer):
    parent = push(developer, project, {"pytorch_model.bin": malicious.torch_zip(malicious.state_dict())}, name="p")
    job = version_convert_to_safetensors(user=developer, version=parent)
    ModelVersion.objects.filter(pk=parent.pk).update(status=VersionStatus.QUARANTINED, status_reason="rescanned")
    job_convert_safetensors(str(job.id))
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.error.endswith("is quarantined: rescanned")
    assert not parent.child_links.exists()


def test_worker_verifies_sha256_and_refuses_non_state_dicts(tmp_path):
    source, out = tmp_path / "source", tmp_path / "out"
    source.mkdir()
    (source / "model.pt").write_bytes(malicious.torch_zip(malicious.state_dict()))
    with pytest.raises(ConversionError, match="model.pt: sha256 .* does not match the registry's 0000"):
        convert_to_safetensors(
            source_dir=source,
            out_dir=out,
            files=[{"path": "model.pt", "size": 1, "sha256": "0" * 64}],
            weights=["model.pt"],
        )
    optimizer = malicious.torch_zip([torch.zeros(2), {"lr": 0.1}])
    (source / "optimizer.pt").write_bytes(optimizer)
    with pytest.raises(ConversionError, match="optimizer.pt: holds a list that is not a mapping of names to tensors"):
        convert_to_safetensors(
            source_dir=source,
            out_dir=out,
            files=[{"path": "optimizer.pt", "size": len(optimizer), "sha256": hashlib.sha256(optimizer).hexdigest()}],
            weights=["optimizer.pt"],
        )


def test_output_names_mirror_the_input():
    assert safetensors_name("pytorch_model.bin") == "model.safetensors"
    assert safetensors_name("pytorch_model-00002-of-00003.bin") == "model-00002-of-00003.safetensors"
    assert safetensors_name("unet/diffusion_pytorch_model.bin") == "unet/diffusion_pytorch_model.safetensors"
    assert safetensors_name("weights.PT") == "weights.safetensors"
