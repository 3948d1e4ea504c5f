"""Reads about workers."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from accounts.actor import Actor
from core.db import prepared_cursor
from core.errors import Forbidden, NotFound
from workers.models import Worker, WorkerStatus

DEAD = (WorkerStatus.LOST, WorkerStatus.UNRESPONSIVE)


def live_workers() -> QuerySet[Worker]:
    """Workers that reported within their timeout and were not declared unresponsive or lost."""
    return Worker.objects.filter(live_until__gte=timezone.now()).exclude(status__in=DEAD)


def worker_is_live(worker: Worker) -> bool:
    return worker.status not in DEAD and worker.live_until >= timezone.now()


def worker_for_actor(*, actor: Actor, name: str, write: bool) -> Worker:
    """The worker by name, if the actor may see it (and change it, with write=True)."""
    try:
        worker = Worker.objects.get(name=name)  # the whole row: callers read and write it
    except Worker.DoesNotExist:
        raise NotFound(f"worker {name!r} is not registered", field="name") from None
    if actor.is_admin:
        return worker
    if actor.is_agent:
        if actor.key is None or worker.api_key_id != actor.key.pk:
            raise Forbidden(f"worker {name!r} was registered with another key")
        return worker
    if write:
        raise Forbidden("only admins and the worker's own agent may change a worker")
    return worker


LISTENED_SQL = (
    "SELECT w.api_key_id, wq.queue_id FROM workers_worker w LEFT JOIN workers_workerqueue wq ON wq.worker_id = w.id "
    'WHERE w.name = %s ORDER BY wq."order"'
)


def worker_queue_ids_for_actor(*, actor: Actor, name: str) -> list[str]:
    """The worker's queue ids in its order, if the actor may act as the worker (a long-poll's set-up).

    One prepared statement, no ORM: every idle agent runs it every 30 s. The same checks as
    worker_for_actor(write=True).
    """
    with prepared_cursor() as cursor:
        cursor.execute(LISTENED_SQL, [name])
        rows = cursor.fetchall()
    if not rows:
        raise NotFound(f"worker {name!r} is not registered", field="name")
    if not actor.is_admin:
        if not actor.is_agent:
            raise Forbidden("only admins and the worker's own agent may change a worker")
        if actor.key is None or rows[0][0] != actor.key.pk:
            raise Forbidden(f"worker {name!r} was registered with another key")
    return [queue_id for _, queue_id in rows if queue_id is not None]


def worker_list() -> QuerySet[Worker]:
    return Worker.objects.prefetch_related("queue_links__queue").order_by("name")


def workers_of_queue(queue_id: str) -> list[Worker]:
    """Workers listening to a queue (lost ones left out), each with `running`: its unfinished attempts."""
    qs = Worker.objects.filter(queue_links__queue_id=queue_id).exclude(status=WorkerStatus.LOST).order_by("name")
    return list(with_running(qs)[:200])


def with_running(qs: QuerySet[Worker]) -> QuerySet[Worker]:
    """Workers with `running` (their unfinished attempts, with the experiment) and their queue links."""
    from django.db.models import Prefetch

    from experiments.models import Attempt

    running = (
        Attempt.objects.filter(finished_at__isnull=True)
        .select_related("experiment")
        .only(
            "id",
            "worker_id",
            "started_at",
            "claimed_at",
            "experiment_id",
            "experiment__name",
            "experiment__last_iteration",
        )
        .order_by("claimed_at")
    )
    return qs.prefetch_related(Prefetch("attempts", queryset=running, to_attr="running"), "queue_links")
