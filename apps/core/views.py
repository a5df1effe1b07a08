"""Dashboard pages. Each view parses input, calls a selector or service, and renders.

Project pages look the project up through the selectors, so a project the user cannot see is a 404.
A refusal from a service (the user sees the object but may not act) becomes a 403 page.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as Forbidden
from django.core.exceptions import ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseServerError
from django.shortcuts import redirect, render
from django.template import loader
from django.utils import timezone
from django.utils.cache import add_never_cache_headers, patch_vary_headers
from django.views.decorators.http import require_POST

from . import filters, jobs, permissions, selectors, services
from .forms import ApiTokenCreateForm, LoginForm, MembershipAddForm, MembershipRoleForm
from .middleware import api_error, is_api_path
from .models import Job, JobStatus, Membership, Project, Role
from .permissions import Action

PAGE_SIZE = 25
DEVICE_CHECK_JOB = "core.device_check"
DEVICE_CHECK_PARAMS = {"size": 512, "iterations": 50}


# Helpers -------------------------------------------------------------------------------------------------------


def dashboard_view(view: Callable) -> Callable:
    """Require a signed-in user and turn a service's permission refusal into a 403 page."""

    @login_required
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)
        except permissions.PermissionDenied as exc:
            raise Forbidden(str(exc)) from exc

    return wrapped


def _project(request: HttpRequest, slug: str, action: Action = Action.VIEW) -> Project:
    """The project, remembered as the user's current one; 404 unless the user may take `action` on it."""
    project = selectors.project_for_user(user=request.user, slug=slug, action=action)
    if project is None:
        raise Http404("Not found.")
    if request.session.get("project") != project.slug:
        request.session["project"] = project.slug
    return project


def _first_or_404(queryset: QuerySet, **lookup):
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise Http404("Not found.")
    return obj


def _filtered(filterset_class, request: HttpRequest, queryset: QuerySet):
    """The shared filter set over the queryset, and the status to answer with (400 when the filters are invalid)."""
    filterset = filterset_class(request.GET or None, queryset=queryset)
    if filterset.is_bound and not filterset.is_valid():
        return filterset, queryset.none(), 400
    return filterset, filterset.qs, 200


def _page(request: HttpRequest, queryset: QuerySet) -> Page:
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


def _render(request: HttpRequest, template: str, context: dict, *, section: str, status: int = 200) -> HttpResponse:
    """Render a dashboard page; the side navigation shows the audit log only to admins of the current project."""
    project = context.get("project")
    slug = project.slug if project else request.session.get("project")
    if "nav_can_audit" not in context:
        context["nav_can_audit"] = bool(slug) and (
            selectors.project_for_user(user=request.user, slug=slug, action=Action.MANAGE) is not None
        )
    return render(request, template, {**context, "section": section}, status=status)


