"""Websockets: live job progress for one job, and a project-wide stream of job updates."""

from __future__ import annotations

import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from .jobs import job_group, job_payload, project_group
from .models import Job, Project
from .permissions import Action, restrict


class _AuthorizedConsumer(AsyncJsonWebsocketConsumer):
    group: str | None = None

    async def connect(self):
        user = self.scope.get("user")
        snapshot = await self.authorize(user) if user is not None and user.is_authenticated else None
        if snapshot is None:
            await self.close(code=4404)  # unknown or not visible: same answer
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json(snapshot)

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def job_update(self, event):
        await self.send_json({"type": "job", "job": event["job"]})

    async def deployment_state(self, event):
        # apps.deployments.states sends revision and replica state changes to the project's group too.
        await self.send_json({"type": "state", "state": event["state"]})


class JobConsumer(_AuthorizedConsumer):
    @database_sync_to_async
    def authorize(self, user):
        try:
            job_id = uuid.UUID(self.scope["url_route"]["kwargs"]["job_id"])
        except ValueError:
            return None
        job = restrict(Job.objects.all(), user, Action.VIEW).filter(pk=job_id).first()
        if job is None:
            return None
        self.group = job_group(job.id)
        return {"type": "job", "job": job_payload(job)}


class ProjectEventsConsumer(_AuthorizedConsumer):
    @database_sync_to_async
    def authorize(self, user):
        slug = self.scope["url_route"]["kwargs"]["slug"]
        project = restrict(Project.objects.all(), user, Action.VIEW).filter(slug=slug).first()
        if project is None:
            return None
        self.group = project_group(project.id)
        return {"type": "hello", "project": project.slug}
