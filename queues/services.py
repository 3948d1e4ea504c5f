"""Every queue operation: create, rename, pause, limits, delete, clear, moves, bulk dequeue."""

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
from experiments.models import Experiment
from experiments.services import experiments_dequeue_many, experiments_move_to_queue
from queues import positions
from queues.access import may_enqueue
from queues.models import Queue, QueueEntry
from queues.selectors import queue_find
from queues.wakeup import notify_queues

MOVE_TARGETS = ("top", "bottom", "position", "by", "queue")
MAX_BULK = 10_000


def _admin(actor: Actor) -> None:
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


def _locked(queue_id: str) -> Queue:
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
    _admin(actor)
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
    _admin(actor)
    allowed = {"name", "display_name", "tags", "concurrency_limit", "group_ids", "paused"}
    unknown = set(changes) - allowed
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    try:
        with transaction.atomic():  # a savepoint: a racing rename to the same name is a Conflict
            queue = _locked(queue_id)
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
    _admin(actor)
    queue = _locked(queue_id)
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


@atomic
def queue_clear(*, actor: Actor, queue_id: str) -> int:
    """Dequeue every pending experiment (each back to its enqueue_status)."""
    _admin(actor)
    queue = _locked(queue_id)
    removed = experiments_dequeue_many(
        actor=actor, entries=list(QueueEntry.objects.filter(queue=queue)), action="clear"
    )
    audit_record(actor=actor, change=Change("queue", queue.pk, "clear", {}, {"removed": removed}))
    return removed


@atomic
def queue_delete(*, actor: Actor, queue_id: str) -> int:
    """Delete a queue; its pending experiments are dequeued, its workers stop listening to it."""
    _admin(actor)
    queue = _locked(queue_id)
    removed = experiments_dequeue_many(
        actor=actor, entries=list(QueueEntry.objects.filter(queue=queue)), action="dequeue"
    )
    before = _snapshot(queue)
    Queue.objects.filter(pk=queue.pk).delete()
    audit_record(actor=actor, change=Change("queue", queue_id, "delete", before, {"dequeued": removed}))
    return removed


def _entries_for(actor: Actor, queue: Queue, experiment_ids: Sequence[str]) -> list[QueueEntry]:
    if not experiment_ids:
        raise InvalidInput("name at least one experiment", field="experiments")
    if len(experiment_ids) > MAX_BULK:
        raise InvalidInput(f"at most {MAX_BULK} experiments at once", field="experiments")
    entries = list(
        QueueEntry.objects.select_for_update()
        .filter(queue=queue, experiment_id__in=experiment_ids)
        .select_related("experiment")
    )
    found = {e.experiment_id for e in entries}
    missing = [x for x in experiment_ids if x not in found]
    if missing:
        raise NotFound(f"experiment {missing[0]} is not in queue {queue.name}", field="experiments")
    if not actor.is_admin:
        if actor.is_agent or not actor.can_write:
            raise Forbidden("only admins and owners move queue entries")
        if any(e.experiment.owner_id != actor.user_id for e in entries):
            raise Forbidden("you may only move your own experiments")
    order = {x: i for i, x in enumerate(experiment_ids)}
    entries.sort(key=lambda e: order[e.experiment_id])
    return entries


@atomic
def queue_entries_move(
    *,
    actor: Actor,
    queue_id: str,
    experiment_ids: Sequence[str],
    to: str,
    value: int | None = None,
    target_queue: str | None = None,
) -> list[QueueEntry]:
    """Move entries to the top, the bottom, an index, by N places, or to another queue."""
    if to not in MOVE_TARGETS:
        raise InvalidInput(f"'to' must be one of {', '.join(MOVE_TARGETS)}", field="to")
    queue = _locked(queue_id)
    entries = _entries_for(actor, queue, experiment_ids)
    if to == "queue":
        if not target_queue:
            raise InvalidInput("name the queue to move to", field="value")
        # Never created here: a typo in a move must not make a queue (admins create them explicitly).
        target = queue_find(target_queue)
        if target is None:
            raise NotFound(f"queue {target_queue!r} does not exist", field="value")
        if not may_enqueue(actor, target):
            raise Forbidden(f"you may not submit to queue {target.name}", field="value")
        exps = list(Experiment.objects.select_for_update().filter(pk__in=[e.experiment_id for e in entries]))
        by_id = {e.pk: e for e in exps}
        experiments_move_to_queue(
            actor=actor, entries=entries, experiments=[by_id[e.experiment_id] for e in entries], target=target
        )
        return entries
    if to in ("position", "by") and value is None:
        raise InvalidInput(f"moving to '{to}' needs a value", field="value")
    if to == "top":
        # Placed one after another from the top, keeping the order given.
        for i, entry in enumerate(entries):
            positions.move_to_index(entry, i)
    elif to == "bottom":
        total = QueueEntry.objects.filter(queue=queue).count()
        for entry in entries:
            positions.move_to_index(entry, total)
    elif to == "position":
        assert value is not None
        for i, entry in enumerate(entries):
            positions.move_to_index(entry, value + i)
    else:
        assert value is not None
        for entry in entries:
            positions.move_to_index(entry, max(positions.index_of(entry) + value, 0))
    audit_record(
        actor=actor,
        change=Change("queue", queue.pk, "move", {}, {"experiments": list(experiment_ids), "to": to, "value": value}),
    )
    return entries


@atomic
def queue_entries_dequeue(*, actor: Actor, queue_id: str, experiment_ids: Sequence[str]) -> int:
    """Dequeue a selection of a queue's entries at once."""
    queue = _locked(queue_id)
    entries = _entries_for(actor, queue, experiment_ids)
    return experiments_dequeue_many(actor=actor, entries=entries)
