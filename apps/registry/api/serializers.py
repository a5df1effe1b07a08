"""API shapes for registry metadata. Serializers check shape only; services decide and write."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.core.api.serializers import ModelSerializer, StrictCharField, VisibleSlugRelatedField
from apps.core.models import Project

from ..models import (
    Lineage,
    ModelVersion,
    Origin,
    Promotion,
    RegisteredModel,
    Relation,
    Task,
    VersionFile,
    VersionStatus,
)
from ..services import ALIAS_RE, NAME_RE


class TagsField(serializers.ListField):
    child = StrictCharField(min_length=1, max_length=64)
    max_length = 50


NAME_VALIDATOR = RegexValidator(NAME_RE, "Use letters, digits, '.', '_' or '-' (at most 128, starting alphanumeric).")
ALIAS_VALIDATOR = RegexValidator(ALIAS_RE, "Use lowercase letters, digits, '_' or '-' (at most 64, starting a-z).")


@extend_schema_field({"type": "object", "additionalProperties": {"type": "integer"}})
class AliasMapField(serializers.Field):
    """{alias name: version number} from the model's prefetched aliases."""

    def to_representation(self, model: RegisteredModel) -> dict[str, int]:
        return {alias.name: alias.version.number for alias in model.aliases.all()}


class RegisteredModelSerializer(ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    owner = serializers.SlugRelatedField(slug_field="username", read_only=True)
    version_count = serializers.IntegerField(read_only=True, help_text="Live (not deleted) versions.")
    latest_version = serializers.IntegerField(
        source="latest_number", read_only=True, allow_null=True, help_text="Number of the newest live version."
    )
    aliases = AliasMapField(source="*", read_only=True, help_text="Alias name → version number.")

    class Meta:
        model = RegisteredModel
        fields = [
            "id",
            "project",
            "name",
            "description",
            "task",
            "license",
            "origin",
            "tags",
            "restricted",
            "owner",
            "version_count",
            "latest_version",
            "aliases",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class RegisteredModelCreateSerializer(serializers.Serializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    name = StrictCharField(max_length=128, validators=[NAME_VALIDATOR])
    description = StrictCharField(max_length=50_000, required=False, allow_blank=True, default="")
    task = serializers.ChoiceField(choices=Task.choices, required=False, default=Task.TEXT_GENERATION)
    license = StrictCharField(max_length=100, required=False, allow_blank=True, default="")
    origin = serializers.ChoiceField(choices=Origin.choices, required=False, default=Origin.TRAINED)
    tags = TagsField(required=False, default=list)
    restricted = serializers.BooleanField(required=False, default=False)


class RegisteredModelUpdateSerializer(serializers.Serializer):
    description = StrictCharField(max_length=50_000, required=False, allow_blank=True)
    task = serializers.ChoiceField(choices=Task.choices, required=False)
    license = StrictCharField(max_length=100, required=False, allow_blank=True)
    origin = serializers.ChoiceField(choices=Origin.choices, required=False)
    tags = TagsField(required=False)
    restricted = serializers.BooleanField(required=False, help_text="Changing it needs the project admin role.")


class VersionNameSerializer(serializers.Serializer):
    """Another version, named: used for parents, children and lineage nodes."""

    id = serializers.IntegerField()
    model_id = serializers.IntegerField()
    model = serializers.CharField(source="model.name")
    number = serializers.IntegerField()


class LinkedVersionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    model_id = serializers.IntegerField()
    model = serializers.CharField()
    number = serializers.IntegerField()
    relation = serializers.ChoiceField(choices=Relation.choices)


def _linked(version: ModelVersion, link: Lineage) -> dict:
    return {
        "id": version.pk,
        "model_id": version.model_id,
        "model": version.model.name,
        "number": version.number,
        "relation": link.relation,
    }


class VersionFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = VersionFile
        fields = ["path", "size", "sha256"]
        read_only_fields = fields


class ModelVersionSerializer(ModelSerializer):
    model = serializers.IntegerField(source="model_id", read_only=True)
    model_name = serializers.CharField(source="model.name", read_only=True)
    project = serializers.CharField(source="model.project.slug", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    aliases = serializers.SerializerMethodField()
    parents = serializers.SerializerMethodField()
    children = serializers.SerializerMethodField()
    # One serializer for list and detail (one schema component): only the detail attaches `listed_files`, and a
    # field that is not required is left out when its source is missing.
    files = VersionFileSerializer(
        many=True, read_only=True, required=False, source="listed_files", help_text="In the detail only."
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "model_name",
            "project",
            "number",
            "status",
            "status_reason",
            "format",
            "total_size",
            "file_count",
            "new_bytes",
            "parameter_count",
            "metadata",
            "scan_report",
            "source_uri",
            "description",
            "tags",
            "mlflow_run_id",
            "aliases",
            "parents",
            "children",
            "created_by",
            "created_at",
            "updated_at",
            "deleted_at",
            "files",
        ]
        read_only_fields = fields

    def get_aliases(self, version: ModelVersion) -> list[str]:
        return [alias.name for alias in version.aliases.all()]

    @extend_schema_field(LinkedVersionSerializer(many=True))
    def get_parents(self, version: ModelVersion) -> list[dict]:
        return [_linked(link.parent, link) for link in version.visible_parent_links]

    @extend_schema_field(LinkedVersionSerializer(many=True))
    def get_children(self, version: ModelVersion) -> list[dict]:
        return [_linked(link.child, link) for link in version.visible_child_links]


class LineageNodeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    model_id = serializers.IntegerField()
    model = serializers.CharField()
    project = serializers.CharField()
    number = serializers.IntegerField()
    status = serializers.ChoiceField(choices=VersionStatus.choices)
    depth = serializers.IntegerField(
        help_text="Negative: ancestor generations; 0: this version; positive: descendants."
    )


class LineageEdgeSerializer(serializers.Serializer):
    parent = serializers.IntegerField()
    child = serializers.IntegerField()
    relation = serializers.ChoiceField(choices=Relation.choices)


class LineageSerializer(serializers.Serializer):
    root = serializers.IntegerField()
    nodes = LineageNodeSerializer(many=True)
    edges = LineageEdgeSerializer(many=True)
    truncated = serializers.BooleanField(help_text="True when the graph was cut at the node limit.")


class CompareQuerySerializer(serializers.Serializer):
    a = serializers.IntegerField(min_value=1, max_value=2**63 - 1, help_text="Id of the first (older) version.")
    b = serializers.IntegerField(min_value=1, max_value=2**63 - 1, help_text="Id of the second (newer) version.")


class MetadataRowSerializer(serializers.Serializer):
    key = serializers.CharField()
    a = serializers.JSONField(allow_null=True)
    b = serializers.JSONField(allow_null=True)
    changed = serializers.BooleanField()


class ConfigChangeSerializer(serializers.Serializer):
    key = serializers.CharField(help_text="Dotted path of the setting in config.json.")
    a = serializers.JSONField(allow_null=True)
    b = serializers.JSONField(allow_null=True)


class ConfigDiffSerializer(serializers.Serializer):
    compared = serializers.BooleanField(help_text="False when either version has no readable config.json.")
    a_note = serializers.CharField(help_text="Why version a's config.json could not be read (empty when it was).")
    b_note = serializers.CharField()
    changes = ConfigChangeSerializer(many=True)


class ChangedFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    a_size = serializers.IntegerField()
    b_size = serializers.IntegerField()
    a_sha256 = serializers.CharField()
    b_sha256 = serializers.CharField()


class FileDiffSerializer(serializers.Serializer):
    added = VersionFileSerializer(many=True, help_text="In b only.")
    removed = VersionFileSerializer(many=True, help_text="In a only.")
    changed = ChangedFileSerializer(many=True, help_text="Same path, different sha256.")
    unchanged = serializers.IntegerField(help_text="Files with the same path and sha256.")


class DifferenceSerializer(serializers.Serializer):
    a = serializers.IntegerField(allow_null=True)
    b = serializers.IntegerField(allow_null=True)
    difference = serializers.IntegerField(allow_null=True, help_text="b − a.")


class VersionCompareSerializer(serializers.Serializer):
    a = VersionNameSerializer()
    b = VersionNameSerializer()
    metadata = MetadataRowSerializer(many=True)
    config = ConfigDiffSerializer()
    files = FileDiffSerializer()
    size = DifferenceSerializer(help_text="Total bytes of each version.")
    parameters = DifferenceSerializer()


class PromotionSerializer(ModelSerializer):
    model = serializers.IntegerField(source="model_id", read_only=True)
    model_name = serializers.CharField(source="model.name", read_only=True)
    from_version = serializers.SerializerMethodField()
    to_version = serializers.IntegerField(source="to_version.number", read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    decided_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Promotion
        fields = [
            "id",
            "model",
            "model_name",
            "alias",
            "from_version",
            "to_version",
            "reason",
            "status",
            "requested_by",
            "decided_by",
            "decided_at",
            "created_at",
        ]
        read_only_fields = fields

    def get_from_version(self, promotion: Promotion) -> int | None:
        return promotion.from_version.number if promotion.from_version else None


class AliasSerializer(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField(source="version.number", help_text="Version number within the model.")
    version_id = serializers.IntegerField()
    protected = serializers.SerializerMethodField(help_text="Only maintainers may move or delete it.")
    updated_at = serializers.DateTimeField()

    def get_protected(self, alias) -> bool:
        return alias.name in settings.PROTECTED_ALIASES


class AliasSetSerializer(serializers.Serializer):
    alias = StrictCharField(max_length=64, validators=[ALIAS_VALIDATOR])
    version = serializers.IntegerField(
        min_value=1, max_value=2**31 - 1, help_text="Version number within this model (not the version id)."
    )
    reason = StrictCharField(max_length=1000, required=False, allow_blank=True, default="")
