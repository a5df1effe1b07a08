"""Aliases and promotions through the API: who may move which alias, second-maintainer approval, history and
audit, and the protection of a version behind a protected alias."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.core.models import AuditEvent, Role
from apps.registry.models import Alias, ModelVersion, Promotion, RegisteredModel, VersionStatus


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.DEVELOPER, username="developer")


@pytest.fixture
def maintainer(member_factory):
    return member_factory(Role.MAINTAINER, username="maintainer")


@pytest.fixture
def second_maintainer(member_factory):
    return member_factory(Role.MAINTAINER, username="second-maintainer")


@pytest.fixture
def model(project):
    return RegisteredModel.objects.create(project=project, name="chat")


@pytest.fixture
def v1(model):
    return ModelVersion.objects.create(model=model, number=1, status=VersionStatus.READY)


@pytest.fixture
def v2(model):
    return ModelVersion.objects.create(model=model, number=2, status=VersionStatus.READY)


def move(client, model, alias: str, number: int, reason: str = ""):
    return client.post(
        reverse("registry-model-aliases", args=[model.pk]),
        {"alias": alias, "version": number, "reason": reason},
        format="json",
    )


def pointed(model, alias: str) -> int | None:
    found = Alias.objects.filter(model=model, name=alias).select_related("version").first()
    return found.version.number if found else None


def test_developer_moves_a_normal_alias_and_it_is_recorded(model, v1, v2, developer, client_for):
    client = client_for(developer)
    first = move(client, model, "staging", 1, "first cut")
    assert first.status_code == 201, first.content
    assert first.json()["status"] == "applied" and first.json()["from_version"] is None
    second = move(client, model, "staging", 2).json()
    assert second["from_version"] == 1 and second["to_version"] == 2 and second["requested_by"] == "developer"
    assert pointed(model, "staging") == 2

    listed = client.get(reverse("registry-model-aliases", args=[model.pk])).json()
    assert listed == [
        {
            "name": "staging",
            "version": 2,
            "version_id": v2.pk,
            "protected": False,
            "updated_at": listed[0]["updated_at"],
        }
    ]
    history = client.get(reverse("registry-promotion-list"), {"model": model.pk}).json()["results"]
    assert [(p["from_version"], p["to_version"], p["reason"]) for p in history] == [(1, 2, ""), (None, 1, "first cut")]
    events = AuditEvent.objects.filter(action="alias.move", object_id=f"{model.pk}:staging").order_by("id")
    assert [e.changes["version"] for e in events] == [[None, 1], [1, 2]]
    assert all(e.actor.username == "developer" for e in events)


def test_only_maintainers_move_production(model, v1, developer, maintainer, client_for):
    refused = move(client_for(developer), model, "production", 1)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "permission_denied"
    assert pointed(model, "production") is None and not Promotion.objects.exists()
    assert move(client_for(maintainer), model, "production", 1).status_code == 201
    assert pointed(model, "production") == 1
    # Removing it is a maintainer's call too.
    url = reverse("registry-model-alias-detail", args=[model.pk, "production"])
    assert client_for(developer).delete(url).status_code == 403
    assert client_for(maintainer).delete(url).status_code == 204
    assert pointed(model, "production") is None
    assert AuditEvent.objects.filter(action="alias.delete", object_id=f"{model.pk}:production").exists()


def test_with_approval_a_second_maintainer_must_approve(
    model, v1, v2, maintainer, second_maintainer, developer, client_for, settings
):
    settings.PROTECTED_ALIAS_APPROVAL = True
    Alias.objects.create(model=model, name="production", version=v1)
    requester = client_for(maintainer)

    pending = move(requester, model, "production", 2, "better evals").json()
    assert pending["status"] == "pending" and pointed(model, "production") == 1
    approve = reverse("registry-promotion-approve", args=[pending["id"]])
    refused = requester.post(approve)
    assert refused.status_code == 403 and "second maintainer" in refused.json()["error"]["message"]
    assert client_for(developer).post(approve).status_code == 403
    assert pointed(model, "production") == 1

    approved = client_for(second_maintainer).post(approve)
    assert approved.status_code == 200, approved.content
    body = approved.json()
    assert body["status"] == "applied" and body["decided_by"] == "second-maintainer" and body["from_version"] == 1
    assert pointed(model, "production") == 2
    assert client_for(second_maintainer).post(approve).status_code == 400  # already decided
    actions = list(
        AuditEvent.objects.filter(object_id=f"{model.pk}:production").order_by("id").values_list("action", flat=True)
    )
    assert actions[-2:] == ["alias.request", "alias.approve"]


def test_rejection_leaves_the_alias_where_it_was(model, v1, v2, maintainer, second_maintainer, client_for, settings):
    settings.PROTECTED_ALIAS_APPROVAL = True
    Alias.objects.create(model=model, name="production", version=v1)
    pending = move(client_for(maintainer), model, "production", 2).json()
    rejected = client_for(second_maintainer).post(reverse("registry-promotion-reject", args=[pending["id"]]))
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert pointed(model, "production") == 1
    listed = client_for(maintainer).get(reverse("registry-promotion-list"), {"status": "rejected"}).json()
    assert [p["id"] for p in listed["results"]] == [pending["id"]]
    assert AuditEvent.objects.filter(action="alias.reject", object_id=f"{model.pk}:production").exists()


def test_a_version_behind_production_cannot_be_deleted(model, v1, v2, maintainer, client_for):
    client = client_for(maintainer)
    assert move(client, model, "production", 1).status_code == 201
    refused = client.delete(reverse("registry-version-detail", args=[v1.pk]))
    assert refused.status_code == 400 and "production" in refused.json()["error"]["message"]
    v1.refresh_from_db()
    assert v1.deleted_at is None
    assert move(client, model, "production", 2).status_code == 201
    assert client.delete(reverse("registry-version-detail", args=[v1.pk])).status_code == 204


def test_an_alias_needs_a_ready_version_of_this_model(project, model, v1, developer, client_for):
    client = client_for(developer)
    ModelVersion.objects.create(model=model, number=3, status=VersionStatus.QUARANTINED)
    assert move(client, model, "staging", 3).status_code == 400  # not ready
    assert move(client, model, "staging", 9).status_code == 404  # no such version
    assert move(client, model, "Bad Alias", 1).status_code == 400
    other = RegisteredModel.objects.create(project=project, name="other")
    assert move(client, other, "staging", 1).status_code == 404  # version numbers are per model
    assert client.delete(reverse("registry-model-alias-detail", args=[model.pk, "nope"])).status_code == 400
    for impossible in ("Nope", "a%00b", "x" * 65):  # not an alias name at all: no such route
        assert client.delete(f"/api/v1/registry/models/{model.pk}/aliases/{impossible}/").status_code == 404
