from django.contrib import admin

from apps.core.admin_audit import AuditedModelAdmin

from .models import AccountingSettings, Budget, BudgetAlert, PriceCatalog, PriceEntry


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
