"""Pickle scanning through the real upload path: a malicious corpus is quarantined, benign checkpoints pass."""

from __future__ import annotations

import pytest

from apps.core.models import Role
from apps.registry import ingest, scanning
from apps.registry.models import ScanPolicy, VersionStatus

from . import malicious
from .conftest import safetensors_bytes, tensors
from .test_ingest import push

PAYLOADS = malicious.payloads()
BENIGN = malicious.benign()


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.DEVELOPER)


def model_name(case: str) -> str:
    return case.replace("_", "-")[:100]


@pytest.mark.parametrize("case", sorted(PAYLOADS))
def test_every_malicious_pickle_is_quarantined(project, developer, case):
    sample = PAYLOADS[case]
    version = push(developer, project, {sample.path: sample.data}, name=model_name(case))
    assert version.status == VersionStatus.QUARANTINED
    assert sample.expect in version.status_reason
    assert version.scan_report["safe"] is False and version.scan_report["summary"] == version.status_reason
    (entry,) = version.scan_report["files"]
    assert entry["path"] == sample.path and entry["scanner"].startswith("picklescan ")
    assert entry["issues"]


@pytest.mark.parametrize("case", sorted(BENIGN))
def test_benign_torch_checkpoints_become_ready(project, developer, case):
    path, data = BENIGN[case]
    version = push(developer, project, {path: data, "config.json": b"{}"}, name=model_name(case))
    assert version.status == VersionStatus.READY, version.status_reason
    report = version.scan_report
    assert report["safe"] is True and report["summary"] == "1 pickle file scanned: no unsafe imports"
    (entry,) = report["files"]
    assert entry["path"] == path and entry["issues"] == []
    assert entry["globals"] and all(g["safe"] for g in entry["globals"])


def test_report_names_each_file_and_what_it_imports(project, developer):
    files = {
        "model.safetensors": safetensors_bytes(tensors(count=2, elements=16)),
        "pytorch_model.bin": PAYLOADS["torch-zip-nested"].data,
        "evil.pkl": PAYLOADS["eval-p4"].data,
        "tokenizer.json": b"{}",
    }
    version = push(developer, project, files)
    assert version.status == VersionStatus.QUARANTINED
    assert version.status_reason == "evil.pkl imports builtins.eval; pytorch_model.bin imports posix.system"
    by_path = {f["path"]: f for f in version.scan_report["files"]}
    assert set(by_path) == {"evil.pkl", "pytorch_model.bin"}  # only pickles are scanned
    imports = {(g["module"], g["name"]): g["safe"] for g in by_path["pytorch_model.bin"]["globals"]}
    assert imports[("posix", "system")] is False
    assert imports[("collections", "OrderedDict")] is True
    assert imports[("torch._utils", "_rebuild_tensor_v2")] is True
    assert by_path["pytorch_model.bin"]["issues"] == [
        "archive/data.pkl: imports posix.system (rated dangerous by picklescan)"
    ]


def test_organization_policy_allows_a_custom_global(project, developer, org):
    data = malicious.torch_zip_with_custom_class()
    blocked = push(developer, project, {"pytorch_model.bin": data}, name="custom")
    assert blocked.status == VersionStatus.QUARANTINED
    assert blocked.status_reason == "pytorch_model.bin imports mylib.config.Settings"
    assert "scan policy" in blocked.scan_report["files"][0]["issues"][0]

    ScanPolicy.objects.create(organization=org, allowed_globals=["mylib.*"])
    allowed = push(developer, project, {"pytorch_model.bin": data}, name="custom")
    assert allowed.status == VersionStatus.READY, allowed.status_reason
    assert {"module": "mylib.config", "name": "Settings", "safe": True} in allowed.scan_report["files"][0]["globals"]

    ScanPolicy.objects.filter(organization=org).update(allowed_globals=["mylib.config.Setting"])  # exact names only
    assert push(developer, project, {"pytorch_model.bin": data}, name="custom").status == VersionStatus.QUARANTINED


def test_policy_cannot_allow_code_execution(project, developer, org):
    ScanPolicy.objects.create(organization=org, allowed_globals=["os.*", "posix.*", "builtins.*", "importlib.*"])
    for case in ("os-system-GLOBAL", "posix-system-p4", "builtins-import-only", "importlib-import_module"):
        sample = PAYLOADS[case]
        version = push(developer, project, {sample.path: sample.data}, name=model_name(case))
        assert version.status == VersionStatus.QUARANTINED, case


def test_other_policy_does_not_apply(project, developer, other_project):
    ScanPolicy.objects.create(organization=other_project.organization, allowed_globals=["mylib.*"])
    data = malicious.torch_zip_with_custom_class()
    assert push(developer, project, {"model.pt": data}, name="custom").status == VersionStatus.QUARANTINED


def test_files_of_other_types_are_sniffed(project, developer):
    payload = PAYLOADS["os-system-STACK_GLOBAL-memo"].data
    version = push(developer, project, {"weights.data": payload, "notes.md": payload}, name="sniffed")
    assert version.status == VersionStatus.QUARANTINED
    assert version.status_reason == "weights.data imports os.system"  # .md is never a pickle
    data_like = push(developer, project, {"blob.dat": b"\x80\x03\x00\x01\x02 raw bytes"}, name="raw")
    assert data_like.status == VersionStatus.READY, data_like.status_reason
    assert data_like.scan_report["summary"] == "no pickle files"


def test_large_torch_zip_is_scanned_without_reading_its_tensors(project, developer, monkeypatch):
    weights = {f"layer{i}.weight": t for i, t in enumerate(tensors(count=3, elements=2_000_000).values())}
    data = malicious.torch_zip(weights)
    assert len(data) > 20_000_000  # more than one stored chunk
    read = []

    def counting_blocks(version_file, start=0, end=None):
        for block in ingest.file_blocks(version_file, start, end):
            read.append(len(block))
            yield block

    monkeypatch.setattr(scanning, "file_blocks", counting_blocks)
    version = push(developer, project, {"pytorch_model.bin": data}, name="big")
    assert version.status == VersionStatus.READY, version.status_reason
    assert sum(read) < 2 * scanning.READ_AHEAD + 64 * 1024
