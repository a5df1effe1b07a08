"""Price catalog, usage events and their hourly/daily aggregates, per-project accounting settings, budgets."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

from apps.core.models import ApiToken, Organization, Project, Team, TimeStampedModel

MONEY = {"max_digits": 20, "decimal_places": 10}
PRICE = {"max_digits": 16, "decimal_places": 6, "validators": [MinValueValidator(Decimal(0))]}


class PriceCatalog(models.Model):
    """One published version of the shared price list. New prices make a new version; old ones stay as they were."""

    version = models.PositiveIntegerField(unique=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"price catalog v{self.version}"


class PriceEntry(TimeStampedModel):
    """Prices for one model name or pattern (`gpt-4o*`), effective from a time; in a catalog or a project override."""

    catalog = models.ForeignKey(PriceCatalog, null=True, blank=True, on_delete=models.PROTECT, related_name="entries")
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="price_overrides"
    )
    model_pattern = models.CharField(max_length=200, help_text="Exact model name, or a prefix ending in *.")
    provider = models.CharField(max_length=50, blank=True, help_text="Empty: any provider.")
    currency = models.CharField(max_length=3, default="USD")
    input_per_million = models.DecimalField(default=Decimal(0), **PRICE)
    output_per_million = models.DecimalField(default=Decimal(0), **PRICE)
    cached_input_per_million = models.DecimalField(null=True, blank=True, **PRICE)
    cache_write_per_million = models.DecimalField(null=True, blank=True, **PRICE)
    reasoning_per_million = models.DecimalField(null=True, blank=True, **PRICE)
    per_request = models.DecimalField(default=Decimal(0), **PRICE)
    per_second = models.DecimalField(default=Decimal(0), **PRICE)
    effective_from = models.DateTimeField()
    effective_to = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    project_path = "project"

    class Meta:
        ordering = ["model_pattern", "-effective_from"]
        constraints = [
            models.CheckConstraint(
                condition=Q(catalog__isnull=True, project__isnull=False)
                | Q(catalog__isnull=False, project__isnull=True),
                name="price_entry_catalog_xor_project",
            ),
            models.CheckConstraint(
                condition=Q(effective_to__isnull=True) | Q(effective_to__gt=models.F("effective_from")),
                name="price_entry_effective_order",
            ),
        ]
        indexes = [models.Index(fields=["catalog", "model_pattern"]), models.Index(fields=["project", "model_pattern"])]

    def __str__(self) -> str:
        where = f"project {self.project_id}" if self.project_id else f"v{self.catalog.version}"
        return f"{self.model_pattern} ({self.provider or 'any'}, {where}, from {self.effective_from:%Y-%m-%d})"


class AccountingSettings(models.Model):
    """Per-project choices; a project without a row has the defaults."""

    project = models.OneToOneField(Project, on_delete=models.CASCADE, related_name="accounting_settings")
    store_text = models.BooleanField(default=False, help_text="Keep prompt/response text sent with usage events.")

    project_path = "project"

    def __str__(self) -> str:
        return f"accounting settings of {self.project}"


class UsageEvent(models.Model):
    """One request's usage as reported by a gateway or client. Written by raw SQL in ingestion.py (bulk path)."""

    # No index of its own: the unique (project, event id) and the (project, -time) indexes both lead with it, and
    # every index is paid for on each of the thousands of rows a second that ingestion writes. No database
    # constraint either (its per-row check was a fifth of the insert's cost): ingestion adds every event it stores to
    # the hourly and daily rollups in the same statement, and their project keys are checked at commit, so an event
    # of a project deleted meanwhile still rolls its batch back, and the deletion fails once the batch is in.
    # Deleting a project deletes its events as before (on_delete is Django's).
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    event_id = models.CharField(max_length=200)
    time = models.DateTimeField()
    received_at = models.DateTimeField()
    model = models.CharField(max_length=200, blank=True)
    deployment = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=50, blank=True)
    user = models.CharField(max_length=150, blank=True)
    team = models.CharField(max_length=100, blank=True)
    # No foreign keys to users or tokens: usage history outlives them.
    token_id = models.BigIntegerField(null=True, blank=True)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cache_write_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    latency_ms = models.IntegerField(null=True, blank=True)
    ttft_ms = models.IntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, default="ok")
    is_error = models.BooleanField(default=False)
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    provided_cost = models.DecimalField(null=True, blank=True, **MONEY)
    computed_cost = models.DecimalField(null=True, blank=True, **MONEY)
    cost = models.DecimalField(default=Decimal(0), help_text="Provided cost if given, else computed.", **MONEY)
    # Which entry priced the event, for the record. Not checked by the database either: each row's check locked its
    # entry (FOR KEY SHARE), and concurrent batches priced by the same entries queued on those locks. Deleting an
    # entry that priced events is still refused (PROTECT, by Django; overrides also by price_override_delete).
    price_entry = models.ForeignKey(
        PriceEntry, null=True, blank=True, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    catalog_version = models.PositiveIntegerField(null=True, blank=True)
    tokenizer = models.CharField(max_length=100, blank=True, help_text="Which tokenizer counted text; empty: given.")
    content = models.JSONField(null=True, blank=True, help_text="Text sent with the event, if the project keeps it.")

    project_path = "project"

    class Meta:
        ordering = ["-time", "-id"]
        constraints = [models.UniqueConstraint(fields=["project", "event_id"], name="usage_event_unique_id")]
        indexes = [models.Index(fields=["project", "-time"]), models.Index(fields=["time"])]

    def __str__(self) -> str:
        return f"{self.event_id} ({self.model})"


class UsageRollup(models.Model):
    """Sums of usage per bucket and key, updated incrementally by ingestion in the same transaction."""

    bucket = models.DateTimeField()
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    model = models.CharField(max_length=200)
    deployment = models.CharField(max_length=200)
    user = models.CharField(max_length=150)
    team = models.CharField(max_length=100)
    token_id = models.BigIntegerField(null=True, blank=True)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    latency_ms_sum = models.BigIntegerField(default=0)
    cost = models.DecimalField(default=Decimal(0), **MONEY)

    project_path = "project"
    KEY = ("bucket", "project", "model", "deployment", "user", "team", "token_id")

    class Meta:
        abstract = True
        ordering = ["-bucket"]

    def __str__(self) -> str:
        return f"{self.bucket:%Y-%m-%d %H:00} {self.model or self.deployment}"


class UsageHourly(UsageRollup):
    class Meta(UsageRollup.Meta):
        constraints = [
            models.UniqueConstraint(fields=UsageRollup.KEY, name="usage_hourly_key", nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["project", "bucket"], name="usage_hourly_project_bucket")]


class UsageDaily(UsageRollup):
    class Meta(UsageRollup.Meta):
        constraints = [
            models.UniqueConstraint(fields=UsageRollup.KEY, name="usage_daily_key", nulls_distinct=False),
        ]
        indexes = [models.Index(fields=["project", "bucket"], name="usage_daily_project_bucket")]


class BudgetScope(models.TextChoices):
    ORGANIZATION = "organization", "Organization"
    PROJECT = "project", "Project"
    TEAM = "team", "Team"
    USER = "user", "User"
    TOKEN = "token", "API token"
    DEPLOYMENT = "deployment", "Deployment"


class BudgetPeriod(models.TextChoices):
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    TOTAL = "total", "Total"


class Budget(TimeStampedModel):
    """A spending limit over a period for one scope, evaluated against the rollups.

    Every budget belongs to a project (who may see and change it); an organization budget counts the spend of
    every project of that project's organization.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="budgets")
    name = models.CharField(max_length=100)
    scope = models.CharField(max_length=20, choices=BudgetScope.choices, default=BudgetScope.PROJECT)
    organization = models.ForeignKey(Organization, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    token = models.ForeignKey(ApiToken, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    deployment = models.CharField(max_length=200, blank=True)
    period = models.CharField(max_length=20, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTHLY)
    amount = models.DecimalField(max_digits=16, decimal_places=4, validators=[MinValueValidator(Decimal(0))])
    thresholds = models.JSONField(default=list, blank=True, help_text="Soft alert percentages, e.g. [50, 80].")
    hard_limit = models.BooleanField(default=False, help_text="The gateway refuses requests once it is spent.")
    alert_emails = models.JSONField(default=list, blank=True)
    webhook_url = models.URLField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    project_path = "project"

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="budget_unique_name")]

    def __str__(self) -> str:
        return self.name


class BudgetAlert(models.Model):
    """A threshold crossed in one period; the unique key makes each alert fire once per threshold and period."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.PositiveSmallIntegerField()
    spent = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(auto_now_add=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_error = models.TextField(blank=True)

    project_path = "budget__project"

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "threshold"], name="budget_alert_once"),
        ]

    def __str__(self) -> str:
        return f"{self.budget} {self.threshold}% ({self.period_start:%Y-%m-%d})"


