"""Registry metadata routes under /api/v1/registry/: models, versions (lineage, compare), aliases, promotions."""

from rest_framework.routers import SimpleRouter

from . import views

# A SimpleRouter: no API root view, which would clash with the transfer routes mounted at the same prefix.
router = SimpleRouter(trailing_slash="/?")
router.register("models", views.RegisteredModelViewSet, basename="registry-model")
router.register("versions", views.ModelVersionViewSet, basename="registry-version")
router.register("promotions", views.PromotionViewSet, basename="registry-promotion")

urlpatterns = router.urls
