"""A deployment specification: one validated shape for the API, the wizard and dry runs.

`SpecSerializer` validates what a user sends; `resolve_spec` turns it into model field values, looking up the
model version, accelerator and cluster through the permissions module, and asks the planner for its verdict.
A new revision starts from the previous revision's settings, so only the changed fields need sending.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from rest_framework import serializers

from apps.core.api.serializers import StrictCharField
from apps.core.models import Project, ProjectSecret
from apps.core.permissions import Action, restrict
from apps.registry.models import Alias, ModelVersion, Task, VersionStatus

from . import planner
from .models import Accelerator, Cluster, Dtype, Revision, Rollout, Target

RUNTIME_TASKS = [("generate", "generate"), ("embed", "embed")]
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$")
RESERVED_ENV = {"PATH", "PYTHONPATH", "LD_PRELOAD", "LD_LIBRARY_PATH", "HOME"}
EMBEDDING_ARCHITECTURES = ("BertModel", "XLMRobertaModel", "MPNetModel", "RobertaModel", "NomicBertModel")

# Revision fields a spec may set, with the previous revision (or these defaults) filling the rest.
REVISION_FIELDS = (
    "task",
    "dtype",
    "max_input_tokens",
    "max_total_tokens",
    "max_batch",
    "accelerator_count",
    "tensor_parallel",
    "pipeline_parallel",
    "memory_utilization",
    "cpu",
    "memory_gib",
    "min_replicas",
    "max_replicas",
    "target_concurrency",
    "scale_to_zero_seconds",
    "env",
    "secret_refs",
    "rollout",
    "canary_weight",
    "shadow_percent",
    "upstream_url",
    "upstream_model",
)


class SpecSerializer(serializers.Serializer):
    # The deployment (only on creation).
    name = StrictCharField(max_length=100, required=False)
    slug = serializers.RegexField(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", max_length=63, required=False)
    description = StrictCharField(max_length=10_000, required=False, allow_blank=True)
    target = serializers.ChoiceField(choices=Target.choices, required=False)
    cluster = StrictCharField(max_length=100, required=False, allow_blank=True)
    # What runs.
    model_version = serializers.IntegerField(min_value=1, required=False, help_text="Model version id.")
    model = StrictCharField(max_length=128, required=False, help_text="Registered model name.")
    version = serializers.IntegerField(min_value=1, required=False, help_text="Version number of `model`.")
    alias = StrictCharField(max_length=64, required=False, help_text="Alias of `model`, e.g. production.")
    upstream_url = serializers.URLField(max_length=500, required=False, allow_blank=True)
    upstream_model = StrictCharField(max_length=200, required=False, allow_blank=True)
    upstream_key = StrictCharField(max_length=4000, required=False, write_only=True, allow_blank=True)
    task = serializers.ChoiceField(choices=RUNTIME_TASKS, required=False)
    # Runtime.
    dtype = serializers.ChoiceField(choices=Dtype.choices, required=False)
    max_input_tokens = serializers.IntegerField(min_value=1, max_value=10_000_000, required=False)
    max_total_tokens = serializers.IntegerField(min_value=2, max_value=10_000_000, required=False)
    max_batch = serializers.IntegerField(min_value=1, max_value=4096, required=False)
    # Hardware.
    accelerator = StrictCharField(max_length=50, required=False)
    accelerator_count = serializers.IntegerField(min_value=1, max_value=64, required=False)
    tensor_parallel = serializers.IntegerField(min_value=1, max_value=64, required=False)
    pipeline_parallel = serializers.IntegerField(min_value=1, max_value=64, required=False)
    memory_utilization = serializers.DecimalField(
        max_digits=3, decimal_places=2, min_value=Decimal("0.10"), max_value=Decimal("1.00"), required=False
    )
    cpu = serializers.DecimalField(max_digits=6, decimal_places=2, min_value=Decimal("0.1"), required=False)
    memory_gib = serializers.DecimalField(max_digits=8, decimal_places=2, min_value=Decimal("0.25"), required=False)
    context_length = serializers.IntegerField(min_value=1, max_value=10_000_000, required=False)
    concurrent_sequences = serializers.IntegerField(min_value=1, max_value=100_000, required=False)
    # Scaling.
    min_replicas = serializers.IntegerField(min_value=0, max_value=100, required=False)
    max_replicas = serializers.IntegerField(min_value=1, max_value=100, required=False)
    target_concurrency = serializers.IntegerField(min_value=1, max_value=10_000, required=False)
    scale_to_zero_seconds = serializers.IntegerField(min_value=10, max_value=7 * 86400, required=False, allow_null=True)
    # Traffic.
    rollout = serializers.ChoiceField(choices=Rollout.choices, required=False)
    canary_weight = serializers.IntegerField(min_value=1, max_value=99, required=False)
    shadow_percent = serializers.IntegerField(min_value=1, max_value=100, required=False)
    # Environment.
    env = serializers.DictField(child=StrictCharField(max_length=4000, allow_blank=True), required=False)
    secret_refs = serializers.DictField(child=StrictCharField(max_length=100), required=False)
    secrets = serializers.DictField(
        child=StrictCharField(max_length=10_000),
        required=False,
        write_only=True,
        help_text="New secret values by environment variable; stored encrypted as project secrets, never shown.",
    )
    dry_run = serializers.BooleanField(required=False, default=False)

    def validate_env(self, value):
        _check_env_names(value, "env")
        return value

    def validate_secret_refs(self, value):
        _check_env_names(value, "secret_refs")
        return value

    def validate_secrets(self, value):
        _check_env_names(value, "secrets")
        return value


def _check_env_names(value: dict, field: str) -> None:
    if len(value) > 100:
        raise serializers.ValidationError("At most 100 variables.")
    for name in value:
        if not ENV_NAME.match(name) or name.upper() in RESERVED_ENV:
            raise serializers.ValidationError(f"{name!r} is not an allowed environment variable name.")


def _version(user, project: Project, data: dict) -> ModelVersion:
    versions = restrict(ModelVersion.objects.select_related("model"), user, Action.DEPLOY).filter(
        model__project=project, deleted_at__isnull=True
    )
    if data.get("model_version"):
        version = versions.filter(pk=data["model_version"]).first()
    elif data.get("model") and data.get("alias"):
        alias = Alias.objects.filter(
            model__project=project, model__name=data["model"], name=data["alias"], version__in=versions
        ).first()
        version = alias.version if alias else None
    elif data.get("model") and data.get("version"):
        version = versions.filter(model__name=data["model"], number=data["version"]).first()
    else:
        raise ValidationError(
            {"model_version": "Choose a model version: model_version, or model with version or alias."}
        )
    if version is None:
        raise ValidationError({"model_version": "No such model version in this project (or you may not deploy it)."})
    if version.status != VersionStatus.READY:
        raise ValidationError({"model_version": f"Version {version} is {version.status}, not ready."})
    return version


def default_task(version: ModelVersion) -> str:
    architecture = (version.metadata or {}).get("architecture", "")
    if version.model.task == Task.EMBEDDING or architecture in EMBEDDING_ARCHITECTURES:
        return "embed"
    return "generate"


def catalog_ensure() -> None:
    """Load the accelerator catalog that ships (data/accelerators.json) when the table is empty."""
    if Accelerator.objects.exists():
        return
    for entry in json.loads(planner.ACCELERATORS_JSON.read_text()):
        Accelerator.objects.get_or_create(name=entry["name"], defaults={k: v for k, v in entry.items() if k != "name"})


def _accelerator(name: str | None, previous: Revision | None, target: str) -> Accelerator:
    catalog_ensure()
    if name:
        accelerator = Accelerator.objects.filter(name=name).first()
        if accelerator is None:
            raise ValidationError({"accelerator": f"Unknown accelerator {name!r}."})
        return accelerator
    if previous is not None:
        return previous.accelerator
    default = Accelerator.objects.filter(is_cpu=True).first() if target != Target.KUBERNETES else None
    default = default or Accelerator.objects.order_by("is_cpu", "memory_gib").first()
    if default is None:
        raise ValidationError({"accelerator": "The accelerator catalog is empty."})
    return default


def _plan_request(shape: planner.ModelShape, values: dict, accelerator: Accelerator, data: dict) -> planner.PlanRequest:
    return planner.PlanRequest(
        shape=shape,
        dtype=values["dtype"],
        context_length=data.get("context_length") or values["max_total_tokens"],
        concurrent_sequences=data.get("concurrent_sequences") or values["max_batch"],
        accelerator=accelerator_spec(accelerator),
        accelerator_count=values["accelerator_count"],
        tensor_parallel=values["tensor_parallel"],
        pipeline_parallel=values["pipeline_parallel"],
        memory_utilization=float(values["memory_utilization"]),
        catalog=tuple(accelerator_spec(a) for a in Accelerator.objects.all()),
    )


def _plan(version: ModelVersion | None, values: dict, accelerator: Accelerator, data: dict) -> dict:
    """The planner's verdict as stored with the revision; {} for external upstreams."""
    if version is None:
        return {}
    try:
        shape = planner.ModelShape.from_metadata(version.metadata or {}, version.parameter_count)
        return planner.plan(_plan_request(shape, values, accelerator, data)).as_dict()
    except planner.PlanError as exc:
        return {"fits": None, "reasons": [str(exc)]}


