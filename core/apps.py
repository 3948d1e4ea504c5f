from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The kernel every app builds on: errors, the retrying transaction, the audit trail, settings parsing."""

    name = "core"
    verbose_name = "Audit trail"
