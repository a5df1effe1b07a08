"""Writes for deployments: create, new revisions, traffic (rollout, canary, shadow, promote, rollback), stop.

Traffic only ever goes to ready revisions. A revision's rollout policy is applied when it becomes ready
(`revision_became_ready`); one that fails leaves traffic where it was.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from apps.core import crypto
from apps.core.audit import audit_record, snapshot
from apps.core.models import Project
from apps.core.permissions import Action, check
from apps.core.services import project_secret_set

from .manifests import ManifestError
from .models import Cluster, Deployment, Desired, Replica, Revision, Rollout, State, Target
from .spec import resolve_spec
from .states import transition
from .targets import manifest_for

REVISION_AUDIT_FIELDS = ("number", "model_version_id", "dtype", "accelerator_id", "accelerator_count", "rollout")


def _secret_name(deployment_slug: str, env_name: str) -> str:
    return f"DEPLOY_{deployment_slug.upper().replace('-', '_')}_{env_name.upper()}"[:100]


def _store_secrets(user, project: Project, slug: str, data: dict, values: dict) -> None:
    """New secret values become project secrets (encrypted); the revision keeps only references."""
    refs = dict(values.get("secret_refs") or {})
    for env_name, value in (data.get("secrets") or {}).items():
        secret = project_secret_set(user=user, project=project, name=_secret_name(slug, env_name), value=value)
        refs[env_name] = secret.name
    values["secret_refs"] = refs


def _dry_run_answer(resolved: dict, deployment: Deployment | None, project: Project) -> dict[str, Any]:
    revision_values = resolved["revision"]
    deployment_fields = resolved.get("deployment") or {}
    preview = Revision(**{k: v for k, v in revision_values.items() if k != "encrypted_upstream_key"})
    preview.deployment = deployment or Deployment(project=project, **deployment_fields)
    preview.number = _next_number(deployment) if deployment else 1
    return {
        "dry_run": True,
        "plan": resolved["plan"],
        "manifest": _manifest(preview),
        "revision": {k: _plain(v) for k, v in revision_values.items() if k != "encrypted_upstream_key"},
        "deployment": {k: _plain(v) for k, v in deployment_fields.items()},
    }


def _manifest(revision: Revision) -> str:
    """The revision's InferenceService; a Kubernetes revision must have one, for the others it is informative."""
    if revision.deployment.target == Target.EXTERNAL:
        return ""
    try:
        return manifest_for(revision)
    except ManifestError as exc:
        if revision.deployment.target == Target.KUBERNETES:
            raise ValidationError({"manifest": str(exc)})
        return f"# No KServe manifest for this revision: {exc}\n"


def _plain(value: Any) -> Any:
    if hasattr(value, "pk"):
        return str(value)
    if isinstance(value, dict | list | str | int | bool) or value is None:
        return value
    return str(value)


def _next_number(deployment: Deployment) -> int:
    return (deployment.revisions.aggregate(n=Max("number"))["n"] or 0) + 1


def deployment_create(*, user, project: Project, data: dict) -> Deployment | dict:
    """A deployment and its first revision, started at once. With `dry_run` only the plan and manifest."""
    check(user, Action.DEPLOY, project)
    resolved = resolve_spec(user, project, data)
    if data.get("dry_run"):
        return _dry_run_answer(resolved, None, project)
    with transaction.atomic():
        deployment = Deployment(project=project, created_by=user, **resolved["deployment"])
        deployment.full_clean(exclude=["cluster", "shadow_revision"], validate_unique=False)
        try:
            with transaction.atomic():
                deployment.save()
        except IntegrityError:
            raise ValidationError({"slug": f"A deployment {deployment.slug!r} already exists in this project."})
        audit_record(actor=user, action="deployment.create", obj=deployment, after=snapshot(deployment))
        _revision_save(user, deployment, data, resolved)
    return deployment


def revision_create(*, user, deployment: Deployment, data: dict) -> Revision | dict:
    """A new revision from the latest one's settings plus `data`; it gets traffic by its rollout once ready."""
    check(user, Action.DEPLOY, deployment)
    previous = deployment.revisions.order_by("-number").first()
    resolved = resolve_spec(user, deployment.project, data, previous=previous)
    if data.get("dry_run"):
        return _dry_run_answer(resolved, deployment, deployment.project)
    with transaction.atomic():
        Deployment.objects.select_for_update().get(pk=deployment.pk)
        return _revision_save(user, deployment, data, resolved)


