"""Reads for the registry. Every list is narrowed by the permissions module, and related rows a user may not see
(a parent version in a restricted model, say) are left out of what a visible object shows.

List querysets carry their related rows with select_related/prefetch_related and counts as subqueries, so the
number of SQL queries per page does not grow with the rows on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.db.models import Count, IntegerField, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.functions import Coalesce

from apps.core.permissions import Action, restrict

from .ingest import file_blocks
from .models import Alias, Lineage, ModelVersion, Promotion, RegisteredModel, VersionFile

LINEAGE_MAX_NODES = 200
CONFIG_MAX_BYTES = 1024 * 1024


def _live_versions():
    return ModelVersion.objects.filter(model_id=OuterRef("pk"), deleted_at__isnull=True)


def registered_model_list(*, user, action: Action = Action.VIEW) -> QuerySet[RegisteredModel]:
    """Models with `version_count`, `latest_number` (live versions only) and their aliases prefetched."""
    count = _live_versions().order_by().values("model_id").annotate(n=Count("pk")).values("n")
    latest = _live_versions().order_by("-number").values("number")[:1]
    queryset = (
        RegisteredModel.objects.select_related("project", "owner")
        .annotate(
            version_count=Coalesce(Subquery(count, output_field=IntegerField()), 0),
            latest_number=Subquery(latest, output_field=IntegerField()),
        )
        .prefetch_related(Prefetch("aliases", queryset=Alias.objects.select_related("version").order_by("name")))
    )
    return restrict(queryset, user, action)


def _visible_model_ids(*, user, action: Action = Action.VIEW) -> QuerySet:
    """Ids of the models the user may take `action` on.

    A version allows an action exactly when its model does (ModelVersion takes its project, restricted flag and
    grants from the model), so versions are narrowed by `model_id IN (these)`: the same rule as restricting the
    versions themselves, but checked on the few hundred models instead of every version, which lets PostgreSQL
    read the newest versions by index and stop at the page.
    """
    return restrict(RegisteredModel.objects.all(), user, action).values("pk")


def visible_versions(*, user) -> QuerySet[ModelVersion]:
    return ModelVersion.objects.filter(model__in=_visible_model_ids(user=user))


def model_version_list(*, user, action: Action = Action.VIEW) -> QuerySet[ModelVersion]:
    """Versions with their model, aliases, and the parents and children the user may see.

    Soft-deleted versions are included; the version filter set hides them unless asked.
    """
    visible = _visible_model_ids(user=user)
    queryset = ModelVersion.objects.select_related("model__project", "created_by").prefetch_related(
        Prefetch("aliases", queryset=Alias.objects.order_by("name")),
        Prefetch(
            "parent_links",
            queryset=Lineage.objects.filter(parent__model__in=visible)
            .select_related("parent__model__project")
            .order_by("id"),
            to_attr="visible_parent_links",
        ),
        Prefetch(
            "child_links",
            queryset=Lineage.objects.filter(child__model__in=visible)
            .select_related("child__model__project")
            .order_by("id"),
            to_attr="visible_child_links",
        ),
    )
    return queryset.filter(model__in=_visible_model_ids(user=user, action=action))


def version_files(*, version: ModelVersion) -> QuerySet[VersionFile]:
    return version.files.order_by("path").only("id", "version_id", "path", "size", "sha256")


def promotion_list(*, user) -> QuerySet[Promotion]:
    """Alias moves of the models the user may see: a restricted model's history is as hidden as the model."""
    return Promotion.objects.select_related(
        "model__project", "from_version", "to_version", "requested_by", "decided_by"
    ).filter(model__in=_visible_model_ids(user=user))


def version_by_number(*, user, model: RegisteredModel, number: int) -> ModelVersion | None:
    return model_version_list(user=user).filter(model=model, number=number).first()


# Lineage -------------------------------------------------------------------------------------------------------


@dataclass
class LineageGraph:
    """Ancestors and descendants of one version, as far as the user can see them.

    `depth` of a node: negative for ancestors (-1 = parent), 0 for the version itself, positive for descendants.
    """

    root: ModelVersion
    nodes: dict[int, ModelVersion] = field(default_factory=dict)
    depth: dict[int, int] = field(default_factory=dict)
    edges: list[Lineage] = field(default_factory=list)
    truncated: bool = False

    def as_dict(self) -> dict:
        nodes = sorted(self.nodes.values(), key=lambda v: (self.depth[v.pk], v.model.name, v.number))
        return {
            "root": self.root.pk,
            "nodes": [
                {
                    "id": v.pk,
                    "model_id": v.model_id,
                    "model": v.model.name,
                    "project": v.model.project.slug,
                    "number": v.number,
                    "status": v.status,
                    "depth": self.depth[v.pk],
                }
                for v in nodes
            ],
            "edges": [{"parent": e.parent_id, "child": e.child_id, "relation": e.relation} for e in self.edges],
            "truncated": self.truncated,
        }


