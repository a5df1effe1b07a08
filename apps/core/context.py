"""Who and where a change comes from, carried through a request or a Celery task for the audit log."""

from __future__ import annotations

import contextlib
import contextvars
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    ip_address: str | None = None


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("request_context", default=None)


def current() -> RequestContext | None:
    return _current.get()


@contextlib.contextmanager
def bind(*, request_id: str | None = None, ip_address: str | None = None):
    token = _current.set(RequestContext(request_id=request_id or uuid.uuid4().hex, ip_address=ip_address))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
