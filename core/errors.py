"""Domain errors raised by services; the API maps each to a 4xx with a clear message."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the domain refuses; `status` is the HTTP status the API answers with."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, *, field: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra or {}


class InvalidInput(ServiceError):
    """The input breaks a rule of the domain (names a field when it can)."""

    status = 400
    code = "invalid"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class Conflict(ServiceError):
    """A move that is illegal from the current state, or lost a race to another writer."""

    status = 409
    code = "conflict"


class StaleLease(Conflict):
    """A write with a lease token that is no longer current: the agent must kill that run."""

    code = "stale_lease"

    def __init__(self, message: str = "this attempt is no longer current; kill the run"):
        super().__init__(message, extra={"kill": True})
