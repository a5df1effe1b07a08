"""Registry in the admin console: for looking things up. Changes that the services audit and check (versions,
aliases, promotions, lineage, files) are read-only here; deleting versions goes through `version_delete`."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from apps.core.admin_audit import AuditedModelAdmin
from apps.core.permissions import PermissionDenied

from .models import Alias, Lineage, ModelVersion, Promotion, RegisteredModel, ScanPolicy, Upload, VersionFile
from .services import version_delete


class ReadOnlyAdmin(AuditedModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class VersionInline(ReadOnlyInline):
    model = ModelVersion
    fields = ["number", "status", "format", "parameter_count", "total_size", "created_at", "deleted_at"]
    readonly_fields = fields
    show_change_link = True


class AliasInline(ReadOnlyInline):
    model = Alias
    fields = ["name", "version", "updated_at"]
    readonly_fields = fields


@admin.register(RegisteredModel)
class RegisteredModelAdmin(ReadOnlyAdmin):
    list_display = ["name", "project", "task", "origin", "restricted", "updated_at"]
    list_filter = ["task", "origin", "restricted", "project"]
    search_fields = ["name", "description", "project__slug"]
    list_select_related = ["project"]
    inlines = [VersionInline, AliasInline]


class FileInline(ReadOnlyInline):
    model = VersionFile
    fields = ["path", "size", "sha256"]
    readonly_fields = fields


class ParentInline(ReadOnlyInline):
    model = Lineage
    fk_name = "child"
    fields = ["parent", "relation"]
    readonly_fields = fields
    verbose_name_plural = "parents"


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "status", "format", "parameter_count", "total_size", "created_at", "deleted_at"]
    list_filter = ["status", "format", "model__project"]
    search_fields = ["model__name", "mlflow_run_id", "files__sha256"]
    list_select_related = ["model"]
    inlines = [ParentInline, FileInline]
    actions = ["soft_delete"]

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the soft delete action below, never a row delete

    @admin.action(description="Soft-delete the selected versions")
    def soft_delete(self, request, queryset) -> None:
        deleted = 0
        for version in queryset.select_related("model__project"):
            try:
                version_delete(user=request.user, version=version)
            except (ValidationError, PermissionDenied) as exc:
                self.message_user(
                    request, f"{version}: {' '.join(getattr(exc, 'messages', [str(exc)]))}", messages.ERROR
                )
            else:
                deleted += 1
        if deleted:
            self.message_user(request, f"{deleted} version(s) deleted; files are freed after the retention period.")


@admin.register(Promotion)
class PromotionAdmin(ReadOnlyAdmin):
    list_display = [
        "model",
        "alias",
        "from_version",
        "to_version",
        "status",
        "requested_by",
        "decided_by",
        "created_at",
    ]
    list_filter = ["status", "alias"]
    search_fields = ["model__name", "alias", "reason"]
    list_select_related = ["model", "from_version__model", "to_version__model", "requested_by", "decided_by"]


@admin.register(Upload)
class UploadAdmin(ReadOnlyAdmin):
    list_display = ["id", "version", "status", "created_at", "expires_at"]
    list_filter = ["status"]
    list_select_related = ["version__model"]


@admin.register(ScanPolicy)
class ScanPolicyAdmin(AuditedModelAdmin):
    list_display = ["organization", "updated_at"]
