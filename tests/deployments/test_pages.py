"""Deployment pages: the list, a deployment's page and its actions, the wizard, and the live websocket.

The wizard walks with the demo tiny causal LM (registered for real through the registry); nothing starts a model
server: the `db` fixture's transaction never commits, so a new revision's start (an on-commit hook) does not run.
"""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.urls import reverse
from django.utils import timezone

from apps.core import crypto
from apps.core.models import ProjectSecret, Role
from apps.core.routing import websocket_urlpatterns
from apps.core.services import project_secret_set
from apps.deployments.models import Accelerator, Deployment, Revision, Rollout, State, Target
from apps.deployments.spec import catalog_ensure
from apps.deployments.states import transition
from apps.registry import storage
from apps.registry.demo import register_directory, write_tiny_lm
from apps.registry.models import VersionStatus

WIZARD = "/p/alpha/deployments/new/"


@pytest.fixture(autouse=True)
def artifact_store(settings, tmp_path):
    settings.ARTIFACT_STORE_URL = f"file://{tmp_path / 'artifacts'}"
    storage._cached_store.cache_clear()
    yield
    storage._cached_store.cache_clear()


@pytest.fixture(scope="session")
def tiny_lm_files(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture
def viewer(member_factory):
    return member_factory(Role.VIEWER, username="viewer")


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
def tiny_lm(project, admin_user, tiny_lm_files):
    version = register_directory(user=admin_user, project=project, name="tiny-gpt2", directory=tiny_lm_files)
    assert version.status == VersionStatus.READY and version.metadata["max_context"] == 128
    return version


@pytest.fixture
def cpu():
    catalog_ensure()  # a transactional test before this one may have emptied the table the migration filled
    return Accelerator.objects.get(is_cpu=True)


@pytest.fixture
def two_ready(project, cpu):
    """A deployment with two ready revisions (made directly, no runtime): r1 takes all traffic."""
    deployment = Deployment.objects.create(project=project, name="Chat", slug="chat", target=Target.LOCAL)
    ready = {"accelerator": cpu, "state": State.READY, "ready_at": timezone.now()}
    Revision.objects.create(deployment=deployment, number=1, weight=100, **ready)
    Revision.objects.create(deployment=deployment, number=2, weight=0, **ready)
    return deployment


HARDWARE = {
    "accelerator": "CPU",
    "accelerator_count": "1",
    "tensor_parallel": "1",
    "pipeline_parallel": "1",
    "dtype": "fp32",
    "context_length": "128",
    "concurrent_sequences": "4",
    "memory_utilization": "0.90",
    "cpu": "1",
    "memory_gib": "4",
}
RUNTIME = {"max_input_tokens": "64", "max_total_tokens": "128", "max_batch": "4", "task": "generate"}
SCALING = {"min_replicas": "1", "max_replicas": "2", "target_concurrency": "4", "scale_to_zero_seconds": ""}


def rows(prefix: str, entries: list[dict]) -> dict:
    """Formset data: the management form and one row per entry."""
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(entries)),
        f"{prefix}-INITIAL_FORMS": "0",
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "100",
    }
    for index, entry in enumerate(entries):
        data.update({f"{prefix}-{index}-{key}": value for key, value in entry.items()})
    return data


def post(client, step: str, data: dict, *, nav: str = "next", base: str = WIZARD):
    return client.post(f"{base}{step}/", {**data, "nav": nav})


def assert_next(response, step: str, base: str = WIZARD) -> None:
    assert response.status_code == 302, response.content.decode()[:3000]
    assert response["Location"] == f"{base}{step}/"


# List --------------------------------------------------------------------------------------------------------------


def test_empty_list_offers_the_wizard_to_maintainers_only(project, maintainer, viewer, login):
    page = login(maintainer).get("/p/alpha/deployments/").content.decode()
    assert "No deployments yet" in page and f'href="{WIZARD}"' in page
    assert 'href="/p/alpha/deployments/"' in page  # the side navigation links the section
    page = login(viewer).get("/p/alpha/deployments/").content.decode()
    assert "No deployments yet" in page and f'href="{WIZARD}"' not in page


