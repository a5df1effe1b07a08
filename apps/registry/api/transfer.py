"""Moving model bytes: resumable uploads, manifests and ranged downloads, imports.

Uploads: open (manifest of files) → PUT parts in any order, in parallel, each idempotent → GET status to resume →
complete (a job verifies, stores and scans). Part bodies stream from the request into the blob store; they are
never read through `request.body`/`request.data`, so Django's in-memory body limit does not apply to them, and
the body is taken as raw bytes whatever its Content-Type.

Downloads: only versions that are `ready` serve files. A quarantined version (its scan found unsafe pickle imports)
refuses its manifest and every file with 409 `quarantined`, not only its pickle files: a partial model is of no use
and the safe files alone would hide that the version as a whole must not be loaded. Versions still uploading,
scanning or failed answer 409 `not_ready`. Soft-deleted versions are 404.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api.errors import error_response
from apps.core.api.serializers import JobSerializer, StrictCharField, VisibleSlugRelatedField
from apps.core.api.views import BaseViewSet
from apps.core.models import Job, Project
from apps.core.permissions import Action, restrict

from .. import imports, uploads
from ..ingest import file_blocks
from ..models import ModelVersion, Relation, Task, Upload, UploadStatus, VersionFile, VersionStatus
from ..selectors import visible_versions
from ..services import MAX_FILES, upload_open

SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
INDEX_RE = re.compile(r"^[0-9]{1,18}$")
RANGE_RE = re.compile(r"^bytes=([0-9]{0,30})-([0-9]{0,30})$")
REF_RE = re.compile(r"^(?P<project>[^/:\s\x00]+)/(?P<model>[^/:\s\x00]+)(?::(?P<version>[^/:\s\x00]+))?$")


class VersionNotServable(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "not_ready"


class JSONOnly:
    """Errors always render as JSON, whatever the client's Accept header (downloads ask for octet-stream)."""

    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)


# Lookups: what the user cannot see is a 404 -------------------------------------------------------------------


def _visible_versions(user):
    return visible_versions(user=user).filter(deleted_at__isnull=True)


def _visible_uploads(user):
    return (
        restrict(Upload.objects.all(), user, Action.VIEW)
        .filter(version__in=_visible_versions(user))
        .select_related("version__model__project")
    )


def _version_by_id(user, raw: str) -> ModelVersion:
    if not INDEX_RE.match(raw) or not 0 < int(raw) < 2**63:
        raise Http404
    version = _visible_versions(user).filter(pk=int(raw)).select_related("model__project").first()
    if version is None:
        raise Http404
    return version


def _version_by_ref(user, *, project: str, model: str, version: str | None) -> ModelVersion | None:
    versions = _visible_versions(user).filter(model__project__slug=project, model__name=model)
    if version is None:
        versions = versions.filter(status=VersionStatus.READY).order_by("-number")
    elif INDEX_RE.match(version):
        versions = versions.filter(number=int(version)) if int(version) < 2**31 else versions.none()
    else:
        versions = versions.filter(aliases__name=version)
    return versions.select_related("model__project").first()


def _servable(version: ModelVersion) -> ModelVersion:
    if version.status == VersionStatus.QUARANTINED:
        raise VersionNotServable(
            f"{version} is quarantined and cannot be downloaded: {version.status_reason}".strip(), code="quarantined"
        )
    if version.status != VersionStatus.READY:
        raise VersionNotServable(f"{version} is {version.status}; its files can be downloaded once it is ready.")
    return version


# Shapes ---------------------------------------------------------------------------------------------------------


class TransferVersionSerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    project = serializers.CharField(source="model.project.slug")
    # Plain text: the status enum is documented once, on the registry's version serializer.
    status = serializers.CharField(help_text="uploading, scanning, ready, quarantined or failed.")

    class Meta:
        model = ModelVersion
        fields = ["id", "number", "model", "project", "status", "status_reason"]


class UploadFileSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    path = serializers.CharField()
    size = serializers.IntegerField()
    parts = serializers.IntegerField()


class UploadSerializer(serializers.ModelSerializer):
    status = serializers.CharField(help_text="open, completing, completed, failed or expired.")
    version = TransferVersionSerializer()
    files = serializers.SerializerMethodField()

    class Meta:
        model = Upload
        fields = ["id", "status", "error", "version", "part_size", "expires_at", "files"]

    @extend_schema_field(UploadFileSerializer(many=True))
    def get_files(self, upload: Upload) -> list[dict]:
        return [
            {"index": i, "path": f["path"], "size": f["size"], "parts": uploads.part_count(f["size"], upload.part_size)}
            for i, f in enumerate(upload.manifest)
        ]


