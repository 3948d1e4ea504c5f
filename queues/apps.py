from django.apps import AppConfig


class QueuesConfig(AppConfig):
    name = "queues"

    def ready(self) -> None:
        # Imported here, not above: models and services need the app registry, ready only now.
        from accounts.services import QUEUE_LIMIT  # noqa: PLC0415
        from actions.services import object_type_register  # noqa: PLC0415
        from queues.access import key_queues_resolve  # noqa: PLC0415
        from queues.models import Queue  # noqa: PLC0415

        QUEUE_LIMIT.rule = key_queues_resolve

        object_type_register("queue", lambda pk: Queue.objects.filter(pk=pk).values_list("name", flat=True).first())
