from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/registry/", include("apps.registry.api.urls")),
    path("api/v1/accounting/", include("apps.accounting.api.urls")),
    path("api/v1/", include("apps.deployments.api.urls")),
    path("api/v1/", include("apps.core.api.urls")),
    path("", include("apps.registry.urls")),
    path("", include("apps.deployments.urls")),
    path("", include("apps.accounting.urls")),
    path("", include("apps.core.urls")),
]

handler404 = "apps.core.views.not_found"
handler500 = "apps.core.views.server_error"
