"""Registry metadata API: filters, pinned query counts, version detail, compare, lineage and visibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from apps.core.models import AuditEvent, Role
from apps.core.services import object_grant_create
from apps.registry.demo import register_directory
from apps.registry.models import Alias, Lineage, ModelVersion, Promotion, RegisteredModel, VersionStatus

from .conftest import safetensors_bytes, tensors

# Pinned: a list answers in this many queries whatever the number of rows: the token lookup, the count, the page
# (permission checks are subqueries inside both), then one query per prefetched relation (model list: aliases;
# version list: aliases, visible parents, visible children).
MODEL_LIST_QUERIES = 4
VERSION_LIST_QUERIES = 6
PROMOTION_LIST_QUERIES = 3


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.DEVELOPER, username="developer")


@pytest.fixture
def maintainer(member_factory):
    return member_factory(Role.MAINTAINER, username="maintainer")


@pytest.fixture
def outsider(member_factory, other_project):
    return member_factory(Role.ADMIN, on=other_project, username="outsider")


def make_model(project, name: str, **fields) -> RegisteredModel:
    return RegisteredModel.objects.create(project=project, name=name, **fields)


def make_version(model: RegisteredModel, number: int = 1, **fields) -> ModelVersion:
    """A version row written directly (the filters and lists need rows, not stored bytes)."""
    fields.setdefault("status", VersionStatus.READY)
    return ModelVersion.objects.create(model=model, number=number, **fields)


def ids(response) -> set[int]:
    assert response.status_code == 200, response.content
    return {item["id"] for item in response.json()["results"]}


def names(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {item["name"] for item in response.json()["results"]}


@pytest.fixture
def catalogue(project, other_project):
    """Three models with distinct tasks, tags, statuses, formats, sizes, aliases and lineage."""
    chat = make_model(project, "llama-chat", task="text-generation", origin="imported", tags=["chat"])
    embed = make_model(project, "minilm", description="Sentence embeddings", task="embedding", tags=["embed"])
    tuned = make_model(project, "llama-chat-ft", task="text-generation", origin="trained", tags=["chat", "tuned"])
    chat_v1 = make_version(chat, format="safetensors", parameter_count=7_000_000_000, tags=["base"])
    embed_v1 = make_version(embed, status=VersionStatus.QUARANTINED, format="pytorch", parameter_count=22_000_000)
    tuned_v1 = make_version(tuned, format="gguf", parameter_count=7_000_000_000)
    deleted = make_version(chat, number=2, format="onnx", parameter_count=1_000, deleted_at="2026-01-01T00:00Z")
    Alias.objects.create(model=chat, name="production", version=chat_v1)
    Lineage.objects.create(child=tuned_v1, parent=chat_v1, relation="quantized")
    elsewhere = make_version(make_model(other_project, "llama-chat"), format="safetensors")
    return {
        "chat": chat,
        "embed": embed,
        "tuned": tuned,
        "chat_v1": chat_v1,
        "embed_v1": embed_v1,
        "tuned_v1": tuned_v1,
        "deleted": deleted,
        "elsewhere": elsewhere,
    }


# Filters -------------------------------------------------------------------------------------------------------


def test_model_filters_each_narrow_the_list(catalogue, developer, client_for):
    client = client_for(developer)
    url = reverse("registry-model-list")
    assert names(client.get(url)) == {"llama-chat", "minilm", "llama-chat-ft"}  # not the other project's
    expected = {
        "q=embeddings": {"minilm"},
        "q=chat-ft": {"llama-chat-ft"},
        "tag=chat": {"llama-chat", "llama-chat-ft"},
        "tag=tuned": {"llama-chat-ft"},
        "alias=production": {"llama-chat"},
        "task=embedding": {"minilm"},
        "origin=imported": {"llama-chat"},
        "project=alpha": {"llama-chat", "minilm", "llama-chat-ft"},
        "project=beta": set(),
        "status=quarantined": {"minilm"},
        "model_format=gguf": {"llama-chat-ft"},
        "model_format=onnx": set(),  # only on a deleted version
        "min_parameters=1000000000": {"llama-chat", "llama-chat-ft"},
        "max_parameters=100000000": {"minilm"},
        "relation=quantized": {"llama-chat-ft"},
        "model_format=safetensors&min_parameters=1000000000": {"llama-chat"},
        "model_format=gguf&status=quarantined": set(),  # both criteria must hold for the same version
    }
    for query, wanted in expected.items():
        assert names(client.get(f"{url}?{query}")) == wanted, query


def test_version_filters_each_narrow_the_list(catalogue, developer, client_for):
    c = catalogue
    client = client_for(developer)
    url = reverse("registry-version-list")
    live = {c["chat_v1"].pk, c["embed_v1"].pk, c["tuned_v1"].pk}
    assert ids(client.get(url)) == live
    expected = {
        f"model={c['chat'].pk}": {c["chat_v1"].pk},
        "model_name=minilm": {c["embed_v1"].pk},
        "project=alpha": live,
        "status=quarantined": {c["embed_v1"].pk},
        "model_format=gguf": {c["tuned_v1"].pk},
        "tag=base": {c["chat_v1"].pk},
        "alias=production": {c["chat_v1"].pk},
        "min_parameters=1000000000": {c["chat_v1"].pk, c["tuned_v1"].pk},
        "max_parameters=100000000": {c["embed_v1"].pk},
        "relation=quantized": {c["tuned_v1"].pk},
        "relation=fine-tune": set(),
        "q=minilm": {c["embed_v1"].pk},
        "include_deleted=true": live | {c["deleted"].pk},
        "include_deleted=true&model_format=onnx": {c["deleted"].pk},
        "include_deleted=false": live,
    }
    for query, wanted in expected.items():
        assert ids(client.get(f"{url}?{query}")) == wanted, query


def test_invalid_filter_values_are_a_400(developer, client_for, project):
    client = client_for(developer)
    for url, query in [
        (reverse("registry-model-list"), "status=bogus"),
        (reverse("registry-model-list"), "min_parameters=lots"),
        (reverse("registry-version-list"), "relation=cousin"),
        (reverse("registry-version-list"), "include_deleted=maybe"),
        (reverse("registry-version-list"), "max_parameters=-1"),
        (reverse("registry-promotion-list"), "status=done"),
    ]:
        response = client.get(f"{url}?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"]["code"] == "invalid"


# Query counts --------------------------------------------------------------------------------------------------


def _populate(project, user, count: int) -> None:
    """`count` models, each with a version that has an alias (and its promotion) and a parent."""
    root = make_version(make_model(project, "root"))
    for i in range(count):
        version = make_version(make_model(project, f"m{i}", tags=["t"]), metadata={"layers": i})
        Alias.objects.create(model=version.model, name="staging", version=version)
        Promotion.objects.create(model=version.model, alias="staging", to_version=version, requested_by=user)
        Lineage.objects.create(child=version, parent=root, relation="fine-tune")


def _queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content
    return len(captured)


@pytest.mark.parametrize("rows", [1, 15])
def test_list_query_counts_do_not_grow_with_rows(project, developer, client_for, rows):
    _populate(project, developer, rows)
    client = client_for(developer)
    lists = ["registry-model-list", "registry-version-list", "registry-promotion-list"]
    for name in lists:
        client.get(reverse(name))  # the first requests also fill the content type cache
    counts = {name: _queries(client, reverse(name)) for name in lists}
    assert counts == dict(zip(lists, [MODEL_LIST_QUERIES, VERSION_LIST_QUERIES, PROMOTION_LIST_QUERIES], strict=True))


# Detail, create, update, delete --------------------------------------------------------------------------------

CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4}


def write_model(directory: Path, *, config: dict, weights: bytes, extra: dict[str, bytes] | None = None) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "model.safetensors").write_bytes(weights)
    for name, data in (extra or {}).items():
        (directory / name).write_bytes(data)
    return directory


@pytest.fixture
def pushed(tmp_path, project, developer):
    """A real parent and fine-tuned child, stored through version_create + version_fill."""
    base = tensors(count=2, elements=1024)
    parent = register_directory(
        user=developer,
        project=project,
        name="tiny",
        directory=write_model(
            tmp_path / "parent", config=CONFIG, weights=safetensors_bytes(base), extra={"vocab.txt": b"a\nb\n"}
        ),
        mlflow_run_id="run123",
    )
    tuned = {**base, "layers.1.weight": base["layers.1.weight"] + 1}
    child = register_directory(
        user=developer,
        project=project,
        name="tiny-tuned",
        directory=write_model(
            tmp_path / "child",
            config={**CONFIG, "n_layer": 3, "task_specific_params": {"chat": {"max_length": 64}}},
            weights=safetensors_bytes({**tuned, "layers.2.weight": base["layers.0.weight"].clone()}),
            extra={"adapter.json": b"{}"},
        ),
        parents=[(parent, "fine-tune")],
    )
    return parent, child


def test_version_detail_shows_files_metadata_scan_and_lineage(pushed, developer, client_for):
    parent, child = pushed
    assert parent.status == VersionStatus.READY, parent.status_reason
    body = client_for(developer).get(reverse("registry-version-detail", args=[parent.pk])).json()
    assert body["model_name"] == "tiny" and body["project"] == "alpha" and body["number"] == 1
    assert body["metadata"]["parameters"] == 2048 and body["metadata"]["layers"] == 2
    assert body["parameter_count"] == 2048 and body["format"] == "safetensors"
    assert body["scan_report"]["safe"] is True and body["mlflow_run_id"] == "run123"
    stored = {f["path"]: f for f in body["files"]}
    assert set(stored) == {"config.json", "model.safetensors", "vocab.txt"}
    assert stored["config.json"]["sha256"] == parent.files.get(path="config.json").sha256
    assert body["children"] == [
        {"id": child.pk, "model_id": child.model_id, "model": "tiny-tuned", "number": 1, "relation": "fine-tune"}
    ]
    listed = client_for(developer).get(reverse("registry-version-list") + "?model_name=tiny-tuned").json()
    assert "files" not in listed["results"][0]  # the list leaves file lists to the detail
    assert listed["results"][0]["parents"][0]["id"] == parent.pk


def test_compare_reports_metadata_config_files_and_size(pushed, developer, client_for):
    parent, child = pushed
    url = reverse("registry-version-compare") + f"?a={parent.pk}&b={child.pk}"
    body = client_for(developer).get(url).json()
    assert body["a"]["model"] == "tiny" and body["b"]["model"] == "tiny-tuned"
    changed_metadata = {row["key"]: (row["a"], row["b"]) for row in body["metadata"] if row["changed"]}
    assert changed_metadata == {"layers": (2, 3), "parameters": (2048, 3072), "tokenizer": (True, False)}
    assert body["config"]["compared"] is True
    assert body["config"]["changes"] == [
        {"key": "n_layer", "a": 2, "b": 3},
        {"key": "task_specific_params.chat.max_length", "a": None, "b": 64},
    ]
    files = body["files"]
    assert [f["path"] for f in files["added"]] == ["adapter.json"]
    assert [f["path"] for f in files["removed"]] == ["vocab.txt"]
    assert [f["path"] for f in files["changed"]] == ["config.json", "model.safetensors"]
    assert files["unchanged"] == 0
    assert body["size"]["difference"] == child.total_size - parent.total_size
    assert body["parameters"] == {"a": 2048, "b": 3072, "difference": 1024}


def test_compare_needs_two_visible_ids(pushed, developer, outsider, client_for):
    parent, child = pushed
    url = reverse("registry-version-compare")
    client = client_for(developer)
    assert client.get(url).status_code == 400
    assert client.get(f"{url}?a={parent.pk}&b=x").status_code == 400
    assert client.get(f"{url}?a={parent.pk}&b=999999").status_code == 404
    assert client_for(outsider).get(f"{url}?a={parent.pk}&b={child.pk}").status_code == 404


def test_lineage_lists_ancestors_and_descendants_the_user_may_see(project, developer, admin_user, client_for):
    grand = make_version(make_model(project, "base"))
    parent = make_version(make_model(project, "instruct"))
    version = make_version(make_model(project, "chat"))
    child = make_version(make_model(project, "chat-int4"))
    hidden = make_version(make_model(project, "secret-merge", restricted=True))
    Lineage.objects.create(child=parent, parent=grand, relation="fine-tune")
    Lineage.objects.create(child=version, parent=parent, relation="fine-tune")
    Lineage.objects.create(child=child, parent=version, relation="quantized")
    Lineage.objects.create(child=hidden, parent=version, relation="merge")

    body = client_for(developer).get(reverse("registry-version-lineage", args=[version.pk])).json()
    depth = {node["model"]: node["depth"] for node in body["nodes"]}
    assert depth == {"base": -2, "instruct": -1, "chat": 0, "chat-int4": 1}
    assert body["root"] == version.pk and body["truncated"] is False
    edges = {(e["parent"], e["child"], e["relation"]) for e in body["edges"]}
    assert edges == {
        (grand.pk, parent.pk, "fine-tune"),
        (parent.pk, version.pk, "fine-tune"),
        (version.pk, child.pk, "quantized"),
    }
    as_admin = client_for(admin_user).get(reverse("registry-version-lineage", args=[version.pk])).json()
    assert {node["model"] for node in as_admin["nodes"]} >= {"secret-merge"}


def test_model_create_and_update_are_audited(project, developer, admin_user, client_for):
    client = client_for(developer)
    response = client.post(
        reverse("registry-model-list"),
        {"project": "alpha", "name": "new-model", "task": "embedding", "tags": ["x", "a"], "description": "# Hi"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["tags"] == ["a", "x"] and body["version_count"] == 0 and body["aliases"] == {}
    response = client.patch(
        reverse("registry-model-detail", args=[body["id"]]), {"description": "Changed"}, format="json"
    )
    assert response.status_code == 200 and response.json()["description"] == "Changed"
    assert list(
        AuditEvent.objects.filter(object_id=str(body["id"]), action__startswith="registered_model.")
        .order_by("id")
        .values_list("action", flat=True)
    ) == ["registered_model.create", "registered_model.update"]
    # Hiding a model from the project is for project admins, at creation as later.
    hidden = {"project": "alpha", "name": "hidden", "restricted": True}
    assert client.post(reverse("registry-model-list"), hidden, format="json").status_code == 403
    restrict = {"restricted": True}
    assert client.patch(reverse("registry-model-detail", args=[body["id"]]), restrict, format="json").status_code == 403
    assert client_for(admin_user).post(reverse("registry-model-list"), hidden, format="json").status_code == 201


def test_version_delete_is_soft_and_needs_a_maintainer(project, developer, maintainer, client_for):
    version = make_version(make_model(project, "old"))
    url = reverse("registry-version-detail", args=[version.pk])
    assert client_for(developer).delete(url).status_code == 403
    assert client_for(maintainer).delete(url).status_code == 204
    version.refresh_from_db()
    assert version.deleted_at is not None
    listed = reverse("registry-version-list")
    assert version.pk not in ids(client_for(developer).get(listed))
    assert version.pk in ids(client_for(developer).get(f"{listed}?include_deleted=true"))
    assert client_for(maintainer).delete(url).status_code == 204  # already deleted: nothing more to do


# Visibility ----------------------------------------------------------------------------------------------------


def test_another_projects_member_gets_404_everywhere(catalogue, outsider, client_for):
    client = client_for(outsider)
    chat, version = catalogue["chat"], catalogue["chat_v1"]
    for url in [
        reverse("registry-model-detail", args=[chat.pk]),
        reverse("registry-model-aliases", args=[chat.pk]),
        reverse("registry-version-detail", args=[version.pk]),
        reverse("registry-version-lineage", args=[version.pk]),
    ]:
        assert client.get(url).status_code == 404, url
    assert client.patch(reverse("registry-model-detail", args=[chat.pk]), {}, format="json").status_code == 404
    assert catalogue["chat_v1"].pk not in ids(client.get(reverse("registry-version-list")))
    assert names(client.get(reverse("registry-model-list"))) == {"llama-chat"}  # its own project's model only
    body = {"alias": "x", "version": 1}
    assert client.post(reverse("registry-model-aliases", args=[chat.pk]), body, format="json").status_code == 404


def test_restricted_model_is_visible_only_to_admins_and_grantees(
    project, developer, admin_user, member_factory, client_for
):
    secret = make_model(project, "purchased", restricted=True)
    version = make_version(secret)
    make_version(make_model(project, "open"))
    grantee = member_factory(Role.VIEWER, username="grantee")
    object_grant_create(user=admin_user, obj=secret, role=Role.VIEWER, grantee=grantee)
    model_url = reverse("registry-model-detail", args=[secret.pk])
    version_url = reverse("registry-version-detail", args=[version.pk])

    promotion = Promotion.objects.create(model=secret, alias="production", to_version=version, requested_by=admin_user)
    promotion_url = reverse("registry-promotion-detail", args=[promotion.pk])

    plain = client_for(developer)
    assert names(plain.get(reverse("registry-model-list"))) == {"open"}
    assert plain.get(reverse("registry-promotion-list")).json()["count"] == 0
    assert plain.get(promotion_url).status_code == 404
    assert version.pk not in ids(plain.get(reverse("registry-version-list")))
    assert plain.get(model_url).status_code == 404 and plain.get(version_url).status_code == 404

    for user in (admin_user, grantee):
        client = client_for(user)
        assert names(client.get(reverse("registry-model-list"))) == {"open", "purchased"}
        assert version.pk in ids(client.get(reverse("registry-version-list")))
        assert client.get(model_url).status_code == 200 and client.get(version_url).status_code == 200
        assert client.get(promotion_url).status_code == 200


def test_schema_documents_the_registry_routes(client_for, developer):
    schema = client_for(developer).get("/api/schema/", {"format": "json"}).json()
    paths = set(schema["paths"])
    assert {
        "/api/v1/registry/models/",
        "/api/v1/registry/models/{id}/",
        "/api/v1/registry/models/{id}/aliases/",
        "/api/v1/registry/models/{id}/aliases/{alias}/",
        "/api/v1/registry/versions/",
        "/api/v1/registry/versions/{id}/",
        "/api/v1/registry/versions/{id}/lineage/",
        "/api/v1/registry/versions/compare/",
        "/api/v1/registry/promotions/",
        "/api/v1/registry/promotions/{id}/approve/",
        "/api/v1/registry/promotions/{id}/reject/",
    } <= paths
    compare = schema["paths"]["/api/v1/registry/versions/compare/"]["get"]
    assert {p["name"] for p in compare["parameters"]} >= {"a", "b"}
    listed = {p["name"] for p in schema["paths"]["/api/v1/registry/versions/"]["get"]["parameters"]}
    assert listed >= {"min_parameters", "max_parameters", "relation", "include_deleted", "alias", "tag"}
