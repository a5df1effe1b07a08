"""Changes made in the Django admin go into the audit log like changes made through the services."""

from django.contrib import admin
from django.db import transaction

from .audit import audit_record, snapshot


class AuditedModelAdmin(admin.ModelAdmin):
    def _action(self, obj, verb: str) -> str:
        return f"{obj._meta.model_name}.{verb}"

    def save_model(self, request, obj, form, change):
        with transaction.atomic():
            before = snapshot(type(obj)._default_manager.get(pk=obj.pk)) if change else {}
            super().save_model(request, obj, form, change)
            audit_record(
                actor=request.user,
                action=self._action(obj, "update" if change else "create") + ".admin",
                obj=obj,
                before=before,
                after=snapshot(obj),
            )

    def delete_model(self, request, obj):
        with transaction.atomic():
            audit_record(
                actor=request.user, action=self._action(obj, "delete") + ".admin", obj=obj, before=snapshot(obj)
            )
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                audit_record(
                    actor=request.user, action=self._action(obj, "delete") + ".admin", obj=obj, before=snapshot(obj)
                )
            super().delete_queryset(request, queryset)
