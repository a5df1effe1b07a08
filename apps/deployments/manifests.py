"""KServe `InferenceService` (serving.kserve.io/v1beta1) manifests for a deployment revision.

Plain data in (`ManifestSpec`), plain data out (a dict ready for server-side apply, or YAML). No ORM here:
the service layer turns a `Revision` into a `ManifestSpec`.

Choices, and why:

- **Always Serverless (Knative).** `minReplicas: 0` (scale to zero) and `canaryTrafficPercent` only work in
  KServe's Serverless mode, and KServe's admission webhook rejects an update that changes
  `serving.kserve.io/deploymentMode` of an existing InferenceService ("deploymentMode cannot be changed").
  Every revision of a deployment is applied to the same InferenceService (named after the deployment), so one
  revision on RawDeployment and a later canary on Serverless would be refused. Recent KServe releases call this
  mode "Knative" and default to "Standard" (raw); they still accept the name "Serverless", and older releases
  know only that name, so the annotation is always written explicitly.
- **Runtime: the KServe Hugging Face server** (`modelFormat: huggingface`). `large_llm` selects its vLLM
  backend with vLLM engine arguments (`--dtype`, `--max-model-len`, `--tensor-parallel-size`, `--max-num-seqs`);
  otherwise `--backend=huggingface` with the server's own arguments. The two backends name tasks differently
  (vLLM `--task=embed`, Hugging Face `--task=text_embedding`). The OpenAI-compatible routes are served under
  `/openai/v1/...`; the served model name (`--model_name`) is the deployment slug.
- **Secrets are references, never values.** `secret_refs` maps an environment variable to a project secret name;
  the manifest points at key `<secret name, lower-cased>` of the Kubernetes Secret `<deployment>-secrets`
  (see `secret_object_name`). The operator (or a separate secret sync) must create that Secret in the namespace;
  the control plane never writes secret values into manifests.
- **Scheduling.** The GPU count goes into requests and limits (extended resources must match). A GPU product
  becomes `nodeSelector: {nvidia.com/gpu.product: ...}`; in Serverless mode Knative accepts a node selector only
  when its `kubernetes.podspec-nodeselector` feature flag is enabled, so it is written only when a product is set.
  CPU and memory requests equal their limits (Guaranteed QoS: a serving pod is the last to be evicted).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml

API_VERSION = "serving.kserve.io/v1beta1"
KIND = "InferenceService"
DEPLOYMENT_MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
DEPLOYMENT_MODE = "Serverless"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
LABEL_PROJECT = "controlplane/project"
LABEL_DEPLOYMENT = "controlplane/deployment"
LABEL_REVISION = "controlplane/revision"

TASKS = ("generate", "embed")
STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "hf://", "oci://", "https://", "http://")
# Runtime `--dtype` values. Quantized checkpoints carry their own quantization config; their activations run in
# the runtime's default precision ("auto").
RUNTIME_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "auto", "int4": "auto"}

# KServe's InferenceService name rule (a DNS-1035 label: starts with a letter).
_ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_CPU_QUANTITY = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")
# The predictor's host name is `<name>-predictor-<namespace>.<domain>` (KServe's default domain template); its
# first label must fit the 63-character DNS limit or KServe cannot reconcile the service (kserve/kserve#4807).
_PREDICTOR_HOST_SUFFIX = "-predictor-"


class ManifestError(ValueError):
    """A ManifestSpec that cannot become a valid InferenceService; the message says which field and why."""


def validate_name(name: str, namespace: str) -> None:
    """Raise ManifestError unless `name` can be an InferenceService in `namespace`.

    The name must be a DNS-1035 label (lower-case letters, digits, dashes; starts with a letter; at most 63),
    the namespace a DNS-1123 label, and `<name>-predictor-<namespace>` must fit in one DNS label (63 characters).
    """
    if not namespace or len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        raise ManifestError(
            f"Namespace {namespace!r} is not a valid Kubernetes namespace "
            "(lower-case letters, digits and dashes, at most 63 characters)."
        )
    if not name or len(name) > 63 or not _ISVC_NAME.match(name):
        raise ManifestError(
            f"{name!r} cannot name an InferenceService: use lower-case letters, digits and dashes, "
            "start with a letter, end with a letter or digit, at most 63 characters."
        )
    host_label = f"{name}{_PREDICTOR_HOST_SUFFIX}{namespace}"
    if len(host_label) > 63:
        raise ManifestError(
            f"The predictor host label {host_label!r} is {len(host_label)} characters; Kubernetes allows 63. "
            "Use a shorter deployment slug or namespace."
        )


def secret_object_name(deployment_slug: str) -> str:
    """Name of the Kubernetes Secret that holds a deployment's secret environment values (operator-created)."""
    return f"{deployment_slug}-secrets"


