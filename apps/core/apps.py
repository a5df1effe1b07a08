from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "apps.core"
    label = "core"
    verbose_name = "Core: tenancy, access, audit, jobs"

    def ready(self) -> None:
        from . import tasks  # noqa: F401  (registers the core job types)
