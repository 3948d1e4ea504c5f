from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"

    def ready(self) -> None:
        # Imported here, not above: models and services need the app registry, which is ready only now.
        from actions.services import object_type_register
        from experiments.fleet import fleet_provide
        from workers.models import Worker
        from workers.services import WorkersFleet

        object_type_register(
            "worker", lambda name: Worker.objects.filter(name=name).values_list("name", flat=True).first()
        )
        fleet_provide(WorkersFleet())
