from django.apps import AppConfig


class AutoscalersConfig(AppConfig):
    name = "autoscalers"

    def ready(self) -> None:
        # Imported here: the services need the app registry, which is ready only now.
        from autoscalers.services import wait_note  # noqa: PLC0415
        from autoscalers.tasks import wake_on_enqueue  # noqa: PLC0415
        from experiments.waitnotes import WAIT_NOTES  # noqa: PLC0415
        from queues.wakeup import ENQUEUE_LISTENERS  # noqa: PLC0415

        if wake_on_enqueue not in ENQUEUE_LISTENERS:  # ready() may run more than once
            ENQUEUE_LISTENERS.append(wake_on_enqueue)
        if wait_note not in WAIT_NOTES:
            WAIT_NOTES.append(wait_note)
