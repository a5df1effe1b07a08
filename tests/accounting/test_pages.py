"""The spend page and the token page: rendering with and without usage, figures equal to the summary API's for the
same filters, bounded queries, permissions, htmx fragments."""

from __future__ import annotations

import datetime
import json
import re
from decimal import Decimal

import pytest
from django.utils import timezone

from apps.accounting import tokenizers
from apps.accounting.budgets import budget_status
from apps.accounting.gpu_cost import gpu_cost_refresh
from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import Budget, PriceEntry
from apps.core.models import Role
from apps.deployments.models import Accelerator, Deployment, Replica, Revision, State, StateEvent, Target

from .conftest import T0

pytestmark = pytest.mark.django_db

SPEND = "/p/alpha/spend/"
TOKENS = "/p/alpha/tokens/"
SUMMARY = "/api/v1/accounting/usage/summary"
WEEK = {"from": "2025-03-01", "to": "2025-03-08"}
TEAMS = [f"team-{i}" for i in range(10)]


# Queries of a page view once the session knows the project: session, user, project, navigation (2), usage (7),
# GPU cost (2), budgets (1); and at most three per budget shown (its spend, its forecast and its burn-down).
PAGE_QUERIES = 15
BUDGET_QUERIES = 3


@pytest.fixture
def viewer(member_factory, client):
    client.force_login(member_factory(Role.VIEWER, username="viewer"))
    client.get(SPEND)  # remembers alpha as the current project (a session write the first time only)
    return client


def embedded(response) -> dict:
    match = re.search(
        r'<script id="spend-data" type="application/json">(.*?)</script>', response.content.decode(), re.S
    )
    assert match, "the page embeds no chart data"
    return json.loads(match.group(1))


@pytest.fixture
def usage(catalog, project):
    """A week of API usage (two models, ten teams, three users) and a self-hosted deployment's traffic."""
    events = []
    for i in range(7 * 24):
        moment = T0 + datetime.timedelta(hours=i, minutes=5)
        events.append(
            {
                "id": f"api-{i}",
                "time": moment.isoformat(),
                "model": "gpt-4o" if i % 3 else "gpt-4o-mini",
                "provider": "openai",
                "prompt_tokens": 1000 + i,
                "completion_tokens": 100 + i,
                "user": ["alice", "bob", "carol"][i % 3],
                "team": TEAMS[i % 10],
            }
        )
    for i in range(6):
        events.append(
            {
                "id": f"chat-{i}",
                "time": (T0 + datetime.timedelta(hours=10, minutes=10 * i)).isoformat(),
                "model": "tiny:1",
                "provider": "self-hosted",
                "deployment": "chat",
                "prompt_tokens": 5000,
                "completion_tokens": 5000,
                "user": "alice",
            }
        )
    result = usage_ingest(user=None, project=project.slug, events=events)
    assert not result.rejected


@pytest.fixture
def gpu(project):
    """The chat deployment on 2 × A100 (4.00/h): up from 10:00 to 12:00 on the first day, traffic only at 10:00."""
    a100 = Accelerator.objects.create(name="A100-test", memory_gib=80, hourly_price=Decimal("4.00"))
    chat = Deployment.objects.create(project=project, name="Chat", slug="chat", target=Target.LOCAL)
    revision = Revision.objects.create(deployment=chat, number=1, accelerator=a100, accelerator_count=2)
    replica = Replica.objects.create(revision=revision, index=0)
    for state, hours in ((State.STARTING, 10), (State.STOPPED, 12)):
        StateEvent.objects.create(
            deployment=chat, revision=revision, replica=replica, state=state, time=T0 + datetime.timedelta(hours=hours)
        )
    gpu_cost_refresh(start=T0, end=T0 + datetime.timedelta(days=1), now=T0 + datetime.timedelta(days=1))


@pytest.fixture
def budgets(project):
    return [
        Budget.objects.create(project=project, name="monthly", amount=Decimal("100"), period="monthly"),
        Budget.objects.create(project=project, name="forever", amount=Decimal("5"), period="total"),
    ]


# Rendering ------------------------------------------------------------------------------------------------------


def test_without_usage_the_page_says_so(viewer, project, django_assert_max_num_queries):
    with django_assert_max_num_queries(PAGE_QUERIES):
        response = viewer.get(SPEND)
    assert response.status_code == 200
    html = response.content.decode()
    assert "No usage in this period yet" in html
    assert 'id="spend-data"' not in html
    assert 'href="/p/alpha/spend/" aria-current="page"' in html  # the navigation's Spend link
    assert "/static/vendor/plotly/plotly.min.js" in html


