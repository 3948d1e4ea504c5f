from django.apps import AppConfig


class ClearmlApiConfig(AppConfig):
    name = "clearml_api"
    verbose_name = "ClearML compatibility"
    default_auto_field = "django.db.models.BigAutoField"
