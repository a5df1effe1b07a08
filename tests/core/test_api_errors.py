"""Bad input never gets a 500 and never writes: every POST/PATCH route, every detail lookup, every list's query.

Routes come from the URL resolver; valid bodies and objects from the permission matrix, so a new route that joins
the matrix is covered here too. Each case asserts the exact 4xx status, the error shape and that no row changed.
"""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import DataError, connection
from django.urls import get_resolver, reverse
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from apps.core.api.errors import exception_handler
from apps.core.models import (
    ApiToken,
    AuditEvent,
    Job,
    Membership,
    ObjectGrant,
    Organization,
    Project,
    ServiceAccount,
    Team,
    Worker,
)
from apps.core.services import api_token_create
from tests.core import test_permission_matrix as matrix

User = get_user_model()
world = matrix.world  # the same objects the permission matrix acts on

# The routes of the core matrix (a route no matrix knows already fails test_every_api_route_is_in_the_matrix).
ROUTES = {name: methods for name, methods in matrix.api_routes().items() if any(key[0] == name for key in matrix.SPEC)}
WRITE_ROUTES = sorted((name, method) for name, methods in ROUTES.items() for method in methods if method != "GET")
BODY_ROUTES = sorted(key for key in WRITE_ROUTES if key in matrix.SPEC and matrix.SPEC[key].body is not None)
DETAIL_ROUTES = sorted(
    (name, method) for name, methods in ROUTES.items() for method in methods if name in matrix.URL_KWARGS
)
LIST_ROUTES = sorted(name for name, methods in ROUTES.items() if name.endswith("-list") and "GET" in methods)

# Body fields that name another object: an unknown value must be refused, not created or ignored.
REFERENCE_FIELDS = {"organization", "project", "user", "team", "members", "service_account"}
TABLES = [Organization, Project, Team, Membership, ObjectGrant, ServiceAccount, ApiToken, AuditEvent, Job, Worker, User]
IGNORED_COLUMNS = {"last_used_at", "last_login"}  # authentication itself touches these


def _table_digest_sql(model) -> str:
    meta = model._meta
    columns = ", ".join(f.column for f in meta.concrete_fields if f.attname not in IGNORED_COLUMNS)
    return (
        f"(SELECT md5(coalesce(string_agg(row({columns})::text, ',' ORDER BY {meta.pk.column}), '')) "
        f"FROM {meta.db_table})"
    )


def db_state() -> dict:
    """A digest of every row of every core table (and the many-to-many links), in one query: proof that a refused
    request wrote nothing."""
    models = [*TABLES, Organization.owners.through, Team.members.through]
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(_table_digest_sql(model) for model in models))
        return dict(zip((model._meta.label for model in models), cursor.fetchone(), strict=True))


