"""Reads about queues: the table, the entries in order, peeks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Greatest, Lower

from core.errors import NotFound
from experiments.models import Attempt, Experiment
from queues import positions
from queues.models import Queue, QueueEntry
from workers.selectors import live_workers


def _count(qs: QuerySet[Any]) -> Coalesce:
    """A correlated COUNT(*) of `qs` (filtered on OuterRef("pk")): an index scan per row, no join fan-out."""
    return Coalesce(
        Subquery(qs.values(qs.model._meta.get_field("queue").attname).annotate(n=Count("*")).values("n")[:1]), 0
    )


def queue_list() -> QuerySet[Queue]:
    from workers.models import WorkerQueue

    return Queue.objects.annotate(
        in_queue=_count(QueueEntry.objects.filter(queue=OuterRef("pk"))),
        worker_count=_count(WorkerQueue.objects.filter(queue=OuterRef("pk"))),
    ).order_by("name")


def queue_names(limit: int = 500) -> list[str]:
    """Queue names for pickers (datalists): no counts."""
    return list(Queue.objects.order_by(Lower("name")).values_list("name", flat=True)[:limit])


def queue_get(queue_id: str) -> Queue:
    try:
        return queue_list().get(pk=queue_id)
    except Queue.DoesNotExist:
        raise NotFound(f"queue {queue_id} does not exist", field="id") from None


def queue_entries(queue_id: str) -> QuerySet[QueueEntry]:
    """Entries in claim order, with what a table row shows."""
    return QueueEntry.objects.filter(queue_id=queue_id).select_related("experiment", "experiment__owner")


def queue_peek(queue_id: str) -> QueueEntry | None:
    return queue_entries(queue_id).order_by("-priority", "position", "id").first()


def queues_find(refs: Sequence[str]) -> dict[str, Queue]:
    """The queues these references name, each by the one "id or name" rule: its id, else its
    name (case-insensitive); an id match wins over a queue whose name looks like that id.
    One query whatever the number; a reference that names nothing is absent."""
    refs = [ref for ref in refs if ref]
    if not refs:
        return {}
    rows = list(
        Queue.objects.annotate(name_lower=Lower("name")).filter(
            Q(pk__in=refs) | Q(name_lower__in={ref.lower() for ref in refs})
        )
    )
    by_id = {q.pk: q for q in rows}
    by_name = {q.name.lower(): q for q in rows}
    return {ref: by_id.get(ref) or by_name[ref.lower()] for ref in refs if ref in by_id or ref.lower() in by_name}


def queue_find(ref: str) -> Queue | None:
    """The queue a reference names, by queues_find's rule (one query)."""
    return queues_find([ref]).get(ref)


# -- the QUEUES tab -----------------------------------------------------------------------------

QUEUE_SORTS: dict[str, str | Lower] = {
    "name": Lower("name"),
    "workers": "worker_count",
    "busy": "busy_count",
    "in_queue": "in_queue",
    "updated": "last_updated",
    "paused": "paused",
}


def queue_table(sort: str = "name", *, descending: bool = False) -> QuerySet[Queue]:
    """Every column of the queue table in one query, whatever the number of queues, entries and workers.

    Counts and the next entry are correlated subqueries on indexed columns, so no join of
    entries with workers ever multiplies rows.
    """
    from workers.models import WorkerQueue, WorkerStatus

    entries = QueueEntry.objects.filter(queue=OuterRef("pk"))
    links = WorkerQueue.objects.filter(queue=OuterRef("pk")).exclude(worker__status=WorkerStatus.LOST)
    head = entries.order_by("-priority", "position", "id")

    qs = Queue.objects.annotate(
        in_queue=_count(entries),
        worker_count=_count(links),
        busy_count=_count(links.filter(worker__status=WorkerStatus.BUSY)),
        next_id=Subquery(head.values("experiment_id")[:1]),
        next_name=Subquery(head.values("experiment__name")[:1]),
        last_updated=Greatest(
            "updated_at", Coalesce(Subquery(entries.order_by("-added_at").values("added_at")[:1]), "updated_at")
        ),
    )
    key = QUEUE_SORTS.get(sort, QUEUE_SORTS["name"])
    expression: F | Lower = F(key) if isinstance(key, str) else key
    ordering = expression.desc() if descending else expression.asc()
    return qs.order_by(ordering, "name")


def queue_entry_rows(queue_id: str, limit: int) -> list[QueueEntry]:
    """The first `limit` entries of a queue in claim order, with the experiment's name and owner."""
    return list(
        QueueEntry.objects.filter(queue_id=queue_id)
        .select_related("experiment__owner")
        .only("id", "experiment_id", "priority", "position", "added_at", "gpus", "experiment__name",
              "experiment__status", "experiment__owner__username")
        .order_by("-priority", "position", "id")[:limit]
    )  # fmt: skip


# -- an experiment's wait ---------------------------------------------------------------------


def wait_reasons(exp: Experiment) -> dict[str, Any]:
    """Where a queued experiment stands and every reason it is not running yet: the queue's
    state, its limit, and the live workers that listen to it (workers' own rule of "live")."""

    entry = QueueEntry.objects.filter(experiment=exp).select_related("queue").first()
    if entry is None:
        return {}
    queue = entry.queue
    reasons = []
    if queue.paused:
        reasons.append("the queue is paused")
    if queue.concurrency_limit is not None:
        running = Attempt.objects.filter(queue=queue, finished_at__isnull=True).count()
        if running >= queue.concurrency_limit:
            reasons.append(f"the queue is at its limit ({running} of {queue.concurrency_limit} running)")
    listening = live_workers().filter(queue_links__queue=queue)
    capacity = list(listening.values_list("gpus", "used_gpus", "draining"))
    if not capacity:
        reasons.append("no live worker listens to this queue")
    else:
        undrained = [(g, u) for g, u, d in capacity if not d]
        if not undrained:
            reasons.append("every worker listening to this queue is draining")
        elif not any(g >= exp.gpus for g, _ in undrained):
            reasons.append(f"no listening worker has {exp.gpus:g} GPUs")
        elif not any(g - u >= exp.gpus for g, u in undrained):
            reasons.append(f"no listening worker has {exp.gpus:g} GPUs free now")
    index = positions.index_of(entry)
    if index and not reasons:
        reasons.append(f"{index} experiment{'s' if index != 1 else ''} ahead of it")
    return {
        "queue": queue,
        "position": index + 1,
        "total": QueueEntry.objects.filter(queue=queue).count(),
        "reasons": reasons,
    }