def test_list_shows_serving_weights_states_and_filters(project, two_ready, cpu, viewer, login):
    Deployment.objects.create(project=project, name="Remote", slug="remote", target=Target.EXTERNAL)
    client = login(viewer)
    page = client.get("/p/alpha/deployments/").content.decode()
    detail = reverse("deployment-detail", args=["alpha", two_ready.pk])
    assert f'href="{detail}"' in page and '<code class="small">chat</code>' in page
    assert "<strong>100 %</strong> → r1" in page and 'data-state="ready"' in page
    assert "Remote" in page and "No traffic" in page

    filtered = client.get("/p/alpha/deployments/", {"target": "external"}, HTTP_HX_REQUEST="true")
    fragment = filtered.content.decode()
    assert filtered.status_code == 200 and fragment.startswith('<div id="deployment-table"')
    assert "Remote" in fragment and "Chat" not in fragment
    ready = client.get("/p/alpha/deployments/", {"state": "ready"}).content.decode()
    assert "Chat" in ready and "Remote" not in ready
    assert client.get("/p/alpha/deployments/", {"target": "mainframe"}).status_code == 400


# Detail and actions --------------------------------------------------------------------------------------------


def test_detail_shows_revisions_traffic_manifest_timeline_and_snippets(project, two_ready, viewer, login):
    revision = two_ready.revisions.get(number=2)
    revision.manifest = "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceService\n"
    revision.save(update_fields=["manifest"])
    transition(revision, State.DRAINING, "no traffic: draining in-flight requests")
    page = login(viewer).get(reverse("deployment-detail", args=["alpha", two_ready.pk])).content.decode()
    assert 'data-revision-number="2"' in page and 'data-revision-number="1"' in page
    assert "no traffic: draining in-flight requests" in page  # reason in the table and the timeline
    assert "kind: InferenceService" in page
    assert f"/api/v1/deployments/{two_ready.pk}/manifest/?revision=2" in page
    assert "/v1/chat/completions" in page and "&quot;model&quot;: &quot;chat&quot;" in page
    assert "client.chat.completions.create(" in page
    assert f'data-deployment-socket="/ws/deployments/{two_ready.pk}/"' in page
    # A viewer sees no action forms.
    assert "Set traffic" not in page and "New revision" not in page and "Promote" not in page


def test_manifest_download_refuses_revision_numbers_that_are_not_numbers(project, two_ready, viewer, login):
    two_ready.revisions.filter(number=2).update(manifest="kind: InferenceService\n")
    client = login(viewer)
    url = f"/api/v1/deployments/{two_ready.pk}/manifest/"
    assert client.get(url, {"revision": "2"}).status_code == 200
    for raw in ("²", "x", "99999999999999999999"):  # "²".isdigit() is True, int("²") fails
        response = client.get(url, {"revision": raw})
        assert response.status_code == 400 and "revision" in response.json()["error"]["details"]


def test_embedding_deployment_shows_the_embeddings_snippet(project, two_ready, viewer, login):
    two_ready.revisions.update(task="embed")
    page = login(viewer).get(reverse("deployment-detail", args=["alpha", two_ready.pk])).content.decode()
    assert "/v1/embeddings" in page and "client.embeddings.create(" in page and "/v1/chat/completions" not in page