class UploadFileProgressSerializer(UploadFileSerializer):
    received = serializers.ListField(child=serializers.IntegerField())
    missing = serializers.ListField(child=serializers.IntegerField())


class UploadStatusSerializer(UploadSerializer):
    """The upload with which parts arrived and which are missing (what a client resumes from)."""

    parts = serializers.SerializerMethodField()
    received_parts = serializers.SerializerMethodField()
    received_bytes = serializers.SerializerMethodField()
    complete = serializers.SerializerMethodField()
    job = serializers.SerializerMethodField()

    class Meta(UploadSerializer.Meta):
        fields = [*UploadSerializer.Meta.fields, "parts", "received_parts", "received_bytes", "complete", "job"]

    def _progress(self, upload: Upload) -> dict:
        if not hasattr(upload, "_progress"):
            upload._progress = uploads.upload_progress(upload)
        return upload._progress

    @extend_schema_field(UploadFileProgressSerializer(many=True))
    def get_files(self, upload: Upload) -> list[dict]:
        return self._progress(upload)["files"]

    def get_parts(self, upload: Upload) -> int:
        return self._progress(upload)["parts"]

    def get_received_parts(self, upload: Upload) -> int:
        return self._progress(upload)["received_parts"]

    def get_received_bytes(self, upload: Upload) -> int:
        return self._progress(upload)["received_bytes"]

    def get_complete(self, upload: Upload) -> bool:
        return self._progress(upload)["complete"]

    def get_job(self, upload: Upload) -> str | None:
        """The completion job, once the upload was completed."""
        job = _completion_job(upload)
        return str(job.pk) if job else None


def _completion_job(upload: Upload) -> Job | None:
    return (
        Job.objects.filter(
            project_id=upload.version.model.project_id,
            job_type="registry.complete_upload",
            params__upload_id=str(upload.pk),
        )
        .order_by("-created_at")
        .first()
    )


class ParentSerializer(serializers.Serializer):
    model = StrictCharField(max_length=180, help_text="A model of this project, or 'project-slug/model' elsewhere.")
    version = serializers.JSONField(help_text="A version number, or an alias name.")
    relation = serializers.ChoiceField(choices=Relation.choices)

    def validate_version(self, value):
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise serializers.ValidationError("A version number or an alias name.")
        if isinstance(value, int) and not 0 < value < 2**31:
            raise serializers.ValidationError("Version numbers start at 1.")
        if isinstance(value, str) and not 0 < len(value) <= 64:
            raise serializers.ValidationError("An alias name has 1–64 characters.")
        return value


class UploadOpenSerializer(serializers.Serializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    name = StrictCharField(max_length=128)
    files = serializers.ListField(
        child=serializers.DictField(), min_length=1, max_length=MAX_FILES, help_text="[{path, size, sha256}]"
    )
    description = StrictCharField(max_length=50_000, required=False, allow_blank=True, default="")
    tags = serializers.ListField(child=StrictCharField(max_length=64), max_length=50, required=False, default=list)
    mlflow_run_id = StrictCharField(max_length=64, required=False, allow_blank=True, default="")
    source_uri = StrictCharField(max_length=1000, required=False, allow_blank=True, default="")
    task = serializers.ChoiceField(choices=Task.choices, required=False, default="")
    parents = ParentSerializer(many=True, required=False, default=list)


class ImportSerializer(serializers.Serializer):
    project = VisibleSlugRelatedField(slug_field="slug", queryset=Project.objects.all())
    name = StrictCharField(max_length=128)
    source = StrictCharField(max_length=1000, help_text="'file:///abs/dir' or 'hf://org/name@revision'.")
    hf_token_secret = StrictCharField(
        max_length=100, required=False, allow_blank=True, default="", help_text="Name of a project secret."
    )
    parents = ParentSerializer(many=True, required=False, default=list)
    description = StrictCharField(max_length=50_000, required=False, allow_blank=True, default="")


class ManifestFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    url = serializers.URLField()


class ManifestSerializer(serializers.Serializer):
    version = TransferVersionSerializer()
    model = serializers.CharField()
    project = serializers.CharField()
    total_size = serializers.IntegerField()
    files = ManifestFileSerializer(many=True)


class PartSerializer(serializers.Serializer):
    file_index = serializers.IntegerField()
    part_number = serializers.IntegerField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()


def _parents(user, project: Project, raw: list[dict]) -> list[tuple[ModelVersion, str]]:
    resolved = []
    for entry in raw:
        owner, _, name = entry["model"].rpartition("/")
        version = _version_by_ref(user, project=owner or project.slug, model=name, version=str(entry["version"]))
        if version is None:
            raise exceptions.ValidationError({"parents": [f"No version {entry['model']}:{entry['version']} found."]})
        resolved.append((version, entry["relation"]))
    return resolved


def _manifest(request, version: ModelVersion) -> dict:
    files = [
        {
            "path": f.path,
            "size": f.size,
            "sha256": f.sha256,
            "url": request.build_absolute_uri(
                reverse("registry-version-file", kwargs={"pk": str(version.pk), "path": f.path})
            ),
        }
        for f in version.files.all()
    ]
    return {
        "version": TransferVersionSerializer(version).data,
        "model": version.model.name,
        "project": version.model.project.slug,
        "total_size": sum(f["size"] for f in files),
        "files": files,
    }


# Views ----------------------------------------------------------------------------------------------------------

UPLOAD_ID = OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)
VERSION_ID = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)


