from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "experiments"

    def ready(self) -> None:
        from actions.services import object_type_register  # app registry: after every app has loaded
        from experiments.models import Experiment

        object_type_register(
            "experiment", lambda pk: Experiment.objects.filter(pk=pk).values_list("name", flat=True).first()
        )
