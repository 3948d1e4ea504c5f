"""Operations on many queue entries at once: clear a queue, delete one with its entries, move
a selection (within its queue or to another) and dequeue a selection.

Each changes experiments' states, so each is the experiment lifecycle's and lives here, above
queues/ (docs/architecture.md); a queue's own operations stay in queues/services.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from accounts.actor import Actor
from core.audit import Change, audit_record
from core.db import atomic
from core.errors import Forbidden, InvalidInput, NotFound
from experiments.access import manage_check
from experiments.models import Experiment
from experiments.services import experiments_dequeue_many, experiments_move_to_queue
from queues import positions
from queues.access import may_enqueue
from queues.models import Queue, QueueEntry
from queues.selectors import queue_find
from queues.services import queue_admin_check, queue_lock, queue_remove

MOVE_TARGETS = ("top", "bottom", "position", "by", "queue")
MAX_BULK = 10_000


def _emptied(actor: Actor, queue_id: str, action: str) -> tuple[Queue, int]:
    """An admin's queue, locked, with every pending experiment dequeued (each back to its enqueue_status)."""
    queue_admin_check(actor)
    queue = queue_lock(queue_id)
    entries = list(QueueEntry.objects.filter(queue=queue))
    return queue, experiments_dequeue_many(actor=actor, entries=entries, action=action)


@atomic
def queue_clear(*, actor: Actor, queue_id: str) -> int:
    """Dequeue every pending experiment."""
    queue, removed = _emptied(actor, queue_id, "clear")
    audit_record(actor=actor, change=Change("queue", queue.pk, "clear", {}, {"removed": removed}))
    return removed


@atomic
def queue_delete(*, actor: Actor, queue_id: str) -> int:
    """Delete a queue; its pending experiments are dequeued, its workers stop listening to it."""
    queue, removed = _emptied(actor, queue_id, "dequeue")
    queue_remove(actor=actor, queue=queue, dequeued=removed)
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
    for e in entries:
        manage_check(actor, e.experiment.owner_id)
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
    queue = queue_lock(queue_id)
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
    queue = queue_lock(queue_id)
    entries = _entries_for(actor, queue, experiment_ids)
    return experiments_dequeue_many(actor=actor, entries=entries)
