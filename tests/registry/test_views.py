"""Registry pages: who sees them, what they show, sanitised Markdown, forms that refuse bad input without a 500."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from apps.core.models import Role
from apps.registry.demo import register_directory, seed_registry
from apps.registry.models import Alias, Lineage, ModelVersion, Promotion, RegisteredModel, VersionStatus

from .conftest import safetensors_bytes, tensors

DESCRIPTION = """# Chat model

**Bold claim**, a [safe link](https://example.com) and a [bad one](javascript:alert(1)).

<script>alert("owned")</script>
<img src=x onerror=alert(1)>
"""


@pytest.fixture
def viewer(member_factory):
    return member_factory(Role.VIEWER, username="viewer")


@pytest.fixture
def developer(member_factory):
    return member_factory(Role.DEVELOPER, username="developer")


@pytest.fixture
def maintainer(member_factory):
    return member_factory(Role.MAINTAINER, username="maintainer")


@pytest.fixture
def outsider(member_factory, other_project):
    return member_factory(Role.ADMIN, on=other_project, username="outsider")


@pytest.fixture
def login(client):
    def as_user(user):
        client.force_login(user)
        return client

    return as_user


@pytest.fixture
def chat(project):
    """A model with a hostile description, a ready version behind production, a quarantined one and a derivative."""
    model = RegisteredModel.objects.create(project=project, name="chat", description=DESCRIPTION, tags=["llm"])
    ready = ModelVersion.objects.create(
        model=model, number=1, status=VersionStatus.READY, metadata={"layers": 2}, mlflow_run_id="abc123"
    )
    ModelVersion.objects.create(
        model=model,
        number=2,
        status=VersionStatus.QUARANTINED,
        status_reason="pytorch_model.bin imports os.system",
        scan_report={
            "safe": False,
            "summary": "1 unsafe file",
            "files": [
                {
                    "path": "pytorch_model.bin",
                    "globals": [
                        {"module": "collections", "name": "OrderedDict", "safe": True},
                        {"module": "os", "name": "system", "safe": False},
                        {"module": "builtins", "name": "eval", "safe": False},
                    ],
                    "issues": ["calls os.system"],
                }
            ],
        },
    )
    Alias.objects.create(model=model, name="production", version=ready)
    derived = ModelVersion.objects.create(
        model=RegisteredModel.objects.create(project=project, name="chat-int4"), number=1, status=VersionStatus.READY
    )
    Lineage.objects.create(child=derived, parent=ready, relation="quantized")
    return model


def page_urls() -> dict[str, str]:
    return {
        "list": reverse("model-list", args=["alpha"]),
        "model": reverse("model-detail", args=["alpha", "chat"]),
        "version": reverse("model-version", args=["alpha", "chat", 1]),
        "compare": reverse("model-compare", args=["alpha"]) + "?a=chat:1&b=chat-int4:1",
    }


def test_pages_load_for_a_viewer(chat, viewer, login):
    client = login(viewer)
    for name, url in page_urls().items():
        response = client.get(url)
        assert response.status_code == 200, (name, response.content[:300])
    listing = client.get(page_urls()["list"]).content.decode()
    assert "chat-int4" in listing and "production → v1" in listing
    model_page = client.get(page_urls()["model"]).content.decode()
    assert "Quarantined" in model_page and "Move an alias" not in model_page  # a viewer moves nothing


def test_pages_are_404_for_other_projects_and_missing_objects(chat, outsider, viewer, login):
    client = login(outsider)
    for name, url in page_urls().items():
        assert client.get(url).status_code == 404, name
    client = login(viewer)
    assert client.get(reverse("model-detail", args=["alpha", "nope"])).status_code == 404
    assert client.get(reverse("model-version", args=["alpha", "chat", 99])).status_code == 404
    assert client.get("/p/alpha/models/chat/versions/99999999999999/").status_code == 404


def test_restricted_model_page_is_404_for_a_plain_member(project, viewer, admin_user, login):
    RegisteredModel.objects.create(project=project, name="secret", restricted=True)
    url = reverse("model-detail", args=["alpha", "secret"])
    assert login(viewer).get(url).status_code == 404
    assert login(admin_user).get(url).status_code == 200


def test_anonymous_is_sent_to_sign_in(chat, client):
    response = client.get(page_urls()["model"])
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_description_markdown_is_rendered_and_sanitised(chat, viewer, login):
    html = login(viewer).get(page_urls()["model"]).content.decode()
    assert "<strong>Bold claim</strong>" in html and '<a href="https://example.com">safe link</a>' in html
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert "<img src=x" not in html and 'href="javascript:' not in html  # the bad link stays plain text


def test_list_filters_and_bad_filters(chat, viewer, login):
    client = login(viewer)
    url = page_urls()["list"]
    narrowed = client.get(url, {"relation": "quantized"}).content.decode()
    assert 'href="/p/alpha/models/chat-int4/"' in narrowed and 'href="/p/alpha/models/chat/"' not in narrowed
    assert "No models match" in client.get(url, {"q": "zzz"}).content.decode()
    bad = client.get(url, {"status": "bogus", "min_parameters": "lots"})
    assert bad.status_code == 400 and b"These filters are not valid" in bad.content
    fragment = client.get(url, {"tag": "llm"}, HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and b'id="model-table"' in fragment.content and b"<html" not in fragment.content


def test_version_page_shows_scan_lineage_and_download(chat, viewer, login):
    client = login(viewer)
    quarantined = client.get(reverse("model-version", args=["alpha", "chat", 2])).content.decode()
    assert "pytorch_model.bin" in quarantined and "calls os.system" in quarantined
    assert '<span class="badge badge-failed">os.system</span>' in quarantined
    assert '<span class="badge badge-failed">builtins.eval</span>' in quarantined
    assert "collections.OrderedDict" in quarantined and 'badge-failed">collections' not in quarantined
    ready = client.get(page_urls()["version"]).content.decode()
    assert "cpctl models pull alpha/chat:1 chat-1" in ready
    version = ModelVersion.objects.get(model=chat, number=1)
    assert reverse("registry-version-manifest", kwargs={"pk": version.pk}) in ready
    assert "<svg" in ready and "chat-int4:1" in ready and "Quantized" in ready
    assert 'href="/p/alpha/models/chat-int4/versions/1/"' in ready
    assert "runs:/abc123/" in ready


def test_version_page_lists_stored_files_with_hashes(project, developer, tmp_path, login):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))
    (directory / "model.safetensors").write_bytes(safetensors_bytes(tensors(count=1, elements=256)))
    version = register_directory(user=developer, project=project, name="stored", directory=directory)
    html = login(developer).get(reverse("model-version", args=["alpha", "stored", 1])).content.decode()
    for stored in version.files.all():
        assert stored.path in html and stored.sha256 in html
    assert "n_layer" not in html and "layers" in html  # the metadata table, read from config.json


def test_developer_moves_staging_but_not_production(chat, developer, login):
    client = login(developer)
    url = reverse("model-alias-set", args=["alpha", "chat"])
    response = client.post(url, {"alias": "staging", "version": "1", "reason": "smoke"})
    assert response.status_code == 302
    assert Alias.objects.get(model=chat, name="staging").version.number == 1
    assert client.post(url, {"alias": "production", "version": "1"}).status_code == 403
    bad = client.post(url, {"alias": "Not An Alias!", "version": "x"})
    assert bad.status_code == 400 and b"lowercase letters" in bad.content
    not_ready = client.post(url, {"alias": "staging", "version": "2"})
    assert not_ready.status_code == 400 and b"Only ready versions" in not_ready.content
    missing = client.post(url, {"alias": "staging", "version": "7"})
    assert missing.status_code == 400 and b"has no version 7" in missing.content


def test_second_maintainer_approves_from_the_model_page(chat, maintainer, member_factory, login, settings):
    settings.PROTECTED_ALIAS_APPROVAL = True
    ModelVersion.objects.create(model=chat, number=3, status=VersionStatus.READY)
    client = login(maintainer)
    client.post(reverse("model-alias-set", args=["alpha", "chat"]), {"alias": "production", "version": "3"})
    promotion = Promotion.objects.get(model=chat, status="pending")
    approve = reverse("model-promotion-approve", args=["alpha", "chat", promotion.pk])
    assert approve not in client.get(page_urls()["model"]).content.decode()  # not offered to the requester
    refused = client.post(approve)
    assert refused.status_code == 403 and b"second maintainer" in refused.content

    other = login(member_factory(Role.MAINTAINER, username="other-maintainer"))
    assert approve in other.get(page_urls()["model"]).content.decode()
    assert other.post(approve).status_code == 302
    assert Alias.objects.get(model=chat, name="production").version.number == 3


def test_deleting_the_production_version_is_refused_on_the_page(chat, maintainer, login):
    client = login(maintainer)
    response = client.post(reverse("model-version-delete", args=["alpha", "chat", 1]))
    assert response.status_code == 400 and b"protected alias" in response.content
    assert ModelVersion.objects.get(model=chat, number=1).deleted_at is None
    assert client.post(reverse("model-version-delete", args=["alpha", "chat", 2])).status_code == 302
    assert ModelVersion.objects.get(model=chat, number=2).deleted_at is not None


def test_compare_page(chat, viewer, login):
    client = login(viewer)
    url = reverse("model-compare", args=["alpha"])
    assert b"Pick two versions" in client.get(url).content
    result = client.get(url, {"a": "chat:1", "b": "chat-int4:1"}).content.decode()
    assert "layers" in result and "No config.json" not in result and "Not compared" in result
    for bad in ({"a": "chat", "b": "chat:1"}, {"a": "chat:1", "b": "chat:42"}, {"a": "x" * 500, "b": ""}):
        response = client.get(url, bad)
        assert response.status_code == 400, bad
        assert b"errorlist" in response.content


def test_admin_console_lists_registry_objects(chat, client):
    superuser = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(superuser)
    version = ModelVersion.objects.get(model=chat, number=1)
    for url in [
        reverse("admin:registry_registeredmodel_changelist"),
        reverse("admin:registry_registeredmodel_change", args=[chat.pk]),
        reverse("admin:registry_modelversion_changelist"),
        reverse("admin:registry_modelversion_change", args=[version.pk]),
        reverse("admin:registry_promotion_changelist"),
    ]:
        assert client.get(url).status_code == 200, url


def test_demo_seed_registers_real_versions_once(project, admin_user, login):
    seeded = seed_registry(admin_user, project)
    assert {name: v.status for name, v in seeded.items()} == {
        "all-MiniLM-L6-v2": "ready",
        "tiny-gpt2": "ready",
        "tiny-gpt2-chat": "ready",
    }
    minilm = seeded["all-MiniLM-L6-v2"]
    assert minilm.metadata["architecture"] == "BertModel" and minilm.parameter_count == 22_713_728
    tuned = seeded["tiny-gpt2-chat"]
    assert tuned.metadata["model_type"] == "gpt2" and tuned.metadata["tokenizer"] is True
    assert tuned.parent_links.get().parent == seeded["tiny-gpt2"]
    assert Alias.objects.get(model__name="tiny-gpt2", name="production").version == seeded["tiny-gpt2"]
    again = seed_registry(admin_user, project)
    assert {name: v.pk for name, v in again.items()} == {name: v.pk for name, v in seeded.items()}
    assert ModelVersion.objects.count() == 3 and Promotion.objects.count() == 1
    page = login(admin_user).get(reverse("model-version", args=["alpha", "tiny-gpt2-chat", 1])).content.decode()
    assert "tiny-gpt2:1" in page and "Fine-tune" in page and "model.safetensors" in page
