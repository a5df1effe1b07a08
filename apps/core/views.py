"""Dashboard pages. Each view parses input, calls a selector or service, and renders.

Project pages look the project up through the selectors, so a project the user cannot see is a 404.
A refusal from a service (the user sees the object but may not act) becomes a 403 page.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseServerError
from django.shortcuts import redirect, render
from django.template import loader
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_POST

from . import filters, jobs, permissions, selectors, services
from .forms import ApiTokenCreateForm, LoginForm, MembershipAddForm, MembershipRoleForm
from .middleware import api_error, is_api_path
from .models import Job, JobStatus, Membership, Project, Role
from .pages import (
    dashboard_view,
    filtered,
    first_or_404,
    paginate,
    project_or_404,
    render_fragment,
    render_page,
)
from .permissions import Action

DEVICE_CHECK_JOB = "core.device_check"
DEVICE_CHECK_PARAMS = {"size": 512, "iterations": 50}


# Helpers -------------------------------------------------------------------------------------------------------


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
    return render_page(request, "core/home_empty.html", {}, section="home")


@dashboard_view
@require_POST
def project_switch(request: HttpRequest) -> HttpResponse:
    project = project_or_404(request, request.POST.get("project", ""))
    return redirect("project-home", project_slug=project.slug)


@dashboard_view
def project_home(request: HttpRequest, project_slug: str) -> HttpResponse:
    user = request.user
    project = project_or_404(request, project_slug)
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
    return render_page(request, "core/project_home.html", context, section="project-home")


# Jobs ----------------------------------------------------------------------------------------------------------


def _job(request: HttpRequest, project: Project, job_id: uuid.UUID) -> Job:
    return first_or_404(selectors.job_list(user=request.user), project=project, pk=job_id)


@dashboard_view
def job_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
    queryset = selectors.job_list(user=request.user).filter(project=project)
    filterset, queryset, status = filtered(filters.JobFilter, request, queryset)
    context = {
        "project": project,
        "filter": filterset,
        "page": paginate(request, queryset),
        "job_types": sorted(jobs.JOB_TYPES.values(), key=lambda kind: kind.name),
        "can_change": permissions.can(request.user, Action.CHANGE, project),
    }
    return render_fragment(
        request, "core/job_list.html", "core/partials/job_table.html", context, section="jobs", status=status
    )


@dashboard_view
@require_POST
def job_device_check(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
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
    return render_page(request, "core/job_detail.html", context, section="jobs", status=status)


@dashboard_view
def job_detail(request: HttpRequest, project_slug: str, job_id: uuid.UUID) -> HttpResponse:
    project = project_or_404(request, project_slug)
    return _render_job(request, project, _job(request, project, job_id))


def _job_action(request: HttpRequest, project_slug: str, job_id: uuid.UUID, action: Callable, done: str):
    project = project_or_404(request, project_slug)
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
    filterset, queryset, filter_status = filtered(filters.MembershipFilter, request, queryset)
    if can_manage and add_form is None:
        add_form = MembershipAddForm(project=project, user=request.user)
    context = {
        "project": project,
        "filter": filterset,
        "page": paginate(request, queryset),
        "roles": Role.choices,
        "can_manage": can_manage,
        "add_form": add_form,
        "action_errors": list(errors),
        "nav_can_audit": can_manage,
    }
    return render_page(request, "core/member_list.html", context, section="members", status=max(status, filter_status))


@dashboard_view
def member_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    return _render_members(request, project_or_404(request, project_slug))


@dashboard_view
@require_POST
def member_add(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug)
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
    return first_or_404(selectors.membership_list(user=request.user), project=project, pk=membership_id)


@dashboard_view
@require_POST
def member_update(request: HttpRequest, project_slug: str, membership_id: int) -> HttpResponse:
    project = project_or_404(request, project_slug)
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
    project = project_or_404(request, project_slug)
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
    filterset, queryset, filter_status = filtered(filters.ApiTokenFilter, request, queryset)
    context = {
        "form": form,
        "filter": filterset,
        "page": paginate(request, queryset),
        "created": created,
        "secret": secret,
        "projects": selectors.project_list(user=request.user),
    }
    return render_page(request, "core/token_list.html", context, section="tokens", status=max(status, filter_status))


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
    token = first_or_404(selectors.api_token_list(user=request.user), pk=token_id)
    services.api_token_revoke(user=request.user, token=token)
    messages.success(request, f"Token “{token.name}” revoked.")
    return redirect("token-list")


# Audit log and workers -----------------------------------------------------------------------------------------


@dashboard_view
def audit_list(request: HttpRequest, project_slug: str) -> HttpResponse:
    project = project_or_404(request, project_slug, action=Action.MANAGE)
    queryset = selectors.audit_event_list(user=request.user).filter(project=project)
    filterset, queryset, status = filtered(filters.AuditEventFilter, request, queryset)
    context = {"project": project, "filter": filterset, "page": paginate(request, queryset), "nav_can_audit": True}
    return render_page(request, "core/audit_list.html", context, section="audit", status=status)


@dashboard_view
def worker_list(request: HttpRequest) -> HttpResponse:
    filterset, queryset, status = filtered(filters.WorkerFilter, request, selectors.worker_list(user=request.user))
    page = paginate(request, queryset)
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
    return render_fragment(
        request, "core/worker_list.html", "core/partials/worker_table.html", context, section="workers", status=status
    )
