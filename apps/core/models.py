"""Tenancy (organizations, projects, teams, memberships, grants), API tokens, audit events, jobs and workers."""

import datetime
import uuid

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,48}[a-z0-9])?$", "Use 1–50 lowercase letters, digits or dashes."
)


class TimeStampedModel(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class Role(models.TextChoices):
    """Project roles, weakest first. A role includes every weaker one."""

    VIEWER = "viewer", "Viewer"
    DEVELOPER = "developer", "Developer"
    MAINTAINER = "maintainer", "Maintainer"
    ADMIN = "admin", "Admin"

    @classmethod
    def rank(cls, role: str) -> int:
        return list(cls.values).index(role)


class Organization(TimeStampedModel):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    owners = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="owned_organizations", blank=True)

    project_path = None  # organizations sit above projects; permissions handle them specially

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Project(TimeStampedModel):
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="projects")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True, max_length=5000)

    project_path = "pk"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="project_name_unique_in_org")]

    def __str__(self) -> str:
        return self.name


class Team(TimeStampedModel):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=50, validators=[slug_validator])
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="teams", blank=True)
    # Gateway rate limits shared by the team's members (empty: none), enforced through Redis.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)

    project_path = None

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["organization", "slug"], name="team_slug_unique_in_org")]

    def __str__(self) -> str:
        return self.name


class Membership(TimeStampedModel):
    """A role on a project held by one user or by a whole team."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="memberships"
    )
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)

    project_path = "project"

    class Meta:
        ordering = ["project", "id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, team__isnull=True) | Q(user__isnull=True, team__isnull=False),
                name="membership_user_xor_team",
            ),
            models.UniqueConstraint(fields=["project", "user"], name="membership_user_unique"),
            models.UniqueConstraint(fields=["project", "team"], name="membership_team_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.user or self.team} is {self.role} on {self.project}"


class ObjectGrant(TimeStampedModel):
    """A role on one object (e.g. a purchased model visible to one team only), for a user or a team."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="grants")
    content_type = models.ForeignKey(ContentType, on_delete=models.CASCADE)
    object_id = models.CharField(max_length=64)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE)
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)

    project_path = "project"

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["content_type", "object_id"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, team__isnull=True) | Q(user__isnull=True, team__isnull=False),
                name="grant_user_xor_team",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user or self.team} is {self.role} on {self.content_type.model} {self.object_id}"


class ServiceAccount(TimeStampedModel):
    """A non-human principal for automation. It is a user that cannot log in and holds a project membership."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="service_accounts")
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="service_account")
    name = models.CharField(max_length=100)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", blank=True
    )

    project_path = "project"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="service_account_unique")]

    def __str__(self) -> str:
        return f"{self.name} ({self.project})"


class ProjectSecret(TimeStampedModel):
    """A named secret of a project (e.g. a Hugging Face token), encrypted at rest and never shown back."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(
        max_length=100, validators=[RegexValidator(r"^[A-Z][A-Z0-9_]{0,99}$", "Use UPPER_SNAKE_CASE, e.g. HF_TOKEN.")]
    )
    encrypted_value = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    project_path = "project"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="project_secret_unique_name")]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.name}"


class TokenScope(models.TextChoices):
    READ = "read", "Read"
    WRITE = "write", "Write"
    ADMIN = "admin", "Admin"


class ApiToken(TimeStampedModel):
    """A bearer token. Only a SHA-256 of the secret is stored; the full token is shown once at creation."""

    PREFIX = "cpt_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    project = models.ForeignKey(
        Project,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="api_tokens",
        help_text="When set, the token reaches this project only.",
    )
    name = models.CharField(max_length=100)
    key_prefix = models.CharField(max_length=16, db_index=True, help_text="First characters, shown to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = models.JSONField(default=list)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Gateway rate limits of this token (empty: none), enforced through Redis.
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    project_path = "project"

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > timezone.now())

    @property
    def is_service_account(self) -> bool:
        return hasattr(self.user, "service_account")


class AuditEvent(models.Model):
    """Append-only record of a change. The database refuses UPDATE and DELETE on this table (see migration)."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # No foreign-key constraints: history must outlive the users, tokens and projects it names.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_label = models.CharField(max_length=200, blank=True)
    token = models.ForeignKey(
        ApiToken, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    action = models.CharField(max_length=100, db_index=True)
    object_type = models.CharField(max_length=100, db_index=True)
    object_id = models.CharField(max_length=64, blank=True, db_index=True)
    object_repr = models.CharField(max_length=200, blank=True)
    organization = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    changes = models.JSONField(default=dict, blank=True, help_text="{field: [before, after]}")
    request_id = models.CharField(max_length=64, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)

    project_path = "project"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.actor_label} {self.action} {self.object_type}:{self.object_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise PermissionError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise PermissionError("Audit events are append-only.")


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class Job(TimeStampedModel):
    """Long work run by a Celery task, with persisted progress that is also pushed over websockets."""

    FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="jobs")
    job_type = models.CharField(max_length=100, db_index=True)
    params = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    message = models.CharField(max_length=500, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    queue = models.CharField(max_length=100, default="default")
    gpu_memory_mb = models.PositiveIntegerField(
        default=0, validators=[MinValueValidator(0)], help_text="GPU memory the job needs on one device; 0 = none."
    )
    worker = models.CharField(max_length=200, blank=True, help_text="Host that ran or will run the job.")
    task_id = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    project_path = "project"

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.job_type} {self.id}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class Worker(models.Model):
    """A Celery worker host as last reported by its heartbeat."""

    hostname = models.CharField(max_length=200, unique=True)
    queues = models.JSONField(default=list)
    devices = models.JSONField(default=list, help_text="[{index, kind, name, total_mb, free_mb}]")
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    project_path = None  # the fleet is shared by every project

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    @property
    def is_alive(self) -> bool:
        cutoff = timezone.now() - datetime.timedelta(seconds=settings.WORKER_STALE_SECONDS)
        return self.stopped_at is None and self.last_seen_at >= cutoff

    @property
    def has_gpu(self) -> bool:
        return any(device.get("kind") == "cuda" for device in self.devices)

    @property
    def largest_free_gpu_mb(self) -> int:
        return max((d.get("free_mb", 0) for d in self.devices if d.get("kind") == "cuda"), default=0)
