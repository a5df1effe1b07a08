from django.contrib import admin

from apps.core.admin_audit import AuditedModelAdmin

from .models import AccountingSettings, Budget, BudgetAlert, DeploymentCostHourly, PriceCatalog, PriceEntry


@admin.register(PriceCatalog)
class PriceCatalogAdmin(AuditedModelAdmin):
    list_display = ["version", "description", "created_at"]


@admin.register(PriceEntry)
class PriceEntryAdmin(AuditedModelAdmin):
    list_display = ["model_pattern", "provider", "catalog", "project", "input_per_million", "output_per_million",
                    "effective_from", "effective_to"]  # fmt: skip
    list_filter = ["provider", "catalog"]
    search_fields = ["model_pattern"]


@admin.register(AccountingSettings)
class AccountingSettingsAdmin(AuditedModelAdmin):
    list_display = ["project", "store_text"]


@admin.register(Budget)
class BudgetAdmin(AuditedModelAdmin):
    list_display = ["name", "project", "scope", "period", "amount", "hard_limit"]
    list_filter = ["scope", "period", "hard_limit"]


@admin.register(BudgetAlert)
class BudgetAlertAdmin(AuditedModelAdmin):
    list_display = ["budget", "threshold", "period_start", "email_sent_at", "webhook_sent_at"]


@admin.register(DeploymentCostHourly)
class DeploymentCostHourlyAdmin(AuditedModelAdmin):
    """Computed from deployment state events by `gpu_cost_refresh`; read-only here."""

    list_display = ["bucket", "project", "deployment", "revision", "accelerator", "gpu_cost", "tokens", "idle"]
    list_filter = ["idle", "project"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
