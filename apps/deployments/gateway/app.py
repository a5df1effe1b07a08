"""The gateway: OpenAI-compatible (`/v1/...`) and KServe V2 (`/v2/...`) endpoints in front of deployments.

A plain ASGI application in front of Django (controlplane/asgi.py), because it is the hot path: a request is
authenticated from an in-memory cache, routed by the traffic weights to a ready replica, forwarded over a pooled
connection (server-sent events passed through as they arrive), and its usage record handed to a background
writer. Nothing on the way touches the database unless a cache entry expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import aiohttp
import orjson
from django.conf import settings

from .. import services
from .directory import Directory, Principal, RevisionRoute, Route, database
from .records import Recorder
from .tokens import count_tokens

logger = logging.getLogger(__name__)

OPENAI_PATHS = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completion",
    "/v1/embeddings": "embedding",
}
TASK_OF_KIND = {"chat": "generate", "completion": "generate", "embedding": "embed"}
BAD_ENDPOINT_SECONDS = 2.0
RETRYABLE_STATUS = {502, 503}
MAX_ATTEMPTS = 4
TEXT_KEEP_BYTES = 256 * 1024


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "",
        kind: str = "invalid_request_error",
        headers: list[tuple[bytes, bytes]] | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind
        self.headers, self.param = headers or [], param


@dataclass
class Refusal:
    """What a guard (budget, rate limit) answers to refuse a request: 429 with a reason and reset time."""

    message: str
    reset_at: float  # unix time
    code: str = "rate_limit_exceeded"


@dataclass
class GuardContext:
    """What a guard sees: who asks, which deployment and revision, and the request body."""

    principal: Principal
    route: Route
    revision: RevisionRoute
    body: dict


@dataclass
class Call:
    """One request on its way through: enough to route it, record it and answer errors in the right shape."""

    api: str  # "openai" or "v2"
    request_id: str
    started: float
    principal: Principal | None = None
    route: Route | None = None
    revision: RevisionRoute | None = None
    tags: tuple[str, ...] = ()
    kind: str = ""
    guarded: GuardContext | None = None


def _error_body(api: str, error: GatewayError) -> bytes:
    if api == "v2":
        return orjson.dumps({"error": error.message})
    return orjson.dumps(
        {"error": {"message": error.message, "type": error.kind, "param": error.param, "code": error.code or None}}
    )


def _header(scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return ""


def _tags(scope) -> tuple[str, ...]:
    raw = _header(scope, b"x-tags") or _header(scope, b"x-controlplane-tags")
    return tuple(t.strip()[:64] for t in raw.split(",") if t.strip())[:20]


class Gateway:
    def __init__(self, fallback):
        self.fallback = fallback
        self.directory = Directory()
        self.recorder = Recorder()
        self.session: aiohttp.ClientSession | None = None
        self.bad_until: dict[str, float] = {}
        self.round_robin: dict[int, int] = {}
        self.guards: list | None = None
        self.background: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/v1/") or path == "/v1":
            api = "openai"
        elif path.startswith("/v2/") or path == "/v2":
            api = "v2"
        else:
            return await self.fallback(scope, receive, send)
        self._start()
        call = Call(
            api=api, request_id=_header(scope, b"x-request-id")[:100] or uuid.uuid4().hex, started=time.perf_counter()
        )
        try:
            if api == "openai":
                await self._openai(scope, receive, send, call)
            else:
                await self._v2(scope, receive, send, call)
        except GatewayError as error:
            await self._respond(send, error.status, _error_body(api, error), call, error.headers)
            if call.route is not None:
                self._record(call, status=str(error.status), http_status=error.status)

    def _start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=2, sock_read=settings.GATEWAY_UPSTREAM_TIMEOUT_SECONDS
                ),
                auto_decompress=False,
            )
            self.recorder.start()
            self.guards = [_load(path)() for path in settings.GATEWAY_GUARDS]

    # Plumbing -------------------------------------------------------------------------------------------------

    async def _body(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise GatewayError(400, "The client went away.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > settings.GATEWAY_MAX_BODY_BYTES:
                raise GatewayError(
                    413, f"The request body is over {settings.GATEWAY_MAX_BODY_BYTES} bytes.", code="request_too_large"
                )
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _respond(self, send, status: int, body: bytes, call: Call, headers=(), content_type=b"application/json"):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", call.request_id.encode()),
                    *headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _authenticate(self, scope, call: Call) -> Principal:
        header = _header(scope, b"authorization")
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise GatewayError(
                401,
                "Send an API token: 'Authorization: Bearer <token>'.",
                code="invalid_api_key",
                kind="authentication_error",
            )
        principal = await self.directory.principal(raw.strip())
        if principal is None:
            raise GatewayError(
                401, "Invalid, expired or revoked API token.", code="invalid_api_key", kind="authentication_error"
            )
        call.principal = principal
        return principal

    async def _route(self, name: str, principal: Principal, call: Call) -> Route:
        if not isinstance(name, str) or not name or len(name) > 200:
            raise GatewayError(400, "Name the deployment in `model`.", param="model", code="model_not_found")
        project_slug, _, slug = name.rpartition("/")
        routes = [
            r
            for r in await self.directory.routes_for(slug)
            if principal.may_invoke(r.project_id) and (not project_slug or r.project_slug == project_slug)
        ]
        if not routes:
            raise GatewayError(
                404,
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        if len(routes) > 1:
            names = ", ".join(sorted(f"{r.project_slug}/{r.slug}" for r in routes))
            raise GatewayError(
                400,
                f"`{name}` names deployments in several projects; use one of: {names}.",
                param="model",
                code="model_ambiguous",
            )
        call.route = routes[0]
        return routes[0]

    def _choose(self, route: Route) -> RevisionRoute:
        if not route.revisions:
            raise GatewayError(
                503,
                f"Deployment `{route.slug}` has no revision serving traffic.",
                code="unavailable",
                kind="server_error",
                headers=[(b"retry-after", b"5")],
            )
        point = random.random() * route.total_weight
        for revision in route.revisions:
            point -= revision.weight
            if point < 0:
                return revision
        return route.revisions[-1]

    async def _guard(self, call: Call, body: dict) -> None:
        if not self.guards:
            return
        call.guarded = GuardContext(call.principal, call.route, call.revision, body)
        for guard in self.guards:
            refusal = await guard.check(call.guarded)
            if refusal is not None:
                wait = max(1, int(refusal.reset_at - time.time() + 0.999))
                raise GatewayError(
                    429,
                    refusal.message,
                    code=refusal.code,
                    kind="rate_limit_error",
                    headers=[
                        (b"retry-after", str(wait).encode()),
                        (b"x-ratelimit-reset", str(int(refusal.reset_at)).encode()),
                    ],
                )

    def _check_input(self, revision: RevisionRoute, texts: list[str]) -> None:
        """Refuse a prompt over the revision's input limit before it reaches the model. A token is at least one
        byte, so only prompts longer in bytes than the limit are counted."""
        size = sum(len(t.encode()) for t in texts)
        if size <= revision.max_input_tokens:
            return
        tokens = count_tokens(revision.tokenizer_file, texts) if revision.tokenizer_file else None
        if tokens is None:
            tokens = size // 4  # no tokenizer here: a generous estimate; the runtime counts exactly
        if tokens > revision.max_input_tokens:
            raise GatewayError(
                400,
                f"The input is {tokens} tokens; this deployment accepts at most {revision.max_input_tokens}.",
                code="context_length_exceeded",
                param="messages",
            )

    async def _endpoints(self, call: Call) -> list[str]:
        """Ready endpoints of the chosen revision, waking a scaled-to-zero one and waiting (bounded) for it."""
        revision = call.revision
        now = time.monotonic()
        endpoints = [e for e in revision.endpoints if self.bad_until.get(e, 0) < now]
        if endpoints:
            start = self.round_robin.get(revision.id, 0)
            self.round_robin[revision.id] = start + 1
            return endpoints[start % len(endpoints) :] + endpoints[: start % len(endpoints)]
        if revision.wakeable:
            await database(services.revision_wake)(revision.id)
            deadline = time.monotonic() + settings.GATEWAY_COLD_START_SECONDS
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                for route in await self.directory.refresh(call.route.slug):
                    if route.deployment_id != call.route.deployment_id:
                        continue
                    fresh = next((r for r in route.revisions if r.id == revision.id), None)
                    if fresh and fresh.endpoints:
                        call.revision = fresh
                        return list(fresh.endpoints)
            raise GatewayError(
                503,
                f"Deployment `{call.route.slug}` is starting; try again shortly.",
                code="starting",
                kind="server_error",
                headers=[(b"retry-after", b"10")],
            )
        return list(revision.endpoints)  # every endpoint recently failed: try them anyway

    async def _open(self, call: Call, path: str, body: bytes | None, method: str = "POST"):
        """Send to a replica of the chosen revision, then of the others; connection failures move on."""
        tried: list[RevisionRoute] = []
        last_error = ""
        attempts = 0
        while attempts < MAX_ATTEMPTS:
            endpoints = await self._endpoints(call)
            tried.append(call.revision)
            for endpoint in endpoints:
                if attempts >= MAX_ATTEMPTS:
                    break
                attempts += 1
                headers = {"content-type": "application/json", "x-request-id": call.request_id}
                if call.revision.api_key:
                    headers["authorization"] = f"Bearer {call.revision.api_key}"
                try:
                    response = await self.session.request(
                        method, _url(call.revision, endpoint, path), data=body, headers=headers
                    )
                except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                    self.bad_until[endpoint] = time.monotonic() + BAD_ENDPOINT_SECONDS
                    last_error = exc.__class__.__name__
                    continue
                if response.status in RETRYABLE_STATUS and attempts < MAX_ATTEMPTS:
                    response.release()
                    self.bad_until[endpoint] = time.monotonic() + BAD_ENDPOINT_SECONDS
                    last_error = f"HTTP {response.status}"
                    continue
                return response
            others = [r for r in call.route.revisions if r not in tried and r.endpoints]
            if not others:
                break
            call.revision = random.choice(others)
        raise GatewayError(
            503,
            f"No replica of `{call.route.slug}` answered ({last_error or 'none ready'}).",
            code="unavailable",
            kind="server_error",
            headers=[(b"retry-after", b"2")],
        )

    # OpenAI-compatible ----------------------------------------------------------------------------------------

    async def _openai(self, scope, receive, send, call: Call) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        if path == "/v1/models" and method == "GET":
            principal = await self._authenticate(scope, call)
            return await self._models(send, principal, call)
        kind = OPENAI_PATHS.get(path)
        if kind is None:
            raise GatewayError(404, f"Unknown route {scope['path']}.", code="not_found")
        if method != "POST":
            raise GatewayError(405, f"Use POST for {path}.", code="method_not_allowed")
        call.kind = kind
        principal = await self._authenticate(scope, call)
        raw = await self._body(receive)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError(400, "The body is not valid JSON.", code="invalid_json")
        if not isinstance(body, dict):
            raise GatewayError(400, "The body must be a JSON object.", code="invalid_json")
        route = await self._route(body.get("model"), principal, call)
        call.tags = _tags(scope)
        call.revision = self._choose(route)
        if call.revision.provider != "external" and call.revision.task != TASK_OF_KIND[kind]:
            what = "embeddings" if call.revision.task == "embed" else "text generation"
            raise GatewayError(
                400,
                f"`{route.slug}` serves {what}; it cannot answer {path}.",
                param="model",
                code="unsupported_endpoint",
            )
        texts = _input_texts(kind, body)
        self._check_input(call.revision, texts)
        await self._guard(call, body)
        stream = bool(body.get("stream")) and kind != "embedding"
        wants_usage = stream and bool((body.get("stream_options") or {}).get("include_usage"))
        upstream = dict(body)
        upstream["model"] = call.revision.served_name
        if stream:
            upstream["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        upstream_body = orjson.dumps(upstream)
        self._shadow(call, path, upstream_body, body, kind)
        revision_id = call.revision.id
        self.recorder.begin(revision_id)
        try:
            response = await self._open(call, path, upstream_body)
            if stream and response.status == 200:
                await self._relay_stream(send, response, call, wants_usage, texts)
            else:
                await self._relay(send, response, call, texts)
        finally:
            self.recorder.end(revision_id)

    async def _models(self, send, principal: Principal, call: Call) -> None:
        rows = await self.directory.models(principal)
        counts: dict[str, int] = {}
        for slug, _project, _created in rows:
            counts[slug] = counts.get(slug, 0) + 1
        data = [
            {
                "id": slug if counts[slug] == 1 else f"{project}/{slug}",
                "object": "model",
                "owned_by": project,
                "created": created,
            }
            for slug, project, created in sorted(rows)
        ]
        await self._respond(send, 200, orjson.dumps({"object": "list", "data": data}), call)

    async def _relay(self, send, response: aiohttp.ClientResponse, call: Call, texts: list[str]) -> None:
        async with response:
            payload = await response.read()
            content_type = response.headers.get("content-type", "application/json").encode()
        usage, output = {}, ""
        if response.status == 200:
            try:
                answer = orjson.loads(payload)
                usage = answer.get("usage") or {}
                if not usage:
                    output = _output_text(answer)
            except (orjson.JSONDecodeError, AttributeError):
                pass
        latency = self._elapsed_ms(call)
        await self._respond(send, response.status, payload, call, self._revision_headers(call), content_type)
        self._record(
            call,
            status="ok" if response.status < 400 else str(response.status),
            http_status=response.status,
            usage=usage,
            latency_ms=latency,
            ttft_ms=latency,
            texts=texts if not usage else None,
            output=output,
        )

    async def _relay_stream(
        self, send, response: aiohttp.ClientResponse, call: Call, wants_usage: bool, texts: list[str]
    ) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", call.request_id.encode()),
                    *self._revision_headers(call),
                ],
            }
        )
        usage: dict = {}
        pieces: list[str] = []
        ttft = None
        pending = b""
        status = "ok"
        try:
            async with response:
                async for chunk in response.content.iter_any():
                    pending += chunk
                    *events, pending = pending.split(b"\n\n")
                    out = []
                    for event in events:
                        if not event.strip():
                            continue
                        keep, found = _inspect_event(event, wants_usage, pieces)
                        usage = found or usage
                        if keep:
                            out.append(event + b"\n\n")
                    if out:
                        if ttft is None:
                            ttft = self._elapsed_ms(call)
                        await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
                if pending.strip():
                    await send({"type": "http.response.body", "body": pending, "more_body": True})
        except (TimeoutError, aiohttp.ClientError) as exc:
            status = "stream_error"
            error = orjson.dumps(
                {
                    "error": {
                        "message": f"The model server stopped mid-answer ({exc.__class__.__name__}).",
                        "type": "server_error",
                        "param": None,
                        "code": "upstream_error",
                    }
                }
            )
            await send({"type": "http.response.body", "body": b"data: " + error + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        self._record(
            call,
            status=status,
            http_status=200,
            usage=usage,
            latency_ms=self._elapsed_ms(call),
            ttft_ms=ttft,
            texts=texts if not usage else None,
            output="".join(pieces) if not usage else "",
        )

    def _shadow(self, call: Call, path: str, upstream_body: bytes, body: dict, kind: str) -> None:
        route = call.route
        shadow = route.shadow
        if shadow is None or not shadow.endpoints or random.random() * 100 >= route.shadow_percent:
            return
        if shadow.served_name != call.revision.served_name or body.get("stream"):
            upstream_body = orjson.dumps({**body, "model": shadow.served_name, "stream": False})
        shadow_call = Call(
            api=call.api,
            request_id=f"{call.request_id}-shadow",
            started=time.perf_counter(),
            principal=call.principal,
            route=route,
            revision=shadow,
            tags=(*call.tags, "shadow"),
            kind=kind,
        )
        task = asyncio.create_task(self._send_shadow(shadow_call, path, upstream_body))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _send_shadow(self, call: Call, path: str, body: bytes) -> None:
        """The mirror copy: its answer is read and dropped, and recorded as a shadow request."""
        endpoint = random.choice(call.revision.endpoints)
        try:
            headers = {"content-type": "application/json"}
            if call.revision.api_key:
                headers["authorization"] = f"Bearer {call.revision.api_key}"
            async with self.session.post(_url(call.revision, endpoint, path), data=body, headers=headers) as response:
                payload = await response.read()
            usage = {}
            if response.status == 200:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                    usage = orjson.loads(payload).get("usage") or {}
            self._record(
                call,
                status="ok" if response.status < 400 else str(response.status),
                http_status=response.status,
                usage=usage,
                latency_ms=self._elapsed_ms(call),
                shadow=True,
            )
        except Exception as exc:
            self._record(call, status="shadow_error", http_status=0, shadow=True, latency_ms=self._elapsed_ms(call))
            logger.info("shadow request to %s failed: %s", endpoint, exc)

    # KServe V2 ------------------------------------------------------------------------------------------------

    async def _v2(self, scope, receive, send, call: Call) -> None:
        path, method = scope["path"].rstrip("/"), scope["method"]
        if path in ("/v2/health/live", "/v2/health/ready"):
            key = "live" if path.endswith("live") else "ready"
            return await self._respond(send, 200, orjson.dumps({key: True}), call)
        if path == "/v2":
            return await self._respond(
                send, 200, orjson.dumps({"name": "controlplane-gateway", "version": "1", "extensions": []}), call
            )
        parts = path.split("/")  # ['', 'v2', 'models', name, ...]
        if len(parts) < 4 or parts[2] != "models":
            raise GatewayError(404, f"Unknown route {scope['path']}.")
        name, rest = parts[3], parts[4:]
        version = None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        principal = await self._authenticate(scope, call)
        route = await self._route(name, principal, call)
        call.kind = "infer"
        call.tags = _tags(scope)
        if version is not None:
            chosen = next((r for r in route.revisions if str(r.number) == version), None)
            if chosen is None:
                raise GatewayError(404, f"Revision {version} of `{name}` is not serving.")
            call.revision = chosen
        else:
            call.revision = self._choose(route)
        if route.target == "external":
            raise GatewayError(400, f"`{name}` is an external OpenAI-compatible upstream; use /v1.")
        served = f"/v2/models/{call.revision.served_name}"
        if rest == [] and method == "GET":
            response = await self._open(call, served, None, method="GET")
            return await self._relay_plain(send, response, call)
        if rest == ["ready"] and method == "GET":
            ready = any(r.endpoints for r in route.revisions)
            body = orjson.dumps({"name": name, "ready": ready})
            return await self._respond(send, 200 if ready else 503, body, call)
        if rest != ["infer"] or method != "POST":
            raise GatewayError(404, f"Unknown route {scope['path']}.")
        raw = await self._body(receive)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise GatewayError(400, "The body is not valid JSON.")
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise GatewayError(400, "An inference request needs an `inputs` list.")
        texts = _v2_texts(body)
        self._check_input(call.revision, texts)
        await self._guard(call, body)
        revision_id = call.revision.id
        self.recorder.begin(revision_id)
        try:
            response = await self._open(call, served + "/infer", raw)
            async with response:
                payload = await response.read()
            output = ""
            if response.status == 200:
                with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError):
                    output = "\n".join(_v2_texts(orjson.loads(payload), key="outputs"))
            latency = self._elapsed_ms(call)
            await self._respond(send, response.status, payload, call, self._revision_headers(call))
            self._record(
                call,
                status="ok" if response.status < 400 else str(response.status),
                http_status=response.status,
                latency_ms=latency,
                ttft_ms=latency,
                texts=texts,
                output=output,
            )
        finally:
            self.recorder.end(revision_id)

    async def _relay_plain(self, send, response: aiohttp.ClientResponse, call: Call) -> None:
        async with response:
            payload = await response.read()
        await self._respond(send, response.status, payload, call, self._revision_headers(call))

    # Records --------------------------------------------------------------------------------------------------

    def _elapsed_ms(self, call: Call) -> int:
        return int((time.perf_counter() - call.started) * 1000)

    def _revision_headers(self, call: Call) -> list[tuple[bytes, bytes]]:
        return [(b"x-controlplane-revision", str(call.revision.number).encode())] if call.revision else []

    def _record(
        self,
        call: Call,
        *,
        status: str,
        http_status: int,
        usage: dict | None = None,
        latency_ms: int | None = None,
        ttft_ms: int | None = None,
        texts: list[str] | None = None,
        output: str = "",
        shadow: bool = False,
    ) -> None:
        route, revision, principal = call.route, call.revision, call.principal
        usage = usage or {}
        record: dict[str, Any] = {
            "event_id": call.request_id,
            "time": time.time(),
            "project_id": route.project_id,
            "deployment": route.slug,
            "deployment_id": route.deployment_id,
            "revision": revision.number if revision else None,
            "revision_id": revision.id if revision else None,
            "model_version_id": revision.model_version_id if revision else None,
            "model": revision.model_label if revision else "",
            "provider": revision.provider if revision else "",
            "endpoint": call.kind,
            "user": principal.username if principal else "",
            "user_id": principal.user_id if principal else None,
            "team": principal.team if principal else "",
            "token_id": principal.token_id if principal else None,
            "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens"),
            "cached_tokens": ((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0),
            "latency_ms": latency_ms if latency_ms is not None else self._elapsed_ms(call),
            "ttft_ms": ttft_ms,
            "status": status,
            "http_status": http_status,
            "tags": list(call.tags),
            "shadow": shadow,
        }
        if not usage and status == "ok" and texts:
            # No usage from the runtime: send the text along so accounting counts it with the version's tokenizer.
            record["input_text"] = "\n".join(texts)[:TEXT_KEEP_BYTES]
            record["output_text"] = output[:TEXT_KEEP_BYTES]
        if not usage and status != "ok":
            record["prompt_tokens"] = record["completion_tokens"] = 0
        self.recorder.record(record)
        if usage and call.guarded is not None:
            for guard in self.guards:
                settle = getattr(guard, "settle", None)
                if settle is not None:
                    settle(call.guarded, usage)


def _url(revision: RevisionRoute, endpoint: str, path: str) -> str:
    """OpenAI paths (/v1/…) go under the revision's OpenAI prefix; KServe V2 paths under the endpoint itself."""
    if path.startswith("/v1/"):
        return endpoint + revision.openai_prefix + path[3:]
    return endpoint + path


