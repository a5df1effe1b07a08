"""Websockets: the live state of one deployment (its revisions and replicas), for the deployment page's timeline."""

from __future__ import annotations

from channels.db import database_sync_to_async

from apps.core.consumers import _AuthorizedConsumer
from apps.core.permissions import Action, restrict

from .models import Deployment
from .states import deployment_group


class DeploymentConsumer(_AuthorizedConsumer):
    """`/ws/deployments/<id>/`: every state change of the deployment as {"type": "state", "state": {...}}.

    Closes with 4404 when the deployment is unknown, deleted or not visible to the user (the same answer).
    """

    @database_sync_to_async
    def authorize(self, user):
        deployment_id = int(self.scope["url_route"]["kwargs"]["deployment_id"])
        visible = restrict(Deployment.objects.filter(deleted_at__isnull=True), user, Action.VIEW)
        deployment = visible.filter(pk=deployment_id).first()
        if deployment is None:
            return None
        self.group = deployment_group(deployment.pk)
        return {"type": "hello", "deployment": deployment.pk}
