"""Deployment pages, under /p/<project>/deployments/. Deployments are addressed by id: a slug such as "new" is a
valid deployment slug and would otherwise collide with the wizard's path.

Page names start with "deployment-" or "revision-"; the API's names live in the "deployments-api" namespace.
"""

from django.urls import include, path, register_converter

from . import views


class WizardStepConverter:
    """The wizard's step names; anything else does not match (404)."""

    regex = "|".join(views.STEPS)

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class DeploymentIdConverter:
    """Ids that fit the column; longer digit strings do not match (404, not a 500)."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


register_converter(WizardStepConverter, "wizard_step")
register_converter(DeploymentIdConverter, "deployment_id")

deployment_patterns = [
    path("", views.deployment_detail, name="deployment-detail"),
    path("traffic/", views.deployment_traffic, name="deployment-traffic"),
    path("promote/", views.revision_promote, name="revision-promote"),
    path("restart/", views.revision_restart, name="revision-restart"),
    path("rollback/", views.deployment_rollback, name="deployment-rollback"),
    path("stop/", views.deployment_stop, name="deployment-stop"),
    path("revisions/new/", views.wizard_start, name="revision-wizard-start"),
    path("revisions/new/plan/", views.wizard_plan, name="revision-wizard-plan"),
    path("revisions/new/discard/", views.wizard_discard, name="revision-wizard-discard"),
    path("revisions/new/<wizard_step:step>/", views.wizard_step, name="revision-wizard"),
]

urlpatterns = [
    path("p/<slug:project_slug>/deployments/", views.deployment_list, name="deployment-list"),
    path("p/<slug:project_slug>/deployments/new/", views.wizard_start, name="deployment-wizard-start"),
    path("p/<slug:project_slug>/deployments/new/plan/", views.wizard_plan, name="deployment-wizard-plan"),
    path("p/<slug:project_slug>/deployments/new/discard/", views.wizard_discard, name="deployment-wizard-discard"),
    path("p/<slug:project_slug>/deployments/new/<wizard_step:step>/", views.wizard_step, name="deployment-wizard"),
    path("p/<slug:project_slug>/deployments/<deployment_id:deployment_id>/", include(deployment_patterns)),
]