def test_other_projects_deployment_is_404(project, other_project, two_ready, cpu, maintainer, outsider, login):
    theirs = Deployment.objects.create(project=other_project, name="Theirs", slug="theirs")
    client = login(maintainer)
    assert client.get(reverse("deployment-detail", args=["alpha", theirs.pk])).status_code == 404
    assert client.get(reverse("deployment-detail", args=["beta", theirs.pk])).status_code == 404
    assert client.post(reverse("deployment-stop", args=["alpha", theirs.pk])).status_code == 404
    assert login(outsider).get(reverse("deployment-detail", args=["alpha", two_ready.pk])).status_code == 404
    two_ready.deleted_at = two_ready.updated_at
    two_ready.save(update_fields=["deleted_at"])
    assert client.get(reverse("deployment-detail", args=["alpha", two_ready.pk])).status_code == 404


def test_traffic_form_sets_weights_and_refuses_a_split_not_adding_up(project, two_ready, maintainer, login):
    client = login(maintainer)
    url = reverse("deployment-traffic", args=["alpha", two_ready.pk])
    response = client.post(url, {"weight_1": "50", "weight_2": "40", "shadow": "", "shadow_percent": ""})
    page = response.content.decode()
    assert response.status_code == 400
    assert "Weights must add up to 100 (they add up to 90)." in page and 'class="alert alert-error"' in page
    assert 'name="weight_1" value="50"' in page and 'name="weight_2" value="40"' in page  # entries kept
    assert dict(two_ready.revisions.values_list("number", "weight")) == {1: 100, 2: 0}

    response = client.post(url, {"weight_1": "90", "weight_2": "10", "shadow": "", "shadow_percent": ""})
    assert response.status_code == 302
    assert dict(two_ready.revisions.values_list("number", "weight")) == {1: 90, 2: 10}
    assert "Traffic split updated." in client.get(response["Location"]).content.decode()

    response = client.post(url, {"weight_1": "100", "weight_2": "0", "shadow": "2", "shadow_percent": "25"})
    assert response.status_code == 302
    two_ready.refresh_from_db()
    assert two_ready.shadow_revision.number == 2 and two_ready.shadow_percent == 25

    bad = client.post(url, {"weight_1": "abc", "weight_2": "0"})
    assert bad.status_code == 400 and "Enter a whole number." in bad.content.decode()


def test_promote_rollback_stop_and_restart_call_the_services(project, two_ready, maintainer, viewer, login):
    client = login(maintainer)
    args = ["alpha", two_ready.pk]
    assert client.post(reverse("revision-promote", args=args), {"revision": "2"}).status_code == 302
    assert dict(two_ready.revisions.values_list("number", "weight")) == {1: 0, 2: 100}
    assert two_ready.revisions.get(number=1).state == State.DRAINING

    response = client.post(reverse("revision-promote", args=args), {"revision": "7"})
    assert response.status_code == 400 and "No revision 7." in response.content.decode()
    response = client.post(reverse("revision-restart", args=args), {"revision": "2"})
    assert response.status_code == 400 and "only stopped or failed revisions start again" in response.content.decode()

    assert client.post(reverse("deployment-rollback", args=args)).status_code == 302
    assert dict(two_ready.revisions.values_list("number", "weight")) == {1: 100, 2: 0}

    assert client.post(reverse("deployment-stop", args=args)).status_code == 302
    assert not two_ready.revisions.filter(weight__gt=0).exists()

    assert login(viewer).post(reverse("deployment-stop", args=args)).status_code == 403
    assert client.get(reverse("deployment-stop", args=args)).status_code == 405


# The wizard ----------------------------------------------------------------------------------------------------


def test_viewer_gets_403_and_outsider_404_on_the_wizard(project, two_ready, viewer, outsider, login):
    client = login(viewer)
    assert client.get(WIZARD).status_code == 403
    assert client.get(f"{WIZARD}model/").status_code == 403
    assert client.post(f"{WIZARD}plan/", HARDWARE).status_code == 403
    assert client.get(reverse("revision-wizard-start", args=["alpha", two_ready.pk])).status_code == 403
    client = login(outsider)
    assert client.get(f"{WIZARD}model/").status_code == 404
    assert client.get(reverse("revision-wizard", args=["alpha", two_ready.pk, "model"])).status_code == 404
    assert client.get(f"{WIZARD}bogus/").status_code == 404


