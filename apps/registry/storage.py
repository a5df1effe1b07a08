"""Blob storage behind one small interface: a local directory (default) or any S3-compatible store.

Keys look like `chunks/ab/cd/<sha256>` (content-addressed, immutable) or `uploads/<id>/<file>/<part>`
(staging for resumable uploads). Writes stream from a file object and are atomic: a reader sees the whole
blob or nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from django.conf import settings

COPY_BLOCK = 1024 * 1024


class BlobStore(Protocol):
    def exists(self, key: str) -> bool: ...
    def put(self, key: str, stream: BinaryIO, size: int) -> None: ...
    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]: ...
    def delete(self, key: str) -> None: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def list(self, prefix: str) -> Iterator[str]: ...


class LocalBlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not str(path).startswith(str(self.root.resolve()) + os.sep):
            raise ValueError(f"key escapes the store: {key!r}")
        return path

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def put(self, key: str, stream: BinaryIO, size: int) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, COPY_BLOCK)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with open(self._path(key), "rb") as f:
            f.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                block = f.read(COPY_BLOCK if remaining is None else min(COPY_BLOCK, remaining))
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                yield block

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix.rstrip("/")), ignore_errors=True)

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/"))
        if base.is_dir():
            for path in base.rglob("*"):
                if path.is_file() and not path.name.startswith(".tmp-"):
                    yield str(path.relative_to(self.root))


class S3BlobStore:
    """Any S3-compatible store through boto3 (AWS, MinIO, Ceph, moto's server in tests)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None):
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client("s3", endpoint_url=endpoint_url)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def put(self, key: str, stream: BinaryIO, size: int) -> None:
        # upload_fileobj streams in multipart pieces; S3 makes the object visible only when complete.
        self.client.upload_fileobj(stream, self.bucket, self._key(key))

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if end is not None and end <= start:
            return
        # No Range header for a whole-object read: S3 refuses any range on an empty object (InvalidRange).
        ranged = {"Range": f"bytes={start}-{'' if end is None else end - 1}"} if start or end is not None else {}
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), **ranged)["Body"]
        try:
            yield from body.iter_chunks(COPY_BLOCK)
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        keys = list(self.list(prefix))
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})

    def list(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            for item in page.get("Contents", []):
                yield item["Key"][len(self.prefix) :]


def store_from_url(url: str) -> BlobStore:
    """`file:///var/lib/controlplane/artifacts` or `s3://bucket/prefix` (endpoint from AWS_ENDPOINT_URL)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalBlobStore(Path(parsed.path or url))
    if parsed.scheme == "s3":
        return S3BlobStore(parsed.netloc, parsed.path, endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    raise ValueError(f"Unsupported artifact store URL: {url}")


@lru_cache(maxsize=4)
def _cached_store(url: str) -> BlobStore:
    return store_from_url(url)


def get_store() -> BlobStore:
    return _cached_store(settings.ARTIFACT_STORE_URL)


def chunk_key(digest: str) -> str:
    return f"chunks/{digest[:2]}/{digest[2:4]}/{digest}"


def part_key(upload_id, file_index: int, part_number: int) -> str:
    return f"uploads/{upload_id}/{file_index}/{part_number}"