def _render_fragment(request: HttpRequest, page: str, fragment: str, context: dict, *, section: str, status: int):
    """The whole page, or only the fragment htmx asked for (live refreshes and filter changes)."""
    # A history restore (back button after the cache expired) needs the whole page, not the fragment.
    if request.htmx and not request.htmx.history_restore_request:
        response = render(request, fragment, context, status=status)
    else:
        response = _render(request, page, context, section=section, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _seconds_ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 172800:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _gb(megabytes) -> str:
    return f"{(megabytes or 0) / 1024:.1f} GB"


# Sign-in, errors, home -----------------------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    form_class = LoginForm
    template_name = "core/login.html"
    redirect_authenticated_user = True

    def form_invalid(self, form: LoginForm) -> HttpResponse:
        response = super().form_invalid(form)
        response.status_code = 429 if form.rate_limited else 400
        return response


def not_found(request: HttpRequest, exception=None) -> HttpResponse:
    if is_api_path(request.path):
        return api_error(404, "not_found", "Not found.")
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return api_error(500, "server_error", "An internal error occurred; it has been logged.")
    # No request context: the failure may be in the database or the session that context processors read.
    return HttpResponseServerError(loader.get_template("500.html").render())


@login_required
def home(request: HttpRequest) -> HttpResponse:
    projects = selectors.project_list(user=request.user)
    last = request.session.get("project")
    project = (projects.filter(slug=last).first() if last else None) or projects.first()
    if project is not None:
        return redirect("project-home", project_slug=project.slug)
    return _render(request, "core/home_empty.html", {}, section="home")


@dashboard_view
@require_POST
def project_switch(request: HttpRequest) -> HttpResponse:
    project = _project(request, request.POST.get("project", ""))
    return redirect("project-home", project_slug=project.slug)


@dashboard_view
def project_home(request: HttpRequest, project_slug: str) -> HttpResponse:
    user = request.user
    project = _project(request, project_slug)
    is_admin = permissions.can(user, Action.MANAGE, project)
    role = permissions.role_on_project(user, project)
    memberships = selectors.membership_list(user=user).filter(project=project)
    my_tokens = filters.ApiTokenFilter(
        {"active": "true"},
        queryset=selectors.api_token_list(user=user).filter(Q(project=project) | Q(project__isnull=True), user=user),
    ).qs
    project_jobs = selectors.job_list(user=user).filter(project=project)
    live_workers = filters.WorkerFilter({"alive": "true"}, queryset=selectors.worker_list(user=user)).qs
    context = {
        "project": project,
        "role_label": Role(role).label if role else "—",
        "member_count": memberships.count(),
        "members": memberships[:5],
        "token_count": my_tokens.count(),
        "tokens": my_tokens[:5],
        "job_count": project_jobs.count(),
        "jobs": project_jobs[:5],
        "events": selectors.audit_event_list(user=user).filter(project=project)[:5] if is_admin else None,
        "worker_count": live_workers.count(),
        "workers": live_workers[:5],
        "nav_can_audit": is_admin,
    }
    return _render(request, "core/project_home.html", context, section="project-home")


# Jobs ----------------------------------------------------------------------------------------------------------


def _job(request: HttpRequest, project: Project, job_id: uuid.UUID) -> Job:
    return _first_or_404(selectors.job_list(user=request.user), project=project, pk=job_id)


@dashboard_view
def job_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = _project(request, project_slug)
    queryset = selectors.job_list(user=request.user).filter(project=project)
    filterset, queryset, status = _filtered(filters.JobFilter, request, queryset)
    context = {
        "project": project,
        "filter": filterset,
        "page": _page(request, queryset),
        "job_types": sorted(jobs.JOB_TYPES.values(), key=lambda kind: kind.name),
        "can_change": permissions.can(request.user, Action.CHANGE, project),
    }
    return _render_fragment(
        request, "core/job_list.html", "core/partials/job_table.html", context, section="jobs", status=status
    )


@dashboard_view
@require_POST
def job_device_check(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = _project(request, project_slug)
    job = jobs.job_create(user=request.user, project=project, job_type=DEVICE_CHECK_JOB, params=DEVICE_CHECK_PARAMS)
    messages.success(request, "Device check queued.")
    return redirect("job-detail", project_slug=project.slug, job_id=job.id)


def _render_job(request: HttpRequest, project: Project, job: Job, *, error: str = "", status: int = 200):
    context = {
        "project": project,
        "job": job,
        "params_json": json.dumps(job.params, sort_keys=True),
        "result_json": json.dumps(job.result, indent=2, sort_keys=True) if job.result is not None else "",
        "can_change": permissions.can(request.user, Action.CHANGE, job),
        "retryable": job.status in (JobStatus.FAILED, JobStatus.CANCELLED),
        "action_error": error,
    }
    return _render(request, "core/job_detail.html", context, section="jobs", status=status)


@dashboard_view
def job_detail(request: HttpRequest, project_slug: str, job_id: uuid.UUID) -> HttpResponse:
    project = _project(request, project_slug)
    return _render_job(request, project, _job(request, project, job_id))


def _job_action(request: HttpRequest, project_slug: str, job_id: uuid.UUID, action: Callable, done: str):
    project = _project(request, project_slug)
    job = _job(request, project, job_id)
    permissions.check(request.user, Action.CHANGE, job)
    try:
        action(user=request.user, job=job)
    except (ValidationError, permissions.PermissionDenied) as exc:
        # Past the permission check, a refusal is about the job's state (already finished, not retryable).
        message = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        return _render_job(request, project, _job(request, project, job_id), error=message, status=400)
    messages.success(request, done)
    return redirect("job-detail", project_slug=project.slug, job_id=job.id)


@dashboard_view
@require_POST
def job_cancel(request: HttpRequest, project_slug: str, job_id: uuid.UUID) -> HttpResponse:
    return _job_action(request, project_slug, job_id, jobs.job_cancel, "Job cancelled.")


@dashboard_view
@require_POST
def job_retry(request: HttpRequest, project_slug: str, job_id: uuid.UUID) -> HttpResponse:
    return _job_action(request, project_slug, job_id, jobs.job_retry, "Job queued again.")


# Members -------------------------------------------------------------------------------------------------------


def _render_members(
    request: HttpRequest, project: Project, *, add_form: MembershipAddForm | None = None, errors=(), status=200
) -> HttpResponse:
    can_manage = permissions.can(request.user, Action.MANAGE, project)
    queryset = selectors.membership_list(user=request.user).filter(project=project)
    filterset, queryset, filter_status = _filtered(filters.MembershipFilter, request, queryset)
    if can_manage and add_form is None:
        add_form = MembershipAddForm(project=project, user=request.user)
    context = {
        "project": project,
        "filter": filterset,
        "page": _page(request, queryset),
        "roles": Role.choices,
        "can_manage": can_manage,
        "add_form": add_form,
        "action_errors": list(errors),
        "nav_can_audit": can_manage,
    }
    return _render(request, "core/member_list.html", context, section="members", status=max(status, filter_status))


@dashboard_view
def member_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    return _render_members(request, _project(request, project_slug))


@dashboard_view
@require_POST
def member_add(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = _project(request, project_slug)
    permissions.check(request.user, Action.MANAGE, project)
    form = MembershipAddForm(request.POST, project=project, user=request.user)
    if form.is_valid():
        try:
            membership = services.membership_create(
                user=request.user,
                project=project,
                role=form.cleaned_data["role"],
                member=form.cleaned_data.get("member"),
                team=form.cleaned_data.get("team"),
            )
        except ValidationError as exc:
            form.add_error(None, exc.messages)
        else:
            messages.success(request, f"{membership.user or membership.team} is now {membership.get_role_display()}.")
            return redirect("member-list", project_slug=project.slug)
    return _render_members(request, project, add_form=form, status=400)


def _membership(request: HttpRequest, project: Project, membership_id: int) -> Membership:
    return _first_or_404(selectors.membership_list(user=request.user), project=project, pk=membership_id)


@dashboard_view
@require_POST
def member_update(request: HttpRequest, project_slug: str, membership_id: int) -> HttpResponse:
    project = _project(request, project_slug)
    permissions.check(request.user, Action.MANAGE, project)
    membership = _membership(request, project, membership_id)
    form = MembershipRoleForm(request.POST)
    if not form.is_valid():
        return _render_members(request, project, errors=[f"Choose one of: {', '.join(Role.values)}."], status=400)
    try:
        services.membership_update(user=request.user, membership=membership, role=form.cleaned_data["role"])
    except ValidationError as exc:
        return _render_members(request, project, errors=exc.messages, status=400)
    messages.success(request, f"{membership.user or membership.team} is now {membership.get_role_display()}.")
    return redirect("member-list", project_slug=project.slug)


@dashboard_view
@require_POST
def member_remove(request: HttpRequest, project_slug: str, membership_id: int) -> HttpResponse:
    project = _project(request, project_slug)
    permissions.check(request.user, Action.MANAGE, project)
    membership = _membership(request, project, membership_id)
    try:
        services.membership_delete(user=request.user, membership=membership)
    except ValidationError as exc:
        return _render_members(request, project, errors=exc.messages, status=400)
    messages.success(request, f"{membership.user or membership.team} was removed from the project.")
    return redirect("member-list", project_slug=project.slug)


# API tokens ----------------------------------------------------------------------------------------------------


def _render_tokens(
    request: HttpRequest, form: ApiTokenCreateForm, *, created=None, secret: str = "", status: int = 200
) -> HttpResponse:
    queryset = selectors.api_token_list(user=request.user).filter(user=request.user)
    filterset, queryset, filter_status = _filtered(filters.ApiTokenFilter, request, queryset)
    context = {
        "form": form,
        "filter": filterset,
        "page": _page(request, queryset),
        "created": created,
        "secret": secret,
        "projects": selectors.project_list(user=request.user),
    }
    return _render(request, "core/token_list.html", context, section="tokens", status=max(status, filter_status))


@dashboard_view
def token_list(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return _render_tokens(request, ApiTokenCreateForm(user=request.user))
    form = ApiTokenCreateForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            token, secret = services.api_token_create(
                user=request.user,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                project=form.cleaned_data["project"],
                expires_at=form.expires_at,
            )
        except ValidationError as exc:
            form.add_error(None, exc.messages)
        else:
            # The secret exists only in this response: not in the session, a message or any cache.
            response = _render_tokens(
                request, ApiTokenCreateForm(user=request.user), created=token, secret=secret, status=201
            )
            add_never_cache_headers(response)
            return response
    return _render_tokens(request, form, status=400)


@dashboard_view
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = _first_or_404(selectors.api_token_list(user=request.user), pk=token_id)
    services.api_token_revoke(user=request.user, token=token)
    messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("token-list")


# Audit log and workers -----------------------------------------------------------------------------------------


@dashboard_view
def audit_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = _project(request, project_slug, action=Action.MANAGE)
    queryset = selectors.audit_event_list(user=request.user).filter(project=project)
    filterset, queryset, status = _filtered(filters.AuditEventFilter, request, queryset)
    context = {"project": project, "filter": filterset, "page": _page(request, queryset), "nav_can_audit": True}
    return _render(request, "core/audit_list.html", context, section="audit", status=status)


@dashboard_view
def worker_list(request: HttpRequest) -> HttpResponse:
    filterset, queryset, status = _filtered(filters.WorkerFilter, request, selectors.worker_list(user=request.user))
    page = _page(request, queryset)
    now = timezone.now()
    rows = [
        {
            "worker": worker,
            "seen_ago": _seconds_ago((now - worker.last_seen_at).total_seconds()),
            "devices": [
                {**device, "total": _gb(device.get("total_mb")), "free": _gb(device.get("free_mb"))}
                for device in worker.devices
            ],
        }
        for worker in page
    ]
    context = {"filter": filterset, "page": page, "rows": rows}
    return _render_fragment(
        request, "core/worker_list.html", "core/partials/worker_table.html", context, section="workers", status=status
    )
