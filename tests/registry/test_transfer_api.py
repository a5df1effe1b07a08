"""The transfer API over HTTP: resumable uploads, completion, manifests, ranged downloads, and who may do what."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient
from django.urls import reverse
from rest_framework.test import APIClient

from apps.core.models import AuditEvent, Job, JobStatus, Membership, Role
from apps.registry.models import (
    ModelVersion,
    RegisteredModel,
    Upload,
    UploadPart,
    UploadStatus,
    VersionFile,
    VersionStatus,
)
from apps.registry.services import upload_open, version_delete
from apps.registry.tasks import job_complete_upload
from tests.core.test_permission_matrix import NEXT_WEAKER, SCOPES_BELOW, Rule, api_routes
from tests.factories import UserFactory

from .conftest import manifest_entry, parts_of, safetensors_bytes, tensors

PART = 3 * 1024 * 1024  # above Django's 2 MB in-memory body limit: parts must stream, not go through request.body
BASE = "/api/v1/registry"
CONFIG = json.dumps({"model_type": "gpt2", "n_layer": 4, "n_embd": 256}).encode()


@pytest.fixture
def weights() -> bytes:
    return safetensors_bytes(tensors(count=4, elements=524_288))  # 8 MiB in 4 tensors


@pytest.fixture
def developer(project, member_factory, settings):
    settings.UPLOAD_PART_SIZE = PART
    return member_factory(Role.DEVELOPER)


@pytest.fixture
def dev_client(developer, client_for):
    return client_for(developer)


def open_upload(client, files: dict[str, bytes], name="tiny", project="alpha", **fields):
    body = {"project": project, "name": name, "files": [manifest_entry(p, d) for p, d in files.items()], **fields}
    return client.post(f"{BASE}/uploads/", body, format="json")


def put_part(client, upload_id, index: int, number: int, data: bytes, **headers):
    return client.put(
        f"{BASE}/uploads/{upload_id}/files/{index}/parts/{number}",
        data=data,
        content_type="application/octet-stream",
        **headers,
    )


def complete_and_run(client, upload_id) -> dict:
    response = client.post(f"{BASE}/uploads/{upload_id}/complete/")
    assert response.status_code == 202, response.content
    job_complete_upload(response.json()["id"])
    return response.json()


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def push(client, files: dict[str, bytes], **fields) -> ModelVersion:
    opened = open_upload(client, files, **fields).json()
    for entry in opened["files"]:
        for number, piece in enumerate(parts_of(files[entry["path"]], opened["part_size"])):
            assert put_part(client, opened["id"], entry["index"], number, piece).status_code == 200
    complete_and_run(client, opened["id"])
    return ModelVersion.objects.get(pk=opened["version"]["id"])


def test_upload_in_any_order_with_resends_resumes_from_status_and_completes(dev_client, weights):
    files = {"model.safetensors": weights, "config.json": CONFIG}
    response = open_upload(dev_client, files, description="first", tags=["tiny"])
    assert response.status_code == 201, response.content
    opened = response.json()
    assert opened["version"]["number"] == 1 and opened["version"]["model"] == "tiny"
    assert opened["part_size"] == PART and opened["expires_at"] and opened["status"] == "open"
    assert [(f["index"], f["path"], f["size"], f["parts"]) for f in opened["files"]] == [
        (0, "config.json", len(CONFIG), 1),
        (1, "model.safetensors", len(weights), 3),
    ]
    upload_id = opened["id"]
    pieces = parts_of(weights, PART)

    assert put_part(dev_client, upload_id, 1, 2, pieces[2]).status_code == 200  # last part first
    first = put_part(
        dev_client, upload_id, 1, 0, pieces[0], HTTP_X_CONTENT_SHA256=hashlib.sha256(pieces[0]).hexdigest()
    )
    assert first.status_code == 200
    assert first.json() == {
        "file_index": 1,
        "part_number": 0,
        "size": PART,
        "sha256": hashlib.sha256(pieces[0]).hexdigest(),
    }
    assert put_part(dev_client, upload_id, 1, 0, pieces[0]).status_code == 200  # the same part again

    status = dev_client.get(f"{BASE}/uploads/{upload_id}/").json()
    assert status["complete"] is False and status["parts"] == 4 and status["received_parts"] == 2
    assert status["received_bytes"] == PART + len(pieces[2]) and status["job"] is None
    assert [(f["path"], f["received"], f["missing"]) for f in status["files"]] == [
        ("config.json", [], [0]),
        ("model.safetensors", [0, 2], [1]),
    ]
    early = dev_client.post(f"{BASE}/uploads/{upload_id}/complete/")
    assert early.status_code == 400 and "2 parts are missing" in early.json()["error"]["message"]

    for index, number, piece in [(0, 0, CONFIG), (1, 1, pieces[1])]:  # resume: only what is missing
        assert put_part(dev_client, upload_id, index, number, piece).status_code == 200
    assert dev_client.get(f"{BASE}/uploads/{upload_id}/").json()["complete"] is True

    job = complete_and_run(dev_client, upload_id)
    assert job["job_type"] == "registry.complete_upload" and job["params"] == {"upload_id": upload_id}
    assert Job.objects.get(pk=job["id"]).status == JobStatus.SUCCEEDED
    status = dev_client.get(f"{BASE}/uploads/{upload_id}/").json()
    assert status["status"] == "completed" and status["job"] == job["id"]
    assert status["version"]["status"] == "ready"
    again = dev_client.post(f"{BASE}/uploads/{upload_id}/complete/")  # a retried completion: the same job
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    late = put_part(dev_client, upload_id, 0, 0, CONFIG)
    assert late.status_code == 400 and "completed" in late.json()["error"]["message"]


def test_manifest_and_ranged_downloads(dev_client, weights):
    version = push(dev_client, {"model.safetensors": weights, "config.json": CONFIG})
    manifest = dev_client.get(f"{BASE}/versions/{version.pk}/manifest/")
    assert manifest.status_code == 200, manifest.content
    data = manifest.json()
    assert data["model"] == "tiny" and data["project"] == "alpha" and data["version"]["number"] == 1
    assert data["total_size"] == len(weights) + len(CONFIG)
    by_path = {f["path"]: f for f in data["files"]}
    assert by_path["model.safetensors"]["sha256"] == hashlib.sha256(weights).hexdigest()
    url = by_path["model.safetensors"]["url"]
    assert url == f"http://testserver{BASE}/versions/{version.pk}/files/model.safetensors"
    assert dev_client.get(f"{BASE}/manifest/", {"ref": "alpha/tiny:1"}).json() == data
    assert dev_client.get(f"{BASE}/manifest/", {"ref": "alpha/tiny"}).json() == data  # latest ready

    whole = dev_client.get(url)
    assert whole.status_code == 200 and body(whole) == weights
    assert whole["Content-Length"] == str(len(weights)) and whole["Accept-Ranges"] == "bytes"
    assert whole["ETag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    assert whole["X-Checksum-SHA256"] == hashlib.sha256(weights).hexdigest()

    size = len(weights)
    cases = {
        "bytes=0-9": (0, 10),
        "bytes=2097000-6292000": (2_097_000, 6_292_001),  # across tensor chunks
        f"bytes={size - 100}-": (size - 100, size),
        "bytes=-1000": (size - 1000, size),
        f"bytes=5-{10**25}": (5, size),  # an end past the file is cut to it
        f"bytes=-{size * 2}": (0, size),
    }
    for header, (start, end) in cases.items():
        response = dev_client.get(url, HTTP_RANGE=header)
        assert response.status_code == 206, header
        assert body(response) == weights[start:end], header
        assert response["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
        assert response["Content-Length"] == str(end - start)

    for header in (f"bytes={size}-", f"bytes={10**25}-", "bytes=-0"):
        response = dev_client.get(url, HTTP_RANGE=header)
        assert response.status_code == 416, header
        assert response["Content-Range"] == f"bytes */{size}"
        assert response.json()["error"]["code"] == "range_not_satisfiable"
    for header in ("bytes=9-3", "items=0-5", "bytes=0-1,4-5", "bytes=" + "9" * 40 + "-"):  # ignored: whole file
        response = dev_client.get(url, HTTP_RANGE=header)
        assert response.status_code == 200 and body(response) == weights, header
    stale = dev_client.get(url, HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE='"' + "0" * 64 + '"')
    assert stale.status_code == 200 and body(stale) == weights

    head = dev_client.head(url)
    assert head.status_code == 200 and head.content == b"" and head["Content-Length"] == str(size)
    assert head["ETag"] == whole["ETag"]
    head = dev_client.head(url, HTTP_RANGE="bytes=10-19")
    assert head.status_code == 206 and head["Content-Range"] == f"bytes 10-19/{size}"
    assert head["Content-Length"] == "10"
    assert dev_client.get(f"{BASE}/versions/{version.pk}/files/missing.bin").status_code == 404
    assert dev_client.get(f"{BASE}/versions/{version.pk}/files/model%00.bin").status_code == 404


def test_downloads_stream_under_asgi_too(dev_client, weights):
    version = push(dev_client, {"model.safetensors": weights})
    headers = {"Authorization": f"Bearer {dev_client.raw_token}", "Range": "bytes=100-"}

    async def fetch():
        response = await AsyncClient().get(f"{BASE}/versions/{version.pk}/files/model.safetensors", headers=headers)
        return response, b"".join([block async for block in response.streaming_content])

    response, content = async_to_sync(fetch)()
    assert response.status_code == 206 and content == weights[100:]


def test_versions_that_are_not_ready_or_are_deleted_serve_nothing(dev_client, weights, member_factory):
    version = push(dev_client, {"model.safetensors": weights})
    url = f"{BASE}/versions/{version.pk}/files/model.safetensors"
    ModelVersion.objects.filter(pk=version.pk).update(
        status=VersionStatus.QUARANTINED, status_reason="model.bin imports os.system."
    )
    for target in (url, f"{BASE}/versions/{version.pk}/manifest/"):
        response = dev_client.get(target)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "quarantined"
        assert (
            "quarantined and cannot be downloaded: model.bin imports os.system." in response.json()["error"]["message"]
        )
    uploading = open_upload(dev_client, {"a.bin": b"abc"}, name="pending").json()
    response = dev_client.get(f"{BASE}/versions/{uploading['version']['id']}/manifest/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "not_ready"
    assert "pending:1 is uploading" in response.json()["error"]["message"]

    ModelVersion.objects.filter(pk=version.pk).update(status=VersionStatus.READY)
    version_delete(user=member_factory(Role.MAINTAINER), version=version)
    assert dev_client.get(url).status_code == 404
    assert dev_client.get(f"{BASE}/versions/{version.pk}/manifest/").status_code == 404


def test_lineage_from_parents_by_number_or_alias(dev_client, weights, project):
    base = push(dev_client, {"model.safetensors": weights}, name="base")
    from apps.registry.services import alias_set

    alias_set(user=base.created_by, version=base, alias="stable")
    child = open_upload(
        dev_client,
        {"adapter.bin": b"delta"},
        name="tuned",
        parents=[{"model": "base", "version": "stable", "relation": "adapter"}],
        mlflow_run_id="run-1",
        task="embedding",
    )
    assert child.status_code == 201, child.content
    version = ModelVersion.objects.get(pk=child.json()["version"]["id"])
    assert version.parent_links.get().parent == base and version.mlflow_run_id == "run-1"
    assert version.model.task == "embedding"
    other = open_upload(
        dev_client,
        {"adapter.bin": b"delta"},
        name="tuned2",
        parents=[{"model": "alpha/base", "version": 1, "relation": "fine-tune"}],
    )
    assert other.status_code == 201
    missing = open_upload(
        dev_client, {"a.bin": b"x"}, name="x", parents=[{"model": "base", "version": 7, "relation": "merge"}]
    )
    assert missing.status_code == 400 and missing.json()["error"]["message"] == "parents: No version base:7 found."
    assert not RegisteredModel.objects.filter(name="x").exists()


def test_bad_input_is_a_clear_4xx(dev_client, weights):
    opened = open_upload(dev_client, {"w.bin": b"w" * 10, "z.bin": b""}).json()
    upload_id = opened["id"]
    parts = f"{BASE}/uploads/{upload_id}/files"
    cases = [
        ("put", f"{BASE}/uploads/not-a-uuid/files/0/parts/0", b"w" * 10, 404),
        ("put", f"{BASE}/uploads/{uuid.uuid4()}/files/0/parts/0", b"w" * 10, 404),
        ("put", f"{parts}/-1/parts/0", b"w" * 10, 400),
        ("put", f"{parts}/0/parts/{'9' * 40}", b"w" * 10, 400),
        ("put", f"{parts}/{2**63}/parts/0", b"w" * 10, 400),
        ("put", f"{parts}/7/parts/0", b"w" * 10, 400),
        ("put", f"{parts}/1/parts/1", b"", 400),
        ("put", f"{parts}/0/parts/0", b"w" * 11, 400),
        ("put", f"{parts}/0/parts/0", b"", 400),
        ("put", f"{parts}/abc/parts/0", b"w" * 10, 400),
        ("get", f"{BASE}/uploads/{'f' * 5000}/", None, 404),
        ("get", f"{BASE}/versions/{2**70}/manifest/", None, 404),
        ("get", f"{BASE}/versions/-3/manifest/", None, 404),
        ("get", f"{BASE}/versions/1x/files/a.bin", None, 404),
        ("get", f"{BASE}/manifest/?ref=nope", None, 400),
        ("get", f"{BASE}/manifest/?ref=alpha/ti%00ny:1", None, 400),
        ("get", f"{BASE}/manifest/?ref=alpha/tiny:{10**30}", None, 404),
    ]
    for method, url, data, expected in cases:
        if method == "put":
            response = dev_client.put(url, data=data, content_type="application/octet-stream")
        else:
            response = dev_client.get(url)
        assert response.status_code == expected, (url, response.content)
        assert set(response.json()["error"]) == {"code", "message", "details"}
    assert put_part(dev_client, upload_id, 0, 0, b"w" * 10).status_code == 200
    wrong_sha = put_part(
        dev_client, upload_id, 0, 0, b"v" * 10, HTTP_X_CONTENT_SHA256=hashlib.sha256(b"w" * 10).hexdigest()
    )
    assert wrong_sha.status_code == 400 and "sha256 mismatch" in wrong_sha.json()["error"]["message"]
    status = dev_client.get(f"{BASE}/uploads/{upload_id}/").json()
    assert status["files"][0]["missing"] == [0]  # the garbled resend replaced the good copy: it must come again
    bad_sha = put_part(dev_client, upload_id, 0, 0, b"w" * 10, HTTP_X_CONTENT_SHA256="xyz")
    assert bad_sha.status_code == 400 and "X-Content-SHA256" in bad_sha.json()["error"]["message"]
    assert put_part(dev_client, upload_id, 1, 0, b"").status_code == 200  # an empty file has one empty part

    posts = [
        ("uploads/", "[1, 2]", "application/json", 400),
        ("uploads/", "{not json", "application/json", 400),
        ("uploads/", "name=x", "application/x-www-form-urlencoded", 415),
        ("uploads/", "", "application/json", 400),
        ("uploads/", json.dumps({"project": "alpha", "name": "x", "files": "model.bin"}), "application/json", 400),
        (
            "uploads/",
            json.dumps({"project": "alpha", "name": "x", "files": [{"path": "../x"}]}),
            "application/json",
            400,
        ),
        (
            "uploads/",
            json.dumps({"project": "alpha", "name": "x", "files": [{"path": "a", "size": 1.5, "sha256": "0" * 64}]}),
            "application/json",
            400,
        ),
        (
            "uploads/",
            json.dumps({"project": "nope", "name": "x", "files": [manifest_entry("a", b"")]}),
            "application/json",
            400,
        ),
        (
            "uploads/",
            json.dumps({"project": "alpha", "name": "../x", "files": [manifest_entry("a", b"")]}),
            "application/json",
            400,
        ),
        ("imports/", json.dumps({"project": "alpha", "name": "x", "source": "ftp://x"}), "application/json", 400),
        ("imports/", json.dumps({"project": "alpha", "name": "x"}), "application/json", 400),
    ]
    for path, data, content_type, expected in posts:
        response = dev_client.generic("POST", f"{BASE}/{path}", data=data, content_type=content_type)
        assert response.status_code == expected, (data, response.content)
        assert response.json()["error"]["message"]
    assert Upload.objects.count() == 1 and ModelVersion.objects.count() == 1  # no partial writes


def test_access_other_projects_read_only_tokens_and_restricted_models(
    dev_client, weights, developer, client_for, member_factory, other_project
):
    version = push(dev_client, {"model.safetensors": weights})
    opened = open_upload(dev_client, {"w.bin": b"w" * 10}, name="pending").json()
    upload_id = opened["id"]
    file_url = f"{BASE}/versions/{version.pk}/files/model.safetensors"

    outsider = member_factory(Role.ADMIN, on=other_project)
    stranger = client_for(outsider)
    for response in (
        stranger.get(f"{BASE}/uploads/{upload_id}/"),
        put_part(stranger, upload_id, 0, 0, b"w" * 10),
        stranger.post(f"{BASE}/uploads/{upload_id}/complete/"),
        stranger.get(f"{BASE}/versions/{version.pk}/manifest/"),
        stranger.get(f"{BASE}/manifest/", {"ref": "alpha/tiny:1"}),
        stranger.get(file_url),
    ):
        assert response.status_code == 404, response.content
    for response in (  # a project named in a body that the user cannot see reads like one that does not exist
        open_upload(stranger, {"a.bin": b"a"}),
        stranger.post(f"{BASE}/imports/", {"project": "alpha", "name": "x", "source": "hf://a/b"}, format="json"),
    ):
        assert response.status_code == 400
        assert response.json()["error"]["message"] == "project: Object with slug=alpha does not exist."
    Membership.objects.create(project=other_project, user=developer, role=Role.VIEWER)
    limited = client_for(developer, scopes=("read", "write"), project=other_project)  # limited to another project
    assert limited.get(file_url).status_code == 404

    read_only = client_for(developer, scopes=("read",))
    for response in (
        put_part(read_only, upload_id, 0, 0, b"w" * 10),
        read_only.post(f"{BASE}/uploads/{upload_id}/complete/"),
        open_upload(read_only, {"a.bin": b"a"}, name="ro"),
        read_only.post(f"{BASE}/imports/", {"project": "alpha", "name": "x", "source": "hf://a/b"}, format="json"),
    ):
        assert response.status_code == 403, response.content
        assert "lacks the 'write' scope" in response.json()["error"]["message"]
    assert read_only.get(file_url).status_code == 200  # reading needs only the read scope

    viewer = client_for(member_factory(Role.VIEWER))
    assert viewer.get(f"{BASE}/uploads/{upload_id}/").status_code == 200
    assert put_part(viewer, upload_id, 0, 0, b"w" * 10).status_code == 403
    assert viewer.post(f"{BASE}/uploads/{upload_id}/complete/").status_code == 403
    assert open_upload(viewer, {"a.bin": b"a"}, name="v").status_code == 403
    assert body(viewer.get(file_url)) == weights

    RegisteredModel.objects.filter(pk=version.model_id).update(restricted=True)
    assert dev_client.get(file_url).status_code == 404  # restricted: project admins and grantees only
    assert client_for(member_factory(Role.ADMIN)).get(file_url).status_code == 200
    assert not AuditEvent.objects.filter(action="upload.complete", actor=outsider).exists()
    assert Upload.objects.get(pk=upload_id).status == UploadStatus.OPEN


# The permission matrix of the transfer routes ------------------------------------------------------------------
# Same rules and cases as tests/core/test_permission_matrix.py (ok, lower, other, anon, scope, limited); the rows
# are core `Rule`s, so a registry matrix can take them in as they are.

PART_BODY = "part-bytes"  # the runner sends json.dumps(body): these 12 bytes are the part


@dataclass
class TransferWorld:
    project: Any
    other_project: Any
    open_upload: Upload
    full_upload: Upload
    version: ModelVersion
    users: dict[str, Any] = field(default_factory=dict)

    def user(self, who: str, *, limited: bool = False):
        key = f"{who}-limited" if limited else who
        if key not in self.users:
            user = UserFactory(username=key)
            if who in Role.values:
                Membership.objects.create(project=self.project, user=user, role=who)
            if who == "outsider" or limited:
                Membership.objects.create(project=self.other_project, user=user, role=Role.ADMIN)
            self.users[key] = user
        return self.users[key]


@pytest.fixture
def transfer_world(project, other_project, member_factory) -> TransferWorld:
    owner = member_factory(Role.DEVELOPER)
    part = json.dumps(PART_BODY).encode()
    pending = upload_open(user=owner, project=project, name="pending", files=[manifest_entry("w.bin", part)])
    full = upload_open(user=owner, project=project, name="full", files=[manifest_entry("w.bin", b"")])
    UploadPart.objects.create(upload=full, file_index=0, part_number=0, size=0, sha256=hashlib.sha256().hexdigest())
    model = RegisteredModel.objects.create(project=project, name="ready")
    version = ModelVersion.objects.create(model=model, number=1, status=VersionStatus.READY, file_count=1)
    VersionFile.objects.create(version=version, path="empty.txt", size=0, sha256=hashlib.sha256().hexdigest())
    return TransferWorld(project, other_project, pending, full, version)


TRANSFER_SPEC: dict[tuple[str, str], Rule] = {
    ("registry-upload-list", "POST"): Rule(
        Role.DEVELOPER,
        201,
        lower=403,
        other=400,
        limited=400,
        scope="write",
        body=lambda w: {"project": w.project.slug, "name": "new", "files": [manifest_entry("a.bin", b"a")]},
    ),
    ("registry-upload-detail", "GET"): Rule(Role.VIEWER, 200),
    ("registry-upload-part", "PUT"): Rule(Role.DEVELOPER, 200, lower=403, scope="write", body=lambda w: PART_BODY),
    ("registry-upload-complete", "POST"): Rule(Role.DEVELOPER, 202, lower=403, scope="write"),
    ("registry-manifest", "GET"): Rule(Role.VIEWER, 200),
    ("registry-version-manifest", "GET"): Rule(Role.VIEWER, 200),
    ("registry-version-file", "GET"): Rule(Role.VIEWER, 200),
    ("registry-import-list", "POST"): Rule(
        Role.DEVELOPER,
        202,
        lower=403,
        other=400,
        limited=400,
        scope="write",
        body=lambda w: {"project": w.project.slug, "name": "imported", "source": "hf://org/model@main"},
    ),
}

TRANSFER_URLS: dict[str, Callable[[TransferWorld], str]] = {
    "registry-upload-list": lambda w: reverse("registry-upload-list"),
    "registry-upload-detail": lambda w: reverse("registry-upload-detail", kwargs={"pk": w.open_upload.pk}),
    "registry-upload-part": lambda w: reverse(
        "registry-upload-part", kwargs={"pk": w.open_upload.pk, "index": 0, "number": 0}
    ),
    "registry-upload-complete": lambda w: reverse("registry-upload-complete", kwargs={"pk": w.full_upload.pk}),
    "registry-manifest": lambda w: reverse("registry-manifest") + "?ref=alpha/ready:1",
    "registry-version-manifest": lambda w: reverse("registry-version-manifest", kwargs={"pk": w.version.pk}),
    "registry-version-file": lambda w: reverse(
        "registry-version-file", kwargs={"pk": w.version.pk, "path": "empty.txt"}
    ),
    "registry-import-list": lambda w: reverse("registry-import-list"),
}


def _transfer_cases():
    for (name, method), rule in TRANSFER_SPEC.items():
        yield name, method, "ok"
        if rule.who in NEXT_WEAKER and rule.lower is not None:
            yield name, method, "lower"
        yield from (
            (name, method, case) for case in ("other", "anon", "scope", "limited") if case != "scope" or rule.scope
        )


def test_transfer_routes_are_all_in_the_matrix():
    routes = {(name, method) for name, methods in api_routes().items() for method in methods if name in TRANSFER_URLS}
    assert routes == set(TRANSFER_SPEC)


@pytest.mark.parametrize(("name", "method", "case"), [pytest.param(*c, id=":".join(c)) for c in _transfer_cases()])
def test_transfer_permission_matrix(transfer_world, client_for, name, method, case):
    rule = TRANSFER_SPEC[(name, method)]
    who = {"ok": rule.who, "lower": NEXT_WEAKER.get(rule.who), "scope": rule.who, "limited": rule.who}.get(case)
    client = APIClient()
    if case == "other":
        client = client_for(transfer_world.user("outsider"))
    elif case != "anon":
        scopes = SCOPES_BELOW[rule.scope] if case == "scope" else ("read", "write")
        limited = case == "limited"
        user = transfer_world.user(who, limited=limited)
        client = client_for(user, scopes=scopes, project=transfer_world.other_project if limited else None)
    body = rule.body(transfer_world) if rule.body else None
    response = client.generic(
        method,
        TRANSFER_URLS[name](transfer_world),
        data=json.dumps(body) if body is not None else "",
        content_type="application/json",
    )
    expected = {"ok": rule.ok, "lower": rule.lower, "other": rule.other, "anon": 401, "scope": 403}.get(
        case, rule.limited
    )
    assert response.status_code == expected, getattr(response, "content", response.status_code)
    if expected >= 400:
        assert set(response.json()["error"]) == {"code", "message", "details"}
    if case == "anon":
        assert response["WWW-Authenticate"] == "Bearer"
    if case == "scope":
        assert f"'{rule.scope}'" in response.json()["error"]["message"]