def test_with_usage_every_part_is_drawn(viewer, usage, gpu, budgets, django_assert_max_num_queries):
    with django_assert_max_num_queries(PAGE_QUERIES + BUDGET_QUERIES * len(budgets)):
        response = viewer.get(SPEND, WEEK)
    assert response.status_code == 200, response.content
    html = response.content.decode()
    for part in ('data-chart="spend"', 'data-chart="tokens"', 'data-chart="cost-per-1k"', 'data-chart="gpu"'):
        assert part in html
    assert html.count("data-budget-chart=") == 2
    assert "Top users" in html and "alice" in html and "team-3" in html
    data = embedded(response)
    assert data["unit"] == "day" and len(data["buckets"]) == 7
    assert sum(data["tokens"]["completion"]) == sum(100 + i for i in range(168)) + 6 * 5000
    # GPU: 2 device-hours at 10:00 (served 60,000 tokens), 2 idle ones at 11:00.
    assert data["gpu"]["busy"][0] == "8.0000000000" and data["gpu"]["idle"][0] == "8.0000000000"
    self_hosted = [row for row in data["cost_per_1k"] if row["kind"] == "Self-hosted"]
    assert self_hosted == [{"name": "chat", "kind": "Self-hosted", "value": "0.2666666667"}]  # 16 / 60k tokens
    api = {row["name"]: Decimal(row["value"]) for row in data["cost_per_1k"] if row["kind"] == "API model"}
    assert set(api) == {"gpt-4o", "gpt-4o-mini"} and api["gpt-4o"] > api["gpt-4o-mini"]
    assert "csv" in html and "/api/v1/accounting/usage/summary.csv?project=alpha&amp;group_by=model" in html


def test_the_query_count_does_not_grow_with_usage(viewer, usage, gpu, django_assert_max_num_queries):
    with django_assert_max_num_queries(PAGE_QUERIES):
        viewer.get(SPEND, {"from": "2025-01-01", "to": "2026-01-01", "group_by": "team"})


def test_the_budget_burn_down_ends_at_what_is_spent_and_forecasts_the_reset(viewer, catalog, project, budgets):
    now = timezone.now()
    usage_ingest(
        user=None,
        project=project.slug,
        events=[{"id": "now", "time": now.isoformat(), "model": "gpt-4o", "prompt_tokens": 1_000_000}],
    )
    data = embedded(viewer.get(SPEND))
    charts = {chart["name"]: chart for chart in data["budgets"]}
    for budget in budgets:
        status = budget_status(budget)
        chart = charts[budget.name]
        assert Decimal(chart["spent"][-1]) == status.spent == Decimal(2)
        assert [Decimal(y) for y in chart["limit"]["y"]] == [budget.amount] * 2
    assert Decimal(charts["monthly"]["forecast"]["y"][1]) > Decimal(2)  # still spending at that rate until the reset
    assert charts["forever"]["forecast"] is None  # a total budget never resets


# The same figures as the summary API --------------------------------------------------------------------------


@pytest.mark.parametrize("group_by", ["model", "deployment", "team"])
def test_the_charted_spend_is_the_summary_apis(viewer, usage, group_by):
    params = {**WEEK, "group_by": group_by}
    data = embedded(viewer.get(SPEND, params))
    api = {row[group_by]: Decimal(row["cost"]) for row in viewer.get(SUMMARY, params).json()["results"]}
    charted = {s["key"]: sum(Decimal(v) for v in s["values"]) for s in data["spend"]}
    other = charted.pop(None, Decimal(0))
    assert charted == {key: api[key] for key in charted}
    assert other == sum(cost for key, cost in api.items() if key not in charted)
    assert len(charted) == min(len([cost for cost in api.values() if cost]), 8)

    by_day = viewer.get(SUMMARY, {**params, "group_by": "day"}).json()["results"]
    assert data["buckets"] == [row["day"] for row in by_day]
    assert [Decimal(v) for v in data["total"]] == [Decimal(row["cost"]) for row in by_day]
    assert [sum(Decimal(s["values"][i]) for s in data["spend"]) for i in range(7)] == [
        Decimal(row["cost"]) for row in by_day
    ]


