"""GPU-hour cost of self-hosted deployments from synthetic state events (rows written directly, no runtime)."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connections

from apps.accounting import tasks
from apps.accounting.gpu_cost import LOCK_KEY, gpu_cost_refresh
from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import DeploymentCostHourly
from apps.core.models import Role
from apps.deployments.models import Accelerator, Deployment, Replica, Revision, State, StateEvent, Target

pytestmark = pytest.mark.django_db

T10 = datetime.datetime(2025, 3, 1, 10, tzinfo=datetime.UTC)
URL = "/api/v1/accounting/usage/gpu-cost"


def at(hours: float) -> datetime.datetime:
    """10:00 plus a number of hours."""
    return T10 + datetime.timedelta(hours=hours)


@pytest.fixture
def a100(db):
    return Accelerator.objects.create(name="A100-test", memory_gib=80, hourly_price=Decimal("4.00"))


@pytest.fixture
def chat(project):
    return Deployment.objects.create(project=project, name="Chat", slug="chat", target=Target.LOCAL)


def revision(deployment, accelerator, *, number=1, count=2) -> Revision:
    return Revision.objects.create(
        deployment=deployment, number=number, accelerator=accelerator, accelerator_count=count, state=State.READY
    )


def replica(rev: Revision, *, index=0, state=State.STOPPED) -> Replica:
    return Replica.objects.create(revision=rev, index=index, state=state)


def events(rep: Replica, *moves: tuple[str, float]) -> None:
    for state, hours in moves:
        StateEvent.objects.create(
            deployment_id=rep.revision.deployment_id, revision=rep.revision, replica=rep, state=state, time=at(hours)
        )


def traffic(project, *, deployment="chat", hours=0.25, prompt=60_000, completion=20_000, n=1) -> None:
    usage_ingest(
        user=None,
        project=project.slug,
        events=[
            {
                "id": f"{deployment}-{hours}-{i}",
                "time": at(hours).isoformat(),
                "model": "tiny:1",
                "provider": "self-hosted",
                "deployment": deployment,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
            for i in range(n)
        ],
    )


def rows() -> list[DeploymentCostHourly]:
    return list(DeploymentCostHourly.objects.order_by("bucket", "revision"))


def test_ninety_minutes_on_two_a100s_across_two_hours_with_traffic_in_the_first(project, chat, a100):
    rep = replica(revision(chat, a100))
    events(rep, (State.PENDING, 0.4), (State.STARTING, 0.5), (State.READY, 0.6), (State.STOPPED, 2.0))
    traffic(project, hours=0.75)

    result = gpu_cost_refresh(now=at(3))

    assert (result.start, result.end, result.rows, result.deleted) == (at(-3), at(3), 2, 0)
    busy, idle = rows()
    assert (busy.bucket, busy.deployment, busy.revision, busy.accelerator, busy.accelerator_count) == (
        at(0),
        "chat",
        1,
        "A100-test",
        2,
    )
    # 30 minutes × 2 devices × 4.00/h, spread over the 80,000 tokens of the hour.
    assert (busy.replica_seconds, busy.accelerator_hours, busy.gpu_cost) == (Decimal(1800), Decimal(1), Decimal(4))
    assert (busy.requests, busy.tokens, busy.cost_per_1k_tokens) == (1, 80_000, Decimal("0.05"))
    assert (busy.idle, busy.idle_cost, busy.hourly_price, busy.currency) == (False, 0, Decimal(4), "USD")
    # The whole next hour up, no request: idle spend.
    assert (idle.bucket, idle.replica_seconds, idle.accelerator_hours, idle.gpu_cost) == (
        at(1),
        Decimal(3600),
        Decimal(2),
        Decimal(8),
    )
    assert (idle.tokens, idle.cost_per_1k_tokens, idle.idle, idle.idle_cost) == (0, None, True, Decimal(8))


def test_recomputing_is_idempotent_and_follows_late_events_and_prices(project, chat, a100):
    rep = replica(revision(chat, a100))
    events(rep, (State.STARTING, 0.5), (State.STOPPED, 2.0))
    first = gpu_cost_refresh(now=at(3))
    before = {(r.pk, r.bucket, r.gpu_cost, r.idle_cost) for r in rows()}

    again = gpu_cost_refresh(now=at(3))

    assert (first.rows, again.rows, again.deleted) == (2, 2, 0)
    assert {(r.pk, r.bucket, r.gpu_cost, r.idle_cost) for r in rows()} == before  # same rows, same ids

    # Late usage in the first hour, and a stop that in fact came at 11:00: the hour of 11:00 no longer ran.
    traffic(project, hours=0.75)
    StateEvent.objects.filter(state=State.STOPPED).update(time=at(1))
    result = gpu_cost_refresh(now=at(3))
    assert (result.rows, result.deleted) == (1, 1)
    (only,) = rows()
    assert (only.bucket, only.gpu_cost, only.tokens, only.idle) == (at(0), Decimal(4), 80_000, False)

    # A new catalog price applies to the hours still in the window; older hours keep the price they had.
    a100.hourly_price = Decimal("10.00")
    a100.save()
    gpu_cost_refresh(now=at(12))  # the window (04:00 on) no longer reaches 10:00
    assert rows()[0].gpu_cost == Decimal(4) and rows()[0].hourly_price == Decimal(4)
    gpu_cost_refresh(now=at(3))
    assert rows()[0].gpu_cost == Decimal(10) and rows()[0].hourly_price == Decimal(10)


def test_a_replica_still_running_counts_up_to_now(project, chat, a100):
    rep = replica(revision(chat, a100, count=1), state=State.READY)
    events(rep, (State.STARTING, 2.25), (State.READY, 2.3))

    gpu_cost_refresh(now=at(2.75))
    (row,) = rows()
    assert (row.bucket, row.replica_seconds, row.gpu_cost, row.idle) == (at(2), Decimal(1800), Decimal(2), True)

    gpu_cost_refresh(now=at(3.5))
    assert [(r.bucket, r.replica_seconds) for r in rows()] == [(at(2), Decimal(2700)), (at(3), Decimal(1800))]

    # Days later, with no event in the window: it is still up (its last event before the window says so).
    gpu_cost_refresh(now=at(50.5))
    latest = rows()[-1]
    assert (latest.bucket, latest.replica_seconds) == (at(50), Decimal(1800))
    assert rows()[-2].replica_seconds == Decimal(3600)


def test_restarts_while_running_count_once_and_failures_stop_the_clock(project, chat, a100):
    rev = revision(chat, a100, count=1)
    one, two = replica(rev, index=0), replica(rev, index=1)
    # one: starts, restarts while running (starting again), drains and fails at 10:45.
    events(one, (State.STARTING, 0.0), (State.READY, 0.1), (State.STARTING, 0.2), (State.DRAINING, 0.5))
    events(one, (State.FAILED, 0.75), (State.STOPPED, 0.8))
    # two: 10:30 to 10:45, then pending (scaled down) and never back.
    events(two, (State.STARTING, 0.5), (State.PENDING, 0.75))

    gpu_cost_refresh(now=at(2))

    (row,) = rows()
    assert row.replica_seconds == Decimal(45 * 60 + 15 * 60)
    assert row.gpu_cost == Decimal(4)  # one device-hour at 4.00


def test_revisions_sharing_an_hour_share_its_tokens_by_running_time(project, chat, a100):
    t4 = Accelerator.objects.create(name="T4-test", memory_gib=16, hourly_price=Decimal("1.00"))
    old, new = revision(chat, t4, number=1, count=1), revision(chat, a100, number=2, count=1)
    events(replica(old), (State.STARTING, -1), (State.STOPPED, 0.75))  # 45 minutes in the hour of 10:00
    events(replica(new), (State.STARTING, 0.75), (State.STOPPED, 1.0))  # 15 minutes
    traffic(project, hours=0.5, prompt=700, completion=300, n=3)  # 3 requests, 3,000 tokens

    gpu_cost_refresh(now=at(2))

    _, first, second = rows()
    assert (first.revision, first.tokens, first.requests, first.gpu_cost) == (1, 2250, 2, Decimal("0.75"))
    assert (second.revision, second.tokens, second.requests, second.gpu_cost) == (2, 750, 1, Decimal(1))
    assert first.cost_per_1k_tokens == Decimal("0.3333333333") and second.cost_per_1k_tokens == Decimal("1.3333333333")
    assert not first.idle and not second.idle


def test_other_deployments_traffic_and_external_deployments_do_not_count(project, other_project, chat, a100):
    events(replica(revision(chat, a100, count=1)), (State.STARTING, 0), (State.STOPPED, 1))
    traffic(project, deployment="other-deployment")
    traffic(other_project, deployment="chat")  # the same slug in another project
    external = Deployment.objects.create(project=project, name="Ext", slug="ext", target=Target.EXTERNAL)
    revision(external, a100)  # no replicas: nothing runs here

    gpu_cost_refresh(now=at(2))

    (row,) = rows()
    assert (row.deployment, row.tokens, row.idle, row.idle_cost) == ("chat", 0, True, Decimal(4))


def test_the_beat_task_refreshes_the_recent_hours(project, chat, a100):
    rep = replica(revision(chat, a100), state=State.READY)
    StateEvent.objects.create(
        deployment=chat,
        revision=rep.revision,
        replica=rep,
        state=State.STARTING,
        time=datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=30),
    )
    result = tasks.gpu_cost_refresh()
    assert result["rows"] >= 1 and not result["skipped"]
    assert sum(r.replica_seconds for r in rows()) >= Decimal(1800)


def test_one_refresh_runs_at_a_time_and_a_backfill_recomputes_any_period(project, chat, a100, capsys):
    events(replica(revision(chat, a100)), (State.STARTING, 0.5), (State.STOPPED, 2.0))
    # Another refresh holds the lock (first: this test's own transaction keeps the lock of its refreshes).
    other = connections.create_connection("default")
    try:
        with other.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
            assert gpu_cost_refresh(now=at(3)).skipped
            cursor.execute("ROLLBACK")
    finally:
        other.close()
    assert rows() == []

    call_command("gpu_cost_refresh", "--from", "2025-03-01T10:00", "--to", "2025-03-01T11:30")
    assert [r.bucket for r in rows()] == [at(0), at(1)]  # the last hour is recomputed whole
    assert "2 rows written" in capsys.readouterr().out


# API -------------------------------------------------------------------------------------------------------------


@pytest.fixture
def costed(project, other_project, chat, a100):
    """Rows in both projects: chat in alpha (busy then idle) and chat in beta."""
    events(replica(revision(chat, a100)), (State.STARTING, 0.5), (State.STOPPED, 2.0))
    theirs = Deployment.objects.create(project=other_project, name="Chat", slug="chat", target=Target.LOCAL)
    events(replica(revision(theirs, a100)), (State.STARTING, 0), (State.STOPPED, 1))
    traffic(project, hours=0.75)
    gpu_cost_refresh(now=at(3))


def test_the_api_lists_visible_rows_filtered_like_usage(costed, member_factory, client_for):
    client = client_for(member_factory(Role.VIEWER))
    body = client.get(URL, {"project": "alpha", "from": at(0).isoformat(), "to": at(2).isoformat()}).json()
    assert [(r["bucket"], r["gpu_cost"], r["idle"], r["tokens"]) for r in body["results"]] == [
        ("2025-03-01T11:00:00Z", "8.0000000000", True, 0),
        ("2025-03-01T10:00:00Z", "4.0000000000", False, 80000),
    ]
    assert body["results"][1]["cost_per_1k_tokens"] == "0.0500000000"
    assert body["results"][1]["project"] == "alpha" and body["results"][1]["accelerator"] == "A100-test"
    assert client.get(URL).json()["count"] == 2  # beta's row is not visible
    assert client.get(URL, {"project": "alpha", "idle": "true"}).json()["count"] == 1
    assert client.get(URL, {"project": "alpha", "deployment": "nope"}).json()["count"] == 0
    assert client.get(URL, {"from": "yesterday"}).status_code == 400


def test_another_projects_gpu_cost_is_a_404(costed, member_factory, client_for):
    client = client_for(member_factory(Role.ADMIN))
    response = client.get(URL, {"project": "beta"})
    missing = client.get(URL, {"project": "no-such"})
    assert response.status_code == missing.status_code == 404
    assert response.json()["error"]["message"].replace("beta", "X") == missing.json()["error"]["message"].replace(
        "no-such", "X"
    )
    assert client.get(URL, {"deployment": "chat"}).json()["count"] == 2  # alpha's only
