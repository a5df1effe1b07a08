"""Shared fixtures. Tests run against the real PostgreSQL and Redis that `make test` starts."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from apps.core.models import Role
from apps.core.services import api_token_create

from .factories import MembershipFactory, OrganizationFactory, ProjectFactory, UserFactory


@pytest.fixture(autouse=True)
def _clear_cache():
    """Redis-backed cache (login rate limits) starts empty for each test."""
    cache.clear()
    yield


@pytest.fixture
def org(db):
    return OrganizationFactory()


@pytest.fixture
def project(org):
    return ProjectFactory(organization=org, slug="alpha", name="Alpha")


@pytest.fixture
def other_project(db):
    return ProjectFactory(slug="beta", name="Beta")


@pytest.fixture
def member_factory(project):
    """member_factory(role, project=None) -> a user holding that role on the project."""

    def make(role: str = Role.VIEWER, on=None, username: str | None = None):
        user = UserFactory(**({"username": username} if username else {}))
        MembershipFactory(project=on or project, user=user, role=role)
        return user

    return make


@pytest.fixture
def admin_user(member_factory):
    return member_factory(Role.ADMIN, username="project-admin")


@pytest.fixture
def api_client():
    return APIClient()


@pytest.fixture
def client_for():
    """client_for(user, scopes=("read", "write", "admin"), project=None) -> an APIClient with a bearer token."""

    def make(user, scopes=("read", "write", "admin"), project=None):
        _, raw = api_token_create(user=user, name="test", scopes=list(scopes), project=project)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        client.raw_token = raw
        return client

    return make
