"""Navigation for every page: the projects the user can open and the current one."""

from .selectors import project_list


def navigation(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    projects = list(project_list(user=user).only("id", "slug", "name", "organization__slug", "organization__name"))
    current_slug = getattr(request, "resolver_match", None) and request.resolver_match.kwargs.get("project_slug")
    current = next((p for p in projects if p.slug == current_slug), None)
    if current is None:
        current = next((p for p in projects if p.slug == request.session.get("project")), None)
    return {"nav_projects": projects, "current_project": current}
