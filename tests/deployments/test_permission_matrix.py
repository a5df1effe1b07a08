"""The deployment routes in the permission matrix (format and cases: tests/core/test_permission_matrix.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from apps.core import crypto
from apps.core.models import Role
from apps.deployments.models import Accelerator, Cluster, Deployment, Revision, State, StateEvent, Target
from apps.deployments.spec import catalog_ensure
from tests.core.test_permission_matrix import (  # noqa: F401  (world is a fixture used here)
    Rule,
    World,
    _list,
    check_matrix_case,
    matrix_cases,
    world,
)

SHAPE = {"parameters": 7_000_000_000, "layers": 32, "hidden_size": 4096, "attention_heads": 32, "kv_heads": 8}
EXTERNAL = {"target": "external", "upstream_url": "http://127.0.0.1:9/v1", "upstream_model": "m"}


def _deployments(w: World) -> SimpleNamespace:
    """An external deployment with three revisions (2 serving, 1 ready and idle, 3 failed) and a cluster."""
    if "deployments" not in w.__dict__:
        catalog_ensure()
        cpu = Accelerator.objects.get(name="CPU")
        deployment = Deployment.objects.create(project=w.project, name="Chat", slug="chat", target=Target.EXTERNAL)
        common = {"deployment": deployment, "accelerator": cpu, "upstream_url": EXTERNAL["upstream_url"],
                  "upstream_model": "m", "manifest": "kind: InferenceService\n"}
        first = Revision.objects.create(number=1, state=State.READY, ready_at="2026-01-01T00:00:00Z", **common)
        Revision.objects.create(number=2, state=State.READY, weight=100, ready_at="2026-01-02T00:00:00Z", **common)
        Revision.objects.create(number=3, state=State.FAILED, **common)
        StateEvent.objects.create(deployment=deployment, revision=first, state=State.READY, time=first.ready_at)
        cluster = Cluster.objects.create(project=w.project, name="prod", encrypted_kubeconfig=crypto.encrypt("x"))
        w.deployments = SimpleNamespace(deployment=deployment, cluster=cluster, cpu=cpu)
    return w.deployments


def _deploy_rule(body=None, ok=200) -> Rule:
    return Rule(Role.MAINTAINER, ok, lower=403, scope="write", body=body)


SPEC: dict[tuple[str, str], Rule] = {
    ("deployments-api:deployment-list", "GET"): _list(Role.VIEWER, lambda w: _deployments(w).deployment.pk),
    ("deployments-api:deployment-list", "POST"): Rule(
        Role.MAINTAINER,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="write",
        body=lambda w: {"project": w.project.slug, "name": "New", **EXTERNAL},
    ),
    ("deployments-api:deployment-detail", "GET"): Rule(Role.VIEWER, 200),
    ("deployments-api:deployment-detail", "DELETE"): Rule(Role.MAINTAINER, 204, lower=403, scope="write"),
    ("deployments-api:deployment-revisions", "GET"): Rule(Role.VIEWER, 200),
    ("deployments-api:deployment-revisions", "POST"): _deploy_rule(lambda w: {"upstream_model": "m2"}, ok=201),
    ("deployments-api:deployment-traffic", "POST"): _deploy_rule(lambda w: {"weights": {"1": 50, "2": 50}}),
    ("deployments-api:deployment-promote", "POST"): _deploy_rule(lambda w: {"revision": 1}),
    ("deployments-api:deployment-restart", "POST"): _deploy_rule(lambda w: {"revision": 3}),
    ("deployments-api:deployment-rollback", "POST"): _deploy_rule(lambda w: {}),
    ("deployments-api:deployment-stop", "POST"): _deploy_rule(lambda w: {}),
    ("deployments-api:deployment-manifest", "GET"): Rule(Role.VIEWER, 200),
    ("deployments-api:deployment-events", "GET"): Rule(Role.VIEWER, 200),
    # Planning a bare shape touches no project: any signed-in caller.
    ("deployments-api:deployment-plan", "POST"): Rule(
        "anyone", 200, other=200, limited=200, body=lambda w: {"shape": SHAPE, "accelerator": "A100-80GB"}
    ),
    ("deployments-api:accelerator-list", "GET"): Rule("anyone", 200, other=200, limited=200),
    ("deployments-api:accelerator-detail", "GET"): Rule("anyone", 200, other=200, limited=200),
    ("deployments-api:cluster-list", "GET"): _list(Role.VIEWER, lambda w: _deployments(w).cluster.pk),
    ("deployments-api:cluster-list", "POST"): Rule(
        Role.ADMIN,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {"project": w.project.slug, "name": "staging", "kubeconfig": "apiVersion: v1\n"},
    ),
    ("deployments-api:cluster-detail", "GET"): Rule(Role.VIEWER, 200),
    ("deployments-api:cluster-detail", "DELETE"): Rule(Role.ADMIN, 204, lower=403, scope="admin"),
}

URL_KWARGS = {
    name: (lambda w: {"pk": _deployments(w).deployment.pk})
    for name in (
        "deployments-api:deployment-detail",
        "deployments-api:deployment-revisions",
        "deployments-api:deployment-traffic",
        "deployments-api:deployment-promote",
        "deployments-api:deployment-restart",
        "deployments-api:deployment-rollback",
        "deployments-api:deployment-stop",
        "deployments-api:deployment-manifest",
        "deployments-api:deployment-events",
    )
}
URL_KWARGS["deployments-api:cluster-detail"] = lambda w: {"pk": _deployments(w).cluster.pk}
URL_KWARGS["deployments-api:accelerator-detail"] = lambda w: {"pk": _deployments(w).cpu.pk}


@pytest.mark.parametrize(("name", "method", "case"), matrix_cases(SPEC))
def test_deployments_permission_matrix(world, name, method, case):  # noqa: F811
    _deployments(world)
    check_matrix_case(world, SPEC, URL_KWARGS, name, method, case)
