"""Registry pages: the model list, a model, a version, and the comparison of two versions.

Each view parses input, calls a selector or service, and renders. Models and versions are looked up through the
selectors, so what the user may not see is a 404; a refusal from a service becomes a form error or a 403.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_POST
from markdown_it import MarkdownIt

from apps.core import permissions
from apps.core.models import Project
from apps.core.pages import (
    dashboard_view,
    filtered,
    first_or_404,
    paginate,
    project_or_404,
    render_fragment,
    render_page,
)
from apps.core.permissions import Action

from . import filters, selectors, services
from .forms import AliasSetForm, VersionCompareForm
from .models import ModelVersion, PromotionStatus, RegisteredModel, VersionStatus

FILES_PAGE_SIZE = 100
COMPARE_SUGGESTIONS = 200

# Raw HTML in a description is shown as text ("html": False) and markdown-it refuses javascript:, vbscript:,
# file: and data: links, so the rendered description cannot carry script.
_markdown = MarkdownIt("commonmark", {"html": False}).enable("table")


def render_markdown(text: str) -> SafeString:
    return mark_safe(_markdown.render(text or ""))


def _model(request: HttpRequest, project: Project, name: str) -> RegisteredModel:
    return first_or_404(selectors.registered_model_list(user=request.user), project=project, name=name)


def _version(request: HttpRequest, model: RegisteredModel, number: int) -> ModelVersion:
    return first_or_404(selectors.model_version_list(user=request.user), model=model, number=number)


def _refusal(exc: Exception) -> list[str]:
    return exc.messages if isinstance(exc, ValidationError) else [str(exc)]


# Model list ----------------------------------------------------------------------------------------------------


@dashboard_view
def model_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    queryset = selectors.registered_model_list(user=request.user).filter(project=project)
    filterset, queryset, status = filtered(filters.RegisteredModelFilter, request, queryset)
    context = {"project": project, "filter": filterset, "page": paginate(request, queryset)}
    return render_fragment(
        request,
        "registry/model_list.html",
        "registry/partials/model_table.html",
        context,
        section="models",
        status=status,
    )


# Model page, aliases and promotions ----------------------------------------------------------------------------


def _render_model(
    request: HttpRequest,
    project: Project,
    model: RegisteredModel,
    *,
    alias_form: AliasSetForm | None = None,
    errors=(),
    status: int = 200,
) -> HttpResponse:
    user = request.user
    versions = selectors.model_version_list(user=user).filter(model=model, deleted_at__isnull=True).order_by("-number")
    can_change = permissions.can(user, Action.CHANGE, model)
    context = {
        "project": project,
        "model": model,
        "description_html": render_markdown(model.description),
        "page": paginate(request, versions),
        "ready_numbers": list(versions.filter(status=VersionStatus.READY).values_list("number", flat=True)[:200]),
        "aliases": list(model.aliases.all()),
        "protected_aliases": settings.PROTECTED_ALIASES,
        "approval_required": settings.PROTECTED_ALIAS_APPROVAL,
        "promotions": selectors.promotion_list(user=user).filter(model=model)[:50],
        "can_change": can_change,
        "can_promote": permissions.can(user, Action.PROMOTE, model),
        "alias_form": alias_form or (AliasSetForm() if can_change else None),
        "action_errors": list(errors),
    }
    return render_page(request, "registry/model_detail.html", context, section="models", status=status)


@dashboard_view
def model_detail(request: HttpRequest, project_slug: str, model_name: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    return _render_model(request, project, _model(request, project, model_name))


@dashboard_view
@require_POST
def alias_set(request: HttpRequest, project_slug: str, model_name: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    model = _model(request, project, model_name)
    permissions.check(request.user, Action.CHANGE, model)
    form = AliasSetForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        version = selectors.version_by_number(user=request.user, model=model, number=data["version"])
        if version is None:
            form.add_error("version", f"{model.name} has no version {data['version']}.")
        else:
            try:
                promotion = services.alias_set(
                    user=request.user, version=version, alias=data["alias"], reason=data["reason"]
                )
            except ValidationError as exc:
                form.add_error(None, exc.messages)
            except permissions.PermissionDenied as exc:
                return _render_model(request, project, model, alias_form=form, errors=[str(exc)], status=403)
            else:
                if promotion.status == PromotionStatus.PENDING:
                    messages.success(request, f"Moving {promotion.alias} to {version.number} awaits approval.")
                else:
                    messages.success(request, f"{promotion.alias} now points at version {version.number}.")
                return redirect("model-detail", project_slug=project.slug, model_name=model.name)
    return _render_model(request, project, model, alias_form=form, status=400)


@dashboard_view
@require_POST
def alias_delete(request: HttpRequest, project_slug: str, model_name: str, alias: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    model = _model(request, project, model_name)
    try:
        services.alias_delete(user=request.user, model=model, alias=alias)
    except (ValidationError, permissions.PermissionDenied) as exc:
        status = 400 if isinstance(exc, ValidationError) else 403
        return _render_model(request, project, model, errors=_refusal(exc), status=status)
    messages.success(request, f"Alias {alias} removed.")
    return redirect("model-detail", project_slug=project.slug, model_name=model.name)


def _decide(request: HttpRequest, project_slug: str, model_name: str, promotion_id: int, *, approve: bool):
    project = project_or_404(request, project_slug)
    model = _model(request, project, model_name)
    promotion = first_or_404(selectors.promotion_list(user=request.user), model=model, pk=promotion_id)
    try:
        services.promotion_decide(user=request.user, promotion=promotion, approve=approve)
    except (ValidationError, permissions.PermissionDenied) as exc:
        status = 400 if isinstance(exc, ValidationError) else 403
        return _render_model(request, project, model, errors=_refusal(exc), status=status)
    verb = "approved" if approve else "rejected"
    messages.success(request, f"Moving {promotion.alias} to version {promotion.to_version.number} {verb}.")
    return redirect("model-detail", project_slug=project.slug, model_name=model.name)


@dashboard_view
@require_POST
def promotion_approve(request: HttpRequest, project_slug: str, model_name: str, promotion_id: int) -> HttpResponse:
    return _decide(request, project_slug, model_name, promotion_id, approve=True)


@dashboard_view
@require_POST
def promotion_reject(request: HttpRequest, project_slug: str, model_name: str, promotion_id: int) -> HttpResponse:
    return _decide(request, project_slug, model_name, promotion_id, approve=False)


# Version page --------------------------------------------------------------------------------------------------

NODE_WIDTH, NODE_HEIGHT, COLUMN_GAP, ROW_GAP, PAD = 180, 46, 80, 18, 12


def lineage_layout(graph: selectors.LineageGraph) -> dict:
    """Positions for a server-drawn SVG: one column per generation (ancestors left, descendants right)."""
    depths = sorted(set(graph.depth.values()))
    columns: dict[int, list[ModelVersion]] = {depth: [] for depth in depths}
    for version in sorted(graph.nodes.values(), key=lambda v: (v.model.name, v.number)):
        columns[graph.depth[version.pk]].append(version)
    position = {}
    for column, depth in enumerate(depths):
        for row, version in enumerate(columns[depth]):
            position[version.pk] = (PAD + column * (NODE_WIDTH + COLUMN_GAP), PAD + row * (NODE_HEIGHT + ROW_GAP))
    nodes = [
        {
            "x": position[v.pk][0],
            "y": position[v.pk][1],
            "label": f"{v.model.name}:{v.number}",
            "status": v.get_status_display(),
            "current": v.pk == graph.root.pk,
            "url": reverse("model-version", args=[v.model.project.slug, v.model.name, v.number]),
        }
        for v in graph.nodes.values()
    ]
    edges = []
    for link in graph.edges:
        (px, py), (cx, cy) = position[link.parent_id], position[link.child_id]
        x1, y1, x2, y2 = px + NODE_WIDTH, py + NODE_HEIGHT / 2, cx, cy + NODE_HEIGHT / 2
        middle = (x1 + x2) / 2
        edges.append(
            {
                "path": f"M {x1} {y1} C {middle} {y1}, {middle} {y2}, {x2} {y2}",
                "label": link.get_relation_display(),
                "label_x": middle,
                "label_y": (y1 + y2) / 2 - 5,
            }
        )
    rows = max(len(column) for column in columns.values())
    return {
        "nodes": nodes,
        "edges": edges,
        "width": 2 * PAD + len(depths) * (NODE_WIDTH + COLUMN_GAP) - COLUMN_GAP,
        "height": 2 * PAD + rows * (NODE_HEIGHT + ROW_GAP) - ROW_GAP,
        "node_width": NODE_WIDTH,
        "node_height": NODE_HEIGHT,
        "truncated": graph.truncated,
        "has_relatives": len(graph.nodes) > 1,
    }


def _global_name(entry) -> str:
    if isinstance(entry, dict):
        return ".".join(str(part) for part in (entry.get("module"), entry.get("name")) if part)
    return str(entry)


def scan_rows(report: dict) -> list[dict]:
    """One row per scanned file: the globals its pickle imports (unsafe ones apart) and the scanner's issues."""
    rows = []
    for entry in report.get("files") or []:
        if not isinstance(entry, dict):
            continue
        imports = [g for g in entry.get("globals") or [] if isinstance(g, dict)]
        rows.append(
            {
                "path": entry.get("path", "?"),
                "unsafe": [_global_name(g) for g in imports if not g.get("safe")],
                "safe": [_global_name(g) for g in imports if g.get("safe")],
                "issues": [str(issue) for issue in entry.get("issues") or []],
            }
        )
    return rows