def accelerator_spec(accelerator: Accelerator) -> planner.AcceleratorSpec:
    return planner.AcceleratorSpec(
        name=accelerator.name,
        memory_gib=float(accelerator.memory_gib),
        hourly_price=float(accelerator.hourly_price),
        is_cpu=accelerator.is_cpu,
    )


def resolve_spec(user, project: Project, data: dict, *, previous: Revision | None = None) -> dict[str, Any]:
    """Model field values for a new revision (and, without `previous`, its deployment), plus the plan.

    Raises django ValidationError with field errors; nothing is written.
    """
    deployment_target = previous.deployment.target if previous else data.get("target", Target.LOCAL)
    if previous is not None and data.get("target") not in (None, deployment_target):
        raise ValidationError({"target": "A deployment's target cannot change; create another deployment."})
    values: dict[str, Any] = {name: getattr(previous, name) for name in REVISION_FIELDS} if previous else {}
    values.update({name: data[name] for name in REVISION_FIELDS if name in data})
    for name in REVISION_FIELDS:
        if name not in values:
            values[name] = Revision._meta.get_field(name).get_default()

    version = None
    if deployment_target == Target.EXTERNAL:
        if not values.get("upstream_url"):
            raise ValidationError({"upstream_url": "An external deployment needs the upstream's base URL."})
        if not values.get("upstream_model"):
            raise ValidationError({"upstream_model": "Name the upstream model, e.g. gpt-4o-mini."})
        values["encrypted_upstream_key"] = previous.encrypted_upstream_key if previous else ""
    else:
        if any(k in data for k in ("model_version", "model", "version", "alias")) or previous is None:
            version = _version(user, project, data)
        else:
            version = previous.model_version
        if "task" not in data and (previous is None or previous.model_version_id != version.pk):
            values["task"] = default_task(version)
        values["upstream_url"] = values["upstream_model"] = ""
    values["model_version"] = version

    accelerator = _accelerator(data.get("accelerator"), previous, deployment_target)
    values["accelerator"] = accelerator
    errors = {}
    if values["max_input_tokens"] >= values["max_total_tokens"]:
        errors["max_input_tokens"] = "Must be below max_total_tokens (room is needed for the answer)."
    if values["min_replicas"] > values["max_replicas"]:
        errors["min_replicas"] = "Must not exceed max_replicas."
    if values["tensor_parallel"] * values["pipeline_parallel"] > values["accelerator_count"]:
        errors["tensor_parallel"] = "tensor_parallel × pipeline_parallel exceeds the accelerator count."
    if deployment_target == Target.LOCAL and values["dtype"] in (Dtype.INT8, Dtype.INT4):
        errors["dtype"] = "The local model server runs fp32, bf16 or fp16; int8/int4 need the Kubernetes vLLM runtime."
    if accelerator.is_cpu and values["accelerator_count"] != 1:
        errors["accelerator_count"] = "A CPU deployment uses one CPU host per replica."
    if values["min_replicas"] == 0 and not values.get("scale_to_zero_seconds"):
        errors["scale_to_zero_seconds"] = "min_replicas 0 needs an idle time after which replicas stop."
    if values["rollout"] == Rollout.SHADOW and not values["shadow_percent"]:
        values["shadow_percent"] = 100
    if version is not None:
        max_context = (version.metadata or {}).get("max_context")
        if max_context and values["max_total_tokens"] > max_context:
            errors["max_total_tokens"] = f"The model's context is {max_context} tokens."
    missing = [
        ref
        for ref in values["secret_refs"].values()
        if not ProjectSecret.objects.filter(project=project, name=ref).exists()
    ]
    if missing:
        errors["secret_refs"] = f"No such project secret: {', '.join(sorted(missing))}."
    if errors:
        raise ValidationError(errors)

    result: dict[str, Any] = {"revision": values, "plan": _plan(version, values, accelerator, data)}
    if previous is None:
        result["deployment"] = _deployment_fields(project, data, deployment_target)
    return result


