"""Shapes of the accounting API. Serializers check shape; services and the ingestion module do the work."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework import serializers

from apps.core.models import ApiToken, Project, Team
from apps.core.permissions import Action, restrict

from ..budgets import budget_status
from ..models import Budget, BudgetPeriod, BudgetScope, DeploymentCostHourly, PriceEntry, UsageEvent
from ..pricing import PRICE_FIELDS

User = get_user_model()


class VisibleProjectField(serializers.SlugRelatedField):
    """A project by slug among those the user can see; an invisible one reads exactly like a missing one."""

    def __init__(self, **kwargs):
        super().__init__(slug_field="slug", **kwargs)

    def get_queryset(self):
        return restrict(Project.objects.all(), self.context["request"].user, Action.VIEW)


class ParsedJSONListField(serializers.ListField):
    """A list of JSON values from a parsed JSON body, taken as they are: JSONField would re-encode every item just
    to check it can be encoded. The ingestion service checks each event itself (and rejects them one by one)."""

    child = serializers.JSONField()

    def run_child_validation(self, data):
        return list(data)


class UsageBatchSerializer(serializers.Serializer):
    project = serializers.CharField(required=False, max_length=50, help_text="Default project slug of the events.")
    events = ParsedJSONListField(allow_empty=True, help_text="Up to 1,000 events.")


class UsageEventSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = UsageEvent
        exclude = ["content"]


class DeploymentCostSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = DeploymentCostHourly
        fields = [
            "id", "bucket", "project", "deployment", "deployment_id", "revision", "revision_id", "accelerator",
            "accelerator_count", "hourly_price", "currency", "replica_seconds", "accelerator_hours", "gpu_cost",
            "requests", "tokens", "cost_per_1k_tokens", "idle", "idle_cost", "computed_at",
        ]  # fmt: skip


class TokenCountSerializer(serializers.Serializer):
    text = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False, max_length=1_000_000)
    messages = serializers.ListField(child=serializers.DictField(), required=False, max_length=10_000)
    model = serializers.CharField(required=False, max_length=200)
    provider = serializers.CharField(required=False, max_length=50, default="")
    tokenizer = serializers.CharField(required=False, max_length=100)

    def validate(self, data):
        if ("text" in data) == ("messages" in data):
            raise serializers.ValidationError("Give text or messages.")
        if "model" not in data and "tokenizer" not in data:
            raise serializers.ValidationError("Give a model or a tokenizer.")
        return data


class PriceEntrySerializer(serializers.ModelSerializer):
    project = VisibleProjectField(required=True)
    catalog_version = serializers.IntegerField(source="catalog.version", read_only=True, default=None)

    class Meta:
        model = PriceEntry
        fields = [
            "id", "catalog_version", "project", "model_pattern", "provider", "currency", *PRICE_FIELDS,
            "effective_from", "effective_to", "created_at",
        ]  # fmt: skip
        read_only_fields = ["created_at"]


class PriceEntryUpdateSerializer(serializers.ModelSerializer):
    class Meta:
        model = PriceEntry
        fields = ["model_pattern", "provider", "currency", *PRICE_FIELDS, "effective_from", "effective_to"]
        extra_kwargs = {name: {"required": False} for name in fields}


class BudgetSerializer(serializers.ModelSerializer):
    project = VisibleProjectField()
    team = serializers.SlugRelatedField(slug_field="slug", queryset=Team.objects.all(), required=False, allow_null=True)
    user = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.all(), required=False, allow_null=True
    )
    token = serializers.PrimaryKeyRelatedField(queryset=ApiToken.objects.all(), required=False, allow_null=True)
    scope = serializers.ChoiceField(choices=BudgetScope.choices, default=BudgetScope.PROJECT)
    period = serializers.ChoiceField(choices=BudgetPeriod.choices, default=BudgetPeriod.MONTHLY)
    thresholds = serializers.ListField(child=serializers.IntegerField(min_value=1, max_value=1000), default=list)
    alert_emails = serializers.ListField(child=serializers.EmailField(), default=list, max_length=20)
    status = serializers.SerializerMethodField()

    class Meta:
        model = Budget
        fields = [
            "id", "project", "name", "scope", "team", "user", "token", "deployment", "period", "amount",
            "thresholds", "hard_limit", "alert_emails", "webhook_url", "status", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = ["created_at", "updated_at"]

    def get_fields(self):
        fields = super().get_fields()
        request = self.context.get("request")
        if request is not None:
            from apps.core.selectors import team_list

            fields["team"].queryset = team_list(user=request.user)
            from apps.core.selectors import api_token_list

            fields["token"].queryset = api_token_list(user=request.user)
        return fields

    def get_status(self, budget: Budget) -> dict:
        status = budget_status(budget)
        return {
            "period_start": status.period_start,
            "resets_at": status.resets_at,
            "spent": str(status.spent),
            "forecast": str(status.forecast) if status.forecast is not None else None,
            "percent": str(status.percent),
            "thresholds_crossed": status.thresholds_crossed,
            "exceeded": status.exceeded,
        }


class BudgetUpdateSerializer(BudgetSerializer):
    class Meta(BudgetSerializer.Meta):
        fields = [f for f in BudgetSerializer.Meta.fields if f not in ("project", "scope")]
        extra_kwargs = {"name": {"required": False}, "amount": {"required": False}}

    def get_fields(self):
        fields = super().get_fields()
        for field in fields.values():
            field.required = False
        for name in ("thresholds", "alert_emails"):
            fields[name].default = serializers.empty
        return fields


class AccountingSettingsSerializer(serializers.Serializer):
    store_text = serializers.BooleanField(help_text="Keep the text sent with usage events (off: count, then drop).")
