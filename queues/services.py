"""A queue's own operations: create, rename, relabel, limits, groups, pause, and removing it.

What moves experiments in or out of queues (enqueue, clear, delete with its entries, bulk
moves and dequeues) changes experiments' states: it is the experiment lifecycle's, in
experiments/queueing.py, which sits above this module (docs/architecture.md).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.actor import Actor
from core.audit import Change, audit_record
from core.db import atomic
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from queues.models import Queue
from queues.wakeup import notify_queues


def queue_admin_check(actor: Actor) -> None:
    """Only admins with write access manage queues."""
    if not actor.is_admin or not actor.can_write:
        raise Forbidden("only admins manage queues")


def validate_queue_name(name: str, *, field: str = "name") -> str:
    """3 to 100 printable characters (spaces allowed inside, as ClearML allows)."""
    name = name.strip()
    if not 3 <= len(name) <= 100:
        raise InvalidInput("a queue name has 3 to 100 characters", field=field)
    if any(unicodedata.category(ch)[0] in ("C", "Z") and ch != " " for ch in name):
        raise InvalidInput("a queue name has only printable characters", field=field)
    return name


def _snapshot(q: Queue) -> dict[str, Any]:
    return {
        "name": q.name,
        "display_name": q.display_name,
        "paused": q.paused,
        "concurrency_limit": q.concurrency_limit,
        "tags": q.tags,
    }


def queue_lock(queue_id: str) -> Queue:
    """The queue, locked for this transaction; a 404 naming it when there is none."""
    try:
        return Queue.objects.select_for_update().get(pk=queue_id)
    except Queue.DoesNotExist:
        raise NotFound(f"queue {queue_id} does not exist", field="queue") from None


def _name_taken(name: str, exclude: str | None = None) -> bool:
    return Queue.objects.filter(name__iexact=name).exclude(pk=exclude or "").exists()


@atomic
def queue_create(
    *,
    actor: Actor,
    name: str,
    display_name: str = "",
    tags: Sequence[str] = (),
    paused: bool = False,
    concurrency_limit: int | None = None,
    group_ids: Sequence[int] = (),
    system_tags: Sequence[str] = (),
) -> Queue:
    """A new queue; names are unique ignoring case."""
    queue_admin_check(actor)
    name = validate_queue_name(name)
    if _name_taken(name):
        raise Conflict(f"a queue named {name!r} already exists", field="name")
    try:
        with transaction.atomic():  # a savepoint: a racing twin's unique name is a Conflict
            queue = Queue.objects.create(
                name=name,
                display_name=display_name,
                tags=list(tags),
                system_tags=list(system_tags),
                paused=paused,
                concurrency_limit=concurrency_limit,
            )
            if group_ids:
                queue.groups.set(group_ids)
            audit_record(actor=actor, change=Change("queue", queue.pk, "create", {}, _snapshot(queue)))
    except IntegrityError:
        raise Conflict(f"a queue named {name!r} already exists", field="name") from None
    return queue


@atomic
def queue_update(*, actor: Actor, queue_id: str, changes: dict[str, Any]) -> Queue:
    """Rename, relabel, set the concurrency limit or the groups that may submit."""
    queue_admin_check(actor)
    allowed = {"name", "display_name", "tags", "concurrency_limit", "group_ids", "paused"}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    try:
        with transaction.atomic():  # a savepoint: a racing rename to the same name is a Conflict
            queue = queue_lock(queue_id)
            before = _snapshot(queue)
            if "name" in changes:
                changes["name"] = validate_queue_name(changes["name"])
                if _name_taken(changes["name"], exclude=queue.pk):
                    raise Conflict(f"a queue named {changes['name']!r} already exists", field="name")
            group_ids = changes.pop("group_ids", None)
            for key, value in changes.items():
                setattr(queue, key, value)
            queue.save()
            if group_ids is not None:
                queue.groups.set(group_ids)
            after = _snapshot(queue)
            if after != before or group_ids is not None:
                action = "rename" if before["name"] != after["name"] else "edit"
                audit_record(actor=actor, change=Change("queue", queue.pk, action, before, after))
    except IntegrityError:
        raise Conflict(f"a queue named {changes.get('name')!r} already exists", field="name") from None
    if "paused" in changes and not changes["paused"]:
        notify_queues([queue.pk])
    return queue


@atomic
def queue_set_paused(*, actor: Actor, queue_id: str, paused: bool) -> Queue:
    """Pause (claims skip it) or resume a queue; asking for the current state is a no-op."""
    queue_admin_check(actor)
    queue = queue_lock(queue_id)
    if queue.paused == paused:
        return queue
    before = _snapshot(queue)
    Queue.objects.filter(pk=queue.pk, paused=not paused).update(paused=paused, updated_at=timezone.now())
    queue.paused = paused
    audit_record(
        actor=actor, change=Change("queue", queue.pk, "pause" if paused else "resume", before, _snapshot(queue))
    )
    if not paused:
        notify_queues([queue.pk])
    return queue


def queue_remove(*, actor: Actor, queue: Queue, dequeued: int) -> None:
    """Delete a queue that is locked and already empty (experiments/queueing.py: queue_delete empties it);
    its workers stop listening to it."""
    before = _snapshot(queue)
    queue_id = queue.pk
    Queue.objects.filter(pk=queue_id).delete()
    audit_record(actor=actor, change=Change("queue", queue_id, "delete", before, {"dequeued": dequeued}))
