"""API shapes for core. Serializers check shape only; services decide and write."""

import json

from django.contrib.auth import get_user_model
from django.db import models
from rest_framework import serializers

from ..models import (
    ApiToken,
    AuditEvent,
    Job,
    Membership,
    Organization,
    Project,
    ProjectSecret,
    Role,
    ServiceAccount,
    Team,
    TokenScope,
    Worker,
    slug_validator,
)
from ..permissions import Action, restrict

User = get_user_model()


class StrictCharField(serializers.CharField):
    """Text from a JSON string only: DRF would turn a number sent for a name into "12345"; that is a client bug."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictRegexField(StrictCharField, serializers.RegexField):
    pass


class VisibleRelatedMixin:
    """Resolves only objects the requesting user may see, so a reference to an invisible object reads exactly like
    one to a missing object ("does not exist"), instead of a 404 or 403 that confirms it exists."""

    def get_queryset(self):
        queryset = super().get_queryset()
        request = self.context.get("request")
        if request is None:  # outside a request the services' own checks still apply
            return queryset
        if queryset.model is Team:
            return queryset.filter(organization__in=restrict(Organization.objects.all(), request.user, Action.VIEW))
        return restrict(queryset, request.user, Action.VIEW)


class VisibleSlugRelatedField(VisibleRelatedMixin, serializers.SlugRelatedField):
    pass


class VisiblePrimaryKeyRelatedField(VisibleRelatedMixin, serializers.PrimaryKeyRelatedField):
    pass


class ModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
    }


class OrganizationSerializer(ModelSerializer):
    slug = StrictCharField(max_length=50, validators=[slug_validator])
    owners = serializers.SlugRelatedField(slug_field="username", many=True, read_only=True)

    class Meta:
        model = Organization
        fields = ["id", "name", "slug", "owners", "created_at"]
        read_only_fields = ["id", "owners", "created_at"]


class OrganizationUpdateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100)


class ProjectSerializer(ModelSerializer):
    organization = VisibleSlugRelatedField(slug_field="slug", queryset=Organization.objects.all())
    slug = StrictCharField(max_length=50, validators=[slug_validator])

    class Meta:
        model = Project
        fields = ["id", "organization", "name", "slug", "description", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class ProjectUpdateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, required=False)
    description = StrictCharField(max_length=5000, required=False, allow_blank=True)


class MembershipSerializer(ModelSerializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    user = serializers.SlugRelatedField(
        slug_field="username", queryset=User.objects.filter(is_active=True), required=False, allow_null=True
    )
    team = VisiblePrimaryKeyRelatedField(queryset=Team.objects.all(), required=False, allow_null=True)
    role = serializers.ChoiceField(choices=Role.choices)

    class Meta:
        model = Membership
        fields = ["id", "project", "user", "team", "role", "created_at"]
        read_only_fields = ["id", "created_at"]
        # DRF's generated unique-together validators would demand both `user` and `team`; the service enforces
        # uniqueness and says which member is already there.
        validators = []

    def validate(self, attrs):
        if (attrs.get("user") is None) == (attrs.get("team") is None):
            raise serializers.ValidationError("Give either a user or a team.")
        return attrs


class MembershipUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class TeamSerializer(ModelSerializer):
    organization = VisibleSlugRelatedField(slug_field="slug", queryset=Organization.objects.all())
    slug = StrictCharField(max_length=50, validators=[slug_validator])
    members = serializers.SlugRelatedField(
        slug_field="username", many=True, queryset=User.objects.all(), required=False
    )

    class Meta:
        model = Team
        fields = ["id", "organization", "name", "slug", "members", "requests_per_minute", "tokens_per_minute",
                  "created_at"]
        read_only_fields = ["id", "created_at"]


class TeamUpdateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, required=False)
    requests_per_minute = serializers.IntegerField(min_value=1, max_value=10**9, required=False, allow_null=True)
    tokens_per_minute = serializers.IntegerField(min_value=1, max_value=10**12, required=False, allow_null=True)
    members = serializers.SlugRelatedField(
        slug_field="username", many=True, queryset=User.objects.all(), required=False
    )


class ServiceAccountSerializer(ModelSerializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    name = StrictRegexField(r"^[a-z0-9][a-z0-9-]{0,62}$", max_length=63)
    role = serializers.ChoiceField(choices=Role.choices, write_only=True, default=Role.DEVELOPER)
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = ServiceAccount
        fields = ["id", "project", "name", "role", "username", "created_at"]
        read_only_fields = ["id", "username", "created_at"]


class ProjectSecretSerializer(ModelSerializer):
    """A secret's name and dates. The value is write-only: no response ever carries it."""

    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    name = StrictRegexField(
        r"^[A-Z][A-Z0-9_]{0,99}$", max_length=100, error_messages={"invalid": "Use UPPER_SNAKE_CASE, e.g. HF_TOKEN."}
    )
    value = StrictCharField(write_only=True, max_length=10_000, trim_whitespace=False)

    class Meta:
        model = ProjectSecret
        fields = ["id", "project", "name", "value", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]
        validators = []  # the service replaces a secret of the same name


class ApiTokenSerializer(ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    user = serializers.CharField(source="user.username", read_only=True)
    is_active = serializers.SerializerMethodField()

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "user",
            "project",
            "key_prefix",
            "scopes",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "requests_per_minute",
            "tokens_per_minute",
            "created_at",
            "is_active",
        ]
        read_only_fields = fields

    def get_is_active(self, token) -> bool:
        return token.is_active


class ApiTokenCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=TokenScope.choices), min_length=1, max_length=3
    )
    project = VisibleSlugRelatedField(
        slug_field="slug", queryset=Project.objects.all(), required=False, allow_null=True
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    service_account = VisiblePrimaryKeyRelatedField(
        queryset=ServiceAccount.objects.all(), required=False, allow_null=True
    )
    requests_per_minute = serializers.IntegerField(min_value=1, max_value=10**9, required=False, allow_null=True)
    tokens_per_minute = serializers.IntegerField(min_value=1, max_value=10**12, required=False, allow_null=True)


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret. Shown only in this response.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class AuditEventSerializer(ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    actor = serializers.CharField(source="actor_label", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "project",
            "changes",
            "request_id",
            "ip_address",
        ]
        read_only_fields = fields


class JobSerializer(ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True, default=None)

    class Meta:
        model = Job
        fields = [
            "id",
            "project",
            "job_type",
            "params",
            "status",
            "progress",
            "message",
            "result",
            "error",
            "queue",
            "gpu_memory_mb",
            "worker",
            "attempts",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class JobCreateSerializer(serializers.Serializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    job_type = StrictCharField(max_length=100)
    params = serializers.DictField(required=False, default=dict)
    gpu_memory_mb = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False, default=0)

    def validate_params(self, value):
        if len(json.dumps(value)) > 20_000:
            raise serializers.ValidationError("params must be at most 20 kB of JSON.")
        return value


class WorkerSerializer(ModelSerializer):
    alive = serializers.SerializerMethodField()

    class Meta:
        model = Worker
        fields = ["id", "hostname", "queues", "devices", "pid", "started_at", "last_seen_at", "stopped_at", "alive"]
        read_only_fields = fields

    def get_alive(self, worker) -> bool:
        return worker.is_alive
