"""DRF permission: authenticated, and a token's scope covers the request method (read for safe methods)."""

from rest_framework import permissions

from ..permissions import Action, token_scope_error


class IsAuthenticatedWithScope(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        action = getattr(view, "required_action", lambda request: None)(request) or (
            Action.VIEW if request.method in permissions.SAFE_METHODS else Action.CHANGE
        )
        error = token_scope_error(request.user, action)
        if error:
            self.message = error
            return False
        return True
