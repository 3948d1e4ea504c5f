"""Reads about queues: the table, the entries in order, peeks."""

from __future__ import annotations

from django.db.models import Count, Q, QuerySet

from orchestration.errors import NotFound
from queues.models import Queue, QueueEntry


def queue_list() -> QuerySet[Queue]:
    return Queue.objects.annotate(
        in_queue=Count("entries", distinct=True),
        worker_count=Count("worker_links", distinct=True),
    ).order_by("name")


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


def queue_by_name(name: str) -> Queue | None:
    return Queue.objects.filter(Q(name__iexact=name)).first()
