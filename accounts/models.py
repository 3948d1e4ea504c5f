"""Accounts: API keys and their roles, and per-user secrets (users and groups are Django's)."""

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
