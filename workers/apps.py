from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"

    def ready(self) -> None:
        from actions.services import object_type_register  # app registry: after every app has loaded
        from workers.models import Worker

        object_type_register(
            "worker", lambda name: Worker.objects.filter(name=name).values_list("name", flat=True).first()
        )
