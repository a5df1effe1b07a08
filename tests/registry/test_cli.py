"""cpctl against a live server and a real Celery worker: login, an interrupted push that resumes, pull, ls."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from apps.core.models import Role
from apps.core.services import api_token_create
from apps.registry import cli
from apps.registry.models import ModelVersion, Upload, VersionStatus
from tests.workers import celery_worker_process, flush_broker

from .conftest import safetensors_bytes, tensors

ROOT = Path(__file__).resolve().parents[2]
PART = 256 * 1024


@pytest.fixture
def celery_worker(transactional_db, artifact_store):
    """A real Celery worker on the default queue, using the test database and this test's artifact store."""
    flush_broker()
    with celery_worker_process(
        node="default", queues="default", extra_env={"ARTIFACT_STORE_URL": f"file://{artifact_store}"}
    ) as process:
        yield process
    flush_broker()


@pytest.fixture
def cpctl(tmp_path, monkeypatch, capsys):
    """cpctl(*args) -> (exit status, stdout, stderr), run in this process with a private config file."""
    monkeypatch.setenv("CPCTL_CONFIG", str(tmp_path / "cpctl" / "config.json"))
    monkeypatch.delenv("CPCTL_URL", raising=False)
    monkeypatch.delenv("CPCTL_TOKEN", raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return code, out, err

    return run


@pytest.fixture
def token(transactional_db, project, member_factory, settings) -> str:
    settings.UPLOAD_PART_SIZE = PART
    _, raw = api_token_create(user=member_factory(Role.DEVELOPER), name="cli", scopes=["read", "write"])
    return raw


@pytest.fixture
def model_dir(tmp_path) -> Path:
    directory = tmp_path / "tiny-gpt"
    (directory / "tokenizer").mkdir(parents=True)
    (directory / "model.safetensors").write_bytes(safetensors_bytes(tensors(count=3, elements=131_072)))  # 1.5 MiB
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 3, "n_embd": 64}))
    (directory / "tokenizer" / "vocab.json").write_text(json.dumps({str(i): i for i in range(40_000)}))  # ~0.5 MiB
    return directory


def test_login_and_clear_errors(cpctl, live_server, token, tmp_path, monkeypatch):
    code, _, err = cpctl("models", "ls")
    assert code == 1 and "Not logged in" in err
    code, _, err = cpctl("login", "--url", live_server.url, "--token", "cpt_wrong")
    assert code == 1 and err.strip() == "cpctl: error: HTTP 401: Invalid, expired or revoked token."
    code, out, _ = cpctl("login", "--url", live_server.url, "--token", token)
    assert code == 0 and "1 projects visible" in out
    config = Path(os.environ["CPCTL_CONFIG"])
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": live_server.url, "token": token}

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "weights.bin").write_bytes(b"w")
    code, _, err = cpctl("models", "push", str(empty), "--project", "nope", "--name", "x")
    assert code == 1 and err.strip() == "cpctl: error: HTTP 400: project: Object with slug=nope does not exist."
    code, _, err = cpctl("models", "pull", "alpha/missing:1", str(tmp_path / "out"))
    assert code == 1 and "HTTP 404: No version alpha/missing:1 found." in err
    monkeypatch.setenv("CPCTL_TOKEN", "cpt_overridden")  # the environment wins over the file
    code, _, err = cpctl("models", "ls")
    assert code == 1 and "HTTP 401" in err


