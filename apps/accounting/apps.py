from django.apps import AppConfig


class AccountingConfig(AppConfig):
    name = "apps.accounting"
    label = "accounting"
    verbose_name = "Accounting"

    def ready(self) -> None:
        from . import tasks  # noqa: F401  (registers the accounting job types)
