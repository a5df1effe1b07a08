"""Usage accounting: batch ingestion throughput over HTTP, and summaries from rollups against raw events.

(a) A real uvicorn server (2 workers) and 3 client threads on the same machine post batches of 1,000 events for
BENCH_INGEST_SECONDS (20) after a 5 s warm-up. References: the same batches through the ingestion service directly,
and the baseline the issue names, MLflow's tracking server (2 workers, same PostgreSQL) taking batches of 1,000
metrics from the same clients for the same time.
(b) BENCH_EVENTS (10,000,000) raw events are generated in SQL (generate_series) and the daily rollup is built with
one INSERT … SELECT … GROUP BY; then the p50 of a 30-day summary by model from the rollup next to the same query
over the raw events.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import requests
from django.contrib.auth import get_user_model
from django.db import connection

from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import UsageDaily, UsageEvent
from apps.accounting.rollups import summarize
from apps.core.models import Membership, Organization, Project, Role
from apps.core.services import api_token_create
from controlplane.devstack import free_port, stop_group

EVENTS = int(os.environ.get("BENCH_EVENTS", "10000000"))
INGEST_SECONDS = float(os.environ.get("BENCH_INGEST_SECONDS", "20"))
WARMUP_SECONDS = 5
BATCH = 1000
CLIENTS = 3
ROOT = Path(__file__).resolve().parent.parent
MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "claude-3-5-sonnet-20241022", "o3-mini"]
_ids = itertools.count()
SLOT = b"@" * 12  # where each HTTP batch of events gets its own id prefix
STEP_SLOT = "9" * 12  # the same for the steps of an MLflow batch


def _batch(project: str) -> dict:
    now = datetime.datetime.now(datetime.UTC).isoformat()
    start = next(_ids) * BATCH
    return {
        "project": project,
        "events": [
            {
                "id": f"b-{start + i}",
                "time": now,
                "model": MODELS[i % 5],
                "provider": "anthropic" if i % 5 == 3 else "openai",
                "user": f"user-{i % 50}",
                "team": f"team-{i % 5}",
                "prompt_tokens": 500 + i,
                "completion_tokens": 100 + i % 300,
                "cached_tokens": i % 200,
                "latency_ms": 300 + i % 700,
                "ttft_ms": 80,
                "status": "ok" if i % 50 else "error",
                "tags": ["bench"],
            }
            for i in range(BATCH)
        ],
    }


def _post_for(url: str, headers: dict, templates: list[bytes], slot: bytes, counted: int) -> float:
    """CLIENTS threads post their template (client n: templates[n % len]) for INGEST_SECONDS after WARMUP_SECONDS;
    returns rows stored per second.

    The warm-up is not counted: the server's workers open their connections and fill their caches. The load
    generator must stay cheap next to the server on the same two cores: the body is encoded once, and each request
    only swaps a fresh number into `slot` (bytes.replace), so every row is new and none is a duplicate."""
    numbers = itertools.count(10**11)  # 12 digits, none leading with 0 (a JSON number cannot)

    def phase(seconds: float) -> float:
        stop = time.monotonic() + seconds
        counts = [0] * CLIENTS

        errors: list[Exception] = []

        def client(n: int) -> None:
            session = requests.Session()
            session.headers.update({**headers, "Content-Type": "application/json"})
            template = templates[n % len(templates)]
            try:
                while time.monotonic() < stop:
                    response = session.post(url, data=template.replace(slot, b"%d" % next(numbers)))
                    response.raise_for_status()
                    counts[n] += counted
            except Exception as exc:  # a failed request fails the benchmark, not just its thread
                errors.append(exc)

        started = time.perf_counter()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return sum(counts) / (time.perf_counter() - started)

    phase(WARMUP_SECONDS)
    return phase(INGEST_SECONDS)


@contextlib.contextmanager
def _server(command: list[str], probe: str) -> Iterator[None]:
    """A server process group (MLflow's also starts job consumers), stopped with all its children."""
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(probe, timeout=2).status_code < 500:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:3]} did not start")
            time.sleep(0.5)
        yield
    finally:
        stop_group(process)


