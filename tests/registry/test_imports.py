"""Imports from a server directory (only under REGISTRY_IMPORT_ROOTS) and from the Hub (token from a project secret)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from apps.core.models import AuditEvent, Job, JobStatus, Role
from apps.core.services import project_secret_set
from apps.registry.imports import job_import
from apps.registry.models import ModelVersion, VersionStatus

from .conftest import safetensors_bytes, tensors

BASE = "/api/v1/registry"
HF_TOKEN = "hf_TopSecretValue1234567890"


@pytest.fixture
def roots(tmp_path, settings) -> Path:
    root = tmp_path / "imports"
    root.mkdir()
    settings.REGISTRY_IMPORT_ROOTS = [str(root)]
    return root


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.DEVELOPER)


@pytest.fixture
def client(developer, client_for):
    return client_for(developer)


def start_import(client, source: str, name: str = "imported", **fields):
    return client.post(
        f"{BASE}/imports/", {"project": "alpha", "name": name, "source": source, **fields}, format="json"
    )


def test_directory_import_hashes_stores_and_serves_the_files(client, roots):
    model_dir = roots / "team" / "gpt-mini"
    (model_dir / "tokenizer").mkdir(parents=True)
    (model_dir / ".git").mkdir()
    weights = safetensors_bytes(tensors(count=2, elements=262_144))
    (model_dir / "model.safetensors").write_bytes(weights)
    (model_dir / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    (model_dir / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (model_dir / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    shared = roots / "shared-merges.txt"
    shared.write_text("merges")
    (model_dir / "tokenizer" / "merges.txt").symlink_to(shared)  # a link that stays inside the roots

    response = start_import(client, f"file://{model_dir}", description="from the NFS share")
    assert response.status_code == 202, response.content
    job = response.json()
    assert job["job_type"] == "registry.import" and job["status"] == "queued"
    job_import(job["id"])
    job = Job.objects.get(pk=job["id"])
    assert job.status == JobStatus.SUCCEEDED, job.error
    version = ModelVersion.objects.get(pk=job.result["version_id"])
    assert version.status == VersionStatus.READY and version.source_uri == f"file://{model_dir}"
    assert version.description == "from the NFS share" and version.format == "safetensors"
    assert sorted(version.files.values_list("path", flat=True)) == [
        "config.json",
        "model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/vocab.txt",
    ]
    stored = version.files.get(path="model.safetensors")
    assert stored.sha256 == hashlib.sha256(weights).hexdigest()
    download = client.get(f"{BASE}/versions/{version.pk}/files/model.safetensors")
    assert b"".join(download.streaming_content) == weights

    job_import(str(job.pk))  # delivered again: nothing more happens
    assert ModelVersion.objects.filter(model=version.model).count() == 1

    child = start_import(
        client,
        f"file://{model_dir}",
        name="imported-q",
        parents=[{"model": "imported", "version": 1, "relation": "quantized"}],
    )
    assert child.status_code == 202
    job_import(child.json()["id"])
    child_version = ModelVersion.objects.get(model__name="imported-q")
    assert child_version.parent_links.get().parent == version and child_version.new_bytes == 0  # all deduplicated


def test_directory_sources_must_stay_inside_the_import_roots(client, roots, tmp_path, settings):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"not yours")
    (roots / "escape").symlink_to(outside)
    (roots / "model").mkdir()
    (roots / "model" / "w.bin").write_bytes(b"weights")
    (roots / "file.bin").write_bytes(b"x")
    cases = {
        f"file://{outside}": "is outside the directories this server allows imports from",
        f"file://{roots}/../outside": "is outside the directories this server allows imports from",
        f"file://{roots}/escape": "is outside the directories this server allows imports from",
        f"file://{roots}/model/../../outside": "is outside the directories this server allows imports from",
        f"file://{roots}/missing": "is not a directory",
        f"file://{roots}/file.bin": "is not a directory",
        f"file://server{roots}/model": "no host, query or fragment",
        "file:relative/dir": "no host, query or fragment",
        "s3://bucket/model": "source must be",
        "/plain/path": "source must be",
    }
    for source, message in cases.items():
        response = start_import(client, source)
        assert response.status_code == 400, source
        assert message in response.json()["error"]["message"], (source, response.json())
    settings.REGISTRY_IMPORT_ROOTS = []
    response = start_import(client, f"file://{roots}/model")
    assert response.status_code == 400 and "Directory imports are disabled" in response.json()["error"]["message"]
    assert not Job.objects.exists()


def test_a_file_linking_out_of_the_roots_fails_the_job_clearly(client, roots, tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0")
    model_dir = roots / "sneaky"
    model_dir.mkdir()
    (model_dir / "w.bin").write_bytes(b"weights")
    (model_dir / "notes.txt").symlink_to(tmp_path / "passwd")
    response = start_import(client, f"file://{model_dir}")
    assert response.status_code == 202  # the directory itself is allowed; its files are checked by the job
    job_import(response.json()["id"])
    job = Job.objects.get(pk=response.json()["id"])
    assert job.status == JobStatus.FAILED
    assert job.error == "notes.txt links outside the directories this server allows imports from."
    assert not ModelVersion.objects.exists()


def test_hub_sources_are_checked(client, project, admin_user, roots):
    for source in ("hf://", "hf://org/name/extra", "hf://org/../x", "hf://org/name@", "hf://org/name@a..b", "hf://-x"):
        response = start_import(client, source)
        assert response.status_code == 400, source
    response = start_import(client, "hf://org/name@main", hf_token_secret="HF_TOKEN")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "This project has no secret named 'HF_TOKEN'."
    project_secret_set(user=admin_user, project=project, name="HF_TOKEN", value=HF_TOKEN)
    (roots / "m").mkdir()
    response = start_import(client, f"file://{roots}/m", hf_token_secret="HF_TOKEN")
    assert response.status_code == 400 and "hf:// sources only" in response.json()["error"]["message"]
    assert start_import(client, "hf://org/name").json()["params"]["source"] == "hf://org/name"


@pytest.fixture
def fake_hub(monkeypatch):
    """A local HTTP server standing in for the Hub: records each request's Authorization header, answers 401."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def _refuse(self):
            seen.append(self.headers.get("Authorization"))
            payload = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_POST = _refuse

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield seen
    server.shutdown()
    thread.join()


def test_hub_import_sends_the_project_secret_and_never_reveals_it(client, project, admin_user, fake_hub):
    project_secret_set(user=admin_user, project=project, name="HF_TOKEN", value=HF_TOKEN)
    response = start_import(client, "hf://acme/private-model@v1.0", hf_token_secret="HF_TOKEN")
    assert response.status_code == 202, response.content
    assert HF_TOKEN not in response.content.decode()
    job_import(response.json()["id"])
    job = Job.objects.get(pk=response.json()["id"])

    assert fake_hub and set(fake_hub) == {f"Bearer {HF_TOKEN}"}  # the secret's value went to the Hub, and only there
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("Could not download acme/private-model@v1.0 from the Hugging Face Hub:")
    assert HF_TOKEN not in job.error and HF_TOKEN not in json.dumps(job.params) and HF_TOKEN not in job.message
    events = json.dumps(list(AuditEvent.objects.values("action", "object_repr", "changes")), default=str)
    assert "HF_TOKEN" in events and HF_TOKEN not in events
    status = client.get(f"/api/v1/jobs/{job.pk}/")
    assert status.status_code == 200 and HF_TOKEN not in status.content.decode()
    assert not ModelVersion.objects.exists()
