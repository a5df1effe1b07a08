"""API shapes for deployments. Secrets (upstream keys, kubeconfigs, secret values) are write-only."""

from rest_framework import serializers

from apps.core.api.serializers import StrictCharField, VisibleSlugRelatedField
from apps.core.models import Project

from ..models import Accelerator, Cluster, Deployment, Replica, Revision, StateEvent
from ..spec import SpecSerializer


class AcceleratorSerializer(serializers.ModelSerializer):
    class Meta:
        model = Accelerator
        fields = [
            "id",
            "name",
            "vendor",
            "memory_gib",
            "hourly_price",
            "currency",
            "is_cpu",
            "kubernetes_resource",
            "kubernetes_product",
        ]


class ReplicaSerializer(serializers.ModelSerializer):
    class Meta:
        model = Replica
        fields = [
            "id",
            "index",
            "desired",
            "state",
            "state_reason",
            "host",
            "pid",
            "url",
            "restarts",
            "started_at",
            "ready_at",
            "stopped_at",
        ]


class RevisionSerializer(serializers.ModelSerializer):
    model_version = serializers.SerializerMethodField()
    accelerator = serializers.SlugRelatedField(slug_field="name", read_only=True)
    replicas = ReplicaSerializer(many=True, read_only=True)
    has_upstream_key = serializers.SerializerMethodField()

    class Meta:
        model = Revision
        fields = [
            "id", "number", "model_version", "upstream_url", "upstream_model", "has_upstream_key", "task", "dtype",
            "max_input_tokens", "max_total_tokens", "max_batch", "accelerator", "accelerator_count",
            "tensor_parallel", "pipeline_parallel", "memory_utilization", "cpu", "memory_gib", "min_replicas",
            "max_replicas", "target_concurrency", "scale_to_zero_seconds", "env", "secret_refs", "rollout",
            "canary_weight", "shadow_percent", "state", "state_reason", "weight", "plan", "cluster_status",
            "ready_at", "created_at", "replicas",
        ]  # fmt: skip

    def get_model_version(self, revision) -> dict | None:
        version = revision.model_version
        if version is None:
            return None
        return {"id": version.pk, "model": version.model.name, "number": version.number}

    def get_has_upstream_key(self, revision) -> bool:
        return bool(revision.encrypted_upstream_key)


class DeploymentSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    cluster = serializers.SlugRelatedField(slug_field="name", read_only=True)
    traffic = serializers.SerializerMethodField()
    revisions = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "project",
            "name",
            "slug",
            "description",
            "target",
            "cluster",
            "traffic",
            "revisions",
            "created_at",
            "updated_at",
        ]

    def get_traffic(self, deployment) -> dict:
        revisions = list(deployment.revisions.all())
        shadow = next((r.number for r in revisions if r.pk == deployment.shadow_revision_id), None)
        return {
            "weights": {str(r.number): r.weight for r in revisions if r.weight},
            "shadow": shadow,
            "shadow_percent": deployment.shadow_percent,
        }

    def get_revisions(self, deployment) -> list:
        revisions = sorted(deployment.revisions.all(), key=lambda r: -r.number)
        return RevisionSerializer(revisions, many=True, context=self.context).data


class DeploymentCreateSerializer(SpecSerializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())


class RevisionCreateSerializer(SpecSerializer):
    pass


class PlanSerializer(SpecSerializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all(), required=False)
    shape = serializers.DictField(
        required=False,
        help_text="A model shape instead of a registered version: "
        "parameters, layers, hidden_size, attention_heads, kv_heads, max_context.",
    )


class TrafficSerializer(serializers.Serializer):
    weights = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=100),
        allow_empty=False,
        help_text='Revision number → percent, e.g. {"1": 90, "2": 10}.',
    )
    shadow = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    shadow_percent = serializers.IntegerField(min_value=0, max_value=100, required=False, default=0)

    def validate_weights(self, value):
        try:
            return {int(number): weight for number, weight in value.items()}
        except ValueError:
            raise serializers.ValidationError("Keys are revision numbers.")


class RevisionNumberSerializer(serializers.Serializer):
    revision = serializers.IntegerField(min_value=1)


class StateEventSerializer(serializers.ModelSerializer):
    revision = serializers.IntegerField(source="revision.number", read_only=True)
    replica = serializers.IntegerField(source="replica.index", read_only=True, allow_null=True)

    class Meta:
        model = StateEvent
        fields = ["id", "time", "revision", "replica", "state", "reason"]


class ClusterSerializer(serializers.ModelSerializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    kubeconfig = StrictCharField(write_only=True, max_length=200_000)

    class Meta:
        model = Cluster
        fields = ["id", "project", "name", "namespace", "kubeconfig", "created_at"]
        read_only_fields = ["id", "created_at"]
