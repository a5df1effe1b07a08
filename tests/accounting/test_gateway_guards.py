"""Budgets and rate limits enforced in the gateway, on real processes (uvicorn, Redis, an external upstream)."""

from __future__ import annotations

import datetime
import time

import httpx
import pytest
import redis
from django.conf import settings

from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import Budget
from apps.core.models import Role, Team
from apps.core.services import api_token_create
from apps.deployments import services, targets
from tests.servers import product_server, upstream_server

pytestmark = pytest.mark.django_db(transaction=True)
BODY = {"model": "echo", "messages": [{"role": "user", "content": "hi there"}]}  # the upstream: 2 + 4 tokens


@pytest.fixture(autouse=True)
def clean_redis():
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter("ratelimit:*"):
        client.delete(key)
    client.delete(settings.GATEWAY_USAGE_STREAM)


@pytest.fixture
def maintainer(member_factory):
    return member_factory(Role.MAINTAINER)


@pytest.fixture
def echo(maintainer, project):
    with upstream_server() as url:
        deployment = services.deployment_create(
            user=maintainer, project=project,
            data={"name": "echo", "target": "external", "upstream_url": url, "upstream_model": "echo-1"},
        )
        targets.revision_probe(deployment.revisions.get().pk)
        yield deployment


def post(url: str, raw: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {raw}"}, timeout=10)


def test_a_spent_hard_limit_budget_refuses_with_429_naming_it_and_its_reset(maintainer, project, echo):
    raw = api_token_create(user=maintainer, name="t", scopes=["write"])[1]
    with product_server(GATEWAY_BUDGET_CHECK_SECONDS="0") as url:
        assert post(url, raw).status_code == 200
        Budget.objects.create(project=project, name="daily cap", period="daily", amount="0.50", hard_limit=True)
        assert post(url, raw).status_code == 200  # nothing spent yet
        usage_ingest(user=maintainer, project=project.slug,
                     events=[{"id": "spend-1", "model": "gpt-4o", "prompt_tokens": 1, "cost": 0.75}])
        response = post(url, raw)
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "rate_limit_error"
    tomorrow = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).date().isoformat()
    assert "daily cap" in error["message"] and tomorrow in error["message"]
    assert 0 < int(response.headers["retry-after"]) <= 86400


def test_requests_per_minute_of_a_token(maintainer, echo):
    raw = api_token_create(user=maintainer, name="t", scopes=["write"], requests_per_minute=3)[1]
    with product_server() as url:
        statuses = [post(url, raw).status_code for _ in range(8)]
        refused = post(url, raw)
    # Three per window; a window may turn over during the loop, so at most two windows' worth pass.
    assert statuses.count(200) in (3, 4, 5, 6) and 429 in statuses
    assert refused.status_code == 429
    assert "3 requests per minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_tokens_per_minute_of_a_team_are_shared_by_every_gateway_process(maintainer, org, echo):
    team = Team.objects.create(organization=org, name="Search", slug="search", tokens_per_minute=10)
    team.members.add(maintainer)
    raw = api_token_create(user=maintainer, name="t", scopes=["write"])[1]
    with product_server() as first, product_server() as second:
        assert post(first, raw).status_code == 200  # 6 tokens
        assert post(second, raw).status_code == 200  # 12: crosses the limit, still answered
        time.sleep(0.3)  # the tokens are counted just after the answer
        refused = post(first, raw)
        also = post(second, raw)
    assert refused.status_code == 429 and also.status_code == 429
    assert "10 tokens per minute for team Search" in refused.json()["error"]["message"]
