from django.apps import AppConfig


class QueuesConfig(AppConfig):
    name = "queues"

    def ready(self) -> None:
        # Imported here: models and services need the app registry, complete only now.
        from accounts.services import QUEUE_LIMIT
        from actions.services import object_type_register
        from queues.access import key_queues_resolve
        from queues.models import Queue

        QUEUE_LIMIT.rule = key_queues_resolve

        object_type_register("queue", lambda pk: Queue.objects.filter(pk=pk).values_list("name", flat=True).first())
