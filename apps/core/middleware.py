"""Request context for the audit log, and JSON errors for every API path."""

from __future__ import annotations

import logging
import re
import uuid

from django.core.exceptions import BadRequest, RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.http import JsonResponse

from . import context

logger = logging.getLogger(__name__)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
API_PREFIXES = ("/api/",)


def client_ip(request) -> str | None:
    # Behind a trusted proxy, configure it to overwrite REMOTE_ADDR; X-Forwarded-For is client-controlled.
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    """Binds a request id (taken from X-Request-ID when well-formed) and the client IP for the audit log."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id
        with context.bind(request_id=request_id, ip_address=client_ip(request)):
            response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


def error_body(code: str, message: str, details=None) -> dict:
    """The one error shape of the API, for DRF views and for errors raised outside them alike."""
    return {"error": {"code": str(code), "message": message, "details": details or {}}}


def api_error(status: int, code: str, message: str, details=None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status)


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


class ApiErrorMiddleware:
    """Errors raised outside DRF views (routing, body limits, crashes) still get the API error shape."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if is_api_path(request.path) and response.status_code >= 400 and not _is_json(response):
            return api_error(response.status_code, _code_for(response.status_code), response.reason_phrase)
        return response

    def process_exception(self, request, exception):
        if not is_api_path(request.path):
            return None
        if isinstance(exception, RequestDataTooBig | TooManyFieldsSent):
            return api_error(413, "payload_too_large", "The request body is too large.")
        if isinstance(exception, SuspiciousOperation | BadRequest):
            return api_error(400, "bad_request", "The request is malformed.")
        logger.exception("Unhandled error on %s %s", request.method, request.path)
        return api_error(
            500,
            "server_error",
            "An internal error occurred; it has been logged.",
            {"request_id": getattr(request, "request_id", "")},
        )


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def _code_for(status: int) -> str:
    return {
        400: "bad_request",
        401: "not_authenticated",
        403: "permission_denied",
        404: "not_found",
        405: "method_not_allowed",
        413: "payload_too_large",
        429: "throttled",
    }.get(status, "server_error" if status >= 500 else "error")
