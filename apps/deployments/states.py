"""The state machine of revisions and replicas: pending → starting → ready → draining → stopped, or failed.

Every change is kept as a StateEvent (the timeline on the deployment page, and the running time that GPU-hour
cost is computed from) and pushed to the project's live stream and the deployment's own group.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.utils import timezone

from apps.core.jobs import project_group

from .models import Replica, Revision, State, StateEvent

logger = logging.getLogger(__name__)

# Allowed moves. Any state may fail or be stopped; a stopped or failed one may start again (restart, rollback).
TRANSITIONS: dict[str, set[str]] = {
    State.PENDING: {State.STARTING, State.READY, State.STOPPED, State.FAILED},
    State.STARTING: {State.READY, State.STARTING, State.DRAINING, State.STOPPED, State.FAILED},
    State.READY: {State.STARTING, State.DRAINING, State.STOPPED, State.FAILED},
    State.DRAINING: {State.STOPPED, State.READY, State.FAILED},
    State.STOPPED: {State.PENDING, State.STARTING},
    State.FAILED: {State.PENDING, State.STARTING, State.STOPPED},
}


class TransitionError(ValueError):
    pass


def deployment_group(deployment_id) -> str:
    return f"deployment.{deployment_id}"


def _payload(subject: Revision | Replica, event: StateEvent) -> dict[str, Any]:
    payload = {
        "deployment": event.deployment_id,
        "revision": event.revision_id,
        "replica": event.replica_id,
        "state": event.state,
        "reason": event.reason,
        "time": event.time.isoformat(),
    }
    if isinstance(subject, Revision):
        payload["weight"] = subject.weight
    return payload


def _broadcast(project_id: int, deployment_id: int, payload: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    event = {"type": "deployment.state", "state": payload}
    try:
        async_to_sync(layer.group_send)(deployment_group(deployment_id), event)
        async_to_sync(layer.group_send)(project_group(project_id), event)
    except Exception:  # the stored state is the truth; the live push is best effort
        logger.warning("Could not push state of deployment %s", deployment_id, exc_info=True)


def transition(subject: Revision | Replica, state: str, reason: str = "", **fields: Any) -> bool:
    """Move a revision or replica to `state`, record it and push it live. False when it already was there."""
    if subject.state == state and state != State.STARTING:
        return False
    if state not in TRANSITIONS[subject.state]:
        raise TransitionError(f"{subject} cannot go from {subject.state} to {state}.")
    now = timezone.now()
    subject.state, subject.state_reason = state, reason[:2000]
    for name, value in fields.items():
        setattr(subject, name, value)
    if state == State.READY and not subject.ready_at:
        subject.ready_at = now
    extra = ["updated_at"] if isinstance(subject, Replica) else []
    subject.save(update_fields=["state", "state_reason", "ready_at", *extra, *fields])
    revision = subject if isinstance(subject, Revision) else subject.revision
    event = StateEvent.objects.create(
        deployment_id=revision.deployment_id,
        revision=revision,
        replica=subject if isinstance(subject, Replica) else None,
        state=state,
        reason=reason[:2000],
        time=now,
    )
    project_id = revision.deployment.project_id
    payload = _payload(subject, event)
    transaction.on_commit(lambda: _broadcast(project_id, revision.deployment_id, payload))
    return True
