"""Every /api/v1/ route × method against the principals that must and must not reach it.

The SPEC table below is the contract. A route the resolver knows but SPEC does not fails
`test_every_api_route_is_in_the_matrix`, so a new route cannot ship without joining the matrix.

Cases per route × method (each shows in the test id):
  ok       the weakest principal allowed: the exact 2xx status (lists: the object is in the results)
  lower    the next weaker role: 403 when it can see the object, 404 when it cannot (lists: object absent)
  other    a member (admin) of another project only: 404 on objects (lists: object absent); a body naming an
           object it cannot see is a 400 "does not exist", word for word what a missing object gets
  anon     no credentials: 401, the error shape, a WWW-Authenticate header
  scope    the allowed principal with a token one scope too small: 403 naming the missing scope
  limited  the allowed principal with a token limited to another project: as `other`
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.core import crypto
from apps.core.models import (
    ApiToken,
    AuditEvent,
    Job,
    JobStatus,
    Membership,
    ProjectSecret,
    Role,
    ServiceAccount,
    Team,
    Worker,
)
from apps.core.services import api_token_create
from apps.core.tokens import token_display_prefix, token_generate, token_hash
from apps.registry.models import Alias, ModelVersion, Promotion, PromotionStatus, RegisteredModel, VersionStatus

User = get_user_model()

# Routes ---------------------------------------------------------------------------------------------------------


def _walk(patterns, prefix="", namespace=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from _walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            yield prefix + str(pattern.pattern), namespace + pattern.name, pattern


def _methods(callback) -> set[str]:
    actions = getattr(callback, "actions", None)
    if actions:
        return {method.upper() for method in actions if method not in ("head", "options")}
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    names = getattr(view_class, "http_method_names", [])
    return {name.upper() for name in names if name not in ("head", "options") and hasattr(view_class, name)}


def api_routes() -> dict[str, set[str]]:
    """{namespaced route name: HTTP methods} for every route under api/v1/, less the API root and format suffixes."""
    routes: dict[str, set[str]] = {}
    for route, name, pattern in _walk(get_resolver().url_patterns):
        if not route.startswith("api/v1/") or name.endswith("api-root") or "(?P<format>" in route:
            continue
        routes.setdefault(name, set()).update(_methods(pattern.callback))
    return routes


# The objects every case works on --------------------------------------------------------------------------------


@dataclass
class World:
    org: Any
    project: Any
    other_project: Any
    team: Any
    membership: Any
    newcomer: Any
    service_account: Any
    sa_token: Any
    event: Any
    job: Any
    failed_job: Any
    worker: Any
    secret: Any
    users: dict[str, Any] = field(default_factory=dict)

    def user(self, who: str, *, limited: bool = False):
        """The principal `who` (created on first use). `limited`: a twin that is also admin of the other project."""
        key = f"{who}-limited" if limited else who
        if key not in self.users:
            user = User.objects.create(username=key, is_superuser=who == "superuser")
            if who == "owner":
                self.org.owners.add(user)
            elif who in Role.values:
                Membership.objects.create(project=self.project, user=user, role=who)
            if who == "outsider" or limited:
                Membership.objects.create(project=self.other_project, user=user, role=Role.ADMIN)
            self.users[key] = user
        return self.users[key]


@pytest.fixture
def world(project, other_project) -> World:
    """Rows written directly (the services have their own tests): one of each object the routes act on."""
    org = project.organization
    robot = User.objects.create(username="svc-alpha-robot")
    Membership.objects.create(project=project, user=robot, role=Role.DEVELOPER)
    raw = token_generate()
    now = timezone.now()
    return World(
        org=org,
        project=project,
        other_project=other_project,
        team=Team.objects.create(organization=org, name="Core", slug="core-team"),
        membership=Membership.objects.create(project=project, user=User.objects.create(username="target")),
        newcomer=User.objects.create(username="newcomer"),
        service_account=ServiceAccount.objects.create(project=project, user=robot, name="robot"),
        sa_token=ApiToken.objects.create(
            user=robot,
            project=project,
            name="robot",
            scopes=["read", "write"],
            key_prefix=token_display_prefix(raw),
            key_hash=token_hash(raw),
        ),
        event=AuditEvent.objects.create(
            action="test.event",
            object_type="core.project",
            object_id=str(project.pk),
            project=project,
            organization=org,
        ),
        job=Job.objects.create(project=project, job_type="core.device_check"),
        failed_job=Job.objects.create(project=project, job_type="core.device_check", status=JobStatus.FAILED),
        worker=Worker.objects.create(hostname="gpu-1", queues=["gpu.gpu-1"], started_at=now, last_seen_at=now),
        secret=ProjectSecret.objects.create(project=project, name="HF_TOKEN", encrypted_value=crypto.encrypt("x")),
    )


# The spec -------------------------------------------------------------------------------------------------------

PRESENT, ABSENT = "present", "absent"
NEXT_WEAKER = {
    "superuser": "owner",
    "owner": Role.ADMIN,
    Role.ADMIN: Role.MAINTAINER,
    Role.MAINTAINER: Role.DEVELOPER,
    Role.DEVELOPER: Role.VIEWER,
}
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
    ("core-api:organization-list", "GET"): _list(Role.VIEWER, lambda w: w.org.slug),
    ("core-api:organization-list", "POST"): Rule(
        "superuser",
        201,
        lower=403,
        other=403,
        scope="admin",
        limited=None,
        body=lambda w: {"name": "New Org", "slug": "new-org"},
    ),
    ("core-api:organization-detail", "GET"): Rule(Role.VIEWER, 200),
    ("core-api:organization-detail", "PATCH"): Rule(
        "owner", 200, lower=403, scope="admin", body=lambda w: {"name": "Renamed"}
    ),
    ("core-api:project-list", "GET"): _list(Role.VIEWER, lambda w: w.project.slug),
    ("core-api:project-list", "POST"): Rule(
        "owner",
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {"organization": w.org.slug, "name": "Gamma", "slug": "gamma"},
    ),
    ("core-api:project-detail", "GET"): Rule(Role.VIEWER, 200),
    ("core-api:project-detail", "PATCH"): Rule(
        Role.ADMIN, 200, lower=403, scope="admin", body=lambda w: {"description": "d"}
    ),
    ("core-api:project-detail", "DELETE"): Rule("owner", 204, lower=403, scope="admin"),
    ("core-api:membership-list", "GET"): _list(Role.VIEWER, lambda w: w.membership.pk),
    ("core-api:membership-list", "POST"): Rule(
        Role.ADMIN,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {"project": w.project.slug, "user": w.newcomer.username, "role": Role.VIEWER},
    ),
    ("core-api:membership-detail", "GET"): Rule(Role.VIEWER, 200),
    ("core-api:membership-detail", "PATCH"): Rule(
        Role.ADMIN, 200, lower=403, scope="admin", body=lambda w: {"role": Role.DEVELOPER}
    ),
    ("core-api:membership-detail", "DELETE"): Rule(Role.ADMIN, 204, lower=403, scope="admin"),
    ("core-api:team-list", "GET"): _list(Role.VIEWER, lambda w: w.team.pk),
    ("core-api:team-list", "POST"): Rule(
        "owner",
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {"organization": w.org.slug, "name": "Ops", "slug": "ops"},
    ),
    ("core-api:team-detail", "GET"): Rule(Role.VIEWER, 200),
    ("core-api:team-detail", "PATCH"): Rule("owner", 200, lower=403, scope="admin", body=lambda w: {"name": "Renamed"}),
    ("core-api:team-detail", "DELETE"): Rule("owner", 204, lower=403, scope="admin"),
    ("core-api:service-account-list", "GET"): _list(
        Role.ADMIN, lambda w: w.service_account.pk, lower=ABSENT, scope="admin"
    ),
    ("core-api:service-account-list", "POST"): Rule(
        Role.ADMIN,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {"project": w.project.slug, "name": "ci"},
    ),
    ("core-api:service-account-detail", "GET"): Rule(Role.ADMIN, 200, lower=404, scope="admin"),
    ("core-api:secret-list", "GET"): _list(Role.ADMIN, lambda w: w.secret.pk, lower=ABSENT, scope="admin"),
    ("core-api:secret-list", "POST"): Rule(
        Role.ADMIN,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {"project": w.project.slug, "name": "WANDB_KEY", "value": "s3cr3t"},
    ),
    ("core-api:secret-detail", "GET"): Rule(Role.ADMIN, 200, lower=404, scope="admin"),
    ("core-api:secret-detail", "DELETE"): Rule(Role.ADMIN, 204, lower=404, scope="admin"),
    ("core-api:token-list", "GET"): _list(Role.ADMIN, lambda w: w.sa_token.pk, lower=ABSENT),
    ("core-api:token-list", "POST"): Rule(
        Role.ADMIN,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="admin",
        body=lambda w: {"name": "deploy", "scopes": ["read", "write"], "service_account": w.service_account.pk},
    ),
    ("core-api:token-detail", "GET"): Rule(Role.ADMIN, 200, lower=404),
    # Service-account tokens are visible to project admins acting with the admin scope only: a write token is
    # answered 404 like a maintainer; a read token is stopped earlier, for lacking the write scope.
    ("core-api:token-detail", "DELETE"): Rule(Role.ADMIN, 204, lower=404, scope="write"),
    ("core-api:token-revoke", "POST"): Rule(Role.ADMIN, 200, lower=404, scope="write"),
    ("core-api:audit-event-list", "GET"): _list(Role.ADMIN, lambda w: w.event.pk, lower=ABSENT, scope="admin"),
    ("core-api:audit-event-detail", "GET"): Rule(Role.ADMIN, 200, lower=404, scope="admin"),
    ("core-api:job-list", "GET"): _list(Role.VIEWER, lambda w: str(w.job.pk)),
    ("core-api:job-list", "POST"): Rule(
        Role.DEVELOPER,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="write",
        body=lambda w: {"project": w.project.slug, "job_type": "core.device_check", "params": {"size": 64}},
    ),
    ("core-api:job-detail", "GET"): Rule(Role.VIEWER, 200),
    ("core-api:job-cancel", "POST"): Rule(Role.DEVELOPER, 200, lower=403, scope="write"),
    ("core-api:job-retry", "POST"): Rule(Role.DEVELOPER, 200, lower=403, scope="write"),
    # The worker fleet is shared by every project: any authenticated user sees it.
    ("core-api:worker-list", "GET"): _list("anyone", lambda w: w.worker.pk, other=PRESENT, limited=PRESENT),
    ("core-api:worker-detail", "GET"): Rule("anyone", 200, other=200, limited=200),
}

LIST_FIELD = {"core-api:organization-list": "slug", "core-api:project-list": "slug"}  # others are listed by "id"

URL_KWARGS: dict[str, Callable[[World], dict]] = {
    "core-api:organization-detail": lambda w: {"slug": w.org.slug},
    "core-api:project-detail": lambda w: {"slug": w.project.slug},
    "core-api:membership-detail": lambda w: {"pk": w.membership.pk},
    "core-api:team-detail": lambda w: {"pk": w.team.pk},
    "core-api:service-account-detail": lambda w: {"pk": w.service_account.pk},
    "core-api:secret-detail": lambda w: {"pk": w.secret.pk},
    "core-api:token-detail": lambda w: {"pk": w.sa_token.pk},
    "core-api:token-revoke": lambda w: {"pk": w.sa_token.pk},
    "core-api:audit-event-detail": lambda w: {"pk": w.event.pk},
    "core-api:job-detail": lambda w: {"pk": w.job.pk},
    "core-api:job-cancel": lambda w: {"pk": w.job.pk},
    "core-api:job-retry": lambda w: {"pk": w.failed_job.pk},
    "core-api:worker-detail": lambda w: {"pk": w.worker.pk},
}


# Registry metadata routes (apps/registry/api/metadata_urls.py) ---------------------------------------------------


def _registry(w: World) -> SimpleNamespace:
    """The rows the registry routes act on, created on first use and written directly, like the world's."""
    if "registry" not in w.__dict__:
        model = RegisteredModel.objects.create(project=w.project, name="matrix-model")
        version = ModelVersion.objects.create(model=model, number=1, status=VersionStatus.READY)
        Alias.objects.create(model=model, name="staging", version=version)
        promotion = Promotion.objects.create(
            model=model,
            alias="production",
            to_version=version,
            status=PromotionStatus.PENDING,
            requested_by=User.objects.create(username="promotion-requester"),
        )
        w.registry = SimpleNamespace(model=model, version=version, promotion=promotion)
    return w.registry


