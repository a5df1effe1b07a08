"""cpctl: push, pull and list models in the control plane's registry from a shell.

    cpctl login --url URL [--token TOKEN]        (asks for the token when not given)
    cpctl models push DIR --project P --name N [--parent MODEL:VERSION ... --relation fine-tune]
                         [--mlflow-run ID] [--description TEXT] [--task TASK] [--parallel 4]
    cpctl models pull PROJECT/MODEL[:VERSION|:ALIAS] DIR [--parallel 4]
    cpctl models ls [--project P]

Credentials live in ~/.config/cpctl/config.json (mode 0600), or in the file CPCTL_CONFIG names; CPCTL_URL and
CPCTL_TOKEN override what the file holds.

A push remembers its upload in DIR/.cpctl-upload.json (with the files' hashes): run the same command again after an
interruption and it sends only the parts the server is missing. A pull writes each file as `NAME.part`, resumes a
partial one with a range request, checks its sha256 and only then renames it into place. Files and directories
whose name starts with "." are not pushed, as on a server import.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import getpass
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from workers.files import file_hasher, file_sha256

STATE_FILE = ".cpctl-upload.json"
BLOCK = 1024 * 1024
TIMEOUT = (10, 300)  # connect, read (seconds)
RETRIES = 3
FINISHED = ("succeeded", "failed", "cancelled")


class CliError(Exception):
    """An expected failure: printed as one line, exit status 1."""


# Configuration -------------------------------------------------------------------------------------------------


def config_path() -> Path:
    return Path(os.environ.get("CPCTL_CONFIG") or Path.home() / ".config" / "cpctl" / "config.json")


def config_load() -> tuple[str, str]:
    stored: dict[str, Any] = {}
    path = config_path()
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"Cannot read {path}: {exc}") from None
    url = os.environ.get("CPCTL_URL") or stored.get("url")
    token = os.environ.get("CPCTL_TOKEN") or stored.get("token")
    if not url or not token:
        raise CliError("Not logged in: run `cpctl login --url URL --token TOKEN` or set CPCTL_URL and CPCTL_TOKEN.")
    return url.rstrip("/"), token


def config_save(url: str, token: str) -> Path:
    """Write the credentials readable by the owner only (the file is created 0600, never world-readable)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token}, f, indent=2)
    return path


# HTTP ----------------------------------------------------------------------------------------------------------


def _error_message(response: requests.Response) -> str:
    try:
        error = response.json()["error"]
        message = error["message"]
    except (ValueError, KeyError, TypeError):
        message = (response.text or response.reason or "").strip()[:300]
    return f"HTTP {response.status_code}: {message}"


class Api:
    """The control plane's REST API with a bearer token; one connection pool per thread."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url.rstrip("/"), token
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc_info) -> None:
        for session in self._sessions:
            session.close()

    @property
    def session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
            session.headers["User-Agent"] = "cpctl"
            self._local.session = session
            self._sessions.append(session)
        return self._local.session

    def absolute(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            if urlsplit(path)[:2] != urlsplit(self.url)[:2]:
                raise CliError(f"The server pointed to another host ({path}); refusing to send the token there.")
            return path
        return f"{self.url}{path}"

    def request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200,), retries: int = 0, **kwargs
    ) -> requests.Response:
        """Send; retry connection failures and 5xx answers `retries` times (only for idempotent calls)."""
        kwargs.setdefault("timeout", TIMEOUT)
        for attempt in range(retries + 1):
            try:
                response = self.session.request(method, self.absolute(path), **kwargs)
            except requests.RequestException as exc:
                if attempt < retries:
                    time.sleep(0.5 * 2**attempt)
                    continue
                raise CliError(f"Cannot reach {self.url}: {exc}") from None
            if response.status_code >= 500 and attempt < retries:
                time.sleep(0.5 * 2**attempt)
                continue
            if response.status_code not in ok:
                raise CliError(_error_message(response))
            return response
        raise AssertionError("unreachable")

    def get(self, path: str, **kwargs) -> Any:
        return self.request("GET", path, retries=RETRIES, **kwargs).json()

    def pages(self, path: str, params: dict) -> Iterator[dict]:
        data = self.get(path, params={**params, "page_size": 500})
        while True:
            yield from data["results"]
            if not data.get("next"):
                return
            data = self.get(data["next"])


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _bar(total: int, initial: int = 0, desc: str = "") -> tqdm:
    """A byte progress bar on stderr; silent when stderr is not a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=None)


