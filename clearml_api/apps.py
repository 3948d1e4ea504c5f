from django.apps import AppConfig


class ClearmlApiConfig(AppConfig):
    name = "clearml_api"
    verbose_name = "ClearML compatibility"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The handlers register themselves with transport's table as they are defined; they
        # import the feature apps' services, which need the app registry, ready only now.
        from clearml_api import endpoints  # noqa: F401, PLC0415