def _revision_save(user, deployment: Deployment, data: dict, resolved: dict) -> Revision:
    values = resolved["revision"]
    _store_secrets(user, deployment.project, deployment.slug, data, values)
    if data.get("upstream_key"):
        values["encrypted_upstream_key"] = crypto.encrypt(data["upstream_key"])
    revision = Revision(deployment=deployment, number=_next_number(deployment), created_by=user, **values)
    revision.plan = resolved["plan"]
    revision.manifest = _manifest(revision)
    revision.save()
    audit_record(
        actor=user,
        action="deployment.revision.create",
        obj=deployment,
        after=snapshot(revision, REVISION_AUDIT_FIELDS),
    )
    transaction.on_commit(lambda: revision_start(revision.pk))
    return revision


# Starting, readiness and traffic -------------------------------------------------------------------------------


def revision_start(revision_id: int) -> None:
    """Bring a revision up on its target: replicas for the local target, an apply job for Kubernetes, a probe
    for external upstreams."""
    from . import tasks

    with transaction.atomic():
        revision = Revision.objects.select_for_update().select_related("deployment").get(pk=revision_id)
        if revision.state not in (State.PENDING, State.STOPPED, State.FAILED):
            return
        target = revision.deployment.target
        transition(revision, State.STARTING, f"starting on the {target} target")
        if target == Target.LOCAL:
            replicas_scale(revision, max(revision.min_replicas, 1))
    if target == Target.KUBERNETES:
        transaction.on_commit(lambda: tasks.revision_apply.delay(revision_id))
    elif target == Target.EXTERNAL:
        transaction.on_commit(lambda: tasks.revision_probe.delay(revision_id))


def replicas_scale(revision: Revision, count: int) -> None:
    """Make `count` replicas desired-running (creating rows as needed) and stop the ones above it."""
    existing = {r.index: r for r in revision.replicas.select_for_update()}
    for index in range(count):
        replica = existing.get(index) or Replica.objects.create(revision=revision, index=index)
        if replica.desired != Desired.RUNNING:
            replica.desired = Desired.RUNNING
            replica.next_start_at = None
            replica.save(update_fields=["desired", "next_start_at", "updated_at"])
            if replica.state in (State.STOPPED, State.FAILED):
                transition(replica, State.PENDING, "scaled up", restarts=0)
    for index, replica in existing.items():
        if index >= count and replica.desired != Desired.STOPPED:
            replica.desired = Desired.STOPPED
            replica.save(update_fields=["desired", "updated_at"])


def _serving(deployment: Deployment, exclude: Revision | None = None):
    qs = deployment.revisions.filter(state=State.READY, weight__gt=0)
    return qs.exclude(pk=exclude.pk) if exclude else qs


def revision_became_ready(revision: Revision) -> None:
    """Apply the revision's rollout policy. Called inside a transaction by the supervisor or the target's job."""
    deployment = Deployment.objects.select_for_update().get(pk=revision.deployment_id)
    transition(revision, State.READY, "ready")
    others = list(_serving(deployment, exclude=revision).select_for_update())
    if revision.promote_on_ready or not others or revision.rollout == Rollout.ALL_AT_ONCE:
        _take_all(deployment, revision, reason="rolled out" if not revision.promote_on_ready else "rolled back")
    elif revision.rollout == Rollout.CANARY:
        _set_weights(
            deployment, {revision.pk: revision.canary_weight, **_rescaled(others, 100 - revision.canary_weight)}
        )
    elif revision.rollout == Rollout.SHADOW:
        deployment.shadow_revision = revision
        deployment.shadow_percent = revision.shadow_percent or 100
        deployment.save(update_fields=["shadow_revision", "shadow_percent", "updated_at"])
    if revision.promote_on_ready:
        revision.promote_on_ready = False
        revision.save(update_fields=["promote_on_ready"])


def _rescaled(revisions: list[Revision], total: int) -> dict[int, int]:
    """Share `total` percent over revisions in proportion to their current weights (largest remainder)."""
    current = sum(r.weight for r in revisions) or 1
    shares = {r.pk: r.weight * total / current for r in revisions}
    weights = {pk: int(share) for pk, share in shares.items()}
    leftover = total - sum(weights.values())
    for pk in sorted(shares, key=lambda pk: shares[pk] - weights[pk], reverse=True)[:leftover]:
        weights[pk] += 1
    return weights


def _set_weights(deployment: Deployment, weights: dict[int, int]) -> None:
    """Give each listed revision its weight and every other revision 0; revisions left without traffic drain."""
    for revision in deployment.revisions.select_for_update():
        weight = weights.get(revision.pk, 0)
        if weight == revision.weight:
            continue
        had_traffic = revision.weight > 0
        revision.weight = weight
        revision.save(update_fields=["weight"])
        if had_traffic and weight == 0 and revision.state == State.READY and revision != deployment.shadow_revision:
            transition(revision, State.DRAINING, "no traffic: draining in-flight requests")
        elif weight > 0 and revision.state == State.DRAINING:
            transition(revision, State.READY, "traffic restored")


