"""Accounts (API keys, roles) and the audit trail."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Role(models.TextChoices):
    """What a caller may do: admins everything, users their own work, agents their worker."""

    ADMIN = "admin", "Admin"
    USER = "user", "User"
    AGENT = "agent", "Agent"


class KeyScope(models.TextChoices):
    """Read keys may only read; write keys act with their role's full rights."""

    READ = "read", "Read only"
    WRITE = "write", "Read and write"


class ApiKey(models.Model):
    """An API key: a public access key plus a 256-bit secret kept only as an HMAC digest."""

    access_key = models.CharField(max_length=40, unique=True)
    digest = models.CharField(max_length=64)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.USER)
    scope = models.CharField(max_length=10, choices=KeyScope.choices, default=KeyScope.WRITE)
    # Agent keys only: the queues a worker registered with this key may serve (empty: all)
    # and the prefix its worker names must start with (empty: any).
    allowed_queues = models.ManyToManyField("queues.Queue", blank=True, related_name="+")
    worker_prefix = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.access_key} ({self.user}, {self.role})"


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


class UserSecret(models.Model):
    """A per-user secret (a token, a password) injected into that user's runs; stored encrypted."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=100)
    ciphertext = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["owner_id", "name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="user_secret_unique_name")]

    def __str__(self) -> str:
        return f"{self.owner_id}:{self.name}"


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