def secret_key(secret_name: str) -> str:
    """Key inside that Secret for one project secret: its name, lower-cased."""
    return secret_name.lower()


@dataclass(frozen=True, kw_only=True)
class ManifestSpec:
    """Everything the InferenceService of one revision depends on. Validated on construction."""

    deployment_slug: str
    namespace: str
    revision_number: int
    project_slug: str
    storage_uri: str
    task: str = "generate"
    dtype: str = "bf16"
    max_input_tokens: int = 2048
    max_total_tokens: int = 4096
    max_batch: int = 8
    accelerator_resource: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    accelerator_product: str = ""
    cpu: Decimal | str | int | float = Decimal(1)
    memory_gib: Decimal | str | int | float = Decimal(4)
    min_replicas: int = 1
    max_replicas: int = 1
    target_concurrency: int = 4
    scale_to_zero: bool = False
    canary_percent: int | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    secret_refs: Mapping[str, str] = field(default_factory=dict)
    tensor_parallel: int = 1
    large_llm: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    # vLLM `--gpu-memory-utilization`; None keeps vLLM's default (0.9). Ignored by the Hugging Face backend.
    memory_utilization: Decimal | float | None = None

    def __post_init__(self) -> None:
        validate_name(self.deployment_slug, self.namespace)
        _check_label_value("project_slug", self.project_slug)
        if not isinstance(self.revision_number, int) or self.revision_number < 1:
            raise ManifestError("revision_number must be a positive integer.")
        if not self.storage_uri.startswith(STORAGE_SCHEMES):
            raise ManifestError(
                f"storage_uri {self.storage_uri!r} must start with one of {', '.join(STORAGE_SCHEMES)}."
            )
        if self.task not in TASKS:
            raise ManifestError(f"task must be one of {', '.join(TASKS)}, not {self.task!r}.")
        if self.dtype not in RUNTIME_DTYPES:
            raise ManifestError(f"dtype must be one of {', '.join(RUNTIME_DTYPES)}, not {self.dtype!r}.")
        for name in ("max_input_tokens", "max_total_tokens", "max_batch", "target_concurrency", "tensor_parallel"):
            if getattr(self, name) < 1:
                raise ManifestError(f"{name} must be at least 1.")
        if self.max_input_tokens > self.max_total_tokens or (
            self.task == "generate" and self.max_input_tokens == self.max_total_tokens
        ):
            raise ManifestError("max_input_tokens must be smaller than max_total_tokens (room for the output).")
        if self.min_replicas < 0 or self.max_replicas < 1 or self.min_replicas > self.max_replicas:
            raise ManifestError("Replicas: need 0 <= min_replicas <= max_replicas and max_replicas >= 1.")
        if self.canary_percent is not None and not 0 <= self.canary_percent <= 100:
            raise ManifestError("canary_percent must be between 0 and 100, or None for no canary rollout.")
        if self.accelerator_resource:
            if self.accelerator_count < 1:
                raise ManifestError("accelerator_count must be at least 1 when an accelerator is requested.")
            if self.tensor_parallel > self.accelerator_count:
                raise ManifestError(
                    f"tensor_parallel ({self.tensor_parallel}) cannot exceed accelerator_count "
                    f"({self.accelerator_count})."
                )
            if self.accelerator_product:
                _check_label_value("accelerator_product", self.accelerator_product)
        elif self.large_llm:
            raise ManifestError("The vLLM backend (large_llm) needs a GPU; set accelerator_resource.")
        if self.tensor_parallel > 1 and not self.large_llm:
            raise ManifestError("Tensor parallelism needs the vLLM backend (large_llm).")
        if self.memory_utilization is not None and not 0 < Decimal(str(self.memory_utilization)) <= 1:
            raise ManifestError("memory_utilization must be in (0, 1].")
        cpu_quantity(self.cpu)
        memory_quantity(self.memory_gib)
        for env_name in [*self.env, *self.secret_refs]:
            if not _ENV_NAME.match(env_name):
                raise ManifestError(f"{env_name!r} is not a valid environment variable name.")
        both = sorted(set(self.env) & set(self.secret_refs))
        if both:
            raise ManifestError(f"Environment variables set both plainly and from a secret: {', '.join(both)}.")
        for env_name, secret_name in self.secret_refs.items():
            if not secret_name or not _SECRET_KEY.match(secret_key(secret_name)):
                raise ManifestError(
                    f"Secret {secret_name!r} (for {env_name}) cannot be a Kubernetes Secret key: "
                    "use letters, digits, '-', '_' and '.'."
                )
        for key, value in self.labels.items():
            _check_label_name(key)
            _check_label_value(f"label {key}", value)

    @property
    def min_scale(self) -> int:
        return 0 if self.scale_to_zero else self.min_replicas

    @property
    def uses_gpu(self) -> bool:
        return bool(self.accelerator_resource)


