"""Demo deployments: the tiny causal LM and the embedding model served locally, so that right after `make run`
the gateway answers (`model` = `tiny-chat` or `minilm`) and the dashboard shows live deployments."""

from __future__ import annotations

from apps.core.models import Project
from apps.registry.models import ModelVersion

from .models import Deployment
from .services import deployment_create

DEMO_DEPLOYMENTS = {
    # slug: (registered model name, spec)
    "tiny-chat": (
        "tiny-gpt2-chat",
        {"name": "Tiny chat", "dtype": "fp32", "max_input_tokens": 96, "max_total_tokens": 128, "max_batch": 4},
    ),
    "minilm": (
        "all-MiniLM-L6-v2",
        {
            "name": "MiniLM embeddings",
            "dtype": "fp32",
            "max_input_tokens": 256,
            "max_total_tokens": 512,
            "max_batch": 16,
        },
    ),
}


def seed_deployments(admin, project: Project, versions: dict[str, ModelVersion]) -> list[Deployment]:
    """Deploy the demo models on the local target unless deployments with their slugs exist."""
    seeded = []
    for slug, (model_name, spec) in DEMO_DEPLOYMENTS.items():
        existing = Deployment.objects.filter(project=project, slug=slug, deleted_at__isnull=True).first()
        version = versions.get(model_name)
        if existing is None and version is not None:
            existing = deployment_create(
                user=admin,
                project=project,
                data={
                    **spec,
                    "slug": slug,
                    "target": "local",
                    "model_version": version.pk,
                    "accelerator": "CPU",
                    "description": f"Demo: {model_name} served by a local KServe model server.",
                },
            )
        if existing is not None:
            seeded.append(existing)
    return seeded
