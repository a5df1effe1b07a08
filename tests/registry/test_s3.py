"""The S3 blob store against a real S3-compatible server (moto's standalone server on a local port)."""

from __future__ import annotations

import datetime
import hashlib
import io
import uuid

import boto3
import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone
from moto.server import ThreadedMotoServer

from apps.core.models import Role
from apps.registry import gc, storage
from apps.registry.models import Chunk, ModelVersion, Upload, VersionStatus
from apps.registry.services import version_delete
from apps.registry.storage import S3BlobStore, chunk_key, store_from_url
from apps.registry.tasks import job_complete_upload
from apps.registry.uploads import upload_part_put

from .conftest import manifest_entry, parts_of, safetensors_bytes, tensors

BASE = "/api/v1/registry"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"artifacts-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_store(bucket, settings) -> S3BlobStore:
    settings.ARTIFACT_STORE_URL = f"s3://{bucket}/models/"
    storage._cached_store.cache_clear()
    yield storage.get_store()
    storage._cached_store.cache_clear()


def objects(bucket: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def test_s3_blob_store_operations(s3_store, bucket):
    assert isinstance(s3_store, S3BlobStore) and s3_store.prefix == "models/"
    data = bytes(range(256)) * 4096  # 1 MiB
    s3_store.put("chunks/aa/bb/one", io.BytesIO(data), len(data))
    s3_store.put("uploads/u1/0/0", io.BytesIO(b"part"), 4)
    s3_store.put("uploads/u1/0/1", io.BytesIO(b""), 0)
    s3_store.put("uploads/u2/0/0", io.BytesIO(b"other"), 5)
    assert objects(bucket) == [
        "models/chunks/aa/bb/one",
        "models/uploads/u1/0/0",
        "models/uploads/u1/0/1",
        "models/uploads/u2/0/0",
    ]
    assert s3_store.exists("chunks/aa/bb/one") and not s3_store.exists("chunks/aa/bb/two")
    assert b"".join(s3_store.read("chunks/aa/bb/one")) == data
    assert b"".join(s3_store.read("chunks/aa/bb/one", 1000, 300_000)) == data[1000:300_000]
    assert b"".join(s3_store.read("chunks/aa/bb/one", 1_048_000)) == data[1_048_000:]
    assert b"".join(s3_store.read("chunks/aa/bb/one", 10, 10)) == b""
    assert b"".join(s3_store.read("uploads/u1/0/1")) == b""  # an empty object reads as nothing
    assert sorted(s3_store.list("uploads/u1/")) == ["uploads/u1/0/0", "uploads/u1/0/1"]

    s3_store.delete_prefix("uploads/u1/")
    assert sorted(s3_store.list("uploads/")) == ["uploads/u2/0/0"]
    s3_store.delete("chunks/aa/bb/one")
    s3_store.delete("chunks/aa/bb/never-there")
    assert not s3_store.exists("chunks/aa/bb/one")
    assert objects(bucket) == ["models/uploads/u2/0/0"]
    bare = store_from_url(f"s3://{bucket}")
    assert bare.prefix == "" and list(bare.list("models/")) == ["models/uploads/u2/0/0"]


def test_upload_download_and_gc_through_s3(s3_store, bucket, project, member_factory, client_for, settings):
    settings.UPLOAD_PART_SIZE = 1024 * 1024
    developer = member_factory(Role.DEVELOPER)
    client = client_for(developer)
    weights = safetensors_bytes(tensors(count=3, elements=400_000))  # 4.8 MB
    files = {"model.safetensors": weights, "empty.txt": b""}
    opened = client.post(
        f"{BASE}/uploads/",
        {"project": "alpha", "name": "s3-model", "files": [manifest_entry(p, d) for p, d in files.items()]},
        format="json",
    ).json()
    upload = Upload.objects.get(pk=opened["id"])
    with pytest.raises(ValidationError, match="The body ended 1048476 bytes early"):
        upload_part_put(
            user=developer,
            upload=upload,
            file_index=1,
            part_number=0,
            stream=io.BytesIO(b"x" * 100),
            content_length=None,
        )
    assert objects(bucket) == [] and not upload.parts.exists()  # a broken body leaves nothing behind
    for entry in reversed(opened["files"]):
        for number, piece in enumerate(parts_of(files[entry["path"]], opened["part_size"])):
            response = client.put(
                f"{BASE}/uploads/{opened['id']}/files/{entry['index']}/parts/{number}",
                data=piece,
                content_type="application/octet-stream",
            )
            assert response.status_code == 200, response.content
    assert any(key.startswith(f"models/uploads/{opened['id']}/") for key in objects(bucket))
    job = client.post(f"{BASE}/uploads/{opened['id']}/complete/").json()
    job_complete_upload(job["id"])
    version = ModelVersion.objects.get(pk=opened["version"]["id"])
    assert version.status == VersionStatus.READY, version.status_reason
    keys = objects(bucket)
    assert not any(key.startswith("models/uploads/") for key in keys)  # staging removed after completion
    assert {f"models/{chunk_key(digest)}" for digest in Chunk.objects.values_list("digest", flat=True)} == set(keys)

    url = f"{BASE}/versions/{version.pk}/files/model.safetensors"
    whole = client.get(url)
    assert b"".join(whole.streaming_content) == weights
    assert whole["X-Checksum-SHA256"] == hashlib.sha256(weights).hexdigest()
    ranged = client.get(url, HTTP_RANGE="bytes=1500000-3300000")
    assert ranged.status_code == 206 and b"".join(ranged.streaming_content) == weights[1_500_000:3_300_001]
    empty = client.get(f"{BASE}/versions/{version.pk}/files/empty.txt")
    assert empty.status_code == 200 and b"".join(empty.streaming_content) == b""

    version_delete(user=member_factory(Role.MAINTAINER), version=version)
    later = timezone.now() + datetime.timedelta(days=settings.VERSION_RETENTION_DAYS, minutes=1)
    report = gc.registry_gc(now=later)
    assert report["versions_purged"] == 1 and report["bytes_freed"] == len(weights)
    assert objects(bucket) == [] and not Chunk.objects.exists()