def cpu_quantity(cpu: Decimal | str | int | float) -> str:
    """A Kubernetes CPU quantity: whole cores as "4", fractions as millicores ("500m")."""
    if isinstance(cpu, str) and cpu.endswith("m"):
        if not _CPU_QUANTITY.match(cpu) or int(cpu[:-1]) < 1:
            raise ManifestError(f"cpu {cpu!r} is not a valid CPU quantity.")
        return cpu
    try:
        cores = Decimal(str(cpu))
    except InvalidOperation:
        raise ManifestError(f"cpu {cpu!r} is not a number of cores.") from None
    if not cores.is_finite() or cores <= 0:
        raise ManifestError("cpu must be a positive number of cores.")
    if cores == cores.to_integral_value():
        return str(int(cores))
    millicores = cores * 1000
    if millicores != millicores.to_integral_value():
        raise ManifestError("cpu has a finer precision than a millicore.")
    return f"{int(millicores)}m"


def memory_quantity(memory_gib: Decimal | str | int | float) -> str:
    """A Kubernetes memory quantity: whole GiB as "32Gi", fractions in MiB ("1536Mi")."""
    try:
        gib = Decimal(str(memory_gib))
    except InvalidOperation:
        raise ManifestError(f"memory_gib {memory_gib!r} is not a number.") from None
    if not gib.is_finite() or gib <= 0:
        raise ManifestError("memory_gib must be positive.")
    if gib == gib.to_integral_value():
        return f"{int(gib)}Gi"
    mib = gib * 1024
    if mib != mib.to_integral_value():
        raise ManifestError("memory_gib has a finer precision than a MiB.")
    return f"{int(mib)}Mi"


