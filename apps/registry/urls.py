"""Registry pages, under /p/<project>/models/. Models are addressed by name, versions by number.

Page names start with "model-": the registry API routes own the "registry-" names.
"""

from django.urls import include, path, register_converter

from . import views


class ModelNameConverter:
    """The names the registry accepts (services.NAME_RE); anything else does not match, so it is a 404."""

    regex = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class SmallNumberConverter:
    """Version numbers and ids that fit their columns; longer digit strings do not match (404, not a 500)."""

    regex = "[0-9]{1,9}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(value)


class AliasNameConverter(ModelNameConverter):
    """The alias names the registry accepts (services.ALIAS_RE)."""

    regex = "[a-z][a-z0-9_-]{0,63}"


register_converter(ModelNameConverter, "model_name")
register_converter(AliasNameConverter, "alias_name")
register_converter(SmallNumberConverter, "registry_number")

model_patterns = [
    path("", views.model_detail, name="model-detail"),
    path("aliases/", views.alias_set, name="model-alias-set"),
    path("aliases/<alias_name:alias>/delete/", views.alias_delete, name="model-alias-delete"),
    path(
        "promotions/<registry_number:promotion_id>/approve/",
        views.promotion_approve,
        name="model-promotion-approve",
    ),
    path(
        "promotions/<registry_number:promotion_id>/reject/",
        views.promotion_reject,
        name="model-promotion-reject",
    ),
    path("versions/<registry_number:number>/", views.version_detail, name="model-version"),
    path("versions/<registry_number:number>/delete/", views.version_delete, name="model-version-delete"),
]

urlpatterns = [
    path("p/<slug:project_slug>/models/", views.model_list, name="model-list"),
    # "-" cannot start a model name, so this path never shadows a model called "compare".
    path("p/<slug:project_slug>/models/-/compare/", views.version_compare, name="model-compare"),
    path("p/<slug:project_slug>/models/<model_name:model_name>/", include(model_patterns)),
]
