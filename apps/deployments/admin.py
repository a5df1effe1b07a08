"""Deployments in the admin console. The accelerator catalog is edited here (prices, new kinds); deployments,
revisions and replicas change through the services (state machine, audit), so they are read-only here."""

from __future__ import annotations

from django.contrib import admin

from apps.core.admin_audit import AuditedModelAdmin

from .models import Accelerator, Cluster, Deployment, Replica, Revision, StateEvent


class ReadOnlyAdmin(AuditedModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Accelerator)
class AcceleratorAdmin(AuditedModelAdmin):
    list_display = ["name", "vendor", "memory_gib", "hourly_price", "currency", "is_cpu"]
    list_editable = ["hourly_price"]
    search_fields = ["name"]


@admin.register(Cluster)
class ClusterAdmin(ReadOnlyAdmin):
    list_display = ["name", "project", "namespace", "created_at"]
    exclude = ["encrypted_kubeconfig"]


class RevisionInline(admin.TabularInline):
    model = Revision
    fields = ["number", "model_version", "state", "weight", "accelerator", "accelerator_count", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdmin):
    list_display = ["slug", "name", "project", "target", "created_at", "deleted_at"]
    list_filter = ["target", "project"]
    search_fields = ["slug", "name"]
    inlines = [RevisionInline]


@admin.register(Revision)
class RevisionAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "state", "weight", "accelerator", "created_at"]
    list_filter = ["state"]
    exclude = ["encrypted_upstream_key"]


@admin.register(Replica)
class ReplicaAdmin(ReadOnlyAdmin):
    list_display = ["__str__", "desired", "state", "host", "pid", "url", "restarts"]
    list_filter = ["state", "desired"]


@admin.register(StateEvent)
class StateEventAdmin(ReadOnlyAdmin):
    list_display = ["time", "deployment", "revision", "replica", "state", "reason"]
    list_filter = ["state"]