def _take_all(deployment: Deployment, revision: Revision, *, reason: str) -> None:
    _set_weights(deployment, {revision.pk: 100})
    if deployment.shadow_revision_id == revision.pk:
        deployment.shadow_revision, deployment.shadow_percent = None, 0
        deployment.save(update_fields=["shadow_revision", "shadow_percent", "updated_at"])


def revision_failed(revision: Revision, reason: str) -> None:
    """A revision that cannot start: its replicas stop and traffic stays where it was."""
    transition(revision, State.FAILED, reason)
    revision.replicas.update(desired=Desired.STOPPED, updated_at=timezone.now())
    deployment = revision.deployment
    if deployment.shadow_revision_id == revision.pk:
        deployment.shadow_revision, deployment.shadow_percent = None, 0
        deployment.save(update_fields=["shadow_revision", "shadow_percent", "updated_at"])


def traffic_set(
    *, user, deployment: Deployment, weights: dict[int, int], shadow: int | None = None, shadow_percent: int = 0
) -> Deployment:
    """Split traffic by revision number. Only ready (or draining) revisions may get traffic; weights sum to 100."""
    check(user, Action.DEPLOY, deployment)
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
        before = _traffic_snapshot(deployment)
        revisions = {r.number: r for r in deployment.revisions.all()}
        errors = []
        for number, weight in weights.items():
            revision = revisions.get(number)
            if revision is None:
                errors.append(f"No revision {number}.")
            elif weight > 0 and revision.state not in (State.READY, State.DRAINING):
                errors.append(f"Revision {number} is {revision.state}; only ready revisions get traffic.")
        if sum(weights.values()) != 100:
            errors.append(f"Weights must add up to 100 (they add up to {sum(weights.values())}).")
        shadow_revision = None
        if shadow is not None:
            shadow_revision = revisions.get(shadow)
            if shadow_revision is None or shadow_revision.state != State.READY:
                errors.append(f"Shadow revision {shadow} is not ready.")
            elif weights.get(shadow, 0) > 0:
                errors.append("A revision cannot both serve and shadow.")
        if errors:
            raise ValidationError({"weights": errors})
        deployment.shadow_revision = shadow_revision
        deployment.shadow_percent = shadow_percent if shadow_revision else 0
        deployment.save(update_fields=["shadow_revision", "shadow_percent", "updated_at"])
        _set_weights(deployment, {revisions[n].pk: w for n, w in weights.items() if w > 0})
        audit_record(
            actor=user, action="deployment.traffic", obj=deployment, before=before, after=_traffic_snapshot(deployment)
        )
    return deployment


def _traffic_snapshot(deployment: Deployment) -> dict[str, Any]:
    weights = {str(r.number): r.weight for r in deployment.revisions.filter(weight__gt=0).order_by("number")}
    shadow = deployment.shadow_revision.number if deployment.shadow_revision_id else None
    return {"weights": weights, "shadow": shadow, "shadow_percent": deployment.shadow_percent}


def revision_promote(*, user, revision: Revision) -> Revision:
    """Send all traffic to a ready revision (the end of a canary or a manual rollout)."""
    check(user, Action.DEPLOY, revision.deployment)
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=revision.deployment_id)
        revision = Revision.objects.select_for_update().get(pk=revision.pk)
        if revision.state not in (State.READY, State.DRAINING):
            raise ValidationError({"revision": f"Revision {revision.number} is {revision.state}, not ready."})
        before = _traffic_snapshot(deployment)
        _take_all(deployment, revision, reason="promoted")
        audit_record(
            actor=user, action="deployment.promote", obj=deployment, before=before, after=_traffic_snapshot(deployment)
        )
    return revision


def deployment_rollback(*, user, deployment: Deployment) -> Revision:
    """Return all traffic to the previous revision that was ready; restart it first if it was stopped."""
    check(user, Action.DEPLOY, deployment)
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
        serving = list(_serving(deployment))
        newest_serving = max((r.number for r in serving), default=None)
        candidates = deployment.revisions.filter(ready_at__isnull=False).exclude(state=State.FAILED)
        if newest_serving is not None:
            candidates = candidates.filter(number__lt=newest_serving)
        previous = candidates.order_by("-number").first()
        if previous is None:
            raise ValidationError({"deployment": "There is no earlier ready revision to roll back to."})
        before = _traffic_snapshot(deployment)
        if previous.state in (State.READY, State.DRAINING):
            if previous.state == State.DRAINING:
                transition(previous, State.READY, "rollback")
            _take_all(deployment, previous, reason="rolled back")
        else:
            previous.promote_on_ready = True
            previous.save(update_fields=["promote_on_ready"])
            transaction.on_commit(lambda: revision_start(previous.pk))
        audit_record(
            actor=user,
            action="deployment.rollback",
            obj=deployment,
            before=before,
            after={**_traffic_snapshot(deployment), "rollback_to": previous.number},
        )
    return previous


