"""Gateway overhead: the same chat completions through the gateway and straight to an upstream that answers at once.

The upstream is bench/upstream.py, so what the gateway adds is what is measured. The product runs under uvicorn
(uvloop, httptools) with 1 and then 2 workers; usage records are on (one per request to the Redis stream, checked
by XLEN at the end). The load generator (bench/loadgen.py) is a separate aiohttp process on kept-alive
connections: BENCH_GW_C1_REQUESTS (2,000) requests at concurrency 1 and BENCH_GW_C32_SECONDS (8) seconds at
concurrency 32, each after a warm-up. LiteLLM's proxy, in its own virtualenv under .bench/ (installed on the first
run, kept for the next), is measured the same way as the side-by-side baseline when it can be installed.
Targets (from the issue, for a 2-core machine), both for one gateway worker, as LiteLLM runs one by default: added
p50 at concurrency 1 at most 3 ms; requests/s at concurrency 32 at least 5× LiteLLM's (or 5 × 110, the issue's
figure, when LiteLLM is absent). The server, the upstream and the load generator share the machine's cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import redis
from django.conf import settings
from django.contrib.auth import get_user_model

from apps.core.models import Membership, Organization, Project, Role
from apps.core.services import api_token_create
from apps.deployments import services, targets
from apps.deployments.models import State
from controlplane.devstack import free_port, spawn, stop_group

C1_REQUESTS = int(os.environ.get("BENCH_GW_C1_REQUESTS", "2000"))
C1_MAX_SECONDS = 30.0  # a slow path (LiteLLM) stops early rather than stretch the run
C32_SECONDS = float(os.environ.get("BENCH_GW_C32_SECONDS", "8"))
CONCURRENCIES = (1, 32)
ADDED_P50_TARGET_MS = 3.0
RPS_FACTOR = 5
LITELLM_RPS_MEASURED_IN_ISSUE = 110
LITELLM_INSTALL_SECONDS = 300
ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"
LITELLM_VENV = WORK / "litellm-venv"
LITELLM_STAMP = LITELLM_VENV / ".installed"
UPSTREAM_KEY = "bench-provider-key"


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited during start-up; last log lines:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status: it is up
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s; last log lines:\n{_tail(log)}")
        time.sleep(0.2)


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


@contextlib.contextmanager
def _server(name: str, command: list[str], probe: str, *, env: dict[str, str], timeout: float = 60) -> Iterator[None]:
    log = WORK / "logs" / f"{name}.log"
    log.unlink(missing_ok=True)
    process = spawn(command, log=log, env=env)
    try:
        _wait_http(probe, process, log, timeout)
        yield
    finally:
        stop_group(process)


def _load(url: str, key: str, model: str, concurrency: int) -> dict:
    size = (
        ["--requests", str(C1_REQUESTS), "--duration", str(C1_MAX_SECONDS), "--warmup", "200"]
        if concurrency == 1
        else ["--duration", str(C32_SECONDS), "--warmup", str(concurrency * 10)]
    )
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--key", key, "--model", model,
               "--concurrency", str(concurrency), *size]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"the load generator failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _measure(label: str, url: str, key: str, model: str) -> list[dict]:
    rows = []
    for concurrency in CONCURRENCIES:
        row = {"path": label, "concurrency": concurrency, **_load(url, key, model, concurrency)}
        print(
            f"  measured {label:<22} c={concurrency:<3} p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms  "
            f"{row['rps']} req/s  {row['errors']} errors",
            flush=True,
        )
        if row["errors"]:
            print(f"    first error: {row['first_error']}", flush=True)
        if not row["requests"]:
            raise RuntimeError(f"{label}: no request succeeded ({row['first_error']})")
        rows.append(row)
    return rows


def _setup(upstream: str) -> str:
    """A maintainer of a fresh project with an external deployment `echo` on the upstream; returns a token."""
    suffix = secrets.token_hex(3)
    org = Organization.objects.create(name=f"Gateway bench {suffix}", slug=f"gw-bench-{suffix}")
    project = Project.objects.create(organization=org, name="Gateway bench", slug=f"gw-bench-{suffix}")
    user = get_user_model().objects.create(username=f"gw-bench-{suffix}")
    Membership.objects.create(project=project, user=user, role=Role.MAINTAINER)
    deployment = services.deployment_create(
        user=user,
        project=project,
        data={
            "name": "echo",
            "slug": "echo",
            "target": "external",
            "upstream_url": upstream,
            "upstream_model": "echo-1",
            "upstream_key": UPSTREAM_KEY,
        },
    )
    revision = deployment.revisions.get()
    targets.revision_probe(revision.pk)  # what the probe task does on a worker
    revision.refresh_from_db()
    assert revision.state == State.READY, f"the external deployment is not ready: {revision.state}"
    return api_token_create(user=user, name="gw-bench", scopes=["read", "write"])[1]


def _gateway(workers: int, token: str, stream: redis.Redis) -> tuple[list[dict], dict]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "controlplane.asgi:application", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log",
               "--loop", "uvloop", "--http", "httptools", "--lifespan", "off"]  # fmt: skip
    before = stream.xlen(settings.GATEWAY_USAGE_STREAM)
    with _server(f"gateway-{workers}", command, f"http://127.0.0.1:{port}/v2/health/live", env=dict(os.environ)):
        rows = _measure(f"gateway ({workers} worker{'s' * (workers > 1)})", _chat(port), token, "echo")
        sent = sum(row["sent"] for row in rows)
        deadline = time.monotonic() + 10
        while stream.xlen(settings.GATEWAY_USAGE_STREAM) - before < sent and time.monotonic() < deadline:
            time.sleep(0.1)
    recorded = stream.xlen(settings.GATEWAY_USAGE_STREAM) - before
    print(f"  usage records: {recorded} added to the stream for {sent} requests sent", flush=True)
    return rows, {"sent": sent, "recorded": recorded}


def _chat(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1/chat/completions"


# LiteLLM -------------------------------------------------------------------------------------------------------


def _litellm_install() -> tuple[str | None, str]:
    """LiteLLM's version, installing it into its own virtualenv unless a previous run did; or None and why not."""
    python = LITELLM_VENV / "bin" / "python"
    if not LITELLM_STAMP.exists():
        print(f"  installing litellm[proxy] into {LITELLM_VENV} (once; kept for later runs)…")
        started = time.monotonic()
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)], check=True, timeout=120)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "litellm[proxy]"],
                check=True,
                capture_output=True,
                text=True,
                timeout=LITELLM_INSTALL_SECONDS,
            )
        except subprocess.TimeoutExpired:
            return None, f"pip install took over {LITELLM_INSTALL_SECONDS} s"
        except subprocess.CalledProcessError as exc:
            last = [line for line in (exc.stderr or "").splitlines() if not line.startswith("WARNING")][-1:]
            return None, f"pip install failed ({' '.join(last) or exc.returncode})"
        except OSError as exc:
            return None, f"cannot create its virtualenv ({exc})"
        LITELLM_STAMP.write_text(f"installed in {time.monotonic() - started:.0f} s\n")
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    )
    if version.returncode:
        return None, "its virtualenv is broken; delete .bench/litellm-venv to reinstall"
    return version.stdout.strip(), ""


