from django.urls import path
from rest_framework.routers import DefaultRouter

from . import views

app_name = "deployments-api"

router = DefaultRouter(trailing_slash="/?")
router.include_root_view = False
router.register("deployments", views.DeploymentViewSet, basename="deployment")
router.register("accelerators", views.AcceleratorViewSet, basename="accelerator")
router.register("clusters", views.ClusterViewSet, basename="cluster")

urlpatterns = [
    path("deployments/plan", views.PlanView.as_view(), name="deployment-plan"),
    *router.urls,
]