def test_wizard_walks_every_step_and_deploys(project, tiny_lm, admin_user, login):
    project_secret_set(user=admin_user, project=project, name="HF_TOKEN", value="hf-secret-value")
    client = login(admin_user)
    assert client.get(WIZARD)["Location"] == f"{WIZARD}model/"
    assert client.get(f"{WIZARD}hardware/")["Location"] == f"{WIZARD}model/"  # steps open in order
    assert "tiny-gpt2:1" in client.get(f"{WIZARD}model/").content.decode()

    assert_next(post(client, "model", {"name": "Tiny chat", "slug": "", "model_version": tiny_lm.pk}), "target")
    assert_next(post(client, "target", {"target": "local"}), "hardware")

    page = client.get(f"{WIZARD}hardware/").content.decode()
    assert 'id="plan-panel"' in page and 'data-verdict="fits"' in page
    assert 'name="context_length" value="128"' in page  # defaults from the model's context
    assert f'hx-post="{WIZARD}plan/"' in page

    live = client.post(f"{WIZARD}plan/", {**HARDWARE, "context_length": "1000"}, HTTP_HX_REQUEST="true")
    fragment = live.content.decode()
    assert live.status_code == 200 and fragment.lstrip().startswith('<aside id="plan-panel"')
    assert 'data-verdict="no-fit"' in fragment and "longer than the model&#x27;s maximum of 128" in fragment
    live = client.post(f"{WIZARD}plan/", HARDWARE, HTTP_HX_REQUEST="true").content.decode()
    assert 'data-verdict="fits"' in live and "Smallest fit per dtype" in live and "KV cache" in live
    assert "/ month" in live

    assert_next(post(client, "hardware", HARDWARE), "runtime")
    page = client.get(f"{WIZARD}runtime/").content.decode()
    assert 'name="max_total_tokens" value="128"' in page and 'name="max_input_tokens" value="64"' in page
    assert_next(post(client, "runtime", RUNTIME), "scaling")
    assert_next(post(client, "scaling", SCALING), "traffic")
    assert "takes <strong>all traffic</strong>" in client.get(f"{WIZARD}traffic/").content.decode()
    assert_next(post(client, "traffic", {}), "environment")

    environment = {
        **rows("env", [{"name": "LOG_LEVEL", "value": "debug"}]),
        **rows("ref", [{"name": "HF_TOKEN", "secret": "HF_TOKEN"}]),
        **rows("new", [{"name": "API_SECRET", "value": "s3cret-value"}]),
    }
    assert_next(post(client, "environment", environment), "review")
    draft = json.dumps(dict(client.session.items()))
    assert "s3cret-value" not in draft and "hf-secret-value" not in draft  # write-only values are sealed

    review = client.get(f"{WIZARD}review/")
    page = review.content.decode()
    assert review.status_code == 200
    assert "kind: InferenceService" in page and "name: tiny-chat" in page and "LOG_LEVEL" in page
    assert "tiny-gpt2:1" in page and "<code>API_SECRET</code>" in page and "Fits" in page
    assert "<strong>73.00 – 146.00</strong> a month" in page  # CPU at 0.10/h for 730 h, one to two replicas
    assert "s3cret-value" not in page and "hf-secret-value" not in page
    # Back from the review keeps every step's entries.
    assert 'name="max_batch" value="4"' in client.get(f"{WIZARD}runtime/").content.decode()

    response = client.post(f"{WIZARD}review/")
    deployment = Deployment.objects.get(project=project, slug="tiny-chat")
    assert response.status_code == 302
    assert response["Location"] == reverse("deployment-detail", args=["alpha", deployment.pk])
    revision = deployment.revisions.get()
    assert (revision.number, revision.model_version, revision.accelerator.name) == (1, tiny_lm, "CPU")
    assert (revision.max_input_tokens, revision.max_total_tokens, revision.max_batch) == (64, 128, 4)
    assert (revision.min_replicas, revision.max_replicas, revision.dtype) == (1, 2, "fp32")
    assert revision.env == {"LOG_LEVEL": "debug"}
    assert revision.secret_refs == {"HF_TOKEN": "HF_TOKEN", "API_SECRET": "DEPLOY_TINY_CHAT_API_SECRET"}
    stored = ProjectSecret.objects.get(project=project, name="DEPLOY_TINY_CHAT_API_SECRET")
    assert crypto.decrypt(stored.encrypted_value) == "s3cret-value"
    assert revision.plan["fits"] is True and revision.plan["context_length"] == 128
    assert "kind: InferenceService" in revision.manifest
    assert not any(key.startswith("deployment-wizard") for key in dict(client.session.items()))  # draft cleared

    page = client.get(response["Location"]).content.decode()
    assert "Deployment tiny-chat created" in page and "tiny-gpt2:1" in page and "Pending" in page


