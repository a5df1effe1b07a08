"""Deployments REST API. Views parse, call a selector or service, and render."""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api.parsers import JSONParser
from apps.core.api.views import BaseViewSet
from apps.core.numbers import whole_number
from apps.core.permissions import Action

from .. import filters, selectors, services
from ..spec import plan_request
from . import serializers as s


class DeploymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Deployments with their revisions, replicas and traffic. POST with `dry_run` returns the plan and manifest."""

    serializer_class = s.DeploymentSerializer
    filterset_class = filters.DeploymentFilter
    ordering_fields = ["name", "slug", "created_at"]
    object_action = {
        "traffic": Action.DEPLOY,
        "promote": Action.DEPLOY,
        "rollback": Action.DEPLOY,
        "stop": Action.DEPLOY,
        "restart": Action.DEPLOY,
        "destroy": Action.DELETE,
    }
    scope_action = dict.fromkeys(
        ("create", "revisions", "traffic", "promote", "rollback", "stop", "restart", "destroy"), Action.DEPLOY
    )

    def selector(self):
        return selectors.deployment_list(user=self.request.user)

    def required_action(self, request):
        if request.method == "GET":
            return Action.VIEW
        return super().required_action(request)

    def _posted_revision(self, request, deployment):
        number = self.validated(s.RevisionNumberSerializer, request.data)["revision"]
        revision = deployment.revisions.filter(number=number).first()
        if revision is None:
            raise ValidationError({"revision": [f"No revision {number}."]})
        return revision

    def _detail(self, deployment) -> Response:
        fresh = self.selector().get(pk=deployment.pk)
        return Response(s.DeploymentSerializer(fresh, context=self.get_serializer_context()).data)

    @extend_schema(request=s.DeploymentCreateSerializer, responses={201: s.DeploymentSerializer, 200: dict})
    def create(self, request):
        data = dict(self.validated(s.DeploymentCreateSerializer, request.data))
        project = data.pop("project")
        result = services.deployment_create(user=request.user, project=project, data=data)
        if isinstance(result, dict):
            return Response(result)
        response = self._detail(result)
        response.status_code = status.HTTP_201_CREATED
        return response

    def destroy(self, request, pk=None):
        services.deployment_delete(user=request.user, deployment=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(methods=["post"], request=s.RevisionCreateSerializer, responses={201: s.RevisionSerializer})
    @extend_schema(methods=["get"], responses=s.RevisionSerializer(many=True))
    @action(detail=True, methods=["get", "post"])
    def revisions(self, request, pk=None):
        if request.method == "GET":
            deployment = self.get_object()
            revisions = sorted(deployment.revisions.all(), key=lambda r: -r.number)
            return Response(s.RevisionSerializer(revisions, many=True).data)
        deployment = self.get_object()
        data = self.validated(s.RevisionCreateSerializer, request.data)
        result = services.revision_create(user=request.user, deployment=deployment, data=dict(data))
        if isinstance(result, dict):
            return Response(result)
        return Response(s.RevisionSerializer(result).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.TrafficSerializer, responses=s.DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def traffic(self, request, pk=None):
        deployment = self.get_object()
        data = self.validated(s.TrafficSerializer, request.data)
        services.traffic_set(
            user=request.user,
            deployment=deployment,
            weights=data["weights"],
            shadow=data.get("shadow"),
            shadow_percent=data.get("shadow_percent", 0),
        )
        return self._detail(deployment)

    @extend_schema(request=s.RevisionNumberSerializer, responses=s.DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def promote(self, request, pk=None):
        deployment = self.get_object()
        revision = self._posted_revision(request, deployment)
        services.revision_promote(user=request.user, revision=revision)
        return self._detail(deployment)

    @extend_schema(request=s.RevisionNumberSerializer, responses=s.DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def restart(self, request, pk=None):
        deployment = self.get_object()
        revision = self._posted_revision(request, deployment)
        services.revision_restart(user=request.user, revision=revision)
        return self._detail(deployment)

    @extend_schema(request=None, responses=s.DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def rollback(self, request, pk=None):
        deployment = self.get_object()
        services.deployment_rollback(user=request.user, deployment=deployment)
        return self._detail(deployment)

    @extend_schema(request=None, responses=s.DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        deployment = self.get_object()
        services.deployment_stop(user=request.user, deployment=deployment)
        return self._detail(deployment)

    @extend_schema(parameters=[OpenApiParameter("revision", int)], responses={(200, "application/yaml"): str})
    @action(detail=True, methods=["get"])
    def manifest(self, request, pk=None):
        deployment = self.get_object()
        raw = request.query_params.get("revision")
        revisions = deployment.revisions.all()
        if raw is not None:
            number = whole_number(raw, upper=2**31)
            if number is None:
                raise ValidationError({"revision": ["Give a revision number."]})
            revisions = revisions.filter(number=number)
        revision = revisions.order_by("-number").first()
        if revision is None or not revision.manifest:
            raise ValidationError({"revision": ["No manifest: no such revision, or an external upstream."]})
        response = HttpResponse(revision.manifest, content_type="application/yaml")
        response["Content-Disposition"] = f'attachment; filename="{deployment.slug}-r{revision.number}.yaml"'
        return response

    @extend_schema(responses=s.StateEventSerializer(many=True))
    @action(detail=True, methods=["get"])
    def events(self, request, pk=None):
        deployment = self.get_object()
        page = self.paginate_queryset(selectors.state_event_list(deployment=deployment))
        return self.get_paginated_response(s.StateEventSerializer(page, many=True).data)


class PlanView(APIView):
    """The planner's verdict for a model version (or a bare model shape) on some hardware; writes nothing."""

    parser_classes = [JSONParser]

    def required_action(self, request):
        return Action.VIEW

    @extend_schema(request=s.PlanSerializer, responses={200: dict})
    def post(self, request):
        serializer = s.PlanSerializer(data=request.data, context={"request": request})
        serializer.is_valid(raise_exception=True)
        return Response(plan_request(request.user, dict(serializer.validated_data)))


class AcceleratorViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """The accelerator catalog (admins edit it in the admin console)."""

    serializer_class = s.AcceleratorSerializer
    ordering_fields = ["name", "memory_gib", "hourly_price"]
    ordering = ["is_cpu", "memory_gib", "name"]

    def selector(self):
        return selectors.accelerator_list()


class ClusterViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Kubernetes clusters of a project; the kubeconfig is write-only and encrypted at rest."""

    serializer_class = s.ClusterSerializer
    ordering_fields = ["name", "created_at"]
    object_action = {"destroy": Action.MANAGE}
    scope_action = {"create": Action.MANAGE, "destroy": Action.MANAGE}

    def selector(self):
        return selectors.cluster_list(user=self.request.user)

    @extend_schema(request=s.ClusterSerializer, responses={201: s.ClusterSerializer})
    def create(self, request):
        data = self.validated(s.ClusterSerializer, request.data)
        cluster = services.cluster_create(
            user=request.user,
            project=data["project"],
            name=data["name"],
            namespace=data.get("namespace", "default"),
            kubeconfig=data["kubeconfig"],
        )
        return self.created(s.ClusterSerializer, cluster)

    def destroy(self, request, pk=None):
        cluster = self.get_object()
        services.cluster_delete(user=request.user, cluster=cluster)
        return Response(status=status.HTTP_204_NO_CONTENT)