def _render_version(
    request: HttpRequest, project: Project, model: RegisteredModel, version: ModelVersion, *, errors=(), status=200
) -> HttpResponse:
    user = request.user
    manifest_url = request.build_absolute_uri(reverse("registry-version-manifest", kwargs={"pk": version.pk}))
    files = Paginator(selectors.version_files(version=version), FILES_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "project": project,
        "model": model,
        "version": version,
        "metadata_rows": sorted(version.metadata.items()),
        "files": files,
        "page": files,
        "scan": version.scan_report or {},
        "scan_rows": scan_rows(version.scan_report or {}),
        "lineage": lineage_layout(selectors.lineage_graph(user=user, version=version)),
        "pull_command": f"cpctl models pull {project.slug}/{model.name}:{version.number} {model.name}-{version.number}",
        "manifest_url": manifest_url,
        "can_delete": version.deleted_at is None and permissions.can(user, Action.DELETE, version),
        "action_errors": list(errors),
    }
    return render_page(request, "registry/version_detail.html", context, section="models", status=status)


@dashboard_view
def version_detail(request: HttpRequest, project_slug: str, model_name: str, number: int) -> HttpResponse:
    project = project_or_404(request, project_slug)
    model = _model(request, project, model_name)
    return _render_version(request, project, model, _version(request, model, number))


