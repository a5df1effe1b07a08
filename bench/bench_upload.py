"""Model upload through the HTTP API (chunked protocol, local backend) against the machine's own limits.

A 2 GiB incompressible file is pushed to a real uvicorn server in 64 MiB parts from 4 client threads, then
the completion job (sha256 verification, chunking, content-addressed store) runs. In the same run the machine
limit is measured on the same file: `sha256sum` and a plain `cp`. Dedupe: the new bytes stored for an identical
re-upload and for a safetensors derivative with 10 % of its tensors changed. Size: BENCH_UPLOAD_MB (2048).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from django.conf import settings
from django.contrib.auth import get_user_model

from apps.core.models import Membership, Organization, Project, Role
from apps.core.services import api_token_create
from apps.registry import storage
from apps.registry.models import ModelVersion
from apps.registry.tasks import job_complete_upload
from controlplane.devstack import free_port, wait_for_port
from workers.files import file_sha256

SIZE_MB = int(os.environ.get("BENCH_UPLOAD_MB", "2048"))
THREADS = 4
ROOT = Path(__file__).resolve().parent.parent


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _make_file(path: Path, size_mb: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1024 * 1024))


class Client:
    def __init__(self, base: str, token: str):
        self.base = base
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def push(self, project: str, name: str, files: dict[str, Path]) -> tuple[float, int]:
        """Upload and complete; returns (seconds spent sending parts, job id)."""
        manifest = [{"path": p, "size": f.stat().st_size, "sha256": file_sha256(f)} for p, f in files.items()]
        opened = self.session.post(
            f"{self.base}/api/v1/registry/uploads/", json={"project": project, "name": name, "files": manifest}
        )
        opened.raise_for_status()
        upload = opened.json()
        part_size = upload["part_size"]
        work = [(entry["index"], n, files[entry["path"]]) for entry in upload["files"] for n in range(entry["parts"])]

        def send(item):
            index, number, path = item
            with open(path, "rb") as f:
                f.seek(number * part_size)
                data = f.read(part_size)
            response = requests.put(
                f"{self.base}/api/v1/registry/uploads/{upload['id']}/files/{index}/parts/{number}",
                data=data,
                headers={**self.session.headers, "Content-Type": "application/octet-stream"},
            )
            response.raise_for_status()

        started = time.perf_counter()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(send, work))
        sending = time.perf_counter() - started
        completed = self.session.post(f"{self.base}/api/v1/registry/uploads/{upload['id']}/complete/")
        completed.raise_for_status()
        return sending, completed.json()["id"]


def _safetensors_pair(directory: Path) -> tuple[Path, Path]:
    import torch
    from safetensors.torch import save_file

    base = {
        f"layers.{i}.weight": torch.randn(2_097_152, generator=torch.Generator().manual_seed(i)) for i in range(40)
    }  # 40 × 8 MiB
    tuned = dict(base)
    for i in range(0, 40, 10):  # 4 of 40 tensors = 10 %
        tuned[f"layers.{i}.weight"] = base[f"layers.{i}.weight"] + 1.0
    parent_dir, child_dir = directory / "parent", directory / "child"
    parent_dir.mkdir()
    child_dir.mkdir()
    save_file(base, parent_dir / "model.safetensors")
    save_file(tuned, child_dir / "model.safetensors")
    return parent_dir / "model.safetensors", child_dir / "model.safetensors"


def run() -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=os.environ.get("BENCH_TMP")))
    server = None
    try:
        store_dir = work / "store"
        settings.ARTIFACT_STORE_URL = f"file://{store_dir}"
        storage._cached_store.cache_clear()
        User = get_user_model()
        org = Organization.objects.create(name="Upload bench", slug="upload-bench")
        project = Project.objects.create(organization=org, name="Upload bench", slug="upload-bench")
        user = User.objects.create(username="upload-bench")
        Membership.objects.create(project=project, user=user, role=Role.DEVELOPER)
        _, token = api_token_create(user=user, name="bench", scopes=["read", "write"])

        port = free_port()
        env = {**os.environ, "ARTIFACT_STORE_URL": settings.ARTIFACT_STORE_URL}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "controlplane.asgi:application",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--workers",
                "2",
            ],
            cwd=ROOT,
            env=env,
        )
        wait_for_port(port, timeout=60)
        client = Client(f"http://127.0.0.1:{port}", token)

        big = work / "weights.dat"
        _make_file(big, SIZE_MB)
        size = big.stat().st_size
        sha_seconds = _timed(lambda: subprocess.run(["sha256sum", str(big)], check=True, capture_output=True))
        cp_seconds = _timed(lambda: shutil.copyfile(big, work / "copy.bin"))
        (work / "copy.bin").unlink()

        sending, job_id = client.push("upload-bench", "big", {"weights.dat": big})
        completing = _timed(lambda: job_complete_upload(job_id))
        version = ModelVersion.objects.get(model__name="big", number=1)
        assert version.status == "ready", version.status_reason
        total = sending + completing
        mb = size / 1e6

        _, again = client.push("upload-bench", "big", {"weights.dat": big})
        job_complete_upload(again)
        identical = ModelVersion.objects.get(model__name="big", number=2)
        big.unlink()

        parent, child = _safetensors_pair(work)
        _, job_parent = client.push("upload-bench", "st", {"model.safetensors": parent})
        job_complete_upload(job_parent)
        _, job_child = client.push("upload-bench", "st", {"model.safetensors": child})
        job_complete_upload(job_child)
        derivative = ModelVersion.objects.get(model__name="st", number=2)
        return {
            "file_mb": round(mb),
            "send_parts_mb_per_s (HTTP, 4 threads)": round(mb / sending, 1),
            "complete_job_mb_per_s (verify+chunk+store)": round(mb / completing, 1),
            "end_to_end_mb_per_s": round(mb / total, 1),
            "machine_sha256sum_mb_per_s": round(mb / sha_seconds, 1),
            "machine_cp_mb_per_s": round(mb / cp_seconds, 1),
            "ratio_end_to_end_vs_sha256sum": round(sha_seconds / total, 2),
            "ratio_end_to_end_vs_cp": round(cp_seconds / total, 2),
            "ratio_end_to_end_vs_sha256sum_plus_cp": round((sha_seconds + cp_seconds) / total, 2),
            "identical_reupload_new_bytes": identical.new_bytes,
            "derivative_10pct_tensors_new_bytes_pct": round(100 * derivative.new_bytes / derivative.total_size, 2),
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(20)
        shutil.rmtree(work, ignore_errors=True)