def test_invalid_steps_show_errors_next_to_fields_and_keep_entries(project, tiny_lm, maintainer, login):
    client = login(maintainer)
    response = post(client, "model", {"name": "", "slug": "Bad Slug", "model_version": tiny_lm.pk})
    page = response.content.decode()
    assert response.status_code == 400
    assert "This field is required." in page and "Lower-case letters, digits and dashes" in page
    assert 'value="Bad Slug"' in page
    assert_next(post(client, "model", {"name": "Tiny", "model_version": tiny_lm.pk}), "target")
    assert_next(post(client, "target", {"target": "local"}), "hardware")

    response = post(client, "hardware", {**HARDWARE, "accelerator_count": "abc", "tensor_parallel": "2"})
    page = response.content.decode()
    assert response.status_code == 400 and "Enter a whole number." in page and 'value="abc"' in page
    response = post(client, "hardware", {**HARDWARE, "tensor_parallel": "2"})  # the services' rule, on its field
    assert response.status_code == 400
    assert "tensor_parallel × pipeline_parallel exceeds the accelerator count." in response.content.decode()
    assert_next(post(client, "hardware", HARDWARE), "runtime")

    response = post(client, "runtime", {**RUNTIME, "max_input_tokens": "200"})
    page = response.content.decode()
    assert response.status_code == 400 and "Must be below max total tokens" in page and 'value="200"' in page
    response = post(client, "runtime", {**RUNTIME, "max_total_tokens": "4096"})
    assert response.status_code == 400 and "The model&#x27;s context is 128 tokens." in response.content.decode()

    # Back with an invalid entry keeps it; the step stays unfinished, so later steps do not open.
    assert_next(post(client, "runtime", {**RUNTIME, "max_batch": "0"}, nav="back"), "hardware")
    assert 'name="memory_gib" value="4"' in client.get(f"{WIZARD}hardware/").content.decode()
    page = client.get(f"{WIZARD}runtime/").content.decode()
    assert 'name="max_batch" value="0"' in page and "Ensure this value is greater than or equal to 1." in page
    assert client.get(f"{WIZARD}scaling/")["Location"] == f"{WIZARD}runtime/"

    assert_next(post(client, "runtime", RUNTIME), "scaling")
    response = post(client, "scaling", {**SCALING, "min_replicas": "0"})
    assert response.status_code == 400 and "needs an idle time" in response.content.decode()

    # A maintainer may reference project secrets but not write new ones (project admins only).
    assert_next(post(client, "scaling", SCALING), "traffic")
    assert_next(post(client, "traffic", {}), "environment")
    page = client.get(f"{WIZARD}environment/").content.decode()
    assert "Only project admins can add new secret values" in page and 'name="new-0-value"' not in page
    response = post(client, "environment", {**rows("env", [{"name": "PATH", "value": "/tmp"}]), **rows("ref", [])})
    assert response.status_code == 400 and "&#x27;PATH&#x27; is not an allowed environment variable name." in (
        response.content.decode()
    )