def _litellm(upstream: str) -> list[dict]:
    port, master_key = free_port(), "sk-bench-" + secrets.token_hex(8)
    config = WORK / "litellm.yaml"
    config.write_text(  # JSON is YAML
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": "echo",
                        "litellm_params": {"model": "openai/echo-1", "api_base": upstream, "api_key": UPSTREAM_KEY},
                    }
                ],
                "litellm_settings": {"drop_params": True, "telemetry": False},
                "general_settings": {"master_key": master_key},
            },
            indent=2,
        )
    )
    # No database or Redis (the bench's own are in the environment and are not LiteLLM's), no docs pages, no
    # remote model-cost map, no .env files found above the install.
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DIRECT_URL"}}
    env.update(
        LITELLM_LOG="ERROR",
        LITELLM_MODE="PRODUCTION",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        DISABLE_SCHEMA_UPDATE="true",
        NO_DOCS="True",
        NO_REDOC="True",
    )
    command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
               "--port", str(port)]  # fmt: skip
    with _server("litellm", command, f"http://127.0.0.1:{port}/health/liveliness", env=env, timeout=180):
        return _measure("litellm proxy", _chat(port), master_key, "echo")


# Report -----------------------------------------------------------------------------------------------------------


def _table(rows: list[dict]) -> list[dict]:
    direct = {row["concurrency"]: row for row in rows if row["path"] == "direct"}
    heads = ("p50 ms", "p99 ms", "+p50 ms", "+p99 ms", "req/s")
    print(f"\n  {'path':<22} {'conc':>4} " + " ".join(f"{h:>8}" for h in heads) + f" {'err':>5}")
    for row in rows:
        base = direct[row["concurrency"]]
        row["added_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 3)
        row["added_p99_ms"] = round(row["p99_ms"] - base["p99_ms"], 3)
        added = ("", "") if row is base else (f"{row['added_p50_ms']:+.2f}", f"{row['added_p99_ms']:+.2f}")
        print(
            f"  {row['path']:<22} {row['concurrency']:>4} {row['p50_ms']:>8.2f} {row['p99_ms']:>8.2f} "
            f"{added[0]:>8} {added[1]:>8} {row['rps']:>8.0f} {row['errors']:>5}"
        )
    return rows


def run() -> dict:
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    stream = redis.Redis.from_url(settings.REDIS_URL)
    upstream_port = free_port()
    upstream = f"http://127.0.0.1:{upstream_port}/v1"
    upstream_command = [sys.executable, "-m", "bench.upstream", "--port", str(upstream_port), "--key", UPSTREAM_KEY]
    load_before = os.getloadavg()[0]  # other work on the machine shows in every figure; say how much there was
    rows: list[dict] = []
    usage: dict[str, dict] = {}
    with _server("upstream", upstream_command, f"{upstream}/models", env=dict(os.environ)):
        token = _setup(upstream)
        rows += _measure("direct", _chat(upstream_port), UPSTREAM_KEY, "echo-1")
        for workers in (1, 2):
            measured, usage[f"{workers}_worker"] = _gateway(workers, token, stream)
            rows += measured
        litellm_version, why_not = _litellm_install()
        if litellm_version:
            try:
                rows += _litellm(upstream)
            except RuntimeError as exc:  # the baseline is welcome, not required
                litellm_version, why_not = None, f"installed, but could not be measured: {exc}"
        if not litellm_version:
            print(f"  LiteLLM: not installable here ({why_not})")
    _table(rows)

    by = {(row["path"], row["concurrency"]): row for row in rows}
    gateway_c1 = by[("gateway (1 worker)", 1)]
    # Like for like: one gateway worker against LiteLLM's default of one; the 2-worker figures are for reading.
    gateway_c32 = by[("gateway (1 worker)", 32)]
    litellm_c32 = by.get(("litellm proxy", 32))
    baseline_rps = litellm_c32["rps"] if litellm_c32 else LITELLM_RPS_MEASURED_IN_ISSUE
    latency_ok = gateway_c1["added_p50_ms"] <= ADDED_P50_TARGET_MS
    throughput_ok = gateway_c32["rps"] >= RPS_FACTOR * baseline_rps
    records_ok = all(u["recorded"] == u["sent"] for u in usage.values())
    issue_ok = gateway_c32["rps"] >= RPS_FACTOR * LITELLM_RPS_MEASURED_IN_ISSUE
    baseline = f"LiteLLM {litellm_version} measured here" if litellm_c32 else "LiteLLM's 110 req/s from the issue"
    print(
        f"\n  target: gateway added p50 at c=1 ≤ {ADDED_P50_TARGET_MS} ms: {gateway_c1['added_p50_ms']:.2f} ms "
        f"→ {'PASS' if latency_ok else 'FAIL'}\n"
        f"  target: gateway req/s at c=32 ≥ {RPS_FACTOR} × {baseline_rps:.0f} ({baseline}): "
        f"{gateway_c32['rps']:.0f} ({gateway_c32['path']}) → {'PASS' if throughput_ok else 'FAIL'}",
        flush=True,
    )
    if litellm_c32:
        print(
            f"    and against the issue's LiteLLM figure, {RPS_FACTOR} × {LITELLM_RPS_MEASURED_IN_ISSUE}: "
            f"{'PASS' if issue_ok else 'FAIL'}"
        )
    print(f"  usage records, one per request: {'yes' if records_ok else 'NO'} {usage}")
    print(f"  load average (1 min) before the run: {load_before:.2f} on {os.cpu_count()} cores\n", flush=True)
    return {
        "litellm_version": litellm_version or f"not installable here ({why_not})",
        "target_added_p50_c1_le_3ms": "PASS" if latency_ok else "FAIL",
        "target_rps_c32_ge_5x_litellm": "PASS" if throughput_ok else "FAIL",
        "target_rps_c32_ge_5x_110_from_issue": "PASS" if issue_ok else "FAIL",
        "gateway_added_p50_ms_c1": gateway_c1["added_p50_ms"],
        "gateway_1_worker_rps_c32": gateway_c32["rps"],
        "gateway_2_workers_rps_c32": by[("gateway (2 workers)", 32)]["rps"],
        "baseline_rps_c32": baseline_rps,
        "rps_ratio_to_baseline": round(gateway_c32["rps"] / baseline_rps, 1),
        "usage_records_one_per_request": records_ok,
        "usage_records": usage,
        "load_average_before": round(load_before, 2),
        "runs": rows,
    }
