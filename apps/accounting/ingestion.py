"""Usage ingestion: validate a batch event by event, price it, and store it with its rollups in one statement.

The batch is copied (COPY, binary) into a temporary staging table; then a single SQL statement moves it into the
event table with ON CONFLICT DO NOTHING on (project, event id), and only the rows actually inserted (RETURNING) are
summed into the hourly and daily rollups with ON CONFLICT DO UPDATE (x = x + excluded.x). A replayed event is
therefore neither stored nor counted twice, and rollups never disagree with the events they were built from.
"""

from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import psycopg
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from apps.core.models import Project
from apps.core.permissions import Action, PermissionDenied, restrict, token_scope_error

from . import tokenizers
from .pricing import books_current

MAX_ID = 200
MAX_JSON = 16_384
MAX_TEXT = 1_000_000
BIG = 2**53
OLDEST = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
OK_STATUSES = {"ok", "success", "succeeded", "completed", "stop"}
COUNT_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens")
STRING_FIELDS = {"model": 200, "deployment": 200, "provider": 50, "user": 150, "team": 100}
STRING_LIMITS = tuple(STRING_FIELDS.items())
TEXT_FIELDS = ("input_text", "output_text", "messages")
KNOWN_FIELDS = {
    "id",
    "event_id",
    "time",
    "project",
    *STRING_FIELDS,
    "token_id",
    *COUNT_FIELDS,
    "latency_ms",
    "ttft_ms",
    "status",
    "tags",
    "metadata",
    "cost",
    "tokenizer",
    *TEXT_FIELDS,
}


class Rejected(ValueError):
    """One event is malformed; the message says why."""


@dataclass
class IngestResult:
    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "counts": {
                "accepted": len(self.accepted),
                "duplicates": len(self.duplicates),
                "rejected": len(self.rejected),
            },
        }


# Validation ------------------------------------------------------------------------------------------------------


def _int(value: Any, name: str, *, upper: int = BIG) -> int:
    if type(value) is int and 0 <= value < upper:  # the usual case (bool is not int here)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected(f"{name}: give a whole number.")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise Rejected(f"{name}: give a whole number.")
        value = int(value)
    if not 0 <= value < upper:
        raise Rejected(f"{name}: must be between 0 and {upper - 1}.")
    return value