def test_filters_are_the_summary_apis_and_a_short_period_is_drawn_by_the_hour(viewer, usage):
    params = {"from": "2025-03-02T00:00:00Z", "to": "2025-03-03T00:00:00Z", "user": "bob", "team": "team-1"}
    data = embedded(viewer.get(SPEND, params))
    by_hour = viewer.get(SUMMARY, {**params, "group_by": "hour"}).json()["results"]
    assert data["unit"] == "hour" and len(data["buckets"]) == 24
    charted = {
        bucket: Decimal(cost) for bucket, cost in zip(data["buckets"], data["total"], strict=True) if Decimal(cost)
    }
    assert charted == {row["hour"]: Decimal(row["cost"]) for row in by_hour}
    assert len(charted) == 1  # bob (i % 3 == 1) in team-1 (i % 10 == 1): one hour of that day


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"from": "yesterday"}, "ISO 8601"),
        ({"from": "2025-03-01T10:30:00Z"}, "whole hours"),
        ({"from": "2025-03-08", "to": "2025-03-01"}, "after"),
        ({"from": "2020-01-01", "to": "2025-01-01"}, "at most 366 days"),
        ({"group_by": "user"}, "model, deployment, team"),
    ],
)
def test_invalid_filters_are_a_400_that_says_why(viewer, params, message):
    response = viewer.get(SPEND, params)
    assert response.status_code == 400
    assert message in response.content.decode()


def test_a_filter_change_answers_with_the_fragment_only(viewer, usage):
    response = viewer.get(SPEND, {**WEEK, "group_by": "team"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<div id="spend-body"') and "<html" not in html
    assert embedded(response)["group_by"] == "team"
    assert "HX-Request" in response["Vary"]


# Permissions ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [SPEND, TOKENS])
def test_another_projects_pages_are_a_404_and_anonymous_users_sign_in(client, member_factory, other_project, url):
    assert client.get(url).status_code == 302
    client.force_login(member_factory(Role.ADMIN, on=other_project))
    assert client.get(url).status_code == 404
    assert client.post(url, {"text": "hello"}).status_code == 404


def test_the_page_shows_only_the_projects_usage(viewer, catalog, usage, other_project):
    usage_ingest(
        user=None,
        project=other_project.slug,
        events=[{"id": "theirs", "time": (T0 + datetime.timedelta(hours=1)).isoformat(), "model": "secret-model",
                 "prompt_tokens": 10**6, "cost": 1000}],
    )  # fmt: skip
    response = viewer.get(SPEND, {**WEEK, "group_by": "model"})
    assert "secret-model" not in response.content.decode()
    assert {s["key"] for s in embedded(response)["spend"]} == {"gpt-4o", "gpt-4o-mini"}


# The token page -------------------------------------------------------------------------------------------------

TEXT = "The quick brown fox jumps over the lazy dog. " * 20


def test_the_token_page_counts_and_prices_a_text(viewer, catalog, project, django_assert_max_num_queries):
    assert "Nothing counted yet" in viewer.get(TOKENS).content.decode()
    PriceEntry.objects.create(
        project=project, model_pattern="house-model", input_per_million=Decimal(1), effective_from=T0
    )
    with django_assert_max_num_queries(12):
        response = viewer.post(TOKENS, {"text": TEXT, "model": "house-model"})
    assert response.status_code == 200
    comparison = response.context["comparison"]
    o200k = tokenizers.count_text(tokenizers.counter_get("o200k_base"), TEXT)
    cl100k = tokenizers.count_text(tokenizers.counter_get("cl100k_base"), TEXT)
    counts = {row.tokenizer: row.tokens for row in comparison.tokenizers}
    assert counts["o200k_base"] == o200k and counts["cl100k_base"] == cl100k
    assert comparison.tokenizers[0].characters_per_token == round(len(TEXT) / o200k, 2)
    models = {row.model: row for row in comparison.models}
    gpt4o = models["gpt-4o"]
    assert (gpt4o.tokenizer, gpt4o.tokens) == ("o200k_base", o200k)
    assert gpt4o.input_cost == Decimal(o200k * 2) / 1_000_000 and gpt4o.output_cost == Decimal(o200k * 10) / 1_000_000
    assert models["gpt-4"].tokens == cl100k
    house = models["house-model"]  # priced by the project's override, but no tokenizer is known for it
    assert (house.input_per_million, house.tokens, house.note) == (
        Decimal(1),
        None,
        "No tokenizer is known for this model.",
    )
    assert f"{o200k:,}" in response.content.decode()


def test_the_token_form_answers_htmx_with_the_results_and_refuses_empty_text(viewer, catalog):
    response = viewer.post(TOKENS, {"text": "hello world"}, headers={"HX-Request": "true"})
    html = response.content.decode()
    assert response.status_code == 200 and html.lstrip().startswith('<section id="token-results"')
    assert "<html" not in html and "11 characters" in html

    response = viewer.post(TOKENS, {"text": ""}, headers={"HX-Request": "true"})
    assert response.status_code == 400 and "This field is required." in response.content.decode()
    response = viewer.post(TOKENS, {"text": "x", "version": "999"})
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
