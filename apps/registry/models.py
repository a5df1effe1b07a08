"""Registered models, versions, files stored as content-addressed chunks, lineage, aliases and uploads."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from apps.core.models import Project, TimeStampedModel

name_validator_regex = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"


class Task(models.TextChoices):
    TEXT_GENERATION = "text-generation", "Text generation"
    EMBEDDING = "embedding", "Embedding"
    CLASSIFICATION = "text-classification", "Text classification"
    RERANKING = "reranking", "Reranking"
    OTHER = "other", "Other"


class Origin(models.TextChoices):
    TRAINED = "trained", "Trained here"
    IMPORTED = "imported", "Imported open-source"
    PURCHASED = "purchased", "Purchased"


class RegisteredModel(TimeStampedModel):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="registered_models")
    name = models.CharField(max_length=128)
    description = models.TextField(blank=True, max_length=50_000, help_text="Markdown.")
    task = models.CharField(max_length=40, choices=Task.choices, default=Task.TEXT_GENERATION)
    license = models.CharField(max_length=100, blank=True)
    origin = models.CharField(max_length=20, choices=Origin.choices, default=Origin.TRAINED)
    tags = models.JSONField(default=list, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    restricted = models.BooleanField(
        default=False, help_text="Visible only to project admins and users or teams granted access to this model."
    )

    project_path = "project"
    restricted_field = "restricted"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="registered_model_unique_name")]

    def __str__(self) -> str:
        return self.name


class VersionStatus(models.TextChoices):
    UPLOADING = "uploading", "Uploading"
    SCANNING = "scanning", "Scanning"
    READY = "ready", "Ready"
    QUARANTINED = "quarantined", "Quarantined"
    FAILED = "failed", "Failed"


class ModelFormat(models.TextChoices):
    SAFETENSORS = "safetensors", "safetensors"
    PYTORCH = "pytorch", "PyTorch pickle"
    GGUF = "gguf", "GGUF"
    ONNX = "onnx", "ONNX"
    OTHER = "other", "Other"


class ModelVersion(TimeStampedModel):
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(
        max_length=20, choices=VersionStatus.choices, default=VersionStatus.UPLOADING, db_index=True
    )
    status_reason = models.TextField(blank=True)
    format = models.CharField(max_length=20, choices=ModelFormat.choices, default=ModelFormat.OTHER)
    total_size = models.BigIntegerField(default=0)
    file_count = models.PositiveIntegerField(default=0)
    new_bytes = models.BigIntegerField(default=0, help_text="Bytes this version added to the store (after dedupe).")
    source_uri = models.CharField(max_length=1000, blank=True)
    description = models.TextField(blank=True, max_length=50_000)
    tags = models.JSONField(default=list, blank=True)
    mlflow_run_id = models.CharField(max_length=64, blank=True, db_index=True)
    metadata = models.JSONField(default=dict, blank=True, help_text="Read from config.json and safetensors headers.")
    parameter_count = models.BigIntegerField(null=True, blank=True, db_index=True)
    scan_report = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    deleted_at = models.DateTimeField(null=True, blank=True, db_index=True)

    project_path = "model__project"
    restricted_field = "model__restricted"
    grant_via = ("model_id", RegisteredModel)

    class Meta:
        ordering = ["model", "-number"]
        constraints = [models.UniqueConstraint(fields=["model", "number"], name="model_version_unique_number")]
        indexes = [models.Index(fields=["model", "status"])]

    def __str__(self) -> str:
        return f"{self.model.name}:{self.number}"

    @property
    def project(self) -> Project:
        return self.model.project


class Chunk(models.Model):
    """One stored blob, addressed by the SHA-256 of its bytes. Shared by every file that contains it."""

    digest = models.CharField(max_length=64, primary_key=True)
    size = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.digest


class VersionFile(models.Model):
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=1000)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)

    class Meta:
        ordering = ["path"]
        constraints = [models.UniqueConstraint(fields=["version", "path"], name="version_file_unique_path")]

    def __str__(self) -> str:
        return self.path


class FileChunk(models.Model):
    """The i-th piece of a file: which chunk, at which byte offset of the file."""

    file = models.ForeignKey(VersionFile, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    offset = models.BigIntegerField()
    chunk = models.ForeignKey(Chunk, on_delete=models.PROTECT, related_name="+")

    class Meta:
        ordering = ["file", "index"]
        constraints = [models.UniqueConstraint(fields=["file", "index"], name="file_chunk_unique_index")]

    def __str__(self) -> str:
        return f"{self.file_id}#{self.index}"


class Relation(models.TextChoices):
    FINE_TUNE = "fine-tune", "Fine-tune"
    ADAPTER = "adapter", "Adapter"
    MERGE = "merge", "Merge"
    QUANTIZED = "quantized", "Quantized"
    DISTILLED = "distilled", "Distilled"
    PRUNED = "pruned", "Pruned"
    CONVERTED = "converted", "Converted"


class Lineage(models.Model):
    child = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="parent_links")
    parent = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="child_links")
    relation = models.CharField(max_length=20, choices=Relation.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["child", "parent"], name="lineage_unique_pair"),
            models.CheckConstraint(condition=~Q(child=models.F("parent")), name="lineage_not_self"),
        ]

    def __str__(self) -> str:
        return f"{self.child} {self.relation} of {self.parent}"


class Alias(TimeStampedModel):
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=64)
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")

    project_path = "model__project"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="alias_unique_name")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"


class PromotionStatus(models.TextChoices):
    PENDING = "pending", "Pending approval"
    APPLIED = "applied", "Applied"
    REJECTED = "rejected", "Rejected"


class Promotion(TimeStampedModel):
    """A request to point an alias at a version, and its history once applied."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="promotions")
    alias = models.CharField(max_length=64)
    from_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    to_version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    reason = models.CharField(max_length=1000, blank=True)
    status = models.CharField(max_length=20, choices=PromotionStatus.choices, default=PromotionStatus.APPLIED)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)

    project_path = "model__project"

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.alias} → {self.to_version.number} ({self.status})"


class ScanPolicy(TimeStampedModel):
    """Per organization: pickle globals allowed beyond the scanner's safe defaults (e.g. "collections.OrderedDict")."""

    organization = models.OneToOneField("core.Organization", on_delete=models.CASCADE, related_name="scan_policy")
    allowed_globals = models.JSONField(default=list, blank=True, help_text='["module.name", "module.*"]')

    def __str__(self) -> str:
        return f"scan policy of {self.organization}"


class UploadStatus(models.TextChoices):
    OPEN = "open", "Open"
    COMPLETING = "completing", "Completing"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


class Upload(TimeStampedModel):
    """A resumable upload of a version's files, sent in fixed-size parts in any order."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    version = models.OneToOneField(ModelVersion, on_delete=models.CASCADE, related_name="upload")
    manifest = models.JSONField(help_text="[{path, size, sha256}]")
    part_size = models.BigIntegerField()
    status = models.CharField(max_length=20, choices=UploadStatus.choices, default=UploadStatus.OPEN)
    error = models.TextField(blank=True)
    expires_at = models.DateTimeField(db_index=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")

    project_path = "version__model__project"

    class Meta:
        ordering = ["-created_at"]


class UploadPart(models.Model):
    upload = models.ForeignKey(Upload, on_delete=models.CASCADE, related_name="parts")
    file_index = models.PositiveIntegerField()
    part_number = models.PositiveIntegerField()
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    received_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["file_index", "part_number"]
        constraints = [
            models.UniqueConstraint(fields=["upload", "file_index", "part_number"], name="upload_part_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.upload_id} file {self.file_index} part {self.part_number}"