def _input_texts(kind: str, body: dict) -> list[str]:
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise GatewayError(400, "`messages` must be a non-empty list.", param="messages")
        texts = []
        for message in messages:
            if not isinstance(message, dict):
                raise GatewayError(400, "Each message must be an object with role and content.", param="messages")
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(
                    p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
        return texts
    field = "prompt" if kind == "completion" else "input"
    value = body.get(field)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [" " * len(value)]  # token ids: one byte each is a lower bound
    raise GatewayError(400, f"`{field}` must be a string or a list of strings.", param=field)


def _inspect_event(event: bytes, wants_usage: bool, pieces: list[str]) -> tuple[bool, dict]:
    """Whether to pass one SSE event on, and the usage it carries. The usage-only chunk the gateway asked the
    runtime for is dropped unless the client asked for it too."""
    if b'"usage"' not in event and b'"content"' not in event and b'"text"' not in event:
        return True, {}
    data = event.partition(b"data:")[2].strip()
    if not data or data == b"[DONE]":
        return True, {}
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        return True, {}
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        text = text if isinstance(text, str) else choice.get("text")
        if isinstance(text, str):
            pieces.append(text)
    usage = chunk.get("usage") or {}
    if usage and not chunk.get("choices") and not wants_usage:
        return False, usage
    return True, usage


def _output_text(answer: dict) -> str:
    texts = []
    for choice in answer.get("choices") or ():
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        text = text if isinstance(text, str) else choice.get("text")
        if isinstance(text, str):
            texts.append(text)
    return "".join(texts)


def _v2_texts(body: dict, key: str = "inputs") -> list[str]:
    texts = []
    for tensor in body.get(key) or ():
        if isinstance(tensor, dict) and tensor.get("datatype") == "BYTES":
            data = tensor.get("data")
            stack = [data]
            while stack:
                item = stack.pop()
                if isinstance(item, str):
                    texts.append(item)
                elif isinstance(item, list):
                    stack.extend(reversed(item))
    return texts


def _load(path: str):
    module, _, name = path.rpartition(".")
    return getattr(import_module(module), name)