class UploadViewSet(JSONOnly, BaseViewSet):
    serializer_class = UploadOpenSerializer  # also describes the body for OPTIONS
    lookup_kind = uuid.UUID
    object_action = {"complete": Action.CHANGE}

    def selector(self):
        return _visible_uploads(self.request.user)

    @extend_schema(request=UploadOpenSerializer, responses={201: UploadSerializer})
    def create(self, request):
        data = self.validated(UploadOpenSerializer, request.data)
        project = data["project"]
        upload = upload_open(
            user=request.user,
            project=project,
            name=data["name"],
            files=data["files"],
            description=data["description"],
            tags=data["tags"],
            mlflow_run_id=data["mlflow_run_id"],
            source_uri=data["source_uri"],
            task=data["task"],
            parents=_parents(request.user, project, data["parents"]),
        )
        return self.created(UploadSerializer, upload)

    @extend_schema(parameters=[UPLOAD_ID], responses=UploadStatusSerializer)
    def retrieve(self, request, pk=None):
        return Response(UploadStatusSerializer(self.get_object()).data)

    @extend_schema(parameters=[UPLOAD_ID], request=None, responses={200: JobSerializer, 202: JobSerializer})
    def complete(self, request, pk=None):
        """Start the completion job (202). Asked again once completing or completed: that job (200)."""
        upload = self.get_object()
        if upload.status in (UploadStatus.COMPLETING, UploadStatus.COMPLETED):
            job = _completion_job(upload)
            if job is not None:
                return Response(JobSerializer(job).data)
        job = uploads.upload_complete(user=request.user, upload=upload)
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


def _path_integer(raw: str, what: str) -> int:
    if not INDEX_RE.match(raw):
        raise exceptions.ValidationError({what: ["Must be a non-negative integer (at most 18 digits)."]})
    return int(raw)


class UploadPartView(JSONOnly, APIView):
    """One part as the raw request body. Sending a part again replaces it; parts may arrive in parallel."""

    parser_classes: list = []  # the body is streamed to the store, never parsed or buffered

    @extend_schema(
        parameters=[
            UPLOAD_ID,
            OpenApiParameter("index", OpenApiTypes.INT, OpenApiParameter.PATH, description="File index (0-based)."),
            OpenApiParameter("number", OpenApiTypes.INT, OpenApiParameter.PATH, description="Part number (0-based)."),
            OpenApiParameter("X-Content-SHA256", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False),
        ],
        request={"application/octet-stream": OpenApiTypes.BINARY},
        responses=PartSerializer,
    )
    def put(self, request, pk: str, index: str, number: str):
        file_index, part_number = _path_integer(index, "index"), _path_integer(number, "number")
        try:
            upload_id = uuid.UUID(pk)
        except ValueError:
            raise Http404 from None
        upload = _visible_uploads(request.user).filter(pk=upload_id).first()
        if upload is None:
            raise Http404
        sha256 = request.headers.get("X-Content-SHA256") or None
        if sha256 is not None and not SHA256_RE.match(sha256):
            raise exceptions.ValidationError({"X-Content-SHA256": ["Must be 64 hexadecimal characters."]})
        raw_length = request.META.get("CONTENT_LENGTH") or "0"
        if not INDEX_RE.match(raw_length):
            raise exceptions.ValidationError({"Content-Length": ["Must be a non-negative integer."]})
        part = uploads.upload_part_put(
            user=request.user,
            upload=upload,
            file_index=file_index,
            part_number=part_number,
            stream=request._request,  # the Django request: read() streams the body
            content_length=int(raw_length),
            sha256=sha256,
        )
        return Response(
            {"file_index": part.file_index, "part_number": part.part_number, "size": part.size, "sha256": part.sha256}
        )


class VersionManifestView(JSONOnly, APIView):
    @extend_schema(parameters=[VERSION_ID], responses=ManifestSerializer)
    def get(self, request, pk: str):
        return Response(_manifest(request, _servable(_version_by_id(request.user, pk))))


