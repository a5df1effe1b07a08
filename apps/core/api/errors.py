"""One error shape for the whole API: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DataError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..middleware import error_body
from ..permissions import PermissionDenied as ActionDenied

logger = logging.getLogger(__name__)


def _message_from(detail) -> str:
    if isinstance(detail, list) and detail:
        return _message_from(detail[0])
    if isinstance(detail, dict) and detail:
        key, value = next(iter(detail.items()))
        inner = _message_from(value)
        return inner if key in ("non_field_errors", "__all__") else f"{key}: {inner}"
    return str(detail)


def exception_handler(exc, context):
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(detail=exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    elif isinstance(exc, ActionDenied):
        exc = exceptions.PermissionDenied(detail=str(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DataError):
        # PostgreSQL refused a value from the request (NUL byte, number or date out of range): the client's
        # input, not a crash. Logged so that a value the code itself produced still gets noticed.
        logger.warning("Database refused a request value: %s", exc)
        exc = exceptions.ValidationError(
            detail="A value in the request cannot be stored or looked up (e.g. a NUL character or an out-of-range "
            "number)."
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # ApiErrorMiddleware logs it and answers 500 in the same shape
    detail = response.data
    if isinstance(exc, exceptions.ValidationError):
        code, message, details = "invalid", _message_from(detail), detail
    else:
        code = getattr(getattr(exc, "detail", None), "code", None) or exc.default_code
        message, details = _message_from(detail.get("detail", detail) if isinstance(detail, dict) else detail), {}
    response.data = error_body(code, message, details)
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = "Bearer"
    return response


def error_response(status_code: int, code: str, message: str, details=None) -> Response:
    return Response(error_body(code, message, details), status=status_code)