@pytest.fixture
def root(world) -> APIClient:
    """A superuser with every scope: permission checks pass, so what is left to refuse the request is the input."""
    _, raw = api_token_create(user=world.user("superuser"), name="root", scopes=["read", "write", "admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _url(world, name: str) -> str:
    return reverse(name, kwargs=matrix.URL_KWARGS[name](world) if name in matrix.URL_KWARGS else None)


def _valid_body(world, name: str, method: str) -> dict:
    rule = matrix.SPEC.get((name, method))
    return rule.body(world) if rule and rule.body else {}


def assert_refused(response, status: int, before: dict, case: str = "") -> dict:
    assert response.status_code == status, (case, response.content[:500])
    body = response.json()
    assert set(body) == {"error"}, (case, body)
    assert set(body["error"]) == {"code", "message", "details"}, (case, body)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], case
    assert db_state() == before, f"{case}: a refused request changed the database"
    return body["error"]


def _send(client, method, url, data, content_type="application/json"):
    return client.generic(method, url, data=data, content_type=content_type)


def test_the_routes_under_test_were_found():
    assert len(WRITE_ROUTES) >= 14 and len(DETAIL_ROUTES) >= 19 and len(LIST_ROUTES) >= 9
    assert {key for key in WRITE_ROUTES if key[1] in ("POST", "PATCH")} - set(BODY_ROUTES) == {
        ("core-api:job-cancel", "POST"),
        ("core-api:job-retry", "POST"),
        ("core-api:token-revoke", "POST"),
    }


def test_db_state_sees_a_write(world, root):
    """The digest used as proof of "nothing written" does change when something is."""
    before = db_state()
    assert (
        root.patch(_url(world, "core-api:project-detail"), {"description": "changed"}, format="json").status_code == 200
    )
    assert db_state() != before


# Whole bodies ---------------------------------------------------------------------------------------------------

TWO_MB = 2 * 1024 * 1024
BODY_CASES = {
    # name: (raw body, content type, status, error code)
    "malformed_json": ('{"name": ', "application/json", 400, "parse_error"),
    "json_array": ("[1, 2]", "application/json", 400, "invalid"),
    "json_string": ('"a string"', "application/json", 400, "invalid"),
    "json_number": ("42", "application/json", 400, "invalid"),
    "json_null": ("null", "application/json", 400, "invalid"),
    "nul_in_key": ('{"\\u0000": 1}', "application/json", 400, "parse_error"),
    "nested_too_deep": ('{"x": ' + "[" * 500 + "]" * 500 + "}", "application/json", 400, "parse_error"),
    "nested_past_recursion_limit": ("[" * 100_000 + "]" * 100_000, "application/json", 400, "parse_error"),
    "over_2_mb": (json.dumps({"name": "x" * (TWO_MB + 1)}), "application/json", 413, "payload_too_large"),
    "text_plain": ('{"name": "x"}', "text/plain", 415, "unsupported_media_type"),
    "form_encoded": ("name=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    "multipart": (
        '--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
        415,
        "unsupported_media_type",
    ),
}


@pytest.mark.parametrize(("name", "method"), [pytest.param(*key, id=f"{key[0]}:{key[1]}") for key in WRITE_ROUTES])
def test_bad_body_is_refused(world, root, name, method):
    """Every case of BODY_CASES against the route (one test per route keeps the suite fast; the case is in
    every assertion message)."""
    url = _url(world, name)
    for case, (raw, content_type, status, code) in BODY_CASES.items():
        before = db_state()
        error = assert_refused(_send(root, method, url, raw, content_type), status, before, case)
        assert error["code"] == code, (case, error)


# Fields ---------------------------------------------------------------------------------------------------------


def _mutations(kind: str, field: str, value) -> list:
    """Bad values of one kind for a field whose valid value is `value`."""
    value = next(t for t in (str, list, dict, int) if isinstance(value, t))()  # only the JSON type matters
    if kind == "wrong_type":  # numbers for strings, objects for lists, lists for objects, text for numbers
        return [{str: 12345, list: {"a": 1}, dict: ["a"], int: "abc"}[type(value)], True]
    if kind == "long_string":
        return [{str: "x" * 100_000, list: ["x" * 100_000], dict: {"k": "x" * 100_000}}.get(type(value), "x" * 100_000)]
    if kind == "nul":
        return [{str: "a\u0000b", list: ["a\u0000b"], dict: {"k": "a\u0000b"}}.get(type(value), "\u0000")]
    if kind == "huge_int":
        return [10**30, -(10**30)]
    if kind == "unknown_reference":
        if field not in REFERENCE_FIELDS:
            return []
        return [{str: "no-such-thing", list: ["no-such-thing"], int: 987_654_321}[type(value)]]
    raise AssertionError(kind)


FIELD_KINDS = ["wrong_type", "long_string", "nul", "huge_int", "unknown_reference"]


@pytest.mark.parametrize("kind", FIELD_KINDS)
@pytest.mark.parametrize(("name", "method"), [pytest.param(*key, id=f"{key[0]}:{key[1]}") for key in BODY_ROUTES])
def test_bad_field_is_refused(world, root, name, method, kind):
    valid = _valid_body(world, name, method)
    url = _url(world, name)
    tried = 0
    for field, value in valid.items():
        for bad in _mutations(kind, field, value):
            before = db_state()
            response = _send(root, method, url, json.dumps({**valid, field: bad}))
            error = assert_refused(response, 400, before)
            if kind == "nul":  # refused while parsing, before any field is looked at
                assert error["code"] == "parse_error" and "NUL" in error["message"], (field, error)
            else:
                assert error["code"] == "invalid", (field, error)
                assert field in error["details"], (field, error)
            tried += 1
    if kind != "unknown_reference":
        assert tried >= len(valid)
    assert kind != "unknown_reference" or tried == len(REFERENCE_FIELDS & set(valid))


# Lookups in the URL ---------------------------------------------------------------------------------------------

BAD_LOOKUPS = {
    "pk": ["999999999", str(10**30), "-1", "0", "abc", "%00", "1%00", "9" * 300],
    "slug": ["no-such-slug", "%00", "alpha%00", str(10**30), "x" * 300],
    "uuid": [str(uuid.UUID(int=0)), "not-a-uuid", str(10**30), "%00"],
}


def _lookup_kind(world, name: str) -> str:
    kwargs = matrix.URL_KWARGS[name](world)
    if "slug" in kwargs:
        return "slug"
    return "uuid" if isinstance(kwargs["pk"], uuid.UUID) else "pk"


@pytest.mark.parametrize(("name", "method"), [pytest.param(*key, id=f"{key[0]}:{key[1]}") for key in DETAIL_ROUTES])
def test_unknown_or_malformed_lookup_is_404(world, root, name, method):
    valid_url = _url(world, name)
    real = str(next(iter(matrix.URL_KWARGS[name](world).values())))
    body = json.dumps(_valid_body(world, name, method))
    for bad in BAD_LOOKUPS[_lookup_kind(world, name)]:
        before = db_state()
        url = valid_url.replace(f"/{real}/", f"/{bad}/", 1)
        error = assert_refused(_send(root, method, url, body), 404, before)
        assert error["code"] == "not_found", (bad, error)


# List query strings ---------------------------------------------------------------------------------------------


def _filterset(name: str):
    match = get_resolver().resolve(reverse(name))
    return getattr(match.func.cls, "filterset_class", None)


def _query_cases(name: str) -> list[tuple[str, dict, int]]:
    cases = [
        ("page_not_a_number", {"page": "abc"}, 404),
        ("page_far_past_the_end", {"page": "999999999999"}, 404),
        ("page_huge", {"page": str(10**30)}, 404),
        ("page_size_negative", {"page_size": "-1"}, 400),
        ("page_size_zero", {"page_size": "0"}, 400),
        ("page_size_not_a_number", {"page_size": "ten"}, 400),
        ("ordering_unknown_field", {"ordering": "nonexistent"}, 400),
        ("ordering_one_unknown_of_two", {"ordering": "created_at,-password"}, 400),
        ("ordering_nul", {"ordering": "\x00"}, 400),
    ]
    filterset = _filterset(name)
    for field, flt in filterset.base_filters.items() if filterset else []:
        cases.append((f"{field}_nul", {field: "a\x00b"}, 400))
        kind = type(flt).__name__
        if kind in ("BooleanFilter", "ChoiceFilter", "IsoDateTimeFilter"):
            cases.append((f"{field}_huge_int", {field: str(10**30)}, 400))
        if kind == "IsoDateTimeFilter":
            cases += [
                (f"{field}_not_a_date", {field: "yesterday"}, 400),
                (f"{field}_year_99999", {field: "99999-01-01T00:00:00Z"}, 400),
                (f"{field}_month_13", {field: "2024-13-01T00:00:00Z"}, 400),
            ]
    return cases


@pytest.mark.parametrize("name", LIST_ROUTES)
def test_junk_query_is_refused(world, root, name):
    cases = _query_cases(name)
    assert len(cases) >= 9
    for case, params, status in cases:
        before = db_state()
        error = assert_refused(root.get(reverse(name), params), status, before, case)
        if status == 400:
            assert error["code"] == "invalid", (case, error)
            assert set(params) & set(error["details"]), (case, error)


@pytest.mark.parametrize("name", LIST_ROUTES)
def test_filters_given_a_huge_number_as_text_match_nothing(world, root, name):
    """A text filter (slug, name, type) compared with a 31-digit number is not an error; it simply matches nothing."""
    filterset = _filterset(name)
    text_filters = [
        f for f, flt in (filterset.base_filters.items() if filterset else []) if type(flt).__name__ == "CharFilter"
    ]
    for field in text_filters:
        response = root.get(reverse(name), {field: str(10**30)})
        assert response.status_code == 200, (field, response.content)
        assert response.json()["count"] == 0, field


# Safety net, schema, docs ---------------------------------------------------------------------------------------


def test_a_value_the_database_refuses_is_a_400_not_a_500():
    """Any DataError that still reaches the API (a route without the upfront checks) is answered as bad input."""
    response = exception_handler(DataError("value out of range"), {})
    assert response.status_code == 400
    assert response.data["error"]["code"] == "invalid"
    assert "cannot be stored" in response.data["error"]["message"]


def test_unknown_api_path_has_the_error_shape(world, root):
    response = root.get("/api/v1/no-such-route/")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"code", "message", "details"}


@pytest.mark.django_db
def test_schema_renders_every_route_and_documents_bearer_tokens():
    response = APIClient().get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = json.loads(response.content)
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token: `Authorization: Bearer cpt_...`.",
    }
    paths = set(schema["paths"])
    for prefix in (
        "organizations",
        "projects",
        "memberships",
        "teams",
        "service-accounts",
        "tokens",
        "audit-events",
        "jobs",
        "workers",
    ):
        assert f"/api/v1/{prefix}/" in paths
    assert {"/api/v1/jobs/{id}/cancel/", "/api/v1/jobs/{id}/retry/", "/api/v1/tokens/{id}/revoke/"} <= paths


@pytest.mark.django_db
def test_schema_generates_without_warnings_about_core_views():
    GENERATOR_STATS.reset()
    with GENERATOR_STATS.silence():
        schema = SchemaGenerator().get_schema(request=None, public=True)
    assert "/api/v1/projects/" in schema["paths"]
    problems = [*GENERATOR_STATS._warn_cache, *GENERATOR_STATS._error_cache]
    assert [message for message in problems if "apps/core/" in message] == []


@pytest.mark.django_db
def test_docs_page_loads():
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
    assert b"/api/schema/" in response.content