def deployment_stop(*, user, deployment: Deployment) -> Deployment:
    """Stop every revision; traffic is answered 503 until a revision is started again."""
    check(user, Action.DEPLOY, deployment)
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
        _stop_all(deployment, "deployment stopped")
        audit_record(actor=user, action="deployment.stop", obj=deployment)
    return deployment


def _stop_all(deployment: Deployment, reason: str) -> None:
    deployment.revisions.update(weight=0)
    for revision in deployment.revisions.exclude(state__in=[State.STOPPED, State.FAILED]):
        revision.weight = 0
        transition(revision, State.DRAINING if revision.state == State.READY else State.STOPPED, reason)
    deployment.shadow_revision, deployment.shadow_percent = None, 0
    deployment.save(update_fields=["shadow_revision", "shadow_percent", "updated_at"])


def revision_restart(*, user, revision: Revision) -> Revision:
    """Start a stopped or failed revision again (it gets traffic by its rollout policy once ready)."""
    check(user, Action.DEPLOY, revision.deployment)
    if revision.state not in (State.STOPPED, State.FAILED):
        raise ValidationError(
            {
                "revision": f"Revision {revision.number} is {revision.state}; only stopped or failed "
                "revisions start again."
            }
        )
    with transaction.atomic():
        revision = Revision.objects.select_for_update().select_related("deployment").get(pk=revision.pk)
        transition(revision, State.STOPPED, "restart requested")  # failed → stopped → starting
        audit_record(
            actor=user,
            action="deployment.revision.restart",
            obj=revision.deployment,
            after={"revision": revision.number},
        )
        transaction.on_commit(lambda: revision_start(revision.pk))
    return revision


def deployment_delete(*, user, deployment: Deployment) -> None:
    check(user, Action.DELETE, deployment)
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
        _stop_all(deployment, "deployment deleted")
        Replica.objects.filter(revision__deployment=deployment).update(desired=Desired.STOPPED)
        deployment.deleted_at = timezone.now()
        deployment.save(update_fields=["deleted_at", "updated_at"])
        audit_record(actor=user, action="deployment.delete", obj=deployment, before=snapshot(deployment))


def cluster_create(*, user, project: Project, name: str, namespace: str, kubeconfig: str) -> Cluster:
    check(user, Action.MANAGE, project)
    if not kubeconfig.strip() or len(kubeconfig) > 200_000:
        raise ValidationError({"kubeconfig": "Paste a kubeconfig (at most 200 kB)."})
    cluster = Cluster(
        project=project,
        name=name,
        namespace=namespace,
        encrypted_kubeconfig=crypto.encrypt(kubeconfig),
        created_by=user,
    )
    cluster.full_clean(validate_unique=False)
    try:
        with transaction.atomic():
            cluster.save()
            audit_record(actor=user, action="cluster.create", obj=cluster, after={"name": name, "namespace": namespace})
    except IntegrityError:
        raise ValidationError({"name": f"A cluster {name!r} already exists in this project."})
    return cluster


def revision_wake(revision_id: int) -> bool:
    """Start a replica of a scaled-to-zero revision (the gateway calls this on the first request)."""
    with transaction.atomic():
        revision = Revision.objects.select_for_update().filter(pk=revision_id, state=State.READY).first()
        if revision is None or revision.replicas.filter(desired=Desired.RUNNING).exists():
            return False
        replicas_scale(revision, max(revision.min_replicas, 1))
        revision.last_request_at = timezone.now()
        revision.save(update_fields=["last_request_at"])
    return True


def drain_seconds() -> int:
    return settings.DEPLOYMENT_DRAIN_SECONDS


def cluster_delete(*, user, cluster: Cluster) -> None:
    check(user, Action.MANAGE, cluster.project)
    if cluster.deployments.filter(deleted_at__isnull=True).exists():
        raise ValidationError({"cluster": "Deployments still use this cluster; delete them first."})
    with transaction.atomic():
        audit_record(actor=user, action="cluster.delete", obj=cluster, before={"name": cluster.name})
        cluster.delete()
