"""Accounting REST API. Views parse, call a selector or service, and render."""

from __future__ import annotations

import csv
import datetime
import io

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, renderers, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api.errors import error_response
from apps.core.api.parsers import FastJSONParser, JSONParser
from apps.core.api.views import BaseViewSet
from apps.core.models import Project
from apps.core.numbers import whole_number
from apps.core.permissions import Action, PermissionDenied, restrict
from apps.core.selectors import project_for_user
from apps.registry.models import ModelVersion

from .. import budgets, filters, ingestion, rollups, selectors, services, tokenizers
from ..models import AccountingSettings
from ..pricing import Tokens, catalog_current, cost_compute, price_resolve
from . import serializers as s


class CSVRenderer(renderers.BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        rows = data.get("results", []) if isinstance(data, dict) else data
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue().encode()


class JSONErrorsMixin:
    """Errors are JSON in the error shape even when the request asked for CSV."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400 and getattr(response, "accepted_renderer", None).format == "csv":
            response.accepted_renderer = renderers.JSONRenderer()
            response.accepted_media_type = "application/json"
            response.renderer_context = self.get_renderer_context()
        return response


class UsageEventViewSet(mixins.ListModelMixin, BaseViewSet):
    """Raw usage events: ingest a batch (POST) and list them (GET, paginated and filtered)."""

    serializer_class = s.UsageEventSerializer
    filterset_class = filters.UsageEventFilter
    parser_classes = [FastJSONParser]  # batches of 1,000 events
    ordering_fields = ["time", "cost", "prompt_tokens", "completion_tokens", "latency_ms"]
    ordering = ["-time", "-id"]

    def selector(self):
        return selectors.usage_event_list(user=self.request.user)

    @extend_schema(request=s.UsageBatchSerializer, responses={200: dict})
    def create(self, request):
        data = self.validated(s.UsageBatchSerializer, request.data)
        try:
            result = ingestion.usage_ingest(user=request.user, events=data["events"], project=data.get("project"))
        except ingestion.Rejected as exc:
            raise ValidationError({"events": [str(exc)]})
        body = result.as_dict()
        if result.rejected and not result.accepted and not result.duplicates:
            return error_response(400, "invalid", "No event of the batch could be stored.", body)
        return Response(body, status=status.HTTP_200_OK)


class DeploymentCostViewSet(mixins.ListModelMixin, BaseViewSet):
    """GPU-hour cost of self-hosted deployments per revision and hour, with the tokens served and idle spend.

    Computed from the runtime's state events by apps/accounting/gpu_cost.py (each row keeps the accelerator price
    it was computed with). A `project` the caller cannot see is a 404, as for any project-scoped lookup.
    """

    serializer_class = s.DeploymentCostSerializer
    filterset_class = filters.DeploymentCostFilter
    ordering_fields = ["bucket", "gpu_cost", "idle_cost", "tokens", "accelerator_hours"]
    ordering = ["-bucket", "deployment", "revision"]

    def selector(self):
        slug = self.request.query_params.get("project")
        if slug and project_for_user(user=self.request.user, slug=slug[:50]) is None:
            raise NotFound(f"No project '{slug[:50]}'.")
        return selectors.deployment_cost_list(user=self.request.user)


def _time_param(request, name: str) -> datetime.datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise ValidationError({name: ["Give an ISO 8601 date or time."]})
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


class UsageSummaryView(JSONErrorsMixin, APIView):
    """Cost and tokens grouped by model, deployment, user, team, project, day or hour, read from the rollups."""

    renderer_classes = [renderers.JSONRenderer, CSVRenderer]

    def required_action(self, request):
        return Action.VIEW

    @extend_schema(
        parameters=[
            OpenApiParameter("group_by", enum=list(rollups.GROUPS), default="model"),
            OpenApiParameter("from", str),
            OpenApiParameter("to", str),
            OpenApiParameter("project", str),
        ],
        responses={200: dict},
    )
    def get(self, request):
        group_by = request.query_params.get("group_by", "model")
        if group_by not in rollups.GROUPS:
            raise ValidationError({"group_by": [f"Use one of: {', '.join(rollups.GROUPS)}."]})
        start, end = _time_param(request, "from"), _time_param(request, "to")
        model = rollups.rollup_model(group_by, start, end)
        if model is not rollups.UsageDaily and not all(rollups._aligned(m, "hour") for m in (start, end)):
            raise ValidationError({"from": ["Summaries start and end on whole hours (UTC)."]})
        params = request.query_params.copy()
        for name in ("from", "to"):  # validated above, in any ISO form; the filter set takes datetimes
            if params.get(name):
                params[name] = (start if name == "from" else end).isoformat()
        filterset = filters.UsageSummaryFilter(params, queryset=selectors.rollup_list(user=request.user, model=model))
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        rows = rollups.summarize(filterset.qs, group_by)
        if request.accepted_renderer.format == "csv":
            response = Response(rows)
            response["Content-Disposition"] = f'attachment; filename="usage-by-{group_by}.csv"'
            return response
        return Response({"group_by": group_by, "source": model._meta.model_name, "results": rows})


class UsageSummaryCSVView(UsageSummaryView):
    def perform_content_negotiation(self, request, force=False):
        return CSVRenderer(), CSVRenderer.media_type


def _counter_for(request, *, tokenizer: str | None, model: str | None) -> tokenizers.Counter:
    name = tokenizer or (tokenizers.openai_encoding_name(model) if model else None)
    if name is None:
        raise ValidationError({"tokenizer": [f"No tokenizer known for model '{model}'; name one."]})
    if name.startswith(tokenizers.REGISTRY_PREFIX):
        version_id = tokenizers.registry_version_id(name)
        visible = restrict(ModelVersion.objects.filter(deleted_at__isnull=True), request.user, Action.VIEW)
        if version_id is None or not visible.filter(pk=version_id).exists():
            raise ValidationError(
                {"tokenizer": [f"No registered version '{name[len(tokenizers.REGISTRY_PREFIX) :]}'."]}
            )
    try:
        return tokenizers.counter_get(name)
    except tokenizers.TokenizerUnavailable as exc:
        raise ValidationError({"tokenizer": [str(exc)]})


class TokenCountView(APIView):
    parser_classes = [JSONParser]

    def required_action(self, request):
        return Action.VIEW  # counting changes nothing, so a read token may do it

    @extend_schema(request=s.TokenCountSerializer, responses={200: dict})
    def post(self, request):
        serializer = s.TokenCountSerializer(data=request.data if isinstance(request.data, dict) else {})
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        counter = _counter_for(request, tokenizer=data.get("tokenizer"), model=data.get("model"))
        if "messages" in data:
            try:
                messages = ingestion._messages(data["messages"])
            except ingestion.Rejected as exc:
                raise ValidationError({"messages": [str(exc)]})
            tokens = tokenizers.count_messages(counter, messages)
            characters = sum(len(m.get("content", "")) for m in messages)
        else:
            tokens = tokenizers.count_text(counter, data["text"])
            characters = len(data["text"])
        cost = None
        if data.get("model"):
            catalog = catalog_current()
            entry = price_resolve(
                project_id=None, model=data["model"], provider=data["provider"], at=datetime.datetime.now(datetime.UTC)
            )
            if entry is not None:
                cost = {
                    "input_cost": str(cost_compute(entry, Tokens(prompt=tokens)) - entry.per_request),
                    "input_per_million": str(entry.input_per_million),
                    "currency": entry.currency,
                    "price_entry": entry.pk,
                    "catalog_version": catalog.version if catalog else None,
                }
        return Response(
            {
                "tokens": tokens,
                "characters": characters,
                "characters_per_token": round(characters / tokens, 3) if tokens else None,
                "tokenizer": counter.name,
                "cost": cost,
            }
        )


class TokenCompareView(APIView):
    COMPARED = ("cl100k_base", "o200k_base")

    def required_action(self, request):
        return Action.VIEW

    @extend_schema(parameters=[OpenApiParameter("text", str), OpenApiParameter("version", int)], responses={200: dict})
    def get(self, request):
        text = request.query_params.get("text")
        if text is None:
            raise ValidationError({"text": ["Give the text to count."]})
        names = list(self.COMPARED)
        if request.query_params.get("version"):
            names.append(f"{tokenizers.REGISTRY_PREFIX}{request.query_params['version']}")
        results = []
        for name in names:
            counter = _counter_for(request, tokenizer=name, model=None)
            tokens = tokenizers.count_text(counter, text)
            results.append(
                {
                    "tokenizer": counter.name,
                    "tokens": tokens,
                    "characters_per_token": round(len(text) / tokens, 3) if tokens else None,
                }
            )
        return Response({"characters": len(text), "results": results})


class PriceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """The current catalog's prices (or ?catalog_version=) and project overrides; overrides can be changed."""

    serializer_class = s.PriceEntrySerializer
    filterset_class = filters.PriceFilter
    ordering_fields = ["model_pattern", "effective_from", "created_at"]
    ordering = ["model_pattern", "-effective_from"]
    scope_action = {"create": Action.MANAGE, "partial_update": Action.MANAGE, "destroy": Action.MANAGE}

    def selector(self):
        raw = self.request.query_params.get("catalog_version")
        version = None if raw is None else whole_number(raw, upper=2**31)
        if raw is not None and version is None:
            raise ValidationError({"catalog_version": ["Give a catalog version number."]})
        return selectors.price_list(user=self.request.user, catalog_version=version)

    def get_object(self):
        entry = super().get_object()
        if self.action in ("partial_update", "destroy") and entry.catalog_id is not None:
            raise PermissionDenied("Published catalog prices do not change; add a project override instead.")
        return entry

    @extend_schema(request=s.PriceEntrySerializer, responses={201: s.PriceEntrySerializer})
    def create(self, request):
        data = self.validated(s.PriceEntrySerializer, request.data)
        entry = services.price_override_create(user=request.user, **data)
        return self.created(s.PriceEntrySerializer, entry)

    @extend_schema(request=s.PriceEntryUpdateSerializer, responses=s.PriceEntrySerializer)
    def partial_update(self, request, pk=None):
        data = self.validated(s.PriceEntryUpdateSerializer, request.data)
        entry = services.price_override_update(user=request.user, entry=self.get_object(), **data)
        return Response(s.PriceEntrySerializer(entry, context=self.get_serializer_context()).data)

    def destroy(self, request, pk=None):
        services.price_override_delete(user=request.user, entry=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class BudgetViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, BaseViewSet):
    """Budgets with their status (spent, forecast, thresholds crossed) in every representation."""

    serializer_class = s.BudgetSerializer
    filterset_class = filters.BudgetFilter
    ordering_fields = ["name", "amount", "created_at"]
    object_action = {"partial_update": Action.MANAGE, "destroy": Action.MANAGE}
    scope_action = {"create": Action.MANAGE, "partial_update": Action.MANAGE, "destroy": Action.MANAGE}

    def selector(self):
        return selectors.budget_list(user=self.request.user)

    @extend_schema(request=s.BudgetSerializer, responses={201: s.BudgetSerializer})
    def create(self, request):
        data = self.validated(s.BudgetSerializer, request.data)
        project = data.pop("project")
        budget = budgets.budget_create(user=request.user, project=project, fields=data)
        return self.created(s.BudgetSerializer, budget)

    @extend_schema(request=s.BudgetUpdateSerializer, responses=s.BudgetSerializer)
    def partial_update(self, request, pk=None):
        budget = self.get_object()
        serializer = s.BudgetUpdateSerializer(
            budget, data=request.data, partial=True, context=self.get_serializer_context()
        )
        serializer.is_valid(raise_exception=True)
        budget = budgets.budget_update(user=request.user, budget=budget, fields=serializer.validated_data)
        return Response(s.BudgetSerializer(budget, context=self.get_serializer_context()).data)

    def destroy(self, request, pk=None):
        budgets.budget_delete(user=request.user, budget=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses={200: dict})
    @action(detail=True, methods=["get"])
    def status(self, request, pk=None):
        budget = self.get_object()
        return Response(s.BudgetSerializer(budget, context=self.get_serializer_context()).data["status"])


class AccountingSettingsView(APIView):
    """A project's accounting choices: `store_text` keeps the text sent with usage events (off by default)."""

    parser_classes = [JSONParser]

    def required_action(self, request):
        return Action.VIEW if request.method == "GET" else Action.MANAGE

    def _project(self, request, slug: str):
        project = restrict(Project.objects.filter(slug=slug), request.user, Action.VIEW).first()
        if project is None:
            raise Http404
        return project

    @extend_schema(responses={200: dict})
    def get(self, request, slug: str):
        project = self._project(request, slug)
        current = AccountingSettings.objects.filter(project=project).first()
        return Response({"project": project.slug, "store_text": bool(current and current.store_text)})

    @extend_schema(request=s.AccountingSettingsSerializer, responses={200: dict})
    def patch(self, request, slug: str):
        project = self._project(request, slug)
        serializer = s.AccountingSettingsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        current = services.accounting_settings_update(
            user=request.user, project=project, store_text=serializer.validated_data["store_text"]
        )
        return Response({"project": project.slug, "store_text": current.store_text})