@dashboard_view
@require_POST
def version_delete(request: HttpRequest, project_slug: str, model_name: str, number: int) -> HttpResponse:
    project = project_or_404(request, project_slug)
    model = _model(request, project, model_name)
    version = _version(request, model, number)
    permissions.check(request.user, Action.DELETE, version)
    try:
        services.version_delete(user=request.user, version=version)
    except ValidationError as exc:
        return _render_version(request, project, model, version, errors=exc.messages, status=400)
    messages.success(request, f"Version {version.number} deleted; its files are freed after the retention period.")
    return redirect("model-detail", project_slug=project.slug, model_name=model.name)


# Compare -------------------------------------------------------------------------------------------------------


@dashboard_view
def version_compare(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    form = VersionCompareForm(request.GET or None, user=request.user, project=project)
    result, status = None, 200
    if form.is_bound:
        if form.is_valid():
            result = selectors.version_compare(a=form.cleaned_data["a"], b=form.cleaned_data["b"])
        else:
            status = 400
    suggestions = (
        selectors.visible_versions(user=request.user)
        .filter(model__project=project, deleted_at__isnull=True)
        .order_by("model__name", "-number")
        .values_list("model__name", "number")[:COMPARE_SUGGESTIONS]
    )
    context = {
        "project": project,
        "form": form,
        "result": result,
        "suggestions": [f"{name}:{number}" for name, number in suggestions],
    }
    return render_page(request, "registry/version_compare.html", context, section="models", status=status)