@pytest.fixture(autouse=True)
def _registry_rows(request):
    """A registry list must find its row before the request; the rule's `body` is read only after it."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and str(callspec.params.get("name", "")).startswith("registry-"):
        _registry(request.getfixturevalue("world"))


SPEC |= {
    ("registry-model-list", "GET"): _list(Role.VIEWER, lambda w: _registry(w).model.pk),
    ("registry-model-list", "POST"): Rule(
        Role.DEVELOPER,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="write",
        body=lambda w: {"project": w.project.slug, "name": "new-model"},
    ),
    ("registry-model-detail", "GET"): Rule(Role.VIEWER, 200),
    ("registry-model-detail", "PATCH"): Rule(
        Role.DEVELOPER, 200, lower=403, scope="write", body=lambda w: {"description": "d"}
    ),
    ("registry-model-aliases", "GET"): Rule(Role.VIEWER, 200),
    ("registry-model-aliases", "POST"): Rule(
        Role.DEVELOPER, 201, lower=403, scope="write", body=lambda w: {"alias": "candidate", "version": 1}
    ),
    ("registry-model-alias-detail", "DELETE"): Rule(Role.DEVELOPER, 204, lower=403, scope="write"),
    ("registry-version-list", "GET"): _list(Role.VIEWER, lambda w: _registry(w).version.pk),
    ("registry-version-detail", "GET"): Rule(Role.VIEWER, 200),
    ("registry-version-detail", "DELETE"): Rule(Role.MAINTAINER, 204, lower=403, scope="write"),
    ("registry-version-lineage", "GET"): Rule(Role.VIEWER, 200),
    # Without ?a=&b= every signed-in caller gets the same 400 (tests/registry/test_api.py covers who sees what).
    ("registry-version-compare", "GET"): Rule(Role.VIEWER, 400, other=400, limited=400),
    ("registry-promotion-list", "GET"): _list(Role.VIEWER, lambda w: _registry(w).promotion.pk),
    ("registry-promotion-detail", "GET"): Rule(Role.VIEWER, 200),
    # A second maintainer decides (the requester is another user); the body is an empty object.
    ("registry-promotion-approve", "POST"): Rule(Role.MAINTAINER, 200, lower=403, scope="write", body=lambda w: {}),
    ("registry-promotion-reject", "POST"): Rule(Role.MAINTAINER, 200, lower=403, scope="write", body=lambda w: {}),
}

URL_KWARGS |= {
    "registry-model-detail": lambda w: {"pk": _registry(w).model.pk},
    "registry-model-aliases": lambda w: {"pk": _registry(w).model.pk},
    "registry-model-alias-detail": lambda w: {"pk": _registry(w).model.pk, "alias": "staging"},
    "registry-version-detail": lambda w: {"pk": _registry(w).version.pk},
    "registry-version-lineage": lambda w: {"pk": _registry(w).version.pk},
    "registry-promotion-detail": lambda w: {"pk": _registry(w).promotion.pk},
    "registry-promotion-approve": lambda w: {"pk": _registry(w).promotion.pk},
    "registry-promotion-reject": lambda w: {"pk": _registry(w).promotion.pk},
}


def matrix_cases(spec: dict) -> list:
    """Every (route, method, case) a spec calls for, as pytest params with readable ids."""
    cases = []
    for (name, method), rule in spec.items():
        kinds = ["ok"]
        if rule.who in NEXT_WEAKER and rule.lower is not None:
            kinds.append("lower")
        kinds += ["other", "anon"]
        if rule.scope:
            kinds.append("scope")
        if rule.limited is not None:
            kinds.append("limited")
        cases += [pytest.param(name, method, kind, id=f"{name}:{method}:{kind}") for kind in kinds]
    return cases


CASES = matrix_cases(SPEC)


# The tests ------------------------------------------------------------------------------------------------------


def all_specs() -> set[tuple[str, str]]:
    """This SPEC and those of the other apps' matrices (tests/<app>/test_permission_matrix.py, a SPEC of theirs)."""
    keys = set(SPEC)
    for path in sorted(Path(__file__).parents[1].glob("*/test_permission_matrix.py")):
        if path.resolve() != Path(__file__).resolve():
            keys |= set(getattr(importlib.import_module(f"tests.{path.parent.name}.{path.stem}"), "SPEC", {}))
    return keys


