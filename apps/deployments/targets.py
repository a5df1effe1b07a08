"""What each target needs beyond the supervisor: the Kubernetes manifest and apply, and the external probe."""

from __future__ import annotations

import logging

import requests
from django.conf import settings
from django.db import transaction

from apps.core import crypto

from . import kube, services
from .manifests import ManifestSpec, inference_service, to_yaml
from .models import Revision, State, Target

logger = logging.getLogger(__name__)
LARGE_LLM_PARAMETERS = 1_000_000_000  # from here on the vLLM backend serves it


def storage_uri(revision: Revision) -> str:
    """Where the cluster's storage initializer reads the model: its Hugging Face or S3 source when it came from
    one, else the volume convention in MODEL_STORAGE_URI_TEMPLATE (fill it with `cpctl pull`)."""
    version = revision.model_version
    if version is None:
        return ""
    if version.source_uri.startswith(("hf://", "s3://", "gs://")):
        return version.source_uri
    return settings.MODEL_STORAGE_URI_TEMPLATE.format(
        project=revision.deployment.project.slug, model=version.model.name, version=version.number
    )


def manifest_spec(revision: Revision) -> ManifestSpec:
    deployment = revision.deployment
    accelerator = revision.accelerator
    parameters = (revision.model_version.parameter_count or 0) if revision.model_version else 0
    namespace = deployment.cluster.namespace if deployment.cluster_id else "default"
    return ManifestSpec(
        deployment_slug=deployment.slug,
        namespace=namespace,
        revision_number=revision.number,
        project_slug=deployment.project.slug,
        storage_uri=storage_uri(revision),
        task=revision.task,
        dtype=revision.dtype,
        max_input_tokens=revision.max_input_tokens,
        max_total_tokens=revision.max_total_tokens,
        max_batch=revision.max_batch,
        accelerator_resource="" if accelerator.is_cpu else accelerator.kubernetes_resource,
        accelerator_count=0 if accelerator.is_cpu else revision.accelerator_count,
        accelerator_product=accelerator.kubernetes_product,
        cpu=str(revision.cpu),
        memory_gib=float(revision.memory_gib),
        min_replicas=revision.min_replicas,
        max_replicas=revision.max_replicas,
        target_concurrency=revision.target_concurrency,
        scale_to_zero=bool(revision.scale_to_zero_seconds) or revision.min_replicas == 0,
        canary_percent=revision.canary_weight if revision.rollout == "canary" and revision.number > 1 else None,
        env={k: str(v) for k, v in (revision.env or {}).items()},
        secret_refs=dict(revision.secret_refs or {}),
        tensor_parallel=revision.tensor_parallel,
        large_llm=revision.task == "generate" and parameters >= LARGE_LLM_PARAMETERS and not accelerator.is_cpu,
        labels={},
    )


def manifest_for(revision: Revision) -> str:
    """The InferenceService (YAML) for a revision, whatever its target: always downloadable."""
    return to_yaml(inference_service(manifest_spec(revision)))


def revision_apply(revision_id: int) -> None:
    """Server-side apply a Kubernetes revision and read its status back."""
    revision = Revision.objects.select_related("deployment__cluster", "deployment__project").get(pk=revision_id)
    deployment = revision.deployment
    if deployment.target != Target.KUBERNETES or revision.state != State.STARTING:
        return
    if deployment.cluster is None:
        with transaction.atomic():
            services.revision_failed(
                revision,
                "No cluster is configured for this deployment: download the manifest "
                "and apply it yourself, or add a cluster to the project.",
            )
        return
    kubeconfig = crypto.decrypt(deployment.cluster.encrypted_kubeconfig)
    try:
        kube.apply(kubeconfig, inference_service(manifest_spec(revision)))
        status = kube.status(kubeconfig, deployment.cluster.namespace, deployment.slug)
    except kube.ClusterError as exc:
        with transaction.atomic():
            services.revision_failed(Revision.objects.select_for_update().get(pk=revision.pk), str(exc))
        return
    with transaction.atomic():
        revision = Revision.objects.select_for_update().get(pk=revision.pk)
        revision.cluster_status = status
        revision.save(update_fields=["cluster_status"])
        if status.get("ready") and revision.state == State.STARTING:
            services.revision_became_ready(revision)


def revision_probe(revision_id: int) -> None:
    """An external upstream is ready when it answers `GET /models` with our key (404: the route is optional)."""
    revision = Revision.objects.select_related("deployment").get(pk=revision_id)
    if revision.state != State.STARTING:
        return
    key = crypto.decrypt(revision.encrypted_upstream_key) if revision.encrypted_upstream_key else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    reason = ""
    try:
        response = requests.get(f"{revision.upstream_url.rstrip('/')}/models", headers=headers, timeout=10)
        if response.status_code in (401, 403):
            reason = f"The upstream refused the key ({response.status_code})."
        elif response.status_code >= 500:
            reason = f"The upstream answered {response.status_code}."
    except requests.RequestException as exc:
        reason = f"The upstream cannot be reached: {exc.__class__.__name__}."
    with transaction.atomic():
        revision = Revision.objects.select_for_update().get(pk=revision.pk)
        if revision.state != State.STARTING:
            return
        if reason:
            services.revision_failed(revision, reason)
        else:
            services.revision_became_ready(revision)


def clusters_poll() -> int:
    """Read back the status of Kubernetes revisions still starting; returns how many were checked."""
    starting = Revision.objects.filter(
        state=State.STARTING, deployment__target=Target.KUBERNETES, deployment__cluster__isnull=False
    ).select_related("deployment__cluster")
    checked = 0
    for revision in starting:
        cluster = revision.deployment.cluster
        try:
            status = kube.status(
                crypto.decrypt(cluster.encrypted_kubeconfig), cluster.namespace, revision.deployment.slug
            )
        except kube.ClusterError as exc:
            logger.warning("status of %s: %s", revision, exc)
            continue
        checked += 1
        with transaction.atomic():
            revision = Revision.objects.select_for_update().get(pk=revision.pk)
            revision.cluster_status = status
            revision.save(update_fields=["cluster_status"])
            if status.get("ready") and revision.state == State.STARTING:
                services.revision_became_ready(revision)
    return checked
