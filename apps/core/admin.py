from django.contrib import admin

from .admin_audit import AuditedModelAdmin
from .models import (
    ApiToken,
    AuditEvent,
    Job,
    Membership,
    ObjectGrant,
    Organization,
    Project,
    ServiceAccount,
    Team,
    Worker,
)


@admin.register(Organization)
class OrganizationAdmin(AuditedModelAdmin):
    list_display = ["name", "slug", "created_at"]
    search_fields = ["name", "slug"]
    filter_horizontal = ["owners"]


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user", "team"]


@admin.register(Project)
class ProjectAdmin(AuditedModelAdmin):
    list_display = ["name", "slug", "organization", "created_at"]
    list_filter = ["organization"]
    search_fields = ["name", "slug"]
    inlines = [MembershipInline]


@admin.register(Team)
class TeamAdmin(AuditedModelAdmin):
    list_display = ["name", "slug", "organization"]
    list_filter = ["organization"]
    search_fields = ["name", "slug"]
    filter_horizontal = ["members"]


@admin.register(Membership)
class MembershipAdmin(AuditedModelAdmin):
    list_display = ["project", "user", "team", "role", "created_at"]
    list_filter = ["role", "project"]
    search_fields = ["user__username", "team__name", "project__slug"]
    autocomplete_fields = ["user", "team", "project"]


@admin.register(ObjectGrant)
class ObjectGrantAdmin(AuditedModelAdmin):
    list_display = ["content_type", "object_id", "user", "team", "role", "project"]
    list_filter = ["role", "content_type"]
    search_fields = ["object_id", "user__username", "team__name"]


@admin.register(ServiceAccount)
class ServiceAccountAdmin(AuditedModelAdmin):
    list_display = ["name", "project", "user", "created_at"]
    list_filter = ["project"]
    search_fields = ["name"]


@admin.register(ApiToken)
class ApiTokenAdmin(AuditedModelAdmin):
    """Tokens can be revoked here; their secret is never shown (only a hash is stored)."""

    list_display = ["name", "key_prefix", "user", "project", "scopes", "expires_at", "last_used_at", "revoked_at"]
    list_filter = ["revoked_at", "project"]
    search_fields = ["name", "key_prefix", "user__username"]
    readonly_fields = ["key_prefix", "key_hash", "last_used_at", "created_by", "created_at"]
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # tokens are created through the API, the tokens page or `manage.py create_token`

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        from .services import api_token_revoke

        for token in queryset:
            api_token_revoke(user=request.user, token=token)


@admin.register(AuditEvent)
class AuditEventAdmin(AuditedModelAdmin):
    """Read-only: the audit log is append-only."""

    list_display = ["created_at", "actor_label", "action", "object_type", "object_id", "project", "ip_address"]
    list_filter = ["action", "object_type", "project"]
    search_fields = ["actor_label", "object_id", "object_repr", "request_id"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(AuditedModelAdmin):
    list_display = ["id", "job_type", "project", "status", "progress", "message", "worker", "created_at"]
    list_filter = ["status", "job_type", "project"]
    search_fields = ["id", "job_type", "message", "task_id"]
    readonly_fields = ["task_id", "attempts", "started_at", "finished_at", "created_at", "updated_at"]


@admin.register(Worker)
class WorkerAdmin(AuditedModelAdmin):
    list_display = ["hostname", "queues", "last_seen_at", "stopped_at"]
    search_fields = ["hostname"]
    readonly_fields = ["hostname", "queues", "devices", "pid", "started_at", "last_seen_at", "stopped_at"]