def lineage_graph(*, user, version: ModelVersion, max_nodes: int = LINEAGE_MAX_NODES) -> LineageGraph:
    """Walk parent links up and child links down, one query per generation, only through visible versions."""
    graph = LineageGraph(root=version, nodes={version.pk: version}, depth={version.pk: 0})
    visible = _visible_model_ids(user=user)
    seen_edges: set[int] = set()
    for upward in (True, False):
        step = -1 if upward else 1
        frontier = [version.pk]
        while frontier and not graph.truncated:
            if upward:
                links = Lineage.objects.filter(child_id__in=frontier, parent__model__in=visible).select_related(
                    "parent__model__project"
                )
            else:
                links = Lineage.objects.filter(parent_id__in=frontier, child__model__in=visible).select_related(
                    "child__model__project"
                )
            found = []
            for link in links.order_by("id"):
                if link.pk not in seen_edges:
                    seen_edges.add(link.pk)
                    graph.edges.append(link)
                other = link.parent if upward else link.child
                if other.pk in graph.nodes:
                    continue
                if len(graph.nodes) >= max_nodes:
                    graph.truncated = True
                    break
                graph.nodes[other.pk] = other
                graph.depth[other.pk] = graph.depth[link.child_id if upward else link.parent_id] + step
                found.append(other.pk)
            frontier = found
    graph.edges = [e for e in graph.edges if e.parent_id in graph.nodes and e.child_id in graph.nodes]
    return graph


# Compare -------------------------------------------------------------------------------------------------------


def _flatten(value, prefix: str = "") -> dict[str, object]:
    """Nested dicts as dotted keys, so a diff names the exact setting that changed."""
    if isinstance(value, dict) and value:
        flat: dict[str, object] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _changes(a: dict, b: dict) -> list[dict]:
    missing = object()
    rows = []
    for key in sorted(set(a) | set(b)):
        left, right = a.get(key, missing), b.get(key, missing)
        if left != right:
            rows.append({"key": key, "a": None if left is missing else left, "b": None if right is missing else right})
    return rows


def read_config(version: ModelVersion) -> tuple[dict | None, str]:
    """config.json of the version, parsed, and why not when it cannot be (missing, too large, not JSON)."""
    config_file = version.files.filter(path="config.json").first()
    if config_file is None:
        return None, "no config.json"
    if config_file.size > CONFIG_MAX_BYTES:
        return None, f"config.json is larger than {CONFIG_MAX_BYTES // 1024} KiB"
    try:
        value = json.loads(b"".join(file_blocks(config_file)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, "config.json is not valid JSON"
    if not isinstance(value, dict):
        return None, "config.json is not a JSON object"
    return value, ""


def version_compare(*, a: ModelVersion, b: ModelVersion) -> dict:
    """Differences between two versions: metadata, config.json settings, files by sha256, size and parameters."""
    config_a, why_a = read_config(a)
    config_b, why_b = read_config(b)
    files_a = {f.path: f for f in version_files(version=a)}
    files_b = {f.path: f for f in version_files(version=b)}
    changed = [
        {
            "path": path,
            "a_size": files_a[path].size,
            "b_size": files_b[path].size,
            "a_sha256": files_a[path].sha256,
            "b_sha256": files_b[path].sha256,
        }
        for path in sorted(files_a.keys() & files_b.keys())
        if files_a[path].sha256 != files_b[path].sha256
    ]

    def entry(f: VersionFile) -> dict:
        return {"path": f.path, "size": f.size, "sha256": f.sha256}

    metadata_rows = []
    for key in sorted(set(a.metadata) | set(b.metadata)):
        left, right = a.metadata.get(key), b.metadata.get(key)
        metadata_rows.append({"key": key, "a": left, "b": right, "changed": left != right})
    return {
        "a": a,
        "b": b,
        "metadata": metadata_rows,
        "config": {
            "compared": config_a is not None and config_b is not None,
            "a_note": why_a,
            "b_note": why_b,
            "changes": _changes(_flatten(config_a), _flatten(config_b))
            if config_a is not None and config_b is not None
            else [],
        },
        "files": {
            "added": [entry(files_b[p]) for p in sorted(files_b.keys() - files_a.keys())],
            "removed": [entry(files_a[p]) for p in sorted(files_a.keys() - files_b.keys())],
            "changed": changed,
            "unchanged": sum(1 for p in files_a.keys() & files_b.keys() if files_a[p].sha256 == files_b[p].sha256),
        },
        "size": {"a": a.total_size, "b": b.total_size, "difference": b.total_size - a.total_size},
        "parameters": {
            "a": a.parameter_count,
            "b": b.parameter_count,
            "difference": (
                b.parameter_count - a.parameter_count
                if a.parameter_count is not None and b.parameter_count is not None
                else None
            ),
        },
    }