def test_every_api_route_is_in_the_matrix():
    discovered = {(name, method) for name, methods in api_routes().items() for method in methods}
    assert discovered, "no routes found under api/v1/"
    specified = all_specs()
    missing = sorted(discovered - specified)
    assert missing == [], "routes missing from every permission matrix (give them a SPEC row): " + ", ".join(
        f"{name} {method}" for name, method in missing
    )
    assert sorted(specified - discovered) == [], "SPEC lists routes that no longer exist"


def _client(world: World, who: str, *, scopes=("read", "write", "admin"), limited=False) -> APIClient:
    if who == "anon":
        return APIClient()
    user = world.user(Role.VIEWER if who == "anyone" else who, limited=limited)
    _, raw = api_token_create(
        user=user, name="matrix", scopes=list(scopes), project=world.other_project if limited else None
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _expected(rule: Rule, case: str) -> int | str:
    return {
        "ok": rule.ok,
        "lower": rule.lower,
        "other": rule.other,
        "anon": 401,
        "scope": 403,
        "limited": rule.limited,
    }[case]


def check_matrix_case(world: World, spec: dict, url_kwargs: dict, name: str, method: str, case: str) -> None:
    """Send the request a case calls for and assert its status and error shape (shared by every app's matrix)."""
    rule = spec[(name, method)]
    who = {
        "ok": rule.who,
        "lower": NEXT_WEAKER.get(rule.who),
        "other": "outsider",
        "anon": "anon",
        "scope": rule.who,
        "limited": rule.who,
    }[case]
    scopes = SCOPES_BELOW[rule.scope] if case == "scope" else ("read", "write", "admin")
    client = _client(world, who, scopes=scopes, limited=case == "limited")
    url = reverse(name, kwargs=url_kwargs[name](world) if name in url_kwargs else None)
    is_list_get = method == "GET" and name.endswith("-list")
    body = rule.body(world) if rule.body and not is_list_get else None

    response = client.generic(
        method, url, data=json.dumps(body) if body is not None else "", content_type="application/json"
    )

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


@pytest.mark.parametrize(("name", "method", "case"), CASES)
def test_permission_matrix(world, name, method, case):
    check_matrix_case(world, SPEC, URL_KWARGS, name, method, case)


@pytest.mark.parametrize(
    ("url", "body", "field", "invisible", "missing"),
    [
        ("/api/v1/jobs/", {"job_type": "core.device_check"}, "project", "beta", "no-such-project"),
        ("/api/v1/projects/", {"name": "N", "slug": "n"}, "organization", "ORG_OF_BETA", "no-such-org"),
        ("/api/v1/memberships/", {"project": "alpha", "role": "viewer"}, "team", "TEAM_OF_BETA", 987654),
    ],
)
def test_a_body_naming_an_invisible_object_reads_like_one_naming_a_missing_object(
    world, url, body, field, invisible, missing
):
    """No 403/404 from a reference in a body confirms that the object exists."""
    invisible = {
        "ORG_OF_BETA": world.other_project.organization.slug,
        "TEAM_OF_BETA": Team.objects.create(organization=world.other_project.organization, name="T", slug="t").pk,
    }.get(invisible, invisible)
    client = _client(world, "owner")
    errors = []
    for value in (invisible, missing):
        response = client.post(url, {**body, field: value}, format="json")
        assert response.status_code == 400, response.content
        errors.append(response.json()["error"])
    assert errors[0]["message"].replace(str(invisible), "X") == errors[1]["message"].replace(str(missing), "X")
    assert errors[0]["code"] == errors[1]["code"] == "invalid"
