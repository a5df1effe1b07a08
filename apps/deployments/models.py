"""Deployments: an accelerator catalog, deployments with immutable revisions, their replicas and state history.

A revision is what runs (a model version with runtime settings and resources); the deployment's traffic policy
says which ready revisions share the traffic (each revision's `weight`) and which one gets a shadow copy.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from apps.core.models import Project, TimeStampedModel
from apps.registry.models import ModelVersion

SLUG = RegexValidator(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", "Lower-case letters, digits and dashes (DNS label).")


class Accelerator(TimeStampedModel):
    """One kind of accelerator with its memory and an editable hourly price. `cpu` stands for no accelerator."""

    name = models.CharField(max_length=50, unique=True, help_text="For example A100-80GB.")
    vendor = models.CharField(max_length=30, default="nvidia")
    memory_gib = models.DecimalField(max_digits=8, decimal_places=2, help_text="Memory of one device, GiB.")
    hourly_price = models.DecimalField(
        max_digits=10, decimal_places=4, default=Decimal(0), help_text="Price of one device per hour."
    )
    currency = models.CharField(max_length=3, default="USD")
    is_cpu = models.BooleanField(default=False)
    kubernetes_resource = models.CharField(max_length=100, default="nvidia.com/gpu", blank=True)
    kubernetes_product = models.CharField(
        max_length=100, blank=True, help_text="Value of the node label nvidia.com/gpu.product, if any."
    )

    class Meta:
        ordering = ["is_cpu", "memory_gib", "name"]

    def __str__(self) -> str:
        return self.name


class Cluster(TimeStampedModel):
    """A Kubernetes cluster a project deploys to; the kubeconfig is encrypted at rest and never shown back."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="clusters")
    name = models.CharField(max_length=100)
    namespace = models.CharField(max_length=63, default="default", validators=[SLUG])
    encrypted_kubeconfig = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    project_path = "project"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="cluster_unique_name")]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.name}"


class Target(models.TextChoices):
    LOCAL = "local", "Local model server"
    KUBERNETES = "kubernetes", "Kubernetes (KServe)"
    EXTERNAL = "external", "External OpenAI-compatible API"


class Rollout(models.TextChoices):
    ALL_AT_ONCE = "all_at_once", "All traffic once ready"
    CANARY = "canary", "Canary weight once ready"
    MANUAL = "manual", "No traffic until promoted"
    SHADOW = "shadow", "Shadow: mirror a share of traffic, answer none"


class State(models.TextChoices):
    PENDING = "pending", "Pending"
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


class Dtype(models.TextChoices):
    FP32 = "fp32", "fp32"
    BF16 = "bf16", "bf16"
    FP16 = "fp16", "fp16"
    INT8 = "int8", "int8"
    INT4 = "int4", "int4"


class Deployment(TimeStampedModel):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="deployments")
    name = models.CharField(max_length=100)
    slug = models.CharField(max_length=63, validators=[SLUG], help_text="The `model` name clients use.")
    description = models.TextField(blank=True, max_length=10_000)
    target = models.CharField(max_length=20, choices=Target.choices, default=Target.LOCAL)
    cluster = models.ForeignKey(Cluster, null=True, blank=True, on_delete=models.PROTECT, related_name="deployments")
    shadow_revision = models.ForeignKey("Revision", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    shadow_percent = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deleted_at = models.DateTimeField(null=True, blank=True)

    project_path = "project"

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "slug"], condition=models.Q(deleted_at__isnull=True), name="deployment_unique_slug"
            )
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.slug}"