class DeploymentCostHourly(models.Model):
    """GPU-hour cost of one revision of a self-hosted deployment in one hour, computed from the runtime's state
    events by gpu_cost.py (recomputed, by upsert, while the hour is recent).

    The accelerator's name, count and hourly price are copied in when the row is computed: the accelerator catalog
    is editable, and a row keeps the price it was computed with once it leaves the recompute window. Like usage,
    the row names its deployment and revision by value (no foreign keys): cost history outlives them.
    """

    bucket = models.DateTimeField(help_text="Start of the hour (UTC).")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    deployment_id = models.BigIntegerField()
    deployment = models.CharField(max_length=63, help_text="The deployment's slug: its usage rollups' key.")
    revision_id = models.BigIntegerField()
    revision = models.PositiveIntegerField(help_text="The revision's number.")
    accelerator = models.CharField(max_length=50)
    accelerator_count = models.PositiveSmallIntegerField(help_text="Accelerators per replica.")
    hourly_price = models.DecimalField(max_digits=10, decimal_places=4, help_text="Price of one device per hour.")
    currency = models.CharField(max_length=3, default="USD")
    replica_seconds = models.DecimalField(max_digits=16, decimal_places=6, help_text="Running time of its replicas.")
    accelerator_hours = models.DecimalField(max_digits=16, decimal_places=6)
    gpu_cost = models.DecimalField(**MONEY)
    requests = models.BigIntegerField(default=0, help_text="The revision's share of the deployment's requests.")
    tokens = models.BigIntegerField(default=0, help_text="The revision's share of the deployment's tokens.")
    cost_per_1k_tokens = models.DecimalField(null=True, blank=True, **MONEY)
    idle = models.BooleanField(default=False, help_text="Replicas were up and the deployment had no request.")
    idle_cost = models.DecimalField(default=Decimal(0), **MONEY)
    computed_at = models.DateTimeField()

    project_path = "project"

    class Meta:
        ordering = ["-bucket", "deployment", "revision"]
        constraints = [
            models.UniqueConstraint(fields=["bucket", "revision_id"], name="deployment_cost_hourly_key"),
            models.CheckConstraint(condition=Q(idle_cost__lte=models.F("gpu_cost")), name="deployment_cost_idle_part"),
        ]
        indexes = [models.Index(fields=["project", "bucket"], name="deployment_cost_project_bucket")]

    def __str__(self) -> str:
        return f"{self.bucket:%Y-%m-%d %H:00} {self.deployment} r{self.revision}"