def _ms(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        value = round(value)
    return _int(value, name, upper=2**31)


def _time(value: Any, now: datetime.datetime, latest: datetime.datetime) -> datetime.datetime:
    if value is None:
        return now
    if isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise Rejected("time: give an ISO 8601 time or seconds since the epoch.")
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        try:
            moment = datetime.datetime.fromtimestamp(value, tz=datetime.UTC)
        except (OverflowError, OSError, ValueError):
            raise Rejected("time: out of range.")
    else:
        raise Rejected("time: give an ISO 8601 time or seconds since the epoch.")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    if not OLDEST <= moment <= latest:
        raise Rejected("time: must lie between 2000-01-01 and one day from now.")
    return moment


def _string(value: Any, name: str, limit: int) -> str:
    if type(value) is str and len(value) <= limit:
        return value
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Rejected(f"{name}: give a string.")
    if len(value) > limit:
        raise Rejected(f"{name}: at most {limit} characters.")
    return value


def _json(value: Any, name: str, kind: type) -> str:
    if not isinstance(value, kind):
        raise Rejected(f"{name}: give {'a list' if kind is list else 'an object'}.")
    try:
        encoded = orjson.dumps(value)
    except TypeError:  # what only the standard library writes: integers beyond 64 bits, non-string keys
        encoded = None
    # The limit counts the characters of json.dumps (non-ASCII escaped): at most 3 per byte of orjson's UTF-8, so
    # only JSON near the limit needs counting that way.
    if encoded is not None and 3 * len(encoded) <= MAX_JSON:
        return encoded.decode()
    text = json.dumps(value, separators=(",", ":"))
    if len(text) > MAX_JSON:
        raise Rejected(f"{name}: at most {MAX_JSON} bytes of JSON.")
    return text


def _cost(value: Any) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise Rejected("cost: give a number.")
    try:
        cost = Decimal(str(value))
    except InvalidOperation:
        raise Rejected("cost: give a number.")
    if not cost.is_finite() or not 0 <= cost < Decimal(10) ** 9:
        raise Rejected("cost: must be between 0 and 999999999.")
    return cost.quantize(Decimal("1e-10"))


def _status(value: Any) -> tuple[str, bool]:
    if value is None:
        return "ok", False
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1000:
        return str(value), not 100 <= value < 400
    if not isinstance(value, str) or not value or len(value) > 20:
        raise Rejected("status: give a string of 1–20 characters or an HTTP status code.")
    if value.isascii() and value.isdigit():  # (isdigit alone also takes digits int() refuses, such as "²")
        return value, not 100 <= int(value) < 400
    return value, value.lower() not in OK_STATUSES


def _messages(value: Any) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise Rejected("messages: give a list of {role, content} objects.")
    plain = []
    for message in value:
        content = message.get("content", "")
        if isinstance(content, list):  # content parts: count the text ones
            content = "".join(
                p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
        if not isinstance(content, str) or not isinstance(message.get("role", ""), str):
            raise Rejected("messages: role and content must be strings (or content parts with text).")
        plain.append({k: v for k, v in {**message, "content": content}.items() if isinstance(v, str)})
    return plain


@dataclass(slots=True)
class Row:
    project_id: int
    event_id: str
    time: datetime.datetime
    strings: dict[str, str]
    token_id: int | None
    counts: dict[str, int]
    latency_ms: int | None
    ttft_ms: int | None
    status: str
    is_error: bool
    tags: str
    metadata: str
    provided_cost: Decimal | None
    tokenizer: str = ""
    content: str | None = None
    computed_cost: Decimal | None = None
    price_entry_id: int | None = None
    catalog_version: int | None = None


class _Context:
    """What validating a batch needs to look up once: projects by slug, tokenizers by model, settings."""

    def __init__(self, user, slugs: set[str], now: datetime.datetime):
        self.now = now
        self.latest = now + datetime.timedelta(days=1)
        projects = Project.objects.filter(slug__in=slugs)
        # user None: records from the gateway, which checked `invoke` on the project before the request.
        writable = projects if user is None else restrict(projects, user, Action.CHANGE)
        found = writable.values_list("slug", "pk", "accounting_settings__store_text")
        self.projects = {slug: pk for slug, pk, _ in found}
        self.store_text = {pk for _, pk, store_text in found if store_text}
        hidden_write = slugs - set(self.projects)
        if hidden_write and user is not None:
            # Visible but not writable is a refusal of the whole request; invisible reads as unknown, per event.
            visible = restrict(Project.objects.filter(slug__in=hidden_write), user, Action.VIEW)
            if visible.exists():
                raise PermissionDenied(
                    token_scope_error(user, Action.CHANGE) or "You may not record usage in this project."
                )
        self._tokenizers: dict[tuple[int, str], str | None] = {}

    def tokenizer_for(self, project_id: int, model: str) -> str | None:
        key = (project_id, model)
        if key not in self._tokenizers:
            self._tokenizers[key] = tokenizers.tokenizer_for_model(project_id=project_id, model=model)
        return self._tokenizers[key]


def _count_text(ctx: _Context, project_id: int, event: dict, strings: dict[str, str], counts: dict) -> tuple[str, str]:
    """Fill prompt/completion counts from text the event carries. Returns (tokenizer name, content JSON or '')."""
    texts = {name: event[name] for name in TEXT_FIELDS if event.get(name) is not None}
    for name in ("input_text", "output_text"):
        if name in texts and (not isinstance(texts[name], str) or len(texts[name]) > MAX_TEXT):
            raise Rejected(f"{name}: give a string of at most {MAX_TEXT} characters.")
    if "messages" in texts:
        texts["messages"] = _messages(texts["messages"])
        if "input_text" in texts:
            raise Rejected("Give input_text or messages, not both.")
    name = event.get("tokenizer")
    if name is not None and not isinstance(name, str):
        raise Rejected("tokenizer: give a tokenizer name.")
    model = strings["model"] or strings["deployment"]
    name = name or ctx.tokenizer_for(project_id, model)
    if name is None:
        raise Rejected(f"No tokenizer known for model '{model}': give token counts or a tokenizer.")
    if name.startswith(tokenizers.REGISTRY_PREFIX) and event.get("tokenizer"):
        _check_registry_tokenizer(ctx, project_id, name)
    try:
        counter = tokenizers.counter_get(name)
    except tokenizers.TokenizerUnavailable as exc:
        raise Rejected(f"tokenizer: {exc}")
    if "prompt_tokens" not in event:
        if "messages" in texts:
            counts["prompt_tokens"] = tokenizers.count_messages(counter, texts["messages"])
        elif "input_text" in texts:
            counts["prompt_tokens"] = tokenizers.count_text(counter, texts["input_text"])
    if "completion_tokens" not in event and "output_text" in texts:
        counts["completion_tokens"] = tokenizers.count_text(counter, texts["output_text"])
    content = json.dumps(texts) if project_id in ctx.store_text else ""
    return counter.name, content


def _check_registry_tokenizer(ctx: _Context, project_id: int, name: str) -> None:
    """A tokenizer named by an event must belong to a version of the event's own project."""
    from apps.registry.models import ModelVersion

    version_id = tokenizers.registry_version_id(name)
    if version_id is None or not ModelVersion.objects.filter(pk=version_id, model__project_id=project_id).exists():
        raise Rejected(f"tokenizer: no registered version '{name[len(tokenizers.REGISTRY_PREFIX) :]}' in this project.")


def _row(ctx: _Context, event: Any, default_project: str | None) -> Row:
    if not isinstance(event, dict):
        raise Rejected("An event is a JSON object.")
    if not KNOWN_FIELDS.issuperset(event):
        raise Rejected(f"Unknown field(s): {', '.join(sorted(event.keys() - KNOWN_FIELDS))}.")
    slug = event.get("project", default_project)
    if not isinstance(slug, str) or not slug:
        raise Rejected("project: give the project's slug (in the event or the batch).")
    project_id = ctx.projects.get(slug)
    if project_id is None:
        raise Rejected(f"project: no project '{slug}'.")
    get = event.get
    strings = {}
    for name, limit in STRING_LIMITS:  # _string's usual case inline: this runs for every field of every event
        value = get(name)
        strings[name] = value if type(value) is str and len(value) <= limit else _string(value, name, limit)
    if not strings["model"] and not strings["deployment"]:
        raise Rejected("Give a model or a deployment.")
    counts = {}
    for name in COUNT_FIELDS:
        value = get(name) or 0
        counts[name] = value if type(value) is int and 0 <= value < BIG else _int(value, name)
    token_id = get("token_id")
    if token_id is not None:
        token_id = _int(token_id, "token_id", upper=2**63)
    status, is_error = _status(get("status"))
    tags, metadata = get("tags"), get("metadata")
    row = Row(
        project_id=project_id,
        event_id="",
        time=_time(get("time"), ctx.now, ctx.latest),
        strings=strings,
        token_id=token_id,
        counts=counts,
        latency_ms=_ms(get("latency_ms"), "latency_ms"),
        ttft_ms=_ms(get("ttft_ms"), "ttft_ms"),
        status=status,
        is_error=is_error,
        tags=_json(tags, "tags", list) if tags else "[]",
        metadata=_json(metadata, "metadata", dict) if metadata else "{}",
        provided_cost=_cost(get("cost")),
    )
    if not event.keys().isdisjoint(TEXT_FIELDS) and any(get(name) is not None for name in TEXT_FIELDS):
        row.tokenizer, content = _count_text(ctx, project_id, event, strings, counts)
        row.content = content or None
    return row


def _event_id(event: Any) -> str:
    if not isinstance(event, dict):
        return ""
    raw = event.get("id", event.get("event_id"))
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    return raw if isinstance(raw, str) else ""


# Pricing and writing ---------------------------------------------------------------------------------------------


def _price(rows: list[Row]) -> None:
    if not rows:
        return
    version, books = books_current({row.project_id for row in rows})
    for row in rows:
        strings, book = row.strings, books[row.project_id]
        entry = book.resolve(strings["model"] or strings["deployment"], strings["provider"], row.time)
        if entry is None:
            continue
        c = row.counts
        row.computed_cost = book.cost(
            entry,
            c["prompt_tokens"],
            c["completion_tokens"],
            c["cached_tokens"],
            c["cache_write_tokens"],
            c["reasoning_tokens"],
            row.latency_ms,
        )
        row.price_entry_id = entry.id
        row.catalog_version = version if entry.catalog_id else None


ROLLUP_SUMS = (
    "requests = {t}.requests + excluded.requests, errors = {t}.errors + excluded.errors, "
    "prompt_tokens = {t}.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = {t}.completion_tokens + excluded.completion_tokens, "
    "cached_tokens = {t}.cached_tokens + excluded.cached_tokens, "
    "reasoning_tokens = {t}.reasoning_tokens + excluded.reasoning_tokens, "
    "latency_ms_sum = {t}.latency_ms_sum + excluded.latency_ms_sum, cost = {t}.cost + excluded.cost"
)
ROLLUP_COLUMNS = (
    'bucket, project_id, model, deployment, "user", team, token_id, requests, errors, prompt_tokens, '
    "completion_tokens, cached_tokens, reasoning_tokens, latency_ms_sum, cost"
)


ROLLUP_TABLES = {
    "hour": ("accounting_usagehourly", "usage_hourly_key"),
    "day": ("accounting_usagedaily", "usage_daily_key"),
}
ROLLUP_KEY = 'project_id, model, deployment, "user", team, token_id'
# The inserted rows summed per hour once (a CTE named `hours`); the day rollup sums those few groups again rather
# than every row.
HOURS_SQL = (
    f"SELECT date_trunc('hour', time, 'UTC') AS bucket, {ROLLUP_KEY}, count(*) AS requests, "
    "count(*) FILTER (WHERE is_error) AS errors, sum(prompt_tokens) AS prompt_tokens, "
    "sum(completion_tokens) AS completion_tokens, sum(cached_tokens) AS cached_tokens, "
    "sum(reasoning_tokens) AS reasoning_tokens, coalesce(sum(latency_ms), 0) AS latency_ms_sum, sum(cost) AS cost "
    "FROM {source} GROUP BY 1, 2, 3, 4, 5, 6, 7"
)


def rollup_upsert_sql(unit: str, hours: str) -> str:
    """INSERT … SELECT of per-hour sums (`hours`, shaped by HOURS_SQL) into a rollup table, adding to the sums there.

    Groups go in key order so concurrent batches lock rollup rows in the same order (no deadlocks)."""
    table, constraint = ROLLUP_TABLES[unit]
    sums = "requests, errors, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, latency_ms_sum, cost"
    if unit == "hour":
        select = f"SELECT bucket, {ROLLUP_KEY}, {sums} FROM {hours}"
    else:
        summed = ", ".join(f"sum({name})" for name in sums.split(", "))
        select = (
            f"SELECT date_trunc('{unit}', bucket, 'UTC'), {ROLLUP_KEY}, {summed} FROM {hours} "
            "GROUP BY 1, 2, 3, 4, 5, 6, 7"
        )
    return (
        f"INSERT INTO {table} ({ROLLUP_COLUMNS}) {select} ORDER BY 1, 2, 3, 4, 5, 6, 7 "
        f"ON CONFLICT ON CONSTRAINT {constraint} DO UPDATE SET " + ROLLUP_SUMS.format(t=table)
    )


# The batch goes to the server with COPY (binary, each row formatted in C) into a temporary table of the session,
# then one statement moves it from there into the event table and the rollups: temporary tables have no WAL and no
# indexes, and the staged rows are deleted by that same statement (DELETE … RETURNING feeds the INSERT), so a later
# batch in the same transaction starts from an empty table; ON COMMIT DELETE ROWS also empties it at each commit.
STAGING_TABLE = "usage_event_staging"
STAGED_COLUMNS = (
    ("project_id", "int8"),
    ("event_id", "text"),
    ("time", "timestamptz"),
    ("model", "text"),
    ("deployment", "text"),
    ("provider", "text"),
    ("user", "text"),
    ("team", "text"),
    ("token_id", "int8"),
    *((name, "int8") for name in COUNT_FIELDS),
    ("latency_ms", "int4"),
    ("ttft_ms", "int4"),
    ("status", "text"),
    ("is_error", "bool"),
    ("tags", "text"),
    ("metadata", "text"),
    ("provided_cost", "numeric"),
    ("computed_cost", "numeric"),
    ("price_entry_id", "int8"),
    ("catalog_version", "int4"),
    ("tokenizer", "text"),
    ("content", "text"),
)
STAGING_SQL = "CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS".format(
    STAGING_TABLE, ", ".join(f'"{name}" {kind}' for name, kind in STAGED_COLUMNS)
)
COPY_SQL = f"COPY {STAGING_TABLE} FROM STDIN (FORMAT BINARY)"
INSERT_SQL = (
    f"WITH staged AS (DELETE FROM {STAGING_TABLE} RETURNING *), "
    "ins AS (INSERT INTO accounting_usageevent (project_id, event_id, time, received_at, model, deployment, "
    'provider, "user", team, token_id, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, '
    "reasoning_tokens, latency_ms, ttft_ms, status, is_error, tags, metadata, provided_cost, computed_cost, cost, "
    "price_entry_id, catalog_version, tokenizer, content) "
    'SELECT project_id, event_id, time, now(), model, deployment, provider, "user", team, token_id, '
    "prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, reasoning_tokens, latency_ms, ttft_ms, "
    "status, is_error, tags::jsonb, metadata::jsonb, provided_cost, computed_cost, "
    "coalesce(provided_cost, computed_cost, 0), price_entry_id, catalog_version, tokenizer, content::jsonb "
    "FROM staged ON CONFLICT (project_id, event_id) DO NOTHING "
    'RETURNING project_id, event_id, time, model, deployment, "user", team, token_id, prompt_tokens, '
    "completion_tokens, cached_tokens, reasoning_tokens, latency_ms, is_error, cost), "
    f"hours AS ({HOURS_SQL.format(source='ins')}), "
    f"hourly AS ({rollup_upsert_sql('hour', 'hours')}), "
    f"daily AS ({rollup_upsert_sql('day', 'hours')}) "
    "SELECT project_id, event_id FROM ins"
)


def _staged(row: Row) -> tuple:
    """The row as the staging table's columns (STAGED_COLUMNS order)."""
    strings, counts = row.strings, row.counts
    return (
        row.project_id,
        row.event_id,
        row.time,
        strings["model"],
        strings["deployment"],
        strings["provider"],
        strings["user"],
        strings["team"],
        row.token_id,
        counts["prompt_tokens"],
        counts["completion_tokens"],
        counts["cached_tokens"],
        counts["cache_write_tokens"],
        counts["reasoning_tokens"],
        row.latency_ms,
        row.ttft_ms,
        row.status,
        row.is_error,
        row.tags,
        row.metadata,
        row.provided_cost,
        row.computed_cost,
        row.price_entry_id,
        row.catalog_version,
        row.tokenizer,
        row.content,
    )


def _write(rows: list[Row]) -> set[tuple[int, str]]:
    """Insert rows and update rollups; returns the (project id, event id) pairs that were new."""
    if not rows:
        return set()
    connection.ensure_connection()
    # A plain psycopg cursor for COPY (Django's cursor has none); same connection, so inside the surrounding
    # transaction.
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(STAGING_SQL)
        with cursor.copy(COPY_SQL) as copy:
            copy.set_types([kind for _, kind in STAGED_COLUMNS])
            for row in rows:
                copy.write_row(_staged(row))
        cursor.execute(INSERT_SQL)
        return set(cursor.fetchall())


def usage_ingest(*, user, events: list, project: str | None = None, _retry: bool = False) -> IngestResult:
    """Validate, price and store a batch of usage events; malformed ones are rejected one by one.

    `user` None is the system (the gateway's usage records): every project is writable.
    """
    if not isinstance(events, list):
        raise Rejected("events: give a list of events.")
    if len(events) > settings.ACCOUNTING_MAX_BATCH:
        raise Rejected(f"events: at most {settings.ACCOUNTING_MAX_BATCH} events per request.")
    slugs = {project} if isinstance(project, str) else set()
    for event in events:
        slug = event.get("project", project) if isinstance(event, dict) else None
        if isinstance(slug, str):  # anything else (a list, an object) is that event's own error
            slugs.add(slug)
    ctx = _Context(user, slugs, timezone.now())
    result = IngestResult()
    rows: list[Row] = []
    seen: set[tuple[int, str]] = set()
    for index, event in enumerate(events):
        event_id = _event_id(event)
        try:
            if not event_id or len(event_id) > MAX_ID or "\x00" in event_id:
                raise Rejected(f"id: give an event id of 1–{MAX_ID} characters.")
            row = _row(ctx, event, project)
        except Rejected as exc:
            result.rejected.append({"index": index, "id": event_id or None, "reason": str(exc)})
            continue
        row.event_id = event_id
        key = (row.project_id, event_id)
        if key in seen:
            result.duplicates.append(event_id)
            continue
        seen.add(key)
        rows.append(row)
    _price(rows)
    try:
        with transaction.atomic():
            new = _write(rows)
    except IntegrityError:
        if _retry:
            raise
        # A project of the batch was deleted since it was looked up (its rollups' key refused the batch at commit):
        # once more, so that project's events are rejected one by one and the others stored.
        return usage_ingest(user=user, events=events, project=project, _retry=True)
    for row in rows:
        (result.accepted if (row.project_id, row.event_id) in new else result.duplicates).append(row.event_id)
    return result
