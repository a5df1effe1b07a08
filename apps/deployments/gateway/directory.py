"""What the gateway needs to know per request, read from the database and kept in memory for a moment.

Tokens: a token's principal (user, team, the projects it may invoke) is cached by the token's hash for
GATEWAY_AUTH_TTL_SECONDS, so a revoked token stops working within that time. Routes: a deployment's ready
revisions, weights, replica URLs and limits are cached for GATEWAY_ROUTE_TTL_SECONDS. Both refresh on a thread
(the ORM is synchronous), one refresh per key at a time.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q

from apps.core import crypto
from apps.core.models import Membership, Project
from apps.core.permissions import Action, project_ids, token_allows
from apps.core.services import api_token_authenticate
from apps.core.tokens import token_hash

from ..models import Deployment, Desired, Replica, Revision, State, Target


@dataclass(frozen=True)
class Limit:
    """A rate limit that applies to the caller: its token's or its team's."""

    key: str
    label: str
    requests_per_minute: int | None
    tokens_per_minute: int | None


@dataclass(frozen=True)
class Principal:
    user_id: int
    username: str
    token_id: int
    team: str
    team_id: int | None
    project_ids: frozenset[int] | None  # None: every project (superuser)
    project_slugs: dict[int, str]
    limits: tuple[Limit, ...] = ()

    def may_invoke(self, project_id: int) -> bool:
        return self.project_ids is None or project_id in self.project_ids


@dataclass
class RevisionRoute:
    id: int
    number: int
    weight: int
    model_version_id: int | None
    model_label: str
    provider: str
    task: str
    max_input_tokens: int
    max_total_tokens: int
    served_name: str
    endpoints: list[str]  # base URLs: KServe V2 routes live at /v2/… of each, OpenAI routes at openai_prefix
    openai_prefix: str = "/v1"  # external upstreams' base URL already ends where /chat/completions follows
    api_key: str = ""
    wakeable: bool = False
    tokenizer_file: str = ""


@dataclass
class Route:
    deployment_id: int
    project_id: int
    project_slug: str
    slug: str
    target: str
    revisions: list[RevisionRoute]  # serving: ready with weight > 0
    shadow: RevisionRoute | None
    shadow_percent: int
    asleep: list[int] = field(default_factory=list)  # ready revisions scaled to zero, to wake on a request

    @property
    def total_weight(self) -> int:
        return sum(r.weight for r in self.revisions)


def database(fn):
    """`fn` as a coroutine on Django's thread for sync code, with a usable connection. The gateway is not a Django
    request, so nothing else would replace a connection the database dropped (a restart) or that grew too old."""

    def call(*args):
        close_old_connections()
        return fn(*args)

    return sync_to_async(call)


class TimedCache:
    """Values kept `ttl` seconds, loaded once however many requests ask at the same time. With `stale`, an expired
    value is still served while one background refresh runs, so a refresh never stalls the requests behind it."""

    def __init__(self, ttl: float, *, stale: bool = True):
        self.ttl = ttl
        self.stale = stale
        self.values: dict[Any, tuple[float, Any]] = {}
        self.loading: dict[Any, asyncio.Task] = {}

    async def get(self, key, load):
        hit = self.values.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        task = self.loading.get(key)
        if task is None:
            task = self.loading[key] = asyncio.ensure_future(self._load(key, load))
        if hit is not None and self.stale and time.monotonic() - hit[0] < 2 * self.ttl:
            return hit[1]  # recently current: a busy deployment never waits; an idle one reads fresh
        return await asyncio.shield(task)

    async def _load(self, key, load):
        try:
            value = await load(key)
            if len(self.values) > 10_000:  # bound memory under a flood of random tokens or names
                self.values.clear()
            self.values[key] = (time.monotonic(), value)
            return value
        finally:
            self.loading.pop(key, None)

    def forget(self, key) -> None:
        self.values.pop(key, None)


def _principal(raw: str) -> Principal | None:
    token = api_token_authenticate(raw)
    if token is None:
        return None
    user = token.user
    user.api_token = token
    if not token_allows(token, Action.INVOKE):
        ids: frozenset[int] | None = frozenset()
    else:
        allowed = project_ids(user, Action.INVOKE)
        ids = None if allowed is None else frozenset(allowed.values_list("pk", flat=True))
    slugs = dict(Project.objects.filter(pk__in=ids).values_list("pk", "slug")) if ids is not None else {}
    membership = Membership.objects.filter(team__members=user).select_related("team").order_by("team__name").first()
    team = membership.team if membership else None
    limits = []
    if token.requests_per_minute or token.tokens_per_minute:
        limits.append(Limit(f"token:{token.pk}", f"token {token.key_prefix}", token.requests_per_minute,
                            token.tokens_per_minute))
    for member_of in user.teams.filter(Q(requests_per_minute__isnull=False) | Q(tokens_per_minute__isnull=False)):
        limits.append(Limit(f"team:{member_of.pk}", f"team {member_of.name}", member_of.requests_per_minute,
                            member_of.tokens_per_minute))
    return Principal(
        user_id=user.pk,
        username=user.get_username(),
        token_id=token.pk,
        team=team.name if team else "",
        team_id=team.pk if team else None,
        project_ids=ids,
        project_slugs=slugs,
        limits=tuple(limits),
    )


def _tokenizer_file(version_id: int | None) -> str:
    if version_id is None:
        return ""
    path = Path(settings.RUNTIME_DIR) / "models" / f"v{version_id}" / "tokenizer.json"
    return str(path) if path.exists() else ""


def _revision_route(revision: Revision, endpoints: list[str], *, wakeable: bool = False) -> RevisionRoute:
    deployment = revision.deployment
    version = revision.model_version
    prefix = "/v1"
    if deployment.target == Target.EXTERNAL:
        endpoints, prefix = [revision.upstream_url.rstrip("/")], ""
        label, provider = revision.upstream_model, "external"
    else:
        if deployment.target == Target.KUBERNETES:
            url = (revision.cluster_status or {}).get("url") or ""
            endpoints, prefix = ([url.rstrip("/")] if url else []), "/openai/v1"
        label, provider = (f"{version.model.name}:{version.number}" if version else ""), "self-hosted"
    return RevisionRoute(
        id=revision.pk,
        number=revision.number,
        weight=revision.weight,
        model_version_id=revision.model_version_id,
        model_label=label,
        provider=provider,
        task=revision.task,
        max_input_tokens=revision.max_input_tokens,
        max_total_tokens=revision.max_total_tokens,
        served_name=revision.upstream_model if deployment.target == Target.EXTERNAL else deployment.slug,
        endpoints=endpoints,
        openai_prefix=prefix,
        api_key=crypto.decrypt(revision.encrypted_upstream_key) if revision.encrypted_upstream_key else "",
        wakeable=wakeable,
        tokenizer_file=_tokenizer_file(revision.model_version_id),
    )


def _routes(slug: str) -> list[Route]:
    deployments = Deployment.objects.filter(slug=slug, deleted_at__isnull=True).select_related("project")
    routes = []
    for deployment in deployments:
        revisions = list(
            Revision.objects.filter(deployment=deployment, state__in=[State.READY, State.DRAINING]).select_related(
                "deployment", "model_version__model"
            )
        )
        replicas = Replica.objects.filter(revision__in=revisions, state=State.READY, desired=Desired.RUNNING)
        endpoints: dict[int, list[str]] = {}
        running: set[int] = set(
            Replica.objects.filter(revision__in=revisions, desired=Desired.RUNNING).values_list(
                "revision_id", flat=True
            )
        )
        for replica in replicas.order_by("index"):
            endpoints.setdefault(replica.revision_id, []).append(replica.url)
        serving, shadow, asleep = [], None, []
        for revision in revisions:
            wakeable = bool(revision.scale_to_zero_seconds) and revision.pk not in running
            route = _revision_route(revision, endpoints.get(revision.pk, []), wakeable=wakeable)
            if revision.weight > 0:
                serving.append(route)
                if wakeable and revision.state == State.READY:
                    asleep.append(revision.pk)
            if revision.pk == deployment.shadow_revision_id and revision.state == State.READY:
                shadow = route
        routes.append(
            Route(
                deployment_id=deployment.pk,
                project_id=deployment.project_id,
                project_slug=deployment.project.slug,
                slug=deployment.slug,
                target=deployment.target,
                revisions=sorted(serving, key=lambda r: r.number),
                shadow=shadow,
                shadow_percent=deployment.shadow_percent,
                asleep=asleep,
            )
        )
    return routes


def _invocable_deployments(principal: Principal) -> list[tuple[str, str, int]]:
    deployments = Deployment.objects.filter(deleted_at__isnull=True)
    if principal.project_ids is not None:
        deployments = deployments.filter(project_id__in=principal.project_ids)
    rows = deployments.values_list("slug", "project__slug", "created_at")
    return [(slug, project, int(created.timestamp())) for slug, project, created in rows]


class Directory:
    """Per-process caches of principals and routes."""

    def __init__(self):
        self.principals = TimedCache(settings.GATEWAY_AUTH_TTL_SECONDS, stale=False)  # revocation is final
        self.routes = TimedCache(settings.GATEWAY_ROUTE_TTL_SECONDS)

    async def principal(self, raw_token: str) -> Principal | None:
        return await self.principals.get(token_hash(raw_token), lambda _key: database(_principal)(raw_token))

    async def routes_for(self, slug: str) -> list[Route]:
        return await self.routes.get(slug, lambda key: database(_routes)(key))

    async def refresh(self, slug: str) -> list[Route]:
        self.routes.forget(slug)
        return await self.routes_for(slug)

    async def models(self, principal: Principal) -> list[tuple[str, str, int]]:
        return await database(_invocable_deployments)(principal)