def runtime_args(spec: ManifestSpec) -> list[str]:
    """Command-line arguments of the Hugging Face serving runtime for this spec."""
    dtype = RUNTIME_DTYPES[spec.dtype]
    # An embedding model reads its input only; a generator's context holds input and output.
    max_len = spec.max_input_tokens if spec.task == "embed" else spec.max_total_tokens
    args = [f"--model_name={spec.deployment_slug}"]
    if spec.large_llm:
        args.append("--backend=vllm")
        if spec.task == "embed":
            args.append("--task=embed")
        args += [
            f"--dtype={dtype}",
            f"--max-model-len={max_len}",
            f"--tensor-parallel-size={spec.tensor_parallel}",
            f"--max-num-seqs={spec.max_batch}",
        ]
        if spec.memory_utilization is not None:
            args.append(f"--gpu-memory-utilization={Decimal(str(spec.memory_utilization))}")
    else:
        task = "text_embedding" if spec.task == "embed" else "text_generation"
        args += ["--backend=huggingface", f"--task={task}", f"--dtype={dtype}", f"--max_model_len={max_len}"]
    return args


def _env(spec: ManifestSpec) -> list[dict[str, Any]]:
    secret_object = secret_object_name(spec.deployment_slug)
    entries: list[dict[str, Any]] = [{"name": name, "value": str(value)} for name, value in spec.env.items()]
    entries += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_object, "key": secret_key(secret_name)}}}
        for name, secret_name in spec.secret_refs.items()
    ]
    # Sorted so that the same spec always yields the same manifest (applies stay no-ops).
    return sorted(entries, key=lambda entry: entry["name"])


def _resources(spec: ManifestSpec) -> dict[str, dict[str, str]]:
    amounts = {"cpu": cpu_quantity(spec.cpu), "memory": memory_quantity(spec.memory_gib)}
    if spec.uses_gpu:
        amounts[spec.accelerator_resource] = str(spec.accelerator_count)
    return {"requests": dict(amounts), "limits": dict(amounts)}


def identity_labels(spec: ManifestSpec) -> dict[str, str]:
    """The control plane's identifying labels (they win over `spec.labels` on a clash)."""
    return {
        **spec.labels,
        LABEL_PROJECT: spec.project_slug,
        LABEL_DEPLOYMENT: spec.deployment_slug,
        LABEL_REVISION: str(spec.revision_number),
    }


def inference_service(spec: ManifestSpec) -> dict[str, Any]:
    """The InferenceService for `spec`, as a plain dict (camelCase keys, quantities as strings)."""
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": spec.storage_uri,
        "args": runtime_args(spec),
        "resources": _resources(spec),
    }
    env = _env(spec)
    if env:
        model["env"] = env

    predictor: dict[str, Any] = {
        "minReplicas": spec.min_scale,
        "maxReplicas": spec.max_replicas,
        "scaleMetric": "concurrency",
        "scaleTarget": spec.target_concurrency,
    }
    if spec.canary_percent is not None:
        predictor["canaryTrafficPercent"] = spec.canary_percent
    if spec.uses_gpu and spec.accelerator_product:
        predictor["nodeSelector"] = {GPU_PRODUCT_LABEL: spec.accelerator_product}
    # Pod labels too, so that pods (and their GPU hours) can be traced to the revision.
    predictor["labels"] = identity_labels(spec)
    predictor["model"] = model

    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": spec.deployment_slug,
            "namespace": spec.namespace,
            "labels": identity_labels(spec),
            "annotations": {DEPLOYMENT_MODE_ANNOTATION: DEPLOYMENT_MODE},
        },
        "spec": {"predictor": predictor},
    }


def to_yaml(manifest: Mapping[str, Any]) -> str:
    """YAML text of a manifest, keys in the order they were built (what `Revision.manifest` stores)."""
    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False, allow_unicode=True)


def _check_label_value(what: str, value: str) -> None:
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ManifestError(
            f"{what} {value!r} cannot be a Kubernetes label value "
            "(at most 63 letters, digits, '-', '_', '.', starting and ending with a letter or digit)."
        )


def _check_label_name(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (
        not name
        or len(name) > 63
        or not _LABEL_NAME.match(name)
        or (prefix and (len(prefix) > 253 or not all(_DNS_LABEL.match(part) for part in prefix.split("."))))
    ):
        raise ManifestError(f"{key!r} is not a valid Kubernetes label name.")
