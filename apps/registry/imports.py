"""Imports: a new version from a server-side directory or a Hugging Face Hub repository, built by a job.

Sources:
  `file:///abs/dir`          a directory under one of settings.REGISTRY_IMPORT_ROOTS (empty: directory imports are
                             off). Symlinks are resolved before the check, for the directory and for every file in it,
                             so neither `..` nor a link can reach outside those roots.
  `hf://org/name[@revision]` a Hub snapshot (revision defaults to `main`), downloaded by the worker into a temporary
                             directory. The token comes from a project secret named in the request; it is never stored
                             in the job, its error or the audit log.

Files and directories whose name starts with "." (`.git`, `.cache`, `.gitattributes`) are not imported, and
symlinked directories are not followed (symlinked files are, when they resolve inside the roots).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from celery import shared_task
from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import Http404

from apps.core import jobs
from apps.core.models import Job, Project, ProjectSecret
from apps.core.permissions import Action, PermissionDenied, check
from apps.core.services import project_secret_value
from controlplane.celery import QueueName
from workers.files import file_sha256

from .models import ModelVersion, Relation, VersionStatus
from .services import NAME_RE, version_create
from .versions import version_fill

JOB_TYPE = "registry.import"
READ_BLOCK = 1024 * 1024
HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
HF_REVISION_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")

jobs.job_type_register(
    JOB_TYPE,
    task="apps.registry.imports.job_import",
    queue=QueueName.DEFAULT,
    description="Import a model version from a server directory or the Hugging Face Hub: hash, store, scan.",
)


@dataclass(frozen=True)
class ImportSource:
    uri: str
    directory: Path | None = None  # resolved, for file:// sources
    repo_id: str = ""  # for hf:// sources
    revision: str = ""

    @property
    def is_hub(self) -> bool:
        return self.directory is None


def import_roots() -> list[Path]:
    return [Path(root).resolve() for root in settings.REGISTRY_IMPORT_ROOTS]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def import_source_parse(uri: str) -> ImportSource:
    """Check a source URI; a directory must exist under an allowed root once every symlink is resolved."""
    if not isinstance(uri, str) or not uri or len(uri) > 1000 or "\x00" in uri:
        raise ValidationError("source must be 'file:///absolute/dir' or 'hf://org/name@revision'.")
    if uri.startswith("hf://"):
        repo_id, at, revision = uri[len("hf://") :].partition("@")
        revision = revision if at else "main"
        if not HF_REPO_RE.match(repo_id) or ".." in repo_id:
            raise ValidationError(f"'{repo_id}' is not a Hugging Face repository id (use 'org/name').")
        if not HF_REVISION_RE.match(revision) or ".." in revision:
            raise ValidationError(f"'{revision}' is not a valid revision (a branch, tag or commit).")
        return ImportSource(uri=uri, repo_id=repo_id, revision=revision)
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise ValidationError("source must be 'file:///absolute/dir' or 'hf://org/name@revision'.")
    if parsed.netloc or parsed.query or parsed.fragment or not parsed.path.startswith("/"):
        raise ValidationError("A directory source is 'file:///absolute/dir' (no host, query or fragment).")
    roots = import_roots()
    if not roots:
        raise ValidationError("Directory imports are disabled on this server (REGISTRY_IMPORT_ROOTS is empty).")
    directory = Path(unquote(parsed.path)).resolve()
    if not _inside(directory, roots):
        raise ValidationError(f"{unquote(parsed.path)} is outside the directories this server allows imports from.")
    if not directory.is_dir():
        raise ValidationError(f"{unquote(parsed.path)} is not a directory.")
    return ImportSource(uri=uri, directory=directory)


def import_start(
    *,
    user,
    project: Project,
    name: str,
    source: str,
    hf_token_secret: str = "",
    parents: list[tuple[ModelVersion, str]] = (),
    description: str = "",
) -> Job:
    """Check the request, then queue the job that builds the version. Nothing is read or downloaded here."""
    check(user, Action.CHANGE, project)
    if not NAME_RE.match(name or ""):
        raise ValidationError("Model names use letters, digits, '.', '_' or '-' (at most 128, starting alphanumeric).")
    parsed = import_source_parse(source)
    if hf_token_secret:
        if not parsed.is_hub:
            raise ValidationError("hf_token_secret applies to hf:// sources only.")
        if not ProjectSecret.objects.filter(project=project, name=hf_token_secret).exists():
            raise ValidationError(f"This project has no secret named '{hf_token_secret}'.")
    for parent, relation in parents:
        check(user, Action.VIEW, parent)
        if relation not in Relation.values:
            raise ValidationError(f"Unknown relation '{relation}'. Use one of: {', '.join(Relation.values)}.")
    params = {
        "name": name,
        "source": source,
        "hf_token_secret": hf_token_secret,
        "parents": [[parent.pk, relation] for parent, relation in parents],
        "description": description,
    }
    return jobs.job_create(user=user, project=project, job_type=JOB_TYPE, params=params)


# The job -------------------------------------------------------------------------------------------------------


def _phase(progress: Callable[[int, str], None], start: int, end: int) -> Callable[[int, str], None]:
    """Map a phase's own 0–100 onto [start, end] of the job's progress."""
    return lambda percent, message="": progress(start + (end - start) * percent // 100, message)


def directory_files(directory: Path, roots: list[Path]) -> list[tuple[str, Path]]:
    """(relative POSIX path, resolved file) for every regular file, skipping dot-names; refuses links out of roots."""
    found = []
    for current, dirnames, filenames in os.walk(directory, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = Path(current) / filename
            relative = path.relative_to(directory).as_posix()
            resolved = path.resolve()
            if not _inside(resolved, roots):
                raise jobs.JobError(f"{relative} links outside the directories this server allows imports from.")
            if resolved.is_file():
                found.append((relative, resolved))
    if not found:
        raise jobs.JobError(f"{directory} holds no files to import.")
    return found


def _hash(files: list[tuple[str, Path]], progress: Callable[[int, str], None]) -> list[dict]:
    total = sum(path.stat().st_size for _, path in files) or 1
    done, reported, manifest = 0, -1, []
    for relative, path in files:
        size = 0

        def advance(n: int, relative=relative) -> None:
            nonlocal done, reported, size
            size += n
            done += n
            if 100 * done // total != reported:  # one write (and push) per percent, not per block
                reported = 100 * done // total
                progress(reported, f"hashing {relative}")

        sha256 = file_sha256(path, advance)
        manifest.append({"path": relative, "size": size, "sha256": sha256})
    return manifest


def _read(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(READ_BLOCK):
            yield block


def _hub_download(source: ImportSource, *, token: str | None, into: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise jobs.JobError("huggingface_hub is not installed on this worker.") from None
    try:
        # token=False: without a project secret, never fall back to a token the worker itself may hold.
        path = snapshot_download(
            repo_id=source.repo_id,
            revision=source.revision,
            token=token or False,
            local_dir=into,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        if token:
            message = message.replace(token, "***")
        raise jobs.JobError(
            f"Could not download {source.repo_id}@{source.revision} from the Hugging Face Hub: {message[:1000]}"
        ) from None
    return Path(path)


def _version_for(job: jobs.JobContext, *, user, project: Project, manifest: list[dict]) -> ModelVersion:
    """The version an earlier attempt of this job created (refilled), else a new one with its lineage."""
    params = job.params
    existing = ModelVersion.objects.filter(pk=params.get("version_id"), deleted_at__isnull=True).first()
    if existing is not None:
        existing.total_size = sum(entry["size"] for entry in manifest)
        existing.file_count = len(manifest)
        existing.save(update_fields=["total_size", "file_count", "updated_at"])
        return existing
    parents = []
    for parent_id, relation in params.get("parents", []):
        parent = ModelVersion.objects.filter(pk=parent_id, deleted_at__isnull=True).first()
        if parent is None:
            raise jobs.JobError("A parent version no longer exists.")
        parents.append((parent, relation))
    version = version_create(
        user=user,
        project=project,
        name=params["name"],
        files=manifest,
        source_uri=params["source"],
        description=params.get("description", ""),
        parents=parents,
    )
    job.params = {**params, "version_id": version.pk}
    Job.objects.filter(pk=job.job.pk).update(params=job.params)
    return version


def _run_import(job: jobs.JobContext) -> dict:
    user, project = job.job.created_by, job.job.project
    if user is None or not user.is_active:
        raise jobs.JobError("The user who started this import no longer exists or is inactive.")
    params = job.params
    source = import_source_parse(params["source"])
    existing = ModelVersion.objects.filter(pk=params.get("version_id")).first()
    if existing is not None and existing.status in (VersionStatus.READY, VersionStatus.QUARANTINED):
        return {"version": existing.number, "version_id": existing.pk, "status": existing.status}
    with tempfile.TemporaryDirectory(prefix="cp-import-") as scratch:
        if source.is_hub:
            token = None
            if params.get("hf_token_secret"):
                token = project_secret_value(project=project, name=params["hf_token_secret"])
                if token is None:
                    raise jobs.JobError(f"The project secret '{params['hf_token_secret']}' no longer exists.")
            job.progress(0, f"downloading {source.repo_id}@{source.revision}")
            directory = _hub_download(source, token=token, into=Path(scratch))
            roots = [Path(scratch).resolve()]
        else:
            directory, roots = source.directory, import_roots()
        files = directory_files(directory, roots)
        manifest = _hash(files, _phase(job.progress, 10, 30))
        version = _version_for(job, user=user, project=project, manifest=manifest)
        by_path = dict(files)
        sources = [(entry, lambda p=by_path[entry["path"]]: _read(p)) for entry in manifest]
        version = version_fill(version=version, sources=sources, progress=_phase(job.progress, 30, 100))
    return {
        "version": version.number,
        "version_id": version.pk,
        "status": version.status,
        "new_bytes": version.new_bytes,
        "total_size": version.total_size,
    }


@shared_task(name="apps.registry.imports.job_import", acks_late=True)
@jobs.job_task
def job_import(job: jobs.JobContext) -> dict:
    try:
        return _run_import(job)
    except ValidationError as exc:
        raise jobs.JobError(" ".join(exc.messages)) from None
    except (PermissionDenied, Http404):
        raise jobs.JobError("The user who started this import may no longer add versions to this project.") from None