# login ---------------------------------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> None:
    url = args.url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CliError("--url must start with http:// or https://")
    token = args.token or getpass.getpass("API token: ").strip()
    if not token:
        raise CliError("No token given.")
    with Api(url, token) as api:
        projects = api.get("/api/v1/projects/")
    path = config_save(url, token)
    print(f"Logged in to {url} ({projects['count']} projects visible); credentials saved in {path}")


# push ----------------------------------------------------------------------------------------------------------


def local_files(directory: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, file) for every regular file, skipping dot-names (the upload state file among them)."""
    found = []
    for current, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(current) / filename
            if not filename.startswith(".") and path.is_file():
                found.append((path.relative_to(directory).as_posix(), path))
    if not found:
        raise CliError(f"{directory} holds no files to push.")
    return found


def _state_load(directory: Path) -> dict:
    try:
        return json.loads((directory / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _state_save(directory: Path, state: dict) -> None:
    tmp = directory / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, directory / STATE_FILE)


def _manifest(files: list[tuple[str, Path]], cached: dict) -> tuple[list[dict], dict]:
    """Hash the files, reusing a hash the state file holds for the same size and modification time."""
    manifest, hashes, todo = [], {}, []
    for relative, path in files:
        stat = path.stat()
        previous = cached.get(relative)
        if previous and previous[:2] == [stat.st_size, stat.st_mtime_ns]:
            hashes[relative] = previous
        else:
            todo.append((relative, path, stat))
    with _bar(sum(stat.st_size for _, _, stat in todo), desc="hashing") as bar:
        for relative, path, stat in todo:
            hashes[relative] = [stat.st_size, stat.st_mtime_ns, file_sha256(path, bar.update)]
    for relative, _ in files:
        size, _, sha256 = hashes[relative]
        manifest.append({"path": relative, "size": size, "sha256": sha256})
    return manifest, hashes


def _parents(raw: list[str], relation: str) -> list[dict]:
    parents = []
    for value in raw:
        model, sep, version = value.rpartition(":")
        if not sep or not model or not version:
            raise CliError(f"--parent takes MODEL:VERSION (or PROJECT/MODEL:VERSION), not {value!r}.")
        parents.append(
            {"model": model, "version": int(version) if version.isdigit() else version, "relation": relation}
        )
    return parents


def _send_part(api: Api, upload: dict, entry: dict, path: Path, number: int) -> int:
    """Read one part from the file and PUT it with its sha256; returns the bytes sent."""
    part_size = upload["part_size"]
    with open(path, "rb") as f:
        f.seek(number * part_size)
        data = f.read(min(part_size, entry["size"] - number * part_size))
    api.request(
        "PUT",
        f"/api/v1/registry/uploads/{upload['id']}/files/{entry['index']}/parts/{number}",
        data=data,
        headers={"Content-Type": "application/octet-stream", "X-Content-SHA256": hashlib.sha256(data).hexdigest()},
        retries=RETRIES,
    )
    return len(data)


def _send_missing(api: Api, status: dict, paths: dict[str, Path], parallel: int) -> None:
    """Send every part the server lacks, `parallel` at a time; stop at the first failure (the rest can resume)."""
    work = [(entry, number) for entry in status["files"] for number in entry["missing"]]
    failures: list[str] = []
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
    futures = [pool.submit(_send_part, api, status, entry, paths[entry["path"]], number) for entry, number in work]
    total = sum(entry["size"] for entry in status["files"])
    try:
        with _bar(total, initial=status["received_bytes"], desc="upload") as bar:
            for future in concurrent.futures.as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    bar.update(future.result())
                except (CliError, OSError) as exc:
                    failures.append(str(exc))
                    for other in futures:
                        other.cancel()
    except KeyboardInterrupt:
        for other in futures:
            other.cancel()
        raise CliError("Interrupted. Run the same command again to send the remaining parts.") from None
    finally:
        pool.shutdown(wait=True)
    if failures:
        unsent = sum(1 for future in futures if future.cancelled() or future.exception() is not None)
        raise CliError(
            f"{unsent} of {len(work)} parts were not sent ({failures[0]}). Run the same command again to resume."
        )


def _wait_for_job(api: Api, job_id: str) -> dict:
    with tqdm(total=100, desc="completing", unit="%", disable=None) as bar:
        delay = 0.2
        while True:
            job = api.get(f"/api/v1/jobs/{job_id}/")
            bar.update(job["progress"] - bar.n)
            bar.set_postfix_str(job["message"][:60])
            if job["status"] in FINISHED:
                return job
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)


def _upload_to_resume(api: Api, state: dict, key: dict) -> dict | None:
    """The upload a previous push of this directory opened, if it is for the same files and still usable."""
    if not state.get("upload_id") or {k: state.get(k) for k in key} != key:
        return None
    try:
        status = api.get(f"/api/v1/registry/uploads/{state['upload_id']}/")
    except CliError as exc:
        if str(exc).startswith("HTTP 404"):
            return None
        raise
    if status["status"] in ("failed", "expired"):
        return None
    return status


def cmd_push(api: Api, args: argparse.Namespace) -> None:
    directory = Path(args.dir)
    if not directory.is_dir():
        raise CliError(f"{directory} is not a directory.")
    if args.parallel < 1:
        raise CliError("--parallel must be at least 1.")
    files = local_files(directory)
    state = _state_load(directory)
    manifest, hashes = _manifest(files, state.get("hashes", {}))
    key = {
        "server": api.url,
        "project": args.project,
        "name": args.name,
        "manifest": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(),
    }
    state = {**state, "hashes": hashes}
    status = _upload_to_resume(api, state, key)
    if status is None:
        body = {
            "project": args.project,
            "name": args.name,
            "files": manifest,
            "parents": _parents(args.parent, args.relation),
            "description": args.description,
            "mlflow_run_id": args.mlflow_run,
            "source_uri": f"cpctl:{directory.resolve()}",
        }
        if args.task:
            body["task"] = args.task
        opened = api.request("POST", "/api/v1/registry/uploads/", json=body, ok=(201,)).json()
        state = {**state, **key, "upload_id": opened["id"]}
        _state_save(directory, state)
        print(f"Opened upload {opened['id']} for {args.project}/{args.name}:{opened['version']['number']}")
        status = api.get(f"/api/v1/registry/uploads/{opened['id']}/")
    else:
        _state_save(directory, state)
        print(f"Resuming upload {status['id']} ({status['received_parts']} of {status['parts']} parts on the server)")
    version = status["version"]
    if status["status"] == "open":
        _send_missing(api, status, dict(files), args.parallel)
        job = api.request("POST", f"/api/v1/registry/uploads/{status['id']}/complete/", ok=(200, 202)).json()
    else:
        job = api.get(f"/api/v1/jobs/{status['job']}/")
    job = _wait_for_job(api, job["id"])
    (directory / STATE_FILE).unlink(missing_ok=True)
    name = f"{version['project']}/{version['model']}:{version['number']}"
    if job["status"] != "succeeded":
        raise CliError(f"{name} was not stored: {job['error'] or job['status']}")
    result = job["result"] or {}
    final = api.get(f"/api/v1/registry/uploads/{status['id']}/")["version"]
    print(
        f"{name} {final['status']}: {len(manifest)} files, {_size(result.get('total_size', 0))}, "
        f"{_size(result.get('new_bytes', 0))} new"
    )
    if final["status"] != "ready":
        raise CliError(f"{name} is {final['status']}: {final['status_reason']}")


# pull ----------------------------------------------------------------------------------------------------------


def _download(api: Api, entry: dict, target: Path, on_bytes: Callable[[int], None]) -> None:
    """Fetch one file into `target.part` (resuming what is there), verify its sha256, rename it into place."""
    partial = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(RETRIES + 1):
        offset = partial.stat().st_size if partial.exists() else 0
        if offset > entry["size"]:
            partial.unlink()
            offset = 0
        if offset and attempt == 0:
            tqdm.write(f"{entry['path']}: resuming at {_size(offset)}", file=sys.stderr)
        digest = file_hasher(partial, on_bytes) if offset else hashlib.sha256()
        try:
            if offset < entry["size"]:
                headers = {"Range": f"bytes={offset}-", "If-Range": f'"{entry["sha256"]}"'} if offset else {}
                response = api.request("GET", entry["url"], ok=(200, 206), headers=headers, stream=True)
                with response, open(partial, "ab" if response.status_code == 206 else "wb") as out:
                    if response.status_code == 200 and offset:
                        digest = hashlib.sha256()  # the server sent the whole file after all: start over
                    for block in response.iter_content(BLOCK):
                        out.write(block)
                        digest.update(block)
                        on_bytes(len(block))
            break
        except (requests.RequestException, CliError) as exc:
            if attempt == RETRIES or (isinstance(exc, CliError) and not str(exc).startswith("Cannot reach")):
                raise CliError(f"{entry['path']}: {exc}") from None
            time.sleep(0.5 * 2**attempt)
    if digest.hexdigest() != entry["sha256"] or partial.stat().st_size != entry["size"]:
        partial.unlink(missing_ok=True)
        raise CliError(f"{entry['path']}: the downloaded bytes do not match its sha256; run the pull again.")
    os.replace(partial, target)


def cmd_pull(api: Api, args: argparse.Namespace) -> None:
    if args.parallel < 1:
        raise CliError("--parallel must be at least 1.")
    manifest = api.get("/api/v1/registry/manifest/", params={"ref": args.ref})
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    root = directory.resolve()
    todo = []
    for entry in manifest["files"]:
        target = directory / entry["path"]
        if not target.resolve().is_relative_to(root):
            raise CliError(f"Refusing to write {entry['path']!r} outside {directory}.")
        intact = target.is_file() and target.stat().st_size == entry["size"]
        if intact and file_hasher(target).hexdigest() == entry["sha256"]:
            continue  # already here
        todo.append((entry, target))
    version = manifest["version"]
    name = f"{manifest['project']}/{manifest['model']}:{version['number']}"
    with _bar(sum(entry["size"] for entry, _ in todo), desc="download") as bar:
        lock = threading.Lock()

        def advance(n: int) -> None:
            with lock:
                bar.update(n)

        with concurrent.futures.ThreadPoolExecutor(max_workers=args.parallel) as pool:
            futures = [pool.submit(_download, api, entry, target, advance) for entry, target in todo]
            errors = [str(f.exception()) for f in futures if f.exception() is not None]
    if errors:
        raise CliError(errors[0] + (f" (and {len(errors) - 1} more files failed)" if len(errors) > 1 else ""))
    print(
        f"Pulled {name} into {directory}: {len(manifest['files'])} files, {_size(manifest['total_size'])} "
        f"({len(todo)} downloaded, {len(manifest['files']) - len(todo)} already present)"
    )


# ls ------------------------------------------------------------------------------------------------------------


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip() for line in lines
    )


def cmd_ls(api: Api, args: argparse.Namespace) -> None:
    params = {"project": args.project} if args.project else {}
    try:
        models = list(api.pages("/api/v1/registry/models/", params))
    except CliError as exc:
        if not str(exc).startswith(("HTTP 404", "HTTP 405")):
            raise
        models = None  # an older server without the model list: list versions instead
    if models is not None:
        rows = [
            [
                m["project"],
                m["name"],
                m.get("task", ""),
                str(m.get("version_count", "")),
                "" if m.get("latest_version") is None else str(m["latest_version"]),
                ",".join(f"{alias}={number}" for alias, number in sorted((m.get("aliases") or {}).items())),
            ]
            for m in models
        ]
        print(_table(rows, ["PROJECT", "MODEL", "TASK", "VERSIONS", "LATEST", "ALIASES"]) if rows else "No models.")
        return
    versions = api.pages("/api/v1/registry/versions/", params)
    rows = [
        [v["project"], v["model_name"], str(v["number"]), v["status"], v.get("format", ""), _size(v["total_size"])]
        for v in versions
    ]
    print(_table(rows, ["PROJECT", "MODEL", "VERSION", "STATUS", "FORMAT", "SIZE"]) if rows else "No models.")


# Entry point ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpctl", description="Move models in and out of the control plane.")
    commands = parser.add_subparsers(dest="command", required=True)

    login = commands.add_parser("login", help="store the server URL and an API token")
    login.add_argument("--url", required=True, help="e.g. https://controlplane.example.com")
    login.add_argument("--token", help="an API token (cpt_...); asked for when omitted")

    models = commands.add_parser("models", help="push, pull and list models").add_subparsers(
        dest="action", required=True
    )
    push = models.add_parser("push", help="upload a directory as a new version (resumable)")
    push.add_argument("dir")
    push.add_argument("--project", required=True)
    push.add_argument("--name", required=True)
    push.add_argument("--parent", action="append", default=[], help="MODEL:VERSION it derives from (repeatable)")
    push.add_argument("--relation", default="fine-tune", help="how it derives from its parents (default fine-tune)")
    push.add_argument("--mlflow-run", default="", help="the MLflow run that produced it")
    push.add_argument("--description", default="")
    push.add_argument("--task", default="", help="e.g. text-generation, embedding")
    push.add_argument("--parallel", type=int, default=4, help="parts sent at once (default 4)")
    push.set_defaults(func=cmd_push)

    pull = models.add_parser("pull", help="download a version into a directory (resumable)")
    pull.add_argument("ref", help="PROJECT/MODEL[:VERSION or :ALIAS]; without one, the latest ready version")
    pull.add_argument("dir")
    pull.add_argument("--parallel", type=int, default=4, help="files fetched at once (default 4)")
    pull.set_defaults(func=cmd_pull)

    ls = models.add_parser("ls", help="list models")
    ls.add_argument("--project")
    ls.set_defaults(func=cmd_ls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "login":
            cmd_login(args)
        else:
            with Api(*config_load()) as api:
                args.func(api, args)
    except CliError as exc:
        print(f"cpctl: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cpctl: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