def test_taken_or_unfit_slug_is_refused_at_the_first_step(project, tiny_lm, two_ready, maintainer, login):
    client = login(maintainer)
    response = post(client, "model", {"name": "Chat", "model_version": tiny_lm.pk})
    assert response.status_code == 400 and "A deployment &#x27;chat&#x27; already exists" in response.content.decode()
    response = post(client, "model", {"name": "7 seas", "model_version": tiny_lm.pk})
    assert response.status_code == 400 and "cannot name an InferenceService" in response.content.decode()


def test_external_target_skips_hardware_and_keeps_the_key_write_only(project, maintainer, login):
    client = login(maintainer)
    assert_next(post(client, "model", {"name": "Remote GPT", "model_version": ""}), "target")
    response = post(client, "target", {"target": "local"})
    assert response.status_code == 400 and "No model version was chosen in step 1" in response.content.decode()
    target = {"target": "external", "upstream_url": "https://api.example.com/v1", "upstream_model": "gpt-4o-mini"}
    assert_next(post(client, "target", {**target, "upstream_key": "sk-upstream-key"}), "runtime")
    assert "sk-upstream-key" not in json.dumps(dict(client.session.items()))
    page = client.get(f"{WIZARD}target/").content.decode()
    assert "A key is stored (encrypted)" in page and "sk-upstream-key" not in page
    assert_next(post(client, "runtime", RUNTIME), "traffic")
    assert_next(post(client, "traffic", {}), "review")
    page = client.get(f"{WIZARD}review/").content.decode()
    assert "set (write-only)" in page and "No manifest: an external upstream" in page
    assert client.post(f"{WIZARD}review/").status_code == 302
    revision = Revision.objects.get(deployment__slug="remote-gpt")
    assert revision.upstream_model == "gpt-4o-mini" and crypto.decrypt(revision.encrypted_upstream_key) == (
        "sk-upstream-key"
    )


def test_new_revision_starts_from_the_latest_and_rolls_out_as_a_canary(project, tiny_lm, cpu, maintainer, login):
    deployment = Deployment.objects.create(project=project, name="Tiny", slug="tiny", target=Target.LOCAL)
    Revision.objects.create(
        deployment=deployment,
        number=1,
        model_version=tiny_lm,
        accelerator=cpu,
        dtype="fp32",
        max_input_tokens=32,
        max_total_tokens=96,
        max_batch=2,
        env={"LOG_LEVEL": "info"},
        state=State.READY,
        weight=100,
    )
    base = reverse("revision-wizard-start", args=["alpha", deployment.pk])
    client = login(maintainer)
    assert client.get(base)["Location"] == f"{base}model/"
    page = client.get(f"{base}model/").content.decode()
    assert f'<option value="{tiny_lm.pk}" selected>' in page and 'name="name"' not in page
    assert_next(post(client, "model", {"model_version": tiny_lm.pk}, base=base), "hardware", base)
    page = client.get(f"{base}hardware/").content.decode()
    assert 'name="context_length" value="96"' in page and 'value="fp32" selected' in page
    assert_next(post(client, "hardware", {**HARDWARE, "context_length": "96"}, base=base), "runtime", base)
    assert 'name="max_input_tokens" value="32"' in client.get(f"{base}runtime/").content.decode()
    runtime = {**RUNTIME, "max_input_tokens": "32", "max_total_tokens": "96"}
    assert_next(post(client, "runtime", runtime, base=base), "scaling", base)
    assert_next(post(client, "scaling", SCALING, base=base), "traffic", base)
    response = post(client, "traffic", {"rollout": "canary", "canary_weight": ""}, base=base)
    assert response.status_code == 400 and "Give the canary" in response.content.decode()
    assert_next(post(client, "traffic", {"rollout": "canary", "canary_weight": "20"}, base=base), "environment", base)
    page = client.get(f"{base}environment/").content.decode()
    assert 'name="env-0-name" value="LOG_LEVEL"' in page
    env = {**rows("env", [{"name": "LOG_LEVEL", "value": "debug"}]), **rows("ref", [])}
    assert_next(post(client, "environment", env, base=base), "review", base)
    assert "Canary weight once ready (20 %)" in client.get(f"{base}review/").content.decode()
    response = client.post(f"{base}review/")
    assert response["Location"] == reverse("deployment-detail", args=["alpha", deployment.pk])
    revision = deployment.revisions.get(number=2)
    assert (revision.rollout, revision.canary_weight, revision.env) == (Rollout.CANARY, 20, {"LOG_LEVEL": "debug"})
    assert revision.max_total_tokens == 96 and revision.state == State.PENDING


