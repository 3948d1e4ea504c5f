from django.apps import AppConfig


class WorkersConfig(AppConfig):
    name = "workers"

    def ready(self) -> None:
        # Imported here, not above: models and services need the app registry, which is ready only now.
        from actions.services import object_type_register  # noqa: PLC0415
        from experiments.fleet import fleet_provide  # noqa: PLC0415
        from workers.models import Worker  # noqa: PLC0415
        from workers.services import WorkersFleet  # noqa: PLC0415

        object_type_register(
            "worker", lambda name: Worker.objects.filter(name=name).values_list("name", flat=True).first()
        )
        fleet_provide(WorkersFleet())
