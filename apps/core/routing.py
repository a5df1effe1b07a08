from django.urls import re_path

from apps.deployments.consumers import DeploymentConsumer

from . import consumers

websocket_urlpatterns = [
    re_path(r"^ws/jobs/(?P<job_id>[0-9a-fA-F-]{36})/$", consumers.JobConsumer.as_asgi()),
    re_path(r"^ws/deployments/(?P<deployment_id>[0-9]{1,18})/$", DeploymentConsumer.as_asgi()),
    re_path(r"^ws/projects/(?P<slug>[a-z0-9-]{1,50})/events/$", consumers.ProjectEventsConsumer.as_asgi()),
]
