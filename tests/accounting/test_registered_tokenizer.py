"""Counting with a registered version's own tokenizer, and the query cost of budget status."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from apps.accounting.budgets import budget_status
from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import Budget, UsageEvent
from apps.core.models import Role
from apps.registry.demo import register_directory, write_tiny_lm

TEXT = "The quick brown fox jumps over the lazy dog. Lineage records which version a fine-tune was derived from."


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.MAINTAINER)


@pytest.fixture
def tiny(developer, project, tmp_path):
    directory = write_tiny_lm(tmp_path / "tiny")
    version = register_directory(user=developer, project=project, name="tiny-lm", directory=directory)
    return version, AutoTokenizer.from_pretrained(str(directory))


def test_text_of_a_registered_model_is_counted_with_its_own_tokenizer(developer, project, tiny):
    version, tokenizer = tiny
    result = usage_ingest(
        user=developer,
        project=project.slug,
        events=[{"id": "t-1", "model": "tiny-lm", "input_text": TEXT, "output_text": "over the lazy dog"}],
    )
    assert result.accepted == ["t-1"], result.rejected
    event = UsageEvent.objects.get(event_id="t-1")
    assert event.tokenizer == f"registry:{version.pk}"
    assert event.prompt_tokens == len(tokenizer.encode(TEXT, add_special_tokens=False))
    assert event.completion_tokens == len(tokenizer.encode("over the lazy dog", add_special_tokens=False))
    assert event.content is None  # the project did not opt in to keeping text


def test_a_named_registry_tokenizer_counts_messages_and_must_belong_to_the_project(
    developer, project, other_project, tiny, member_factory
):
    version, tokenizer = tiny
    messages = [{"role": "user", "content": TEXT}]
    result = usage_ingest(
        user=developer,
        project=project.slug,
        events=[{"id": "t-2", "model": "anything", "messages": messages, "tokenizer": f"registry:{version.pk}"}],
    )
    assert result.accepted == ["t-2"], result.rejected
    assert UsageEvent.objects.get(event_id="t-2").prompt_tokens >= len(tokenizer.encode(TEXT, add_special_tokens=False))

    outsider = member_factory(Role.ADMIN, on=other_project)
    refused = usage_ingest(
        user=outsider,
        project=other_project.slug,
        events=[{"id": "t-3", "model": "x", "input_text": TEXT, "tokenizer": f"registry:{version.pk}"}],
    )
    assert refused.accepted == [] and "no registered version" in refused.rejected[0]["reason"]


def test_budget_status_costs_a_fixed_number_of_queries(project, django_assert_max_num_queries):
    budget = Budget.objects.create(project=project, name="monthly", amount=100, thresholds=[50, 80])
    with django_assert_max_num_queries(2):
        status = budget_status(budget)
    assert status.spent == 0 and not status.exceeded


def test_text_is_kept_only_after_the_project_opts_in(developer, project, tiny, client_for, admin_user):
    admin = client_for(admin_user)
    url = f"/api/v1/accounting/settings/{project.slug}"
    assert admin.get(url).json() == {"project": project.slug, "store_text": False}
    assert client_for(developer).patch(url, {"store_text": True}, format="json").status_code == 403
    assert admin.patch(url, {"store_text": "maybe"}, format="json").status_code == 400
    assert admin.patch(url, {"store_text": True}, format="json").json()["store_text"] is True
    usage_ingest(user=developer, project=project.slug, events=[{"id": "kept", "model": "tiny-lm", "input_text": TEXT}])
    assert UsageEvent.objects.get(event_id="kept").content == {"input_text": TEXT}
