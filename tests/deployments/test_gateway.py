"""The gateway end to end on real processes: uvicorn serving the product, the official `openai` client, and an
OpenAI-compatible upstream (the external target). Local model-server runtimes are in test_runtime.py."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import redis
from django.conf import settings

from apps.accounting.models import UsageEvent
from apps.accounting.usage_stream import drain
from apps.core.models import Role
from apps.core.services import api_token_create, api_token_revoke
from apps.deployments import services, targets
from apps.deployments.models import Deployment, State
from tests.servers import product_server, upstream_server

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stream():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(settings.GATEWAY_USAGE_STREAM)
    yield client
    client.delete(settings.GATEWAY_USAGE_STREAM)


@pytest.fixture
def maintainer(member_factory):
    return member_factory(Role.MAINTAINER)


@pytest.fixture
def upstream():
    with upstream_server(key="provider-key") as url:
        yield url


@pytest.fixture
def gateway():
    with product_server() as url:
        yield url


def external(user, project, url, *, slug="echo", key="provider-key", **extra) -> Deployment:
    deployment = services.deployment_create(
        user=user,
        project=project,
        data={
            "name": slug,
            "slug": slug,
            "target": "external",
            "upstream_url": url,
            "upstream_model": "echo-1",
            "upstream_key": key,
            **extra,
        },
    )
    targets.revision_probe(deployment.revisions.get().pk)  # what the probe task does on a worker
    return deployment


def token(user, **kwargs) -> str:
    return api_token_create(user=user, name="gw", scopes=["read", "write"], **kwargs)[1]


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_openai_client_through_the_gateway_with_and_without_streaming(maintainer, project, upstream, gateway, stream):
    deployment = external(maintainer, project, upstream)
    assert deployment.revisions.get().state == State.READY
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=token(maintainer))

    answer = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi there"}])
    assert answer.choices[0].message.content == "Hello from the upstream."
    assert answer.usage.prompt_tokens == 2 and answer.usage.completion_tokens == 4

    chunks = list(
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the upstream."
    assert all(c.usage is None for c in chunks), "the usage chunk the gateway asked for is not passed on unasked"

    chunks = list(
        client.chat.completions.create(
            model="echo",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage.completion_tokens == 4

    embedding = client.embeddings.create(model="echo", input=["a", "b"])
    assert len(embedding.data) == 2

    models = client.models.list()
    assert [m.id for m in models.data] == ["echo"]

    # One usage record per request, stored by the consumer with the stream's token counts.
    wait_for(lambda: stream.xlen(settings.GATEWAY_USAGE_STREAM) >= 4)
    assert drain().stored == 4
    events = UsageEvent.objects.filter(project=project, deployment="echo")
    assert events.count() == 4
    chats = events.filter(metadata__endpoint="chat")
    assert chats.count() == 3 and all(e.completion_tokens == 4 and e.ttft_ms is not None for e in chats)
    assert events.get(metadata__endpoint="embedding").prompt_tokens == 2
    assert {e.user for e in events} == {maintainer.username}
    assert all(e.metadata["revision"] == 1 for e in events)


def test_errors_use_openai_shape_and_never_leak_other_projects(
    maintainer, project, other_project, member_factory, upstream, gateway, stream
):
    external(maintainer, project, upstream)
    outsider = member_factory(Role.MAINTAINER, on=other_project)
    viewer = member_factory(Role.VIEWER)
    with httpx.Client(base_url=gateway, timeout=10) as http:
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"

        response = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token(outsider)}"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"

        # A viewer may see the project but not invoke its deployments: same answer as a missing model.
        response = http.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token(viewer)}"})
        assert response.status_code == 404

        auth = {"Authorization": f"Bearer {token(maintainer)}"}
        response = http.post("/v1/chat/completions", content=b"{not json", headers=auth)
        assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
        response = http.post("/v1/chat/completions", json={"model": "echo", "messages": "hi"}, headers=auth)
        assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
        response = http.post("/v1/chat/completions", content=b"x" * (settings.GATEWAY_MAX_BODY_BYTES + 1), headers=auth)
        assert response.status_code == 413

        response = http.post("/v2/models/echo/infer", json={"inputs": []}, headers=auth)
        assert response.status_code == 400 and isinstance(response.json()["error"], str)


def test_input_over_the_revision_limit_is_refused_before_the_upstream(maintainer, project, upstream, gateway):
    external(maintainer, project, upstream, max_input_tokens=16, max_total_tokens=64)
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=token(maintainer), max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "word " * 200}])
    assert caught.value.body["code"] == "context_length_exceeded"


def test_revoked_token_stops_within_the_cache_time(maintainer, project, upstream, stream):
    external(maintainer, project, upstream)
    created, raw = api_token_create(user=maintainer, name="gw", scopes=["write"])
    with product_server(GATEWAY_AUTH_TTL_SECONDS="0.2") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=raw, max_retries=0)
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
        api_token_revoke(user=maintainer, token=created)
        time.sleep(0.3)
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])


def test_nothing_ready_is_503_with_retry_after(maintainer, project, gateway):
    deployment = services.deployment_create(
        user=maintainer,
        project=project,
        data={"name": "down", "target": "external", "upstream_url": "http://127.0.0.1:9/v1", "upstream_model": "x"},
    )
    targets.revision_probe(deployment.revisions.get().pk)
    revision = deployment.revisions.get()
    assert revision.state == State.FAILED and "cannot be reached" in revision.state_reason
    with httpx.Client(base_url=gateway, timeout=10) as http:
        response = http.post(
            "/v1/chat/completions",
            json={"model": "down", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {token(maintainer)}"},
        )
    assert response.status_code == 503
    assert response.headers["retry-after"]


def test_usage_records_survive_a_consumer_that_dies_before_acknowledging(
    maintainer, project, upstream, gateway, stream, monkeypatch
):
    external(maintainer, project, upstream)
    client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=token(maintainer))
    for _ in range(5):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    wait_for(lambda: stream.xlen(settings.GATEWAY_USAGE_STREAM) == 5)

    import apps.accounting.usage_stream as usage_stream

    def killed(*args):
        raise SystemExit("consumer killed after storing, before acknowledging")

    monkeypatch.setattr(usage_stream, "_acknowledge", killed)
    with pytest.raises(SystemExit):
        drain(consumer="first")
    assert UsageEvent.objects.filter(project=project).count() == 5  # stored, but still pending in the stream
    monkeypatch.undo()
    monkeypatch.setattr(settings, "USAGE_STREAM_CLAIM_IDLE_MS", 0)
    result = drain(consumer="second")
    assert result.read == 5 and result.duplicates == 5 and result.stored == 0
    assert UsageEvent.objects.filter(project=project).count() == 5
    assert stream.xlen(settings.GATEWAY_USAGE_STREAM) == 0