class ManifestByRefView(JSONOnly, APIView):
    """The manifest of `project/model:version`, where version is a number or an alias; none: the latest ready."""

    @extend_schema(
        parameters=[OpenApiParameter("ref", OpenApiTypes.STR, required=True, description="project/model[:version]")],
        responses=ManifestSerializer,
    )
    def get(self, request):
        match = REF_RE.match(request.query_params.get("ref", ""))
        if not match:
            raise exceptions.ValidationError(
                {"ref": ["Use 'project/model', 'project/model:3' or 'project/model:alias'."]}
            )
        version = _version_by_ref(request.user, **match.groupdict())
        if version is None:
            raise exceptions.NotFound(f"No version {match[0]} found.")
        return Response(_manifest(request, _servable(version)))


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """[start, end) for a single `bytes=` range, None to serve the whole file (no, malformed or multiple ranges).
    Raises ValueError when the range cannot be satisfied."""
    match = RANGE_RE.match(header.strip())
    if not match or not (match[1] or match[2]):
        return None
    if match[1]:
        start = int(match[1])
        if match[2] and int(match[2]) < start:
            return None
        if start >= size:
            raise ValueError("unsatisfiable")
        return start, (min(int(match[2]) + 1, size) if match[2] else size)
    suffix = int(match[2])
    if suffix == 0 or size == 0:
        raise ValueError("unsatisfiable")
    return max(0, size - suffix), size


async def _async_blocks(make: Callable[[], Iterator[bytes]]) -> AsyncIterator[bytes]:
    """Under ASGI a sync iterator would be read whole into memory by Django; hand it over block by block."""
    blocks = make()
    done = object()
    while (block := await sync_to_async(next)(blocks, done)) is not done:
        yield block


class VersionFileView(JSONOnly, APIView):
    """One file's bytes, streamed chunk by chunk; a single `Range` gives 206, HEAD gives the headers alone."""

    @extend_schema(
        parameters=[
            VERSION_ID,
            OpenApiParameter("path", OpenApiTypes.STR, OpenApiParameter.PATH),
            OpenApiParameter("Range", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False),
        ],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            (206, "application/octet-stream"): OpenApiTypes.BINARY,
            416: OpenApiResponse(description="The range starts past the end of the file."),
        },
    )
    def get(self, request, pk: str, path: str):
        return self._serve(request, pk, path, with_body=True)

    @extend_schema(exclude=True)
    def head(self, request, pk: str, path: str):
        return self._serve(request, pk, path, with_body=False)

    def _serve(self, request, pk: str, path: str, *, with_body: bool):
        version = _servable(_version_by_id(request.user, pk))
        version_file = None if "\x00" in path else VersionFile.objects.filter(version=version, path=path).first()
        if version_file is None:
            raise Http404
        size, etag = version_file.size, f'"{version_file.sha256}"'
        byte_range = None
        if_range = request.headers.get("If-Range")
        if "Range" in request.headers and (if_range is None or if_range == etag):
            try:
                byte_range = parse_range(request.headers["Range"], size)
            except ValueError:
                response = error_response(
                    status.HTTP_416_REQUESTED_RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    f"The range is outside the file's {size} bytes.",
                )
                response["Content-Range"] = f"bytes */{size}"
                return response
        start, end = byte_range or (0, size)
        code = status.HTTP_206_PARTIAL_CONTENT if byte_range else status.HTTP_200_OK
        if not with_body:
            response = HttpResponse(status=code, content_type="application/octet-stream")
        else:

            def blocks() -> Iterator[bytes]:
                return file_blocks(version_file, start, end)

            content = _async_blocks(blocks) if isinstance(request._request, ASGIRequest) else blocks()
            response = StreamingHttpResponse(content, status=code, content_type="application/octet-stream")
        response["Content-Length"] = str(end - start)
        response["ETag"] = etag
        response["X-Checksum-SHA256"] = version_file.sha256
        response["Accept-Ranges"] = "bytes"
        response["Content-Disposition"] = content_disposition_header(True, path.rsplit("/", 1)[-1])
        if byte_range:
            response["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return response


class ImportViewSet(JSONOnly, BaseViewSet):
    serializer_class = ImportSerializer
    @extend_schema(request=ImportSerializer, responses={202: JobSerializer})
    def create(self, request):
        data = self.validated(ImportSerializer, request.data)
        project = data["project"]
        job = imports.import_start(
            user=request.user,
            project=project,
            name=data["name"],
            source=data["source"],
            hf_token_secret=data["hf_token_secret"],
            parents=_parents(request.user, project, data["parents"]),
            description=data["description"],
        )
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
