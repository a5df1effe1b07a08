from django.urls import include, path

urlpatterns = [
    path("", include("apps.registry.api.transfer_urls")),
    path("", include("apps.registry.api.metadata_urls")),
]
