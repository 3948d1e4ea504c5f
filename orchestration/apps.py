from django.apps import AppConfig


class OrchestrationConfig(AppConfig):
    name = "orchestration"
    verbose_name = "Orchestration"

    def ready(self) -> None:
        # Imported for their side effect: registering the system checks and the OpenAPI extension.
        from orchestration import checks, schema  # noqa: PLC0415

        del checks, schema
