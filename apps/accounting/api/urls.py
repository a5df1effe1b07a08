from django.urls import path
from rest_framework.routers import DefaultRouter

from . import views

app_name = "accounting-api"

router = DefaultRouter(trailing_slash="/?")
router.include_root_view = False
router.register("prices", views.PriceViewSet, basename="price")
router.register("budgets", views.BudgetViewSet, basename="budget")

urlpatterns = [
    path("usage/events", views.UsageEventViewSet.as_view({"get": "list", "post": "create"}), name="usage-event-list"),
    path("usage/summary.csv", views.UsageSummaryCSVView.as_view(), name="usage-summary-csv"),
    path("usage/summary", views.UsageSummaryView.as_view(), name="usage-summary"),
    path("usage/gpu-cost", views.DeploymentCostViewSet.as_view({"get": "list"}), name="usage-gpu-cost-list"),
    path("settings/<slug:slug>", views.AccountingSettingsView.as_view(), name="accounting-settings"),
    path("tokens/count", views.TokenCountView.as_view(), name="token-count"),
    path("tokens/compare", views.TokenCompareView.as_view(), name="token-compare"),
    *router.urls,
]
