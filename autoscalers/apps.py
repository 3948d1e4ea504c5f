from django.apps import AppConfig


class AutoscalersConfig(AppConfig):
    name = "autoscalers"