class Revision(models.Model):
    """An immutable specification of what runs. Only its state, weight and manifest status change."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="revisions"
    )
    # External target: an OpenAI-compatible upstream.
    upstream_url = models.URLField(blank=True, max_length=500)
    upstream_model = models.CharField(max_length=200, blank=True)
    encrypted_upstream_key = models.TextField(blank=True)
    # Runtime settings.
    task = models.CharField(max_length=20, default="generate", help_text="generate or embed")
    dtype = models.CharField(max_length=10, choices=Dtype.choices, default=Dtype.BF16)
    max_input_tokens = models.PositiveIntegerField(default=2048, validators=[MinValueValidator(1)])
    max_total_tokens = models.PositiveIntegerField(default=4096, validators=[MinValueValidator(2)])
    max_batch = models.PositiveIntegerField(default=8, validators=[MinValueValidator(1)])
    # Resources.
    accelerator = models.ForeignKey(Accelerator, on_delete=models.PROTECT, related_name="+")
    accelerator_count = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    tensor_parallel = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    pipeline_parallel = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    memory_utilization = models.DecimalField(max_digits=3, decimal_places=2, default=Decimal("0.90"))
    cpu = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal(1))
    memory_gib = models.DecimalField(max_digits=8, decimal_places=2, default=Decimal(4))
    # Scaling.
    min_replicas = models.PositiveSmallIntegerField(default=1)
    max_replicas = models.PositiveSmallIntegerField(default=1, validators=[MinValueValidator(1)])
    target_concurrency = models.PositiveSmallIntegerField(default=4, validators=[MinValueValidator(1)])
    scale_to_zero_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Stop every replica after this many idle seconds; empty: never."
    )
    env = models.JSONField(default=dict, blank=True, help_text="Plain environment variables.")
    secret_refs = models.JSONField(
        default=dict, blank=True, help_text="Environment variable → project secret name; values are never stored here."
    )
    # Rollout and runtime state.
    rollout = models.CharField(max_length=20, choices=Rollout.choices, default=Rollout.ALL_AT_ONCE)
    canary_weight = models.PositiveSmallIntegerField(default=10, validators=[MaxValueValidator(100)])
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING, db_index=True)
    state_reason = models.TextField(blank=True)
    weight = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    shadow_percent = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    promote_on_ready = models.BooleanField(default=False, help_text="Take all traffic once ready (rollback).")
    plan = models.JSONField(default=dict, blank=True, help_text="The planner's verdict when this revision was made.")
    manifest = models.TextField(blank=True, help_text="The KServe InferenceService for this revision (YAML).")
    cluster_status = models.JSONField(default=dict, blank=True)
    last_request_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    project_path = "deployment__project"

    class Meta:
        ordering = ["deployment", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "number"], name="revision_unique_number"),
            models.CheckConstraint(condition=models.Q(weight__lte=100), name="revision_weight_percent"),
            models.CheckConstraint(
                condition=models.Q(max_replicas__gte=models.F("min_replicas")), name="revision_replicas"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment}@r{self.number}"

    @property
    def served_name(self) -> str:
        """The model name the runtime serves: the deployment's slug, so bodies pass through unchanged."""
        return self.deployment.slug


class Desired(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"


class Replica(models.Model):
    """One model-server process of a revision, placed on a worker host and supervised there."""

    revision = models.ForeignKey(Revision, on_delete=models.CASCADE, related_name="replicas")
    index = models.PositiveSmallIntegerField()
    desired = models.CharField(max_length=10, choices=Desired.choices, default=Desired.RUNNING)
    state = models.CharField(max_length=20, choices=State.choices, default=State.PENDING, db_index=True)
    state_reason = models.TextField(blank=True)
    host = models.CharField(max_length=255, blank=True, db_index=True, help_text="Worker host supervising it.")
    pid = models.PositiveIntegerField(null=True, blank=True)
    url = models.CharField(max_length=300, blank=True)
    restarts = models.PositiveIntegerField(default=0)
    next_start_at = models.DateTimeField(null=True, blank=True, help_text="Backoff after a crash.")
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    project_path = "revision__deployment__project"

    class Meta:
        ordering = ["revision", "index"]
        constraints = [models.UniqueConstraint(fields=["revision", "index"], name="replica_unique_index")]

    def __str__(self) -> str:
        return f"{self.revision}/{self.index}"


class StateEvent(models.Model):
    """A state change of a revision or replica: the timeline, and the source of GPU-hour cost."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="state_events")
    revision = models.ForeignKey(Revision, on_delete=models.CASCADE, related_name="state_events")
    replica = models.ForeignKey(Replica, null=True, blank=True, on_delete=models.CASCADE, related_name="state_events")
    state = models.CharField(max_length=20, choices=State.choices)
    reason = models.TextField(blank=True)
    time = models.DateTimeField(db_index=True)

    project_path = "deployment__project"

    class Meta:
        ordering = ["time", "id"]
        indexes = [models.Index(fields=["deployment", "time"])]

    def __str__(self) -> str:
        subject = self.replica or self.revision
        return f"{subject} → {self.state}"
