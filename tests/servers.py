"""Real server processes for tests: the product under uvicorn (gateway + Django) on the test database, and the
minimal OpenAI-compatible upstream from bench/upstream.py."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

from controlplane.devstack import stop_group

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(**extra: str) -> dict[str, str]:
    db = connection.settings_dict
    return {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings.test",
        **extra,
    }


def _wait_http(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the server exited during start-up ({url})"
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status: it is up
                return
        assert time.monotonic() < deadline, f"{url} did not answer within {timeout} s"
        time.sleep(0.2)


@contextlib.contextmanager
def _process(command: list[str], env: dict[str, str], probe: str) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    try:
        _wait_http(probe, process)
        yield process
    finally:
        stop_group(process, timeout=15)


@contextlib.contextmanager
def product_server(**extra_env: str) -> Iterator[str]:
    """uvicorn serving controlplane.asgi (the gateway at /v1 and /v2, Django behind it); yields its base URL."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "controlplane.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    with _process(command, server_env(**extra_env), f"http://127.0.0.1:{port}/v2/health/live"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def upstream_server(key: str = "") -> Iterator[str]:
    """The minimal OpenAI-compatible upstream; yields its base URL (…/v1)."""
    port = free_port()
    command = [sys.executable, "-m", "bench.upstream", "--port", str(port), *(["--key", key] if key else [])]
    with _process(command, dict(os.environ), f"http://127.0.0.1:{port}/v1/models"):
        yield f"http://127.0.0.1:{port}/v1"