def _deployment_fields(project: Project, data: dict, target: str) -> dict[str, Any]:
    errors = {}
    if not data.get("name"):
        errors["name"] = "Name the deployment."
    slug = data.get("slug") or re.sub(r"[^a-z0-9-]+", "-", (data.get("name") or "").lower()).strip("-")[:63]
    if not slug:
        errors["slug"] = "Give a slug: lower-case letters, digits and dashes."
    cluster = None
    if target == Target.KUBERNETES and data.get("cluster"):
        cluster = Cluster.objects.filter(project=project, name=data["cluster"]).first()
        if cluster is None:
            errors["cluster"] = f"No cluster {data['cluster']!r} in this project."
    if errors:
        raise ValidationError(errors)
    return {
        "name": data["name"],
        "slug": slug,
        "description": data.get("description", ""),
        "target": target,
        "cluster": cluster,
    }


def plan_request(user, data: dict) -> dict[str, Any]:
    """`POST /deployments/plan`: the verdict for a registered version (by project) or a bare model shape."""
    values = {name: data.get(name, Revision._meta.get_field(name).get_default()) for name in REVISION_FIELDS}
    accelerator = _accelerator(data.get("accelerator"), None, data.get("target", Target.LOCAL))
    if data.get("shape") is not None:
        shape = data["shape"]
        try:
            model_shape = planner.ModelShape.from_metadata(shape, shape.get("parameters"))
        except planner.PlanError as exc:
            raise ValidationError({"shape": str(exc)})
        version = None
    else:
        if data.get("project") is None:
            raise ValidationError({"project": "Give the project of the model version, or a `shape`."})
        version = _version(user, data["project"], data)
        model_shape = None
    if model_shape is not None:
        request = _plan_request(model_shape, values, accelerator, data)
        try:
            return planner.plan(request).as_dict()
        except planner.PlanError as exc:
            raise ValidationError({"shape": str(exc)})
    return _plan(version, values, accelerator, data)
