"""The kernel's tables: the audit trail, and the server's heartbeat."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEvent(models.Model):
    """One state change: who did what to which object, with the state before and after."""

    at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_label = models.CharField(max_length=200, blank=True)
    object_type = models.CharField(max_length=40)
    object_id = models.CharField(max_length=200)
    action = models.CharField(max_length=60)
    before = models.JSONField(default=dict, blank=True)
    after = models.JSONField(default=dict, blank=True)
    message = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            # The audit list of one object ("history of this experiment").
            models.Index(fields=["object_type", "object_id", "at"], name="audit_object_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.object_type}:{self.object_id} {self.action}"


class ServiceBeat(models.Model):
    """When a long-running service (the API server) last said it was alive, and since when it is up.

    Liveness verdicts need it: while the server is away no agent can report, so silence
    then says nothing about the agents; after it comes back they get two timeouts.
    """

    name = models.CharField(primary_key=True, max_length=50)
    alive_at = models.DateTimeField()
    up_since = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} alive at {self.alive_at:%Y-%m-%d %H:%M:%S}"
