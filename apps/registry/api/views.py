"""Registry metadata API: models, versions, lineage, compare, aliases and promotions.

Views parse, call a selector or service, and render. Lookups go through the selectors, so a model or version
the caller may not see is a 404.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.response import Response

from apps.core.api.views import BaseViewSet
from apps.core.permissions import Action

from .. import filters, selectors, services
from ..models import Alias
from . import serializers as s


class RegisteredModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Registered models. `aliases` maps each alias to a version number."""

    serializer_class = s.RegisteredModelSerializer
    filterset_class = filters.RegisteredModelFilter
    ordering_fields = ["name", "created_at", "updated_at"]
    ordering = ["name", "id"]
    scope_action = {"create": Action.CHANGE, "partial_update": Action.CHANGE}

    def selector(self):
        return selectors.registered_model_list(user=self.request.user)

    def _fresh(self, model):
        return self.selector().get(pk=model.pk)

    @extend_schema(request=s.RegisteredModelCreateSerializer, responses={201: s.RegisteredModelSerializer})
    def create(self, request):
        data = self.validated(s.RegisteredModelCreateSerializer, request.data)
        model = services.registered_model_create(user=request.user, **data)
        return self.created(s.RegisteredModelSerializer, self._fresh(model))

    @extend_schema(request=s.RegisteredModelUpdateSerializer, responses=s.RegisteredModelSerializer)
    def partial_update(self, request, pk=None):
        data = self.validated(s.RegisteredModelUpdateSerializer, request.data)
        model = services.registered_model_update(user=request.user, model=self.get_object(), **data)
        return Response(s.RegisteredModelSerializer(self._fresh(model)).data)

    @extend_schema(
        methods=["GET"],
        summary="List the model's aliases",
        request=None,
        responses=s.AliasSerializer(many=True),
    )
    @extend_schema(
        methods=["POST"],
        summary="Point an alias at a version",
        description=(
            "`version` is the version number within this model. Protected aliases (settings.PROTECTED_ALIASES) "
            "need the maintainer role; with PROTECTED_ALIAS_APPROVAL the move stays `pending` until a second "
            "maintainer approves it. Answers with the promotion, applied or pending."
        ),
        request=s.AliasSetSerializer,
        responses={201: s.PromotionSerializer},
    )
    @action(
        detail=True,
        methods=["get", "post"],
        url_path="aliases",
        url_name="aliases",
        filter_backends=[],
        pagination_class=None,
    )
    def aliases(self, request, pk=None):
        model = self.get_object()
        if request.method == "GET":
            aliases = Alias.objects.filter(model=model).select_related("version").order_by("name")
            return Response(s.AliasSerializer(aliases, many=True).data)
        data = self.validated(s.AliasSetSerializer, request.data)
        version = selectors.version_by_number(user=request.user, model=model, number=data["version"])
        if version is None:
            raise Http404
        promotion = services.alias_set(user=request.user, version=version, alias=data["alias"], reason=data["reason"])
        return self.created(s.PromotionSerializer, promotion)

    @extend_schema(
        summary="Remove an alias",
        parameters=[OpenApiParameter("alias", str, OpenApiParameter.PATH, description="Alias name.")],
        request=None,
        responses={204: None},
    )
    @action(
        detail=True,
        methods=["delete"],
        url_path=r"aliases/(?P<alias>[a-z][a-z0-9_-]{0,63})",  # other names cannot exist: a 404, not a lookup
        url_name="alias-detail",
    )
    def alias_detail(self, request, pk=None, alias=None):
        services.alias_delete(user=request.user, model=self.get_object(), alias=alias)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ModelVersionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Model versions. Soft-deleted versions are listed only with `include_deleted=true`; the list leaves out
    file lists (a version may hold thousands of files), which the detail shows."""

    serializer_class = s.ModelVersionSerializer
    filterset_class = filters.ModelVersionFilter
    ordering_fields = ["created_at", "number", "parameter_count", "total_size"]
    ordering = ["-created_at", "-id"]

    def selector(self):
        return selectors.model_version_list(user=self.request.user)

    def retrieve(self, request, pk=None):
        version = self.get_object()
        version.listed_files = selectors.version_files(version=version)
        return Response(s.ModelVersionSerializer(version).data)

    @extend_schema(
        summary="Soft-delete a version",
        description="Hidden at once; its bytes are freed by garbage collection after the retention period. "
        "Refused (400) while a protected alias points at it. Needs the maintainer role.",
        responses={204: None},
    )
    def destroy(self, request, pk=None):
        services.version_delete(user=request.user, version=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="Ancestors and descendants", responses=s.LineageSerializer)
    @action(detail=True, methods=["get"], url_path="lineage", url_name="lineage", filter_backends=[])
    def lineage(self, request, pk=None):
        graph = selectors.lineage_graph(user=request.user, version=self.get_object())
        return Response(s.LineageSerializer(graph.as_dict()).data)

    @extend_schema(
        summary="Compare two versions",
        description="Metadata, config.json settings (files up to 1 MiB), files added/removed/changed by sha256, "
        "and the size and parameter differences (b − a).",
        parameters=[s.CompareQuerySerializer],
        responses=s.VersionCompareSerializer,
    )
    @action(
        detail=False,
        methods=["get"],
        url_path="compare",
        url_name="compare",
        filter_backends=[],
        pagination_class=None,
    )
    def compare(self, request):
        query = self.validated(s.CompareQuerySerializer, request.query_params)
        versions = {v.pk: v for v in self.selector().filter(pk__in=[query["a"], query["b"]])}
        if query["a"] not in versions or query["b"] not in versions:
            raise Http404
        result = selectors.version_compare(a=versions[query["a"]], b=versions[query["b"]])
        return Response(s.VersionCompareSerializer(result).data)


class PromotionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Alias moves, applied, pending approval or rejected: the promotion history."""

    serializer_class = s.PromotionSerializer
    filterset_class = filters.PromotionFilter
    ordering_fields = ["created_at", "decided_at"]
    ordering = ["-created_at", "-id"]

    def selector(self):
        return selectors.promotion_list(user=self.request.user)

    @extend_schema(summary="Approve a pending move (a maintainer other than the requester)", request=None)
    @action(detail=True, methods=["post"])
    def approve(self, request, pk=None):
        promotion = services.promotion_decide(user=request.user, promotion=self.get_object(), approve=True)
        return Response(s.PromotionSerializer(promotion).data)

    @extend_schema(summary="Reject a pending move", request=None)
    @action(detail=True, methods=["post"])
    def reject(self, request, pk=None):
        promotion = services.promotion_decide(user=request.user, promotion=self.get_object(), approve=False)
        return Response(s.PromotionSerializer(promotion).data)
