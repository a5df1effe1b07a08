"""Every /api/v1/ route × method against the principals that must and must not reach it.

The SPEC table below is the contract. A route the resolver knows but SPEC does not fails
`test_every_api_route_is_in_the_matrix`, so a new route cannot ship without joining the matrix.

Cases per route × method (each shows in the test id):
  ok       the weakest principal allowed: the exact 2xx status (lists: the object is in the results)
  lower    the next weaker role: 403 when it can see the object, 404 when it cannot (lists: object absent)
  other    a member (admin) of another project only: 404 on objects (lists: object absent)
  anon     no credentials: 401, the error shape, a WWW-Authenticate header
  scope    the allowed principal with a token one scope too small: 403 naming the missing scope
  limited  the allowed principal with a token limited to another project: 404 (lists: object absent)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.core import services
from apps.core.audit import audit_record
from apps.core.models import Job, JobStatus, Role, Worker
from apps.core.services import api_token_create
from tests.factories import TeamFactory, UserFactory

# Routes ---------------------------------------------------------------------------------------------------------


def _walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern), pattern


def _methods(callback) -> set[str]:
    actions = getattr(callback, "actions", None)
    if actions:
        return {method.upper() for method in actions}
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    names = getattr(view_class, "http_method_names", [])
    return {name.upper() for name in names if name not in ("head", "options") and hasattr(view_class, name)}


def api_routes() -> dict[str, set[str]]:
    """{route name: HTTP methods} for every route under api/v1/, without the API root and format suffixes."""
    routes: dict[str, set[str]] = {}
    for route, pattern in _walk(get_resolver().url_patterns):
        if not route.startswith("api/v1/") or pattern.name == "api-root" or "(?P<format>" in route:
            continue
        if "<drf_format_suffix" in route:
            continue
        routes.setdefault(pattern.name, set()).update(_methods(pattern.callback))
    return routes


# The objects every case works on --------------------------------------------------------------------------------


@dataclass
class World:
    org: Any
    project: Any
    other_project: Any
    users: dict[str, Any]
    team: Any
    membership: Any
    newcomer: Any
    service_account: Any
    sa_token: Any
    event: Any
    job: Any
    failed_job: Any
    worker: Any


@pytest.fixture
def world(project, other_project, member_factory) -> World:
    org = project.organization
    owner = UserFactory(username="owner")
    org.owners.add(owner)
    users = {
        "superuser": UserFactory(username="root", is_superuser=True, is_staff=True),
        "owner": owner,
        **{role: member_factory(role, username=role) for role in Role.values},
        "outsider": member_factory(Role.ADMIN, on=other_project, username="outsider"),
    }
    admin = users[Role.ADMIN]
    membership = member_factory(Role.VIEWER, username="target").memberships.get()
    account = services.service_account_create(user=admin, project=project, name="robot")
    sa_token, _ = api_token_create(user=admin, name="robot", scopes=["read", "write"], owner=account.user)
    now = timezone.now()
    return World(
        org=org,
        project=project,
        other_project=other_project,
        users=users,
        team=TeamFactory(organization=org, slug="core-team"),
        membership=membership,
        newcomer=UserFactory(username="newcomer"),
        service_account=account,
        sa_token=sa_token,
        event=audit_record(actor=admin, action="test.event", obj=project),
        job=Job.objects.create(project=project, job_type="core.device_check"),
        failed_job=Job.objects.create(project=project, job_type="core.device_check", status=JobStatus.FAILED),
        worker=Worker.objects.create(hostname="gpu-1", queues=["gpu.gpu-1"], started_at=now, last_seen_at=now),
    )


# The spec -------------------------------------------------------------------------------------------------------

PRESENT, ABSENT = "present", "absent"
NEXT_WEAKER = {"superuser": "owner", "owner": Role.ADMIN, Role.ADMIN: Role.MAINTAINER,
               Role.MAINTAINER: Role.DEVELOPER, Role.DEVELOPER: Role.VIEWER}
SCOPES_BELOW = {"write": ["read"], "admin": ["read", "write"]}


@dataclass(frozen=True)
class Rule:
    who: str  # weakest principal allowed: superuser, owner, a project role, or "anyone" (any authenticated user)
    ok: int
    lower: int | str | None = None  # status (or PRESENT/ABSENT for lists) for the next weaker role; None: none
    other: int | str = 404
    scope: str | None = None  # the scope needed beyond read
    limited: int | str | None = 404  # token limited to another project; None: not applicable
    body: Callable[[World], dict] | None = None


def _list(who: str, key: Callable[[World], Any], *, lower=None, other=ABSENT, scope=None, limited=ABSENT) -> Rule:
    return Rule(who=who, ok=200, lower=lower, other=other, scope=scope, limited=limited, body=key)


# For list GETs `body` is the id of the object that must (or must not) be listed, compared to `LIST_FIELD`.
SPEC: dict[tuple[str, str], Rule] = {
    ("organization-list", "GET"): _list(Role.VIEWER, lambda w: w.org.slug),
    ("organization-list", "POST"): Rule("superuser", 201, lower=403, other=403, scope="admin", limited=None,
                                        body=lambda w: {"name": "New Org", "slug": "new-org"}),
    ("organization-detail", "GET"): Rule(Role.VIEWER, 200),
    ("organization-detail", "PATCH"): Rule("owner", 200, lower=403, scope="admin", body=lambda w: {"name": "Renamed"}),
    ("project-list", "GET"): _list(Role.VIEWER, lambda w: w.project.slug),
    ("project-list", "POST"): Rule("owner", 201, lower=403, scope="admin",
                                   body=lambda w: {"organization": w.org.slug, "name": "Gamma", "slug": "gamma"}),
    ("project-detail", "GET"): Rule(Role.VIEWER, 200),
    ("project-detail", "PATCH"): Rule(Role.ADMIN, 200, lower=403, scope="admin", body=lambda w: {"description": "d"}),
    ("project-detail", "DELETE"): Rule("owner", 204, lower=403, scope="admin"),
    ("membership-list", "GET"): _list(Role.VIEWER, lambda w: w.membership.pk),
    ("membership-list", "POST"): Rule(Role.ADMIN, 201, lower=403, scope="admin", body=lambda w: {
        "project": w.project.slug, "user": w.newcomer.username, "role": Role.VIEWER}),
    ("membership-detail", "GET"): Rule(Role.VIEWER, 200),
    ("membership-detail", "PATCH"): Rule(Role.ADMIN, 200, lower=403, scope="admin",
                                         body=lambda w: {"role": Role.DEVELOPER}),
    ("membership-detail", "DELETE"): Rule(Role.ADMIN, 204, lower=403, scope="admin"),
    ("team-list", "GET"): _list(Role.VIEWER, lambda w: w.team.pk),
    ("team-list", "POST"): Rule("owner", 201, lower=403, scope="admin",
                                body=lambda w: {"organization": w.org.slug, "name": "Ops", "slug": "ops"}),
    ("team-detail", "GET"): Rule(Role.VIEWER, 200),
    ("team-detail", "PATCH"): Rule("owner", 200, lower=403, scope="admin", body=lambda w: {"name": "Renamed"}),
    ("team-detail", "DELETE"): Rule("owner", 204, lower=403, scope="admin"),
    ("service-account-list", "GET"): _list(Role.ADMIN, lambda w: w.service_account.pk, lower=ABSENT, scope="admin"),
    ("service-account-list", "POST"): Rule(Role.ADMIN, 201, lower=403, scope="admin",
                                           body=lambda w: {"project": w.project.slug, "name": "ci"}),
    ("service-account-detail", "GET"): Rule(Role.ADMIN, 200, lower=404, scope="admin"),
    ("token-list", "GET"): _list(Role.ADMIN, lambda w: w.sa_token.pk, lower=ABSENT),
    ("token-list", "POST"): Rule(Role.ADMIN, 201, lower=403, scope="admin", body=lambda w: {
        "name": "deploy", "scopes": ["read", "write"], "service_account": w.service_account.pk}),
    ("token-detail", "GET"): Rule(Role.ADMIN, 200, lower=404),
    ("token-detail", "DELETE"): Rule(Role.ADMIN, 204, lower=404, scope="admin"),
    ("token-revoke", "POST"): Rule(Role.ADMIN, 200, lower=404, scope="admin"),
    ("audit-event-list", "GET"): _list(Role.ADMIN, lambda w: w.event.pk, lower=ABSENT, scope="admin"),
    ("audit-event-detail", "GET"): Rule(Role.ADMIN, 200, lower=404, scope="admin"),
    ("job-list", "GET"): _list(Role.VIEWER, lambda w: str(w.job.pk)),
    ("job-list", "POST"): Rule(Role.DEVELOPER, 201, lower=403, scope="write", body=lambda w: {
        "project": w.project.slug, "job_type": "core.device_check", "params": {"size": 64}}),
    ("job-detail", "GET"): Rule(Role.VIEWER, 200),
    ("job-cancel", "POST"): Rule(Role.DEVELOPER, 200, lower=403, scope="write"),
    ("job-retry", "POST"): Rule(Role.DEVELOPER, 200, lower=403, scope="write"),
    # The worker fleet is shared by every project: any authenticated user sees it.
    ("worker-list", "GET"): _list("anyone", lambda w: w.worker.pk, other=PRESENT, limited=PRESENT),
    ("worker-detail", "GET"): Rule("anyone", 200, other=200, limited=200),
}

LIST_FIELD = {"organization-list": "slug", "project-list": "slug"}  # others are listed by "id"

URL_KWARGS: dict[str, Callable[[World], dict]] = {
    "organization-detail": lambda w: {"slug": w.org.slug},
    "project-detail": lambda w: {"slug": w.project.slug},
    "membership-detail": lambda w: {"pk": w.membership.pk},
    "team-detail": lambda w: {"pk": w.team.pk},
    "service-account-detail": lambda w: {"pk": w.service_account.pk},
    "token-detail": lambda w: {"pk": w.sa_token.pk},
    "token-revoke": lambda w: {"pk": w.sa_token.pk},
    "audit-event-detail": lambda w: {"pk": w.event.pk},
    "job-detail": lambda w: {"pk": w.job.pk},
    "job-cancel": lambda w: {"pk": w.job.pk},
    "job-retry": lambda w: {"pk": w.failed_job.pk},
    "worker-detail": lambda w: {"pk": w.worker.pk},
}


def _cases():
    for (name, method), rule in SPEC.items():
        yield name, method, "ok"
        if rule.who in NEXT_WEAKER and rule.lower is not None:
            yield name, method, "lower"
        yield name, method, "other"
        yield name, method, "anon"
        if rule.scope:
            yield name, method, "scope"
        if rule.limited is not None:
            yield name, method, "limited"


CASES = [pytest.param(*case, id=f"{case[0]}:{case[1]}:{case[2]}") for case in _cases()]


# The tests ------------------------------------------------------------------------------------------------------


def test_every_api_route_is_in_the_matrix():
    discovered = {(name, method) for name, methods in api_routes().items() for method in methods}
    assert discovered, "no routes found under api/v1/"
    assert sorted(discovered - set(SPEC)) == [], "routes missing from SPEC: add them to the permission matrix"
    assert sorted(set(SPEC) - discovered) == [], "SPEC lists routes that no longer exist"


def _client(world: World, who: str, *, scopes=("read", "write", "admin"), limited=False) -> APIClient:
    if who == "anon":
        return APIClient()
    if who == "anyone":
        who = Role.VIEWER
    user = world.users[who]
    project = None
    if limited:  # the same rights here, plus admin of the other project, with a token limited to that one
        user = UserFactory(username=f"limited-{who}", is_superuser=user.is_superuser)
        if who == "owner":
            world.org.owners.add(user)
        elif who in Role.values:
            world.project.memberships.create(user=user, role=who)
        world.other_project.memberships.create(user=user, role=Role.ADMIN)
        project = world.other_project
    _, raw = api_token_create(user=user, name="matrix", scopes=list(scopes), project=project)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _expected(rule: Rule, case: str) -> int | str:
    return {"ok": rule.ok, "lower": rule.lower, "other": rule.other, "anon": 401, "scope": 403,
            "limited": rule.limited}[case]


@pytest.mark.parametrize(("name", "method", "case"), CASES)
def test_permission_matrix(world, name, method, case):
    rule = SPEC[(name, method)]
    who = {"ok": rule.who, "lower": NEXT_WEAKER.get(rule.who), "other": "outsider", "anon": "anon",
           "scope": rule.who, "limited": rule.who}[case]
    scopes = SCOPES_BELOW[rule.scope] if case == "scope" else ("read", "write", "admin")
    client = _client(world, who, scopes=scopes, limited=case == "limited")
    url = reverse(name, kwargs=URL_KWARGS[name](world) if name in URL_KWARGS else None)
    is_list_get = method == "GET" and name.endswith("-list")
    body = rule.body(world) if rule.body and not is_list_get else None

    response = client.generic(method, url, data=json.dumps(body) if body is not None else "", content_type="application/json")

    expected = _expected(rule, case)
    if expected in (PRESENT, ABSENT):
        assert response.status_code == 200, response.content
        field = LIST_FIELD.get(name, "id")
        listed = [item[field] for item in response.json()["results"]]
        assert (rule.body(world) in listed) == (expected == PRESENT), listed
        return
    assert response.status_code == expected, response.content
    if expected >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}
        assert error["message"]
    if case == "anon":
        assert response.json()["error"]["code"] == "not_authenticated"
        assert response["WWW-Authenticate"] == "Bearer"
    if case == "scope":
        assert f"'{rule.scope}'" in response.json()["error"]["message"]