def _http_ingest(token: str) -> float:
    """Usage events per second through POST /api/v1/accounting/usage/events (uvicorn, 2 workers)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "controlplane.asgi:application", "--port", str(port),
               "--log-level", "warning", "--workers", "2", "--no-access-log"]  # fmt: skip
    template = orjson.dumps(_batch("acct-bench")).replace(b'"b-', b'"' + SLOT + b"-")
    with _server(command, f"{base}/api/v1/"):
        return _post_for(
            f"{base}/api/v1/accounting/usage/events", {"Authorization": f"Bearer {token}"}, [template], SLOT, BATCH
        )


def _mlflow_log_batch(work: Path) -> float:
    """The baseline the issue names: metric rows per second through MLflow's own tracking server (the installed
    mlflow, 2 workers, on the same PostgreSQL) and its batch endpoint, 1,000 metrics a request: 10 metrics over
    100 steps, as a training loop logs them, each client into its own run."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
               os.environ["MLFLOW_BACKEND_STORE_URI"], "--default-artifact-root", str(work / "mlflow-artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]  # fmt: skip
    with _server(command, f"http://127.0.0.1:{port}/health"):
        experiment = requests.post(f"{api}/experiments/create", json={"name": f"bench-{time.time_ns()}"}).json()
        now = int(time.time() * 1000)
        # Steps are STEP_SLOT followed by two digits; each request swaps in its own number: steps n × 100 + 0..99.
        metrics = [
            {"key": f"loss_{i % 10}", "value": i / 7, "timestamp": now, "step": int(f"{STEP_SLOT}{i // 10:02d}")}
            for i in range(BATCH)
        ]
        templates = []
        for _ in range(CLIENTS):
            run = requests.post(f"{api}/runs/create", json={"experiment_id": experiment["experiment_id"]}).json()
            templates.append(orjson.dumps({"run_id": run["run"]["info"]["run_id"], "metrics": metrics}))
        return _post_for(f"{api}/runs/log-batch", {}, templates, STEP_SLOT.encode(), BATCH)


def _direct_ingest(user, batches: int = 20) -> float:
    bodies = [_batch("acct-bench") for _ in range(batches)]
    started = time.perf_counter()
    for body in bodies:
        usage_ingest(user=user, events=body["events"], project=body["project"])
    return batches * BATCH / (time.perf_counter() - started)


def _generate(project_id: int) -> float:
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO accounting_usageevent (project_id, event_id, time, received_at, model, deployment, provider,
                "user", team, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens,
                latency_ms, status, is_error, tags, metadata, cost, tokenizer)
            SELECT %s, 'g-' || g, now() - (g %% 2592000) * interval '1 second', now(),
                (ARRAY['gpt-4o','gpt-4o-mini','gpt-4.1','claude-3-5-sonnet','o3-mini'])[1 + g %% 5], '', 'openai',
                'user-' || (g %% 200), 'team-' || (g %% 7), 500 + g %% 1000, 100 + g %% 300, 0, 0, 0, 300 + g %% 700,
                CASE WHEN g %% 50 = 0 THEN 'error' ELSE 'ok' END, g %% 50 = 0, '[]', '{}', (g %% 1000) / 100000.0, ''
            FROM generate_series(1, %s) AS g
            """,
            [project_id, EVENTS],
        )
        cursor.execute(
            """
            INSERT INTO accounting_usagedaily (bucket, project_id, model, deployment, "user", team, token_id, requests,
                errors, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, latency_ms_sum, cost)
            SELECT date_trunc('day', time, 'UTC'), project_id, model, deployment, "user", team, token_id, count(*),
                count(*) FILTER (WHERE is_error), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
                sum(reasoning_tokens), coalesce(sum(latency_ms), 0), sum(cost)
            FROM accounting_usageevent WHERE project_id = %s GROUP BY 1, 2, 3, 4, 5, 6, 7
            """,
            [project_id],
        )
        cursor.execute("ANALYZE accounting_usageevent; ANALYZE accounting_usagedaily")
    return time.perf_counter() - started


def _p50(fn, n: int) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(samples), 2)


def _clear_previous_run() -> None:
    """A rerun on the same database starts clean (SQL deletes: the ORM would cascade row by row)."""
    with connection.cursor() as cursor:
        for table in ("accounting_usageevent", "accounting_usagehourly", "accounting_usagedaily"):
            cursor.execute(
                f"DELETE FROM {table} WHERE project_id IN (SELECT id FROM core_project WHERE slug LIKE 'acct-bench%%')"
            )
    Project.objects.filter(slug__startswith="acct-bench").delete()
    Organization.objects.filter(slug="acct-bench").delete()
    get_user_model().objects.filter(username="acct-bench").delete()


def run() -> dict:
    _clear_previous_run()
    User = get_user_model()
    org = Organization.objects.create(name="Accounting bench", slug="acct-bench")
    project = Project.objects.create(organization=org, name="Accounting bench", slug="acct-bench")
    summary_project = Project.objects.create(organization=org, name="Summary bench", slug="acct-bench-summary")
    user = User.objects.create(username="acct-bench")
    Membership.objects.create(project=project, user=user, role=Role.DEVELOPER)
    Membership.objects.create(project=summary_project, user=user, role=Role.VIEWER)
    _, token = api_token_create(user=user, name="bench", scopes=["read", "write"])

    direct = _direct_ingest(user)
    http = _http_ingest(token)
    with tempfile.TemporaryDirectory() as work:
        mlflow_rows = _mlflow_log_batch(Path(work))
    stored = UsageEvent.objects.filter(project=project).count()

    generate_s = _generate(summary_project.pk)
    start = datetime.datetime.now(datetime.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start -= datetime.timedelta(days=30)
    rollup = UsageDaily.objects.filter(project=summary_project, bucket__gte=start)
    raw = UsageEvent.objects.filter(project=summary_project, time__gte=start)
    assert {r["model"]: r["requests"] for r in summarize(rollup, "model")} == {
        r["model"]: r["requests"] for r in summarize(raw, "model")
    }
    runs = 20 if EVENTS <= 1_000_000 else 5
    return {
        "ingest_http_events_per_s (uvicorn 2 workers, 3 clients, batches of 1000)": round(http),
        "ingest_direct_service_events_per_s (1 thread)": round(direct),
        "baseline_mlflow_log_batch_metric_rows_per_s (tracking server, 2 workers, 3 clients, batches of 1000)": round(
            mlflow_rows
        ),
        "events_stored_by_ingestion": stored,
        "summary_events": EVENTS,
        "summary_rollup_rows": UsageDaily.objects.filter(project=summary_project).count(),
        "generate_events_and_rollup_s": round(generate_s, 1),
        "summary_by_model_from_rollup_p50_ms": _p50(lambda: summarize(rollup, "model"), runs * 4),
        "summary_by_model_from_raw_events_p50_ms": _p50(lambda: summarize(raw, "model"), runs),
    }
