"""Custom actions: context-menu items on queues, workers and experiments."""

from __future__ import annotations

from django.db import models


class CustomAction(models.Model):
    """A context-menu item on queues, workers or experiments that issues an HTTP request.

    `${id}` and `${name}` in the URL, payload and headers are replaced by the object's, each
    escaped for where it lands. Without a secret the browser issues the request; with one the
    server does, and only to hosts in CUSTOM_ACTION_HOSTS, so the secret never reaches a page.
    """

    class ObjectType(models.TextChoices):
        QUEUE = "queue", "Queue"
        WORKER = "worker", "Worker"
        EXPERIMENT = "experiment", "Experiment"

    class Method(models.TextChoices):
        GET = "GET", "GET"
        POST = "POST", "POST"
        PUT = "PUT", "PUT"
        PATCH = "PATCH", "PATCH"
        DELETE = "DELETE", "DELETE"

    object_type = models.CharField(max_length=20, choices=ObjectType.choices)
    name = models.CharField(max_length=100, help_text="the label in the context menu")
    tooltip = models.CharField(max_length=300, blank=True)
    method = models.CharField(max_length=10, choices=Method.choices, default=Method.POST)
    url = models.CharField(max_length=2000, help_text="http(s) URL; ${id} and ${name} are replaced")
    payload = models.TextField(blank=True, help_text="request body; ${id} and ${name} are replaced")
    headers = models.JSONField(default=dict, blank=True, help_text='{"Header": "value"}; ${secret} is the secret')
    secret_ciphertext = models.TextField(blank=True, editable=False)
    confirm = models.BooleanField(default=False, help_text="ask before issuing it")
    roles = models.JSONField(default=list, blank=True, help_text='who sees it: ["admin", "user"]; empty: everyone')
    from_file = models.BooleanField(default=False, editable=False, help_text="synced from CUSTOM_ACTIONS_FILE")
    order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["object_type", "order", "name"]
        constraints = [models.UniqueConstraint(fields=["object_type", "name"], name="custom_action_unique_name")]

    def __str__(self) -> str:
        return f"{self.object_type}: {self.name}"

    @property
    def via_server(self) -> bool:
        return bool(self.secret_ciphertext)
