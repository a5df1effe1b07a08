"""A Kubernetes-target deployment through the services: the manifest is applied with server-side apply to the
project's cluster (the API-server test double in fake_apiserver.py) and the revision becomes ready from the
InferenceService's status; without a cluster, or with a refusing one, it fails with the reason and no traffic."""

from __future__ import annotations

import pytest
import yaml

from apps.core.models import Role
from apps.deployments import services, targets
from apps.deployments.models import State
from apps.registry.demo import register_directory, write_tiny_lm
from tests.deployments.fake_apiserver import FakeApiServer


@pytest.fixture
def maintainer(member_factory):
    return member_factory(Role.MAINTAINER)


@pytest.fixture
def version(maintainer, project, tmp_path):
    return register_directory(user=maintainer, project=project, name="tiny", directory=write_tiny_lm(tmp_path))


def create(user, project, version, **extra):
    data = {
        "name": "chat",
        "slug": "chat",
        "target": "kubernetes",
        "model_version": version.pk,
        "accelerator": "L4-24GB",
        "dtype": "bf16",
        "max_input_tokens": 64,
        "max_total_tokens": 128,
        **extra,
    }
    return services.deployment_create(user=user, project=project, data=data)


def test_applied_to_the_cluster_and_ready_from_its_status(maintainer, admin_user, project, version):
    with FakeApiServer(namespaces=("llm",)) as apiserver:
        services.cluster_create(
            user=admin_user, project=project, name="prod", namespace="llm", kubeconfig=apiserver.kubeconfig_text()
        )
        deployment = create(maintainer, project, version, cluster="prod")
        revision = deployment.revisions.get()
        revision.state = State.STARTING  # what revision_start does before queueing the apply task
        revision.save(update_fields=["state"])
        targets.revision_apply(revision.pk)
        applied = apiserver.objects[("llm", "chat")]
        patch = next(r for r in apiserver.requests if r.method == "PATCH")
    revision.refresh_from_db()
    assert revision.state == State.READY and revision.weight == 100
    assert revision.cluster_status["url"] == "http://chat.llm.example.com"
    assert patch.content_type == "application/apply-patch+yaml" and patch.query["fieldManager"] == "controlplane"
    assert applied["spec"]["predictor"]["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert yaml.safe_load(revision.manifest)["spec"] == applied["spec"]


def test_a_refusing_cluster_fails_the_revision_with_the_reason(maintainer, admin_user, project, version):
    with FakeApiServer(namespaces=("llm",)) as apiserver:
        services.cluster_create(
            user=admin_user,
            project=project,
            name="prod",
            namespace="llm",
            kubeconfig=apiserver.kubeconfig_text(token="wrong"),
        )
        deployment = create(maintainer, project, version, cluster="prod")
        revision = deployment.revisions.get()
        revision.state = State.STARTING
        revision.save(update_fields=["state"])
        targets.revision_apply(revision.pk)
    revision.refresh_from_db()
    assert revision.state == State.FAILED and "authorised" in revision.state_reason.lower()
    assert revision.weight == 0


def test_a_name_kserve_refuses_is_a_form_error_and_nothing_is_written(maintainer, project, version):
    from django.core.exceptions import ValidationError

    from apps.deployments.models import Deployment

    with pytest.raises(ValidationError) as caught:
        create(maintainer, project, version, slug="7seas")
    assert "manifest" in caught.value.message_dict
    assert not Deployment.objects.exists()
