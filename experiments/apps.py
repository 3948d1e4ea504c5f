from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "experiments"

    def ready(self) -> None:
        # Imported here, not above: models and services need the app registry, ready only now.
        from actions.services import object_type_register  # noqa: PLC0415
        from experiments.models import Experiment  # noqa: PLC0415

        object_type_register(
            "experiment", lambda pk: Experiment.objects.filter(pk=pk).values_list("name", flat=True).first()
        )
