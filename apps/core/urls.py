from django.contrib.auth import views as auth_views
from django.urls import include, path, register_converter

from . import views


class DatabaseIdConverter:
    """Positive ids that fit a bigint column; longer digit strings do not match, so they are a 404, not a 500."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(DatabaseIdConverter, "id")

project_patterns = [
    path("", views.project_home, name="project-home"),
    path("jobs/", views.job_list, name="job-list"),
    path("jobs/device-check/", views.job_device_check, name="job-device-check"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job-detail"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<uuid:job_id>/retry/", views.job_retry, name="job-retry"),
    path("members/", views.member_list, name="member-list"),
    path("members/add/", views.member_add, name="member-add"),
    path("members/<id:membership_id>/role/", views.member_update, name="member-update"),
    path("members/<id:membership_id>/remove/", views.member_remove, name="member-remove"),
    path("audit/", views.audit_list, name="audit-list"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("switch/", views.project_switch, name="project-switch"),
    path("tokens/", views.token_list, name="token-list"),
    path("tokens/<id:token_id>/revoke/", views.token_revoke, name="token-revoke"),
    path("workers/", views.worker_list, name="worker-list"),
    path("p/<slug:project_slug>/", include(project_patterns)),
]