def test_environment_add_rows_keeps_entries_and_discard_drops_the_draft(project, tiny_lm, admin_user, login):
    client = login(admin_user)
    assert_next(post(client, "model", {"name": "Tiny", "model_version": tiny_lm.pk}), "target")
    assert_next(post(client, "target", {"target": "local"}), "hardware")
    for step, data in (("hardware", HARDWARE), ("runtime", RUNTIME), ("scaling", SCALING), ("traffic", {})):
        post(client, step, data)
    data = {
        **rows("env", [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]),
        **rows("ref", []),
        **rows("new", [{"name": "TOKEN", "value": "hidden-value"}]),
    }
    response = post(client, "environment", data, nav="more")
    page = response.content.decode()
    assert response.status_code == 200
    assert 'name="env-1-value" value="2"' in page and 'name="env-3-name"' in page  # two blank rows added
    assert 'name="new-0-name" value="TOKEN"' in page and "hidden-value" not in page and "Stored encrypted" in page
    assert_next(post(client, "environment", {**data, "new-0-value": ""}), "review")  # the stored value is kept
    assert "<code>TOKEN</code>" in client.get(f"{WIZARD}review/").content.decode()

    assert client.post(f"{WIZARD}discard/")["Location"] == "/p/alpha/deployments/"
    assert client.get(WIZARD)["Location"] == f"{WIZARD}model/"
    assert client.get(f"{WIZARD}runtime/")["Location"] == f"{WIZARD}model/"


# Websockets ----------------------------------------------------------------------------------------------------


async def _connect(path: str, user):
    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    communicator.scope["user"] = user
    connected, code = await communicator.connect()
    return communicator, connected, code


def test_deployment_socket_streams_state_changes(transactional_db, project, two_ready, viewer, outsider):
    revision = two_ready.revisions.get(number=2)

    async def scenario():
        socket, connected, _ = await _connect(f"/ws/deployments/{two_ready.pk}/", viewer)
        assert connected
        hello = await socket.receive_json_from(timeout=5)
        events, _, _ = await _connect("/ws/projects/alpha/events/", viewer)
        assert (await events.receive_json_from(timeout=5))["type"] == "hello"
        await database_sync_to_async(transition)(revision, State.DRAINING, "no traffic")
        update = await socket.receive_json_from(timeout=5)
        on_project = await events.receive_json_from(timeout=5)
        await socket.disconnect()
        await events.disconnect()
        refused = await _connect(f"/ws/deployments/{two_ready.pk}/", outsider)
        missing = await _connect("/ws/deployments/999999/", viewer)
        return hello, update, on_project, refused[1:], missing[1:]

    hello, update, on_project, refused, missing = async_to_sync(scenario)()
    assert hello == {"type": "hello", "deployment": two_ready.pk}
    assert update["type"] == "state" and on_project == update
    state = update["state"]
    assert (state["deployment"], state["revision"], state["replica"]) == (two_ready.pk, revision.pk, None)
    assert (state["state"], state["reason"], state["weight"]) == ("draining", "no traffic", 0)
    assert refused == (False, 4404) and missing == (False, 4404)
