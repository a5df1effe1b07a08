from rest_framework.routers import DefaultRouter

from . import views

# Namespaced: the HTML pages use the same plain names (token-list, job-detail, ...), which would shadow these.
app_name = "core-api"

router = DefaultRouter(trailing_slash="/?")
router.register("organizations", views.OrganizationViewSet, basename="organization")
router.register("projects", views.ProjectViewSet, basename="project")
router.register("memberships", views.MembershipViewSet, basename="membership")
router.register("teams", views.TeamViewSet, basename="team")
router.register("service-accounts", views.ServiceAccountViewSet, basename="service-account")
router.register("secrets", views.ProjectSecretViewSet, basename="secret")
router.register("tokens", views.ApiTokenViewSet, basename="token")
router.register("audit-events", views.AuditEventViewSet, basename="audit-event")
router.register("jobs", views.JobViewSet, basename="job")
router.register("workers", views.WorkerViewSet, basename="worker")

urlpatterns = router.urls
