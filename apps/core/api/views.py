"""Core REST API. Views parse, call a selector or service, and render."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.http import Http404
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, mixins, parsers, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.settings import api_settings

from .. import filters, jobs, selectors, services
from ..permissions import Action, check
from . import serializers as s
from .ordering import OrderingFilter
from .parsers import JSONParser

User = get_user_model()


class BaseViewSet(viewsets.GenericViewSet):
    """Looks objects up through a selector (so what you cannot see is a 404) and checks the action."""

    lookup_kind: type = int
    object_action: dict[str, Action] = {}
    parser_classes = [JSONParser]
    filter_backends = [DjangoFilterBackend, OrderingFilter]

    def selector(self):
        raise NotImplementedError

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        # Parse the body of every JSON write up front, so a malformed one is refused even by actions that read no
        # fields (cancel, retry, revoke, delete) instead of being ignored while the action goes ahead. Views that
        # declare other parsers (uploads) read their bodies their own way.
        json_only = bool(self.parser_classes) and all(issubclass(p, parsers.JSONParser) for p in self.parser_classes)
        if json_only and request.method not in permissions.SAFE_METHODS and not isinstance(request.data, dict):
            kind = type(request.data).__name__
            raise exceptions.ValidationError(
                {api_settings.NON_FIELD_ERRORS_KEY: [f"Invalid data. Expected a dictionary, but got {kind}."]}
            )

    def get_queryset(self):
        model = getattr(getattr(self.get_serializer_class(), "Meta", None), "model", None)
        if getattr(self, "swagger_fake_view", False) and model is not None:
            # Schema generation (also run by `check --deploy`) has no real user and may precede migrations.
            return model.objects.none()
        return self.selector()

    def get_object(self):
        raw = self.kwargs[self.lookup_url_kwarg or self.lookup_field]
        if "\x00" in raw:  # PostgreSQL cannot even compare text holding NUL; no such object can exist
            raise Http404
        try:
            value = uuid.UUID(raw) if self.lookup_kind is uuid.UUID else self.lookup_kind(raw)
        except (TypeError, ValueError):
            raise Http404 from None
        if self.lookup_kind is int and not 0 < value < 2**63:
            raise Http404
        obj = self.get_queryset().filter(**{self.lookup_field: value}).first()
        if obj is None:
            raise Http404
        required = self.object_action.get(self.action)
        if required:
            check(self.request.user, required, obj)
        return obj

    def required_action(self, request) -> Action | None:
        """The action a request needs from a token's scopes (admin for management routes)."""
        return getattr(self, "scope_action", {}).get(self.action)

    def validated(self, serializer_class, data) -> dict:
        serializer = serializer_class(data=data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def created(self, serializer_class, instance) -> Response:
        return Response(
            serializer_class(instance, context=self.get_serializer_context()).data, status=status.HTTP_201_CREATED
        )


class OrganizationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    serializer_class = s.OrganizationSerializer
    lookup_field = "slug"
    lookup_kind = str
    ordering_fields = ["name", "slug", "created_at"]
    scope_action = {"create": Action.MANAGE, "partial_update": Action.MANAGE}

    def selector(self):
        return selectors.organization_list(user=self.request.user).prefetch_related("owners")

    @extend_schema(request=s.OrganizationSerializer, responses={201: s.OrganizationSerializer})
    def create(self, request):
        data = self.validated(s.OrganizationSerializer, request.data)
        org = services.organization_create(user=request.user, name=data["name"], slug=data["slug"])
        return self.created(s.OrganizationSerializer, org)

    @extend_schema(request=s.OrganizationUpdateSerializer, responses=s.OrganizationSerializer)
    def partial_update(self, request, slug=None):
        data = self.validated(s.OrganizationUpdateSerializer, request.data)
        org = services.organization_update(user=request.user, organization=self.get_object(), **data)
        return Response(s.OrganizationSerializer(org).data)


class ProjectViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    serializer_class = s.ProjectSerializer
    filterset_class = filters.ProjectFilter
    lookup_field = "slug"
    lookup_kind = str
    ordering_fields = ["name", "slug", "created_at"]
    object_action = {"partial_update": Action.MANAGE, "destroy": Action.MANAGE}
    scope_action = {"create": Action.MANAGE, "partial_update": Action.MANAGE, "destroy": Action.MANAGE}

    def selector(self):
        return selectors.project_list(user=self.request.user)

    @extend_schema(request=s.ProjectSerializer, responses={201: s.ProjectSerializer})
    def create(self, request):
        data = self.validated(s.ProjectSerializer, request.data)
        project = services.project_create(
            user=request.user,
            organization=data["organization"],
            name=data["name"],
            slug=data["slug"],
            description=data.get("description", ""),
        )
        return self.created(s.ProjectSerializer, project)

    @extend_schema(request=s.ProjectUpdateSerializer, responses=s.ProjectSerializer)
    def partial_update(self, request, slug=None):
        data = self.validated(s.ProjectUpdateSerializer, request.data)
        project = services.project_update(user=request.user, project=self.get_object(), **data)
        return Response(s.ProjectSerializer(project).data)

    def destroy(self, request, slug=None):
        services.project_delete(user=request.user, project=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class MembershipViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    serializer_class = s.MembershipSerializer
    filterset_class = filters.MembershipFilter
    ordering_fields = ["created_at", "role"]
    object_action = {"partial_update": Action.MANAGE, "destroy": Action.MANAGE}
    scope_action = {"create": Action.MANAGE, "partial_update": Action.MANAGE, "destroy": Action.MANAGE}

    def selector(self):
        return selectors.membership_list(user=self.request.user)

    @extend_schema(request=s.MembershipSerializer, responses={201: s.MembershipSerializer})
    def create(self, request):
        data = self.validated(s.MembershipSerializer, request.data)
        membership = services.membership_create(
            user=request.user,
            project=data["project"],
            role=data["role"],
            member=data.get("user"),
            team=data.get("team"),
        )
        return self.created(s.MembershipSerializer, membership)

    @extend_schema(request=s.MembershipUpdateSerializer, responses=s.MembershipSerializer)
    def partial_update(self, request, pk=None):
        data = self.validated(s.MembershipUpdateSerializer, request.data)
        membership = services.membership_update(user=request.user, membership=self.get_object(), role=data["role"])
        return Response(s.MembershipSerializer(membership).data)

    def destroy(self, request, pk=None):
        services.membership_delete(user=request.user, membership=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class TeamViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    serializer_class = s.TeamSerializer
    filterset_class = filters.TeamFilter
    ordering_fields = ["name", "created_at"]
    scope_action = {"create": Action.MANAGE, "partial_update": Action.MANAGE, "destroy": Action.MANAGE}

    def selector(self):
        return selectors.team_list(user=self.request.user).select_related("organization")

    @extend_schema(request=s.TeamSerializer, responses={201: s.TeamSerializer})
    def create(self, request):
        data = self.validated(s.TeamSerializer, request.data)
        team = services.team_create(
            user=request.user,
            organization=data["organization"],
            name=data["name"],
            slug=data["slug"],
            members=data.get("members", []),
        )
        return self.created(s.TeamSerializer, team)

    @extend_schema(request=s.TeamUpdateSerializer, responses=s.TeamSerializer)
    def partial_update(self, request, pk=None):
        data = self.validated(s.TeamUpdateSerializer, request.data)
        team = services.team_update(user=request.user, team=self.get_object(), **data)
        return Response(s.TeamSerializer(team).data)

    def destroy(self, request, pk=None):
        services.team_delete(user=request.user, team=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class ServiceAccountViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    serializer_class = s.ServiceAccountSerializer
    ordering_fields = ["name", "created_at"]
    scope_action = {"list": Action.MANAGE, "retrieve": Action.MANAGE, "create": Action.MANAGE}

    def selector(self):
        return selectors.service_account_list(user=self.request.user)

    @extend_schema(request=s.ServiceAccountSerializer, responses={201: s.ServiceAccountSerializer})
    def create(self, request):
        data = self.validated(s.ServiceAccountSerializer, request.data)
        account = services.service_account_create(
            user=request.user, project=data["project"], name=data["name"], role=data["role"]
        )
        return self.created(s.ServiceAccountSerializer, account)


class ProjectSecretViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Project secrets (e.g. HF_TOKEN for Hub imports): encrypted at rest, values never returned."""

    serializer_class = s.ProjectSecretSerializer
    ordering_fields = ["name", "created_at"]
    object_action = {"destroy": Action.MANAGE}
    scope_action = {"list": Action.MANAGE, "retrieve": Action.MANAGE, "create": Action.MANAGE, "destroy": Action.MANAGE}

    def selector(self):
        return selectors.project_secret_list(user=self.request.user)

    @extend_schema(request=s.ProjectSecretSerializer, responses={201: s.ProjectSecretSerializer})
    def create(self, request):
        data = self.validated(s.ProjectSecretSerializer, request.data)
        secret = services.project_secret_set(
            user=request.user, project=data["project"], name=data["name"], value=data["value"]
        )
        return self.created(s.ProjectSecretSerializer, secret)

    def destroy(self, request, pk=None):
        services.project_secret_delete(user=request.user, secret=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Personal and service-account tokens. The secret appears only in the create response."""

    serializer_class = s.ApiTokenSerializer
    filterset_class = filters.ApiTokenFilter
    ordering_fields = ["created_at", "name", "last_used_at"]

    def selector(self):
        return selectors.api_token_list(user=self.request.user)

    @extend_schema(request=s.ApiTokenCreateSerializer, responses={201: s.ApiTokenCreatedSerializer})
    def create(self, request):
        data = self.validated(s.ApiTokenCreateSerializer, request.data)
        account = data.get("service_account")
        token, raw = services.api_token_create(
            user=request.user,
            name=data["name"],
            scopes=data["scopes"],
            project=data.get("project"),
            expires_at=data.get("expires_at"),
            owner=account.user if account else None,
            requests_per_minute=data.get("requests_per_minute"),
            tokens_per_minute=data.get("tokens_per_minute"),
        )
        token.token = raw
        return self.created(s.ApiTokenCreatedSerializer, token)

    @extend_schema(request=None, responses=s.ApiTokenSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        token = services.api_token_revoke(user=request.user, token=self.get_object())
        return Response(s.ApiTokenSerializer(token).data)

    def destroy(self, request, pk=None):
        services.api_token_revoke(user=request.user, token=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Read-only: audit events cannot be created, edited or deleted through the API."""

    serializer_class = s.AuditEventSerializer
    filterset_class = filters.AuditEventFilter
    ordering_fields = ["created_at", "action"]
    ordering = ["-created_at", "-id"]
    scope_action = {"list": Action.MANAGE, "retrieve": Action.MANAGE}

    def selector(self):
        return selectors.audit_event_list(user=self.request.user).select_related("project")


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    serializer_class = s.JobSerializer
    filterset_class = filters.JobFilter
    lookup_kind = uuid.UUID
    ordering_fields = ["created_at", "status", "progress"]
    object_action = {"cancel": Action.CHANGE, "retry": Action.CHANGE}

    def selector(self):
        return selectors.job_list(user=self.request.user)

    @extend_schema(request=s.JobCreateSerializer, responses={201: s.JobSerializer})
    def create(self, request):
        data = self.validated(s.JobCreateSerializer, request.data)
        job = jobs.job_create(
            user=request.user,
            project=data["project"],
            job_type=data["job_type"],
            params=data["params"],
            gpu_memory_mb=data["gpu_memory_mb"],
        )
        return self.created(s.JobSerializer, job)

    @extend_schema(request=None, responses=s.JobSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return Response(s.JobSerializer(jobs.job_cancel(user=request.user, job=self.get_object())).data)

    @extend_schema(request=None, responses=s.JobSerializer)
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        return Response(s.JobSerializer(jobs.job_retry(user=request.user, job=self.get_object())).data)


class WorkerViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    serializer_class = s.WorkerSerializer
    filterset_class = filters.WorkerFilter
    ordering_fields = ["hostname", "last_seen_at"]

    def selector(self):
        return selectors.worker_list(user=self.request.user)
