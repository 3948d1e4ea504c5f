"""What the loop asks of a cloud: launch one machine idempotently, list ours, end one, read its
console. Errors come back classified, so the loop knows whether to retry, fall back to the next
resource, or stop and show the app's error (reference/autoscaling.md §1.3)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

TAG_MANAGED = "muster-managed"
TAG_APP = "muster-app"
TAG_INSTANCE = "muster-instance"


class ErrorClass(StrEnum):
    THROTTLED = "throttled"  # retry later, with backoff
    CAPACITY = "capacity"  # try the next resource, zone or market
    QUOTA = "quota"  # the app stops, with the error shown
    PERMISSION = "permission"  # the app stops
    CONFIG = "config"  # the app stops
    TRANSIENT = "transient"  # retry


STOPS_THE_APP = (ErrorClass.QUOTA, ErrorClass.PERMISSION, ErrorClass.CONFIG)


class CloudError(Exception):
    def __init__(self, kind: ErrorClass, message: str, code: str = ""):
        super().__init__(message)
        self.kind = kind
        self.code = code


@dataclass(frozen=True)
class LaunchSpec:
    """One machine to start: everything derives from its Instance row, so a repeat is the same call."""

    instance_id: str  # the row's id: tag, EC2 ClientToken, GCE requestId and name all derive from it
    app_id: str
    name: str  # the worker name, also the machine's name
    instance_type: str
    spot: bool
    machine_image: str
    disk_gb: int
    gpu_type: str
    gpu_count: int
    boot_script: str  # EC2 user data or the GCE startup script (autoscalers/boot.py)
    server_url: str  # where the agent reports
    agent_key: str  # the machine's own agent key (expiring, its worker name and queues only)
    queues: tuple[str, ...]  # the queues its agent serves, in order
    environment: dict[str, str] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)  # the app's provider settings
    credentials: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CloudMachine:
    cloud_id: str
    instance_id: str  # our tag ("" for a machine tagged as ours but without the row tag)
    state: str  # running, pending, stopping, terminated, … (the provider's words, lower case)
    launched_at: datetime | None = None
    interrupted: bool = False  # a spot or preemption end


class Provider(Protocol):
    def launch(self, spec: LaunchSpec) -> str:
        """Start the machine (idempotent for one spec) and return its cloud id."""
        ...

    def machines(self) -> list[CloudMachine]:
        """Every machine tagged as this app's, in any state the cloud still reports."""
        ...

    def terminate(self, cloud_id: str) -> None:
        """End a machine (a machine already gone is not an error)."""
        ...

    def console(self, cloud_id: str) -> str:
        """The machine's console output, as far as the cloud keeps it."""
        ...
