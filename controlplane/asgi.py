"""ASGI entry point: the gateway for /v1 and /v2, Django for the rest of HTTP, Channels for websockets."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings.dev")
os.environ.setdefault("DATABASE_POOL", "1")  # see DATABASES in settings/base.py
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from apps.core.routing import websocket_urlpatterns  # noqa: E402
from apps.deployments.gateway.app import Gateway  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": Gateway(fallback=django_asgi_app),  # /v1 and /v2 go to the gateway
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
# What is loaded by now lives as long as the process: keep it out of the collector's full passes, which would
# otherwise walk all of it (~150k objects, 100+ ms) every few dozen large requests (a batch of usage events).
gc.freeze()
