import datetime
import json
import threading
from decimal import Decimal

import pytest
from django.db import connection, connections
from django.db.models import Count, Sum

from apps.accounting.ingestion import usage_ingest
from apps.accounting.models import AccountingSettings, UsageDaily, UsageEvent, UsageHourly
from apps.core.models import Project, Role

from ..factories import MembershipFactory, ProjectFactory
from .conftest import T0, event

pytestmark = pytest.mark.django_db
URL = "/api/v1/accounting/usage/events"


def test_malformed_events_are_rejected_one_by_one_and_the_rest_stored(catalog, project, writer):
    events = [
        event(1),
        event(2, prompt_tokens=-5),
        event(3, time="yesterday"),
        {"model": "gpt-4o"},
        event(4, model="", deployment=""),
        event(5, prompt_token=3),
        event(6, project="no-such"),
        event(7, status=500, cost="0.5"),
    ]
    response = writer.post(URL, {"project": "alpha", "events": events}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["accepted"] == ["ev-1", "ev-7"]
    reasons = {r["index"]: r["reason"] for r in body["rejected"]}
    assert set(reasons) == {1, 2, 3, 4, 5, 6}
    assert reasons[1].startswith("prompt_tokens") and reasons[2].startswith("time") and reasons[3].startswith("id")
    assert "prompt_token" in reasons[5] and "no project 'no-such'" in reasons[6]
    seven = UsageEvent.objects.get(event_id="ev-7")
    assert (seven.is_error, seven.provided_cost, seven.cost, seven.computed_cost) == (
        True,
        Decimal("0.5"),
        Decimal("0.5"),
        Decimal("0.003"),
    )
    assert seven.catalog_version == catalog.version and seven.price_entry.model_pattern == "gpt-4o*"


def test_events_with_values_of_the_wrong_shape_are_rejected_not_a_500(catalog, project, writer):
    """Values a fuzzer sent: a project that is a list or an object, status codes no HTTP status is, digits int()
    cannot read."""
    events = [
        event(1, project=[]),
        event(2, project={"slug": "alpha"}),
        event(3, status=10**30),
        event(4, status=-(2**70)),
        event(5, status="²"),
        event(6, status=0),
    ]
    response = writer.post(URL, {"project": "alpha", "events": events}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["accepted"] == ["ev-5", "ev-6"]
    assert [r["index"] for r in body["rejected"]] == [0, 1, 2, 3]
    assert set(UsageEvent.objects.values_list("status", "is_error")) == {("²", True), ("0", True)}


def test_version_numbers_in_digits_int_cannot_read_are_a_400(catalog, project, writer):
    """str.isdigit() is True for "²", which int() refuses: each place that reads a number from text says 400."""
    count = writer.post("/api/v1/accounting/tokens/count", {"text": "hi", "tokenizer": "registry:²"}, format="json")
    assert count.status_code == 400 and "tokenizer" in count.json()["error"]["details"]
    for version in ("²", "99999999999999999999"):
        prices = writer.get("/api/v1/accounting/prices/", {"catalog_version": version})
        assert prices.status_code == 400 and "catalog_version" in prices.json()["error"]["details"]
    batch = {"project": "alpha", "events": [event(1, input_text="hi", tokenizer="registry:²")]}
    rejected = writer.post(URL, batch, format="json").json()["error"]["details"]["rejected"]
    assert rejected[0]["reason"] == "tokenizer: no registered version '²' in this project."


def test_the_same_batch_twice_is_stored_and_counted_once(catalog, project, writer):
    batch = {"project": "alpha", "events": [event(i) for i in range(50)] + [event(0)]}
    first = writer.post(URL, batch, format="json").json()
    second = writer.post(URL, batch, format="json").json()
    assert (len(first["accepted"]), first["duplicates"]) == (50, ["ev-0"])
    assert (second["accepted"], len(second["duplicates"])) == ([], 51)
    assert UsageEvent.objects.count() == 50
    for rollup in (UsageHourly, UsageDaily):
        totals = rollup.objects.aggregate(r=Sum("requests"), p=Sum("prompt_tokens"), c=Sum("cost"))
        assert totals == {"r": 50, "p": 50_000, "c": Decimal("0.15")}


def test_text_is_counted_with_the_models_tokenizer_and_not_stored(catalog, project, writer):
    events = [
        event(1, prompt_tokens=None, completion_tokens=None, input_text="hello world", output_text="hi there"),
        event(2, model="gpt-4", prompt_tokens=None, completion_tokens=None, input_text="hello world"),
        event(3, prompt_tokens=None, completion_tokens=0, messages=[{"role": "user", "content": "hello world"}]),
    ]
    for e in events:
        e.pop("prompt_tokens")
        if e["completion_tokens"] is None:
            e.pop("completion_tokens")
    response = writer.post(URL, {"project": "alpha", "events": events}, format="json")
    assert response.json()["accepted"] == ["ev-1", "ev-2", "ev-3"], response.content
    rows = {e.event_id: e for e in UsageEvent.objects.all()}
    assert (rows["ev-1"].tokenizer, rows["ev-1"].prompt_tokens, rows["ev-1"].completion_tokens) == ("o200k_base", 2, 2)
    assert (rows["ev-2"].tokenizer, rows["ev-2"].prompt_tokens) == ("cl100k_base", 2)
    assert rows["ev-3"].prompt_tokens == 2 + 3 + 1 + 3  # content + role + per-message framing + reply priming
    assert all(row.content is None for row in rows.values())

    AccountingSettings.objects.create(project=project, store_text=True)
    writer.post(
        URL, {"project": "alpha", "events": [{"id": "kept", "model": "gpt-4o", "input_text": "x"}]}, format="json"
    )
    assert UsageEvent.objects.get(event_id="kept").content == {"input_text": "x"}


def test_a_read_only_token_and_a_viewer_cannot_ingest(project, member_factory, client_for):
    developer = member_factory(Role.DEVELOPER)
    read_only = client_for(developer, scopes=["read"])
    response = read_only.post(URL, {"project": "alpha", "events": [event(1)]}, format="json")
    assert response.status_code == 403 and "'write'" in response.json()["error"]["message"]
    viewer = client_for(member_factory(Role.VIEWER))
    assert viewer.post(URL, {"project": "alpha", "events": [event(1)]}, format="json").status_code == 403
    assert UsageEvent.objects.count() == 0


def test_another_projects_events_are_unknown_and_invisible(catalog, project, other_project, member_factory, client_for):
    outsider = client_for(member_factory(Role.ADMIN, on=other_project))
    response = outsider.post(URL, {"project": "alpha", "events": [event(1)]}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["rejected"][0]["reason"] == "project: no project 'alpha'."
    client_for(member_factory(Role.DEVELOPER)).post(URL, {"project": "alpha", "events": [event(1)]}, format="json")
    assert outsider.get(URL).json()["count"] == 0
    assert outsider.get("/api/v1/accounting/usage/summary?group_by=model").json()["results"] == []


def test_oversized_batches_and_bad_bodies_are_4xx(project, writer):
    assert writer.post(URL, {"events": [event(i) for i in range(1001)]}, format="json").status_code == 400
    assert writer.post(URL, {"events": "nope"}, format="json").status_code == 400
    assert writer.post(URL, [1, 2], format="json").status_code == 400


def test_the_batch_route_reads_bodies_as_the_standard_json_parser_does(catalog, project, writer):
    """The route parses with orjson; what orjson reads differently (integers beyond 64 bits) or refuses (1e400)
    goes to the standard parser, and NUL characters and deep nesting are refused as on every route."""

    def post(*events, replace=("", "")):
        body = json.dumps({"project": "alpha", "events": list(events)}).replace(*replace)
        return writer.post(URL, body, content_type="application/json")

    big_id = post(event(1, id="big"), replace=('"big"', "123456789012345678901234567890"))
    assert big_id.json()["accepted"] == ["123456789012345678901234567890"], big_id.content
    infinite = post(event(2, latency_ms="inf"), event(3), replace=('"inf"', "1e400"))
    assert infinite.json()["rejected"] == [{"index": 0, "id": "ev-2", "reason": "latency_ms: give a whole number."}]
    deep = "[" * 70 + "]" * 70
    for response, message in (
        (post(event(4, user="a\u0000b")), "NUL"),
        (post(event(5, metadata={"x": deep}), replace=(f'"{deep}"', deep)), "nested deeper"),
    ):
        assert response.status_code == 400 and message in response.json()["error"]["message"], response.content
    assert set(UsageEvent.objects.values_list("event_id", flat=True)) == {"123456789012345678901234567890", "ev-3"}


def test_events_list_is_paginated_and_filtered(catalog, project, writer):
    writer.post(URL, {"project": "alpha", "events": [event(i, user=f"u{i % 2}") for i in range(6)]}, format="json")
    body = writer.get(URL, {"user": "u1", "page_size": 2}).json()
    assert body["count"] == 3 and len(body["results"]) == 2 and "content" not in body["results"][0]
    late = (T0 + datetime.timedelta(minutes=4)).isoformat()
    assert writer.get(URL, {"from": late}).json()["count"] == 2
    assert writer.get(URL, {"from": "garbage"}).status_code == 400


def test_summary_numbers_equal_sums_over_raw_events(catalog, project, writer):
    events = [
        event(i, model=["gpt-4o", "gpt-4o-mini"][i % 2], user=f"u{i % 3}", status="error" if i % 5 == 0 else "ok",
              time=(T0 + datetime.timedelta(hours=i * 5)).isoformat())
        for i in range(40)
    ]  # fmt: skip
    assert len(writer.post(URL, {"project": "alpha", "events": events}, format="json").json()["accepted"]) == 40
    raw = {
        row["model"]: row
        for row in UsageEvent.objects.values("model").annotate(
            cost=Sum("cost"), p=Sum("prompt_tokens"), c=Sum("completion_tokens"), n=Count("id")
        )
    }
    for group_by in ("model", "day", "hour", "user", "project"):
        body = writer.get("/api/v1/accounting/usage/summary", {"group_by": group_by}).json()
        assert sum(Decimal(r["cost"]) for r in body["results"]) == sum(r["cost"] for r in raw.values())
        assert sum(r["requests"] for r in body["results"]) == 40
        assert sum(r["errors"] for r in body["results"]) == 8
    by_model = {r["model"]: r for r in writer.get("/api/v1/accounting/usage/summary").json()["results"]}
    for model, row in raw.items():
        got = by_model[model]
        assert (Decimal(got["cost"]), got["prompt_tokens"], got["completion_tokens"], got["requests"]) == (
            row["cost"], row["p"], row["c"], row["n"],
        )  # fmt: skip
        assert Decimal(got["cost_per_1k_tokens"]) == (row["cost"] * 1000 / (row["p"] + row["c"])).quantize(
            Decimal("1e-10")
        )
    day = {"from": T0.isoformat(), "to": (T0 + datetime.timedelta(days=1)).isoformat(), "group_by": "model"}
    one_day = writer.get("/api/v1/accounting/usage/summary", day).json()
    assert one_day["source"] == "usagedaily" and sum(r["requests"] for r in one_day["results"]) == 5
    csv = writer.get("/api/v1/accounting/usage/summary.csv", {"group_by": "model"})
    assert csv.status_code == 200 and csv["Content-Type"].startswith("text/csv")
    assert csv.content.decode().splitlines()[0].startswith("model,cost,")
    assert writer.get("/api/v1/accounting/usage/summary", {"format": "csv"}).content.decode().count("\n") == 3
    bad = writer.get("/api/v1/accounting/usage/summary", {"group_by": "color", "format": "csv"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid"


def test_token_count_and_compare(catalog, project, writer):
    count = writer.post(
        "/api/v1/accounting/tokens/count", {"text": "hello world", "tokenizer": "cl100k_base"}, format="json"
    ).json()
    assert (count["tokens"], count["characters"], count["tokenizer"], count["cost"]) == (2, 11, "cl100k_base", None)
    priced = writer.post("/api/v1/accounting/tokens/count", {"text": "hello world", "model": "gpt-4o"}, format="json")
    body = priced.json()
    assert body["tokenizer"] == "o200k_base" and Decimal(body["cost"]["input_cost"]) == Decimal("0.000004")
    compare = writer.get("/api/v1/accounting/tokens/compare", {"text": "hello world"}).json()
    assert {r["tokenizer"]: r["tokens"] for r in compare["results"]} == {"cl100k_base": 2, "o200k_base": 2}
    for bad in ({"text": "x"}, {"text": "x", "tokenizer": "nope"}, {"text": "x", "tokenizer": "registry:999"}):
        response = writer.post("/api/v1/accounting/tokens/count", bad, format="json")
        assert response.status_code == 400, bad
    read_only = writer  # counting changes nothing: any signed-in caller may
    assert read_only.get("/api/v1/accounting/tokens/compare").status_code == 400


@pytest.mark.django_db(transaction=True)
def test_events_never_outlive_their_project(catalog, project, admin_user):
    """Events have no per-row key check on their project: the rollups' keys refuse a batch whose project was deleted
    after it was looked up, and the batch is taken once more, its events now rejected as of an unknown project."""
    other = ProjectFactory(organization=project.organization, slug="gamma")
    MembershipFactory(project=other, user=admin_user, role=Role.ADMIN)
    deleted = []

    def delete_before_the_write(execute, sql, params, many, context):
        if "CROSS JOIN LATERAL" in sql and not deleted:  # pricing the batch: after its projects were looked up
            deleted.append(project.pk)  # from another connection, committed, as another request would
            worker = threading.Thread(
                target=lambda: (Project.objects.filter(pk=project.pk).delete(), connections.close_all())
            )
            worker.start()
            worker.join()
        return execute(sql, params, many, context)

    batch = [event(0), event(1, project=other.slug)]
    with connection.execute_wrapper(delete_before_the_write):
        result = usage_ingest(user=admin_user, events=batch, project=project.slug)
    assert deleted == [project.pk]
    assert result.accepted == ["ev-1"]
    assert [r["reason"] for r in result.rejected] == ["project: no project 'alpha'."]
    assert not UsageEvent.objects.filter(project_id=project.pk).exists()
    assert not UsageDaily.objects.filter(project_id=project.pk).exists()


def test_deleting_a_project_deletes_its_events(catalog, project, writer):
    writer.post("/api/v1/accounting/usage/events", {"project": project.slug, "events": [event(0)]}, format="json")
    assert UsageEvent.objects.filter(project=project).count() == 1
    project_id = project.pk
    project.delete()
    assert not UsageEvent.objects.filter(project_id=project_id).exists()
