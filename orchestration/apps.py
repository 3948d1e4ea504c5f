from django.apps import AppConfig


class OrchestrationConfig(AppConfig):
    name = "orchestration"
    verbose_name = "Accounts and audit"

    def ready(self) -> None:
        from orchestration import schema  # registers the OpenAPI extension

        del schema
