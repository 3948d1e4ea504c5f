"""Reads about queues: the table, the entries in order, peeks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Greatest, Lower

from core.db import correlated_count
from core.errors import NotFound
from queues.models import Queue, QueueEntry

# Annotations another app adds to each queue row, correlated to OuterRef("pk"): the queue
# table's worker columns come from workers/selectors.py (queue_listener_counts), since the
# queues app sits beneath workers and knows none (docs/architecture.md).
Annotations = Mapping[str, Any]
NONE: Annotations = MappingProxyType({})


def _entry_count() -> Coalesce:
    return correlated_count(QueueEntry.objects.filter(queue=OuterRef("pk")), on="queue")


def queue_list(listeners: Annotations = NONE) -> QuerySet[Queue]:
    """Queues by name with their entry count and the `listeners` annotations."""
    return Queue.objects.annotate(in_queue=_entry_count(), **listeners).order_by("name")


def queue_names(limit: int = 500) -> list[str]:
    """Queue names for pickers (datalists): no counts."""
    return list(Queue.objects.order_by(Lower("name")).values_list("name", flat=True)[:limit])


def queue_get(queue_id: str, listeners: Annotations = NONE) -> Queue:
    try:
        return queue_list(listeners).get(pk=queue_id)
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


def queue_table(sort: str = "name", *, descending: bool = False, listeners: Annotations = NONE) -> QuerySet[Queue]:
    """Every column of the queue table in one query, whatever the number of queues, entries and workers.

    Counts and the next entry are correlated subqueries on indexed columns, so no join of
    entries with workers ever multiplies rows. A sort on a column that `listeners` does not
    add falls back to the name.
    """
    entries = QueueEntry.objects.filter(queue=OuterRef("pk"))
    head = entries.order_by("-priority", "position", "id")

    qs = Queue.objects.annotate(
        in_queue=_entry_count(),
        **listeners,
        next_id=Subquery(head.values("experiment_id")[:1]),
        next_name=Subquery(head.values("experiment__name")[:1]),
        last_updated=Greatest(
            "updated_at", Coalesce(Subquery(entries.order_by("-added_at").values("added_at")[:1]), "updated_at")
        ),
    )
    key = QUEUE_SORTS.get(sort, QUEUE_SORTS["name"])
    if isinstance(key, str) and key not in qs.query.annotations and key not in ("paused",):
        key = QUEUE_SORTS["name"]
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