def test_interrupted_push_resumes_then_pull_verifies_and_resumes(
    cpctl, live_server, token, model_dir, tmp_path, celery_worker, monkeypatch
):
    assert cpctl("login", "--url", live_server.url, "--token", token)[0] == 0
    real_send = cli._send_part
    sent: list[tuple[int, int]] = []

    def flaky_send(api, upload, entry, path, number):
        if len(sent) >= 3:
            raise cli.CliError("connection reset by peer")
        sent.append((entry["index"], number))
        return real_send(api, upload, entry, path, number)

    monkeypatch.setattr(cli, "_send_part", flaky_send)
    code, out, err = cpctl(
        "models", "push", str(model_dir), "--project", "alpha", "--name", "tiny-gpt", "--parallel", "1"
    )
    assert code == 1 and "parts were not sent (connection reset by peer)" in err
    assert "Run the same command again to resume." in err
    state = json.loads((model_dir / cli.STATE_FILE).read_text())
    upload = Upload.objects.get(pk=state["upload_id"])
    assert sorted(upload.parts.values_list("file_index", "part_number")) == sorted(sent)
    total_parts = sum(-(-entry["size"] // PART) for entry in upload.manifest)
    assert total_parts == 11

    resent: list[tuple[int, int]] = []

    def counting_send(api, upload, entry, path, number):
        resent.append((entry["index"], number))
        return real_send(api, upload, entry, path, number)

    monkeypatch.setattr(cli, "_send_part", counting_send)
    code, out, err = cpctl("models", "push", str(model_dir), "--project", "alpha", "--name", "tiny-gpt")
    assert code == 0, err
    assert f"Resuming upload {upload.pk} (3 of 11 parts on the server)" in out
    assert len(resent) == 8 and not set(resent) & set(sent)  # only the missing parts
    assert "alpha/tiny-gpt:1 ready: 3 files" in out
    assert Upload.objects.count() == 1 and not (model_dir / cli.STATE_FILE).exists()
    version = ModelVersion.objects.get(model__name="tiny-gpt")
    assert version.status == VersionStatus.READY and version.format == "safetensors"

    code, out, err = cpctl(
        "models", "push", str(model_dir), "--project", "alpha", "--name", "tiny-gpt-ft", "--parent", "tiny-gpt:1"
    )
    assert code == 0, err
    child = ModelVersion.objects.get(model__name="tiny-gpt-ft")
    assert child.parent_links.get().parent == version and child.parent_links.get().relation == "fine-tune"
    assert child.new_bytes == 0  # the same bytes as its parent: nothing new stored

    dest = tmp_path / "pulled"
    code, out, err = cpctl("models", "pull", "alpha/tiny-gpt:1", str(dest))
    assert code == 0, err
    assert "Pulled alpha/tiny-gpt:1" in out and "3 downloaded" in out
    for relative in ("model.safetensors", "config.json", "tokenizer/vocab.json"):
        assert (dest / relative).read_bytes() == (model_dir / relative).read_bytes()

    weights = (model_dir / "model.safetensors").read_bytes()
    (dest / "model.safetensors").unlink()
    (dest / "model.safetensors.part").write_bytes(weights[:700_000])  # an interrupted download
    code, out, err = cpctl("models", "pull", "alpha/tiny-gpt", str(dest))
    assert code == 0, err
    assert "model.safetensors: resuming at 683.6 KiB" in err and "1 downloaded, 2 already present" in out
    assert (dest / "model.safetensors").read_bytes() == weights
    assert not list(dest.rglob("*.part"))

    (dest / "model.safetensors").unlink()
    (dest / "model.safetensors.part").write_bytes(b"\0" * 1000)  # a corrupt partial file
    code, _, err = cpctl("models", "pull", "alpha/tiny-gpt:1", str(dest))
    assert code == 1 and "model.safetensors: the downloaded bytes do not match its sha256" in err
    assert not (dest / "model.safetensors.part").exists() and not (dest / "model.safetensors").exists()
    assert cpctl("models", "pull", "alpha/tiny-gpt:1", str(dest))[0] == 0
    assert (dest / "model.safetensors").read_bytes() == weights

    code, out, _ = cpctl("models", "ls", "--project", "alpha")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["PROJECT", "MODEL", "TASK", "VERSIONS", "LATEST", "ALIASES"]
    assert lines[1].split() == ["alpha", "tiny-gpt", "text-generation", "1", "1"]
    assert lines[2].split() == ["alpha", "tiny-gpt-ft", "text-generation", "1", "1"]
