"""Building blocks shared by every app's dashboard pages: login and refusal handling, project lookup,
filtering with the API's filter sets, pagination, and rendering with the side navigation."""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as Forbidden
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers

from . import permissions, selectors
from .models import Project
from .permissions import Action

PAGE_SIZE = 25


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


def project_or_404(request: HttpRequest, slug: str, action: Action = Action.VIEW) -> Project:
    """The project, remembered as the user's current one; 404 unless the user may take `action` on it."""
    project = selectors.project_for_user(user=request.user, slug=slug, action=action)
    if project is None:
        raise Http404("Not found.")
    if request.session.get("project") != project.slug:
        request.session["project"] = project.slug
    return project


def first_or_404(queryset: QuerySet, **lookup):
    obj = queryset.filter(**lookup).first()
    if obj is None:
        raise Http404("Not found.")
    return obj


def filtered(filterset_class, request: HttpRequest, queryset: QuerySet):
    """The shared filter set over the queryset, and the status to answer with (400 when the filters are invalid)."""
    filterset = filterset_class(request.GET or None, queryset=queryset)
    if filterset.is_bound and not filterset.is_valid():
        return filterset, queryset.none(), 400
    return filterset, filterset.qs, 200


def paginate(request: HttpRequest, queryset: QuerySet) -> Page:
    return Paginator(queryset, PAGE_SIZE).get_page(request.GET.get("page"))


def render_page(request: HttpRequest, template: str, context: dict, *, section: str, status: int = 200) -> HttpResponse:
    """Render a dashboard page; the side navigation shows the audit log only to admins of the current project."""
    project = context.get("project")
    slug = project.slug if project else request.session.get("project")
    if "nav_can_audit" not in context:
        context["nav_can_audit"] = bool(slug) and (
            selectors.project_for_user(user=request.user, slug=slug, action=Action.MANAGE) is not None
        )
    return render(request, template, {**context, "section": section}, status=status)


def render_fragment(request: HttpRequest, page: str, fragment: str, context: dict, *, section: str, status: int):
    """The whole page, or only the fragment htmx asked for (live refreshes and filter changes)."""
    # A history restore (back button after the cache expired) needs the whole page, not the fragment.
    if request.htmx and not request.htmx.history_restore_request:
        response = render(request, fragment, context, status=status)
    else:
        response = render_page(request, page, context, section=section, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response
