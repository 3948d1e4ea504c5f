"""Reads about workers."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, F, OuterRef, Prefetch, QuerySet, Subquery
from django.db.models.functions import Coalesce, Lower
from django.utils import timezone

from accounts.actor import Actor
from core.db import correlated_count, prepared_cursor
from core.errors import Forbidden, NotFound
from experiments.models import Attempt, Experiment
from queues import positions
from queues.models import QueueEntry
from workers.models import Worker, WorkerQueue, WorkerStatus

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


# -- the WORKERS tab ----------------------------------------------------------------------------

WORKER_SORTS: dict[str, str | Lower] = {
    "name": Lower("name"),
    "experiments": "running_count",
    "runtime": "running_since",
    "iteration": "iteration",
    "status": "status",
}


def worker_table(sort: str, *, descending: bool, offset: int, limit: int) -> list[Worker]:
    """One page of the worker table: each worker with its running attempts, runtime and iteration.

    The sort keys are correlated subqueries over running attempts only (a partial index), so
    neither the history of finished attempts nor the number of workers multiplies the work.
    """
    running = Attempt.objects.filter(worker=OuterRef("pk"), finished_at__isnull=True)
    qs = Worker.objects.annotate(
        running_count=Coalesce(Subquery(running.values("worker").annotate(n=Count("*")).values("n")[:1]), 0),
        running_since=Subquery(running.order_by("started_at").values("started_at")[:1]),
        iteration=Subquery(running.order_by("-experiment__last_iteration").values("experiment__last_iteration")[:1]),
    )
    key = WORKER_SORTS[sort]
    expression: F | Lower = F(key) if isinstance(key, str) else key
    ordering = expression.desc(nulls_last=True) if descending else expression.asc(nulls_last=True)
    return list(with_running(qs.order_by(ordering, "name")[offset : offset + limit]))


def worker_list() -> QuerySet[Worker]:
    return Worker.objects.prefetch_related("queue_links__queue").order_by("name")


def workers_of_queue(queue_id: str) -> list[Worker]:
    """Workers listening to a queue (lost ones left out), each with `running`: its unfinished attempts."""
    qs = Worker.objects.filter(queue_links__queue_id=queue_id).exclude(status=WorkerStatus.LOST).order_by("name")
    return list(with_running(qs)[:200])


def with_running(qs: QuerySet[Worker]) -> QuerySet[Worker]:
    """Workers with `running` (their unfinished attempts, with the experiment) and their queue links."""
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


def queue_listener_counts() -> dict[str, Coalesce]:
    """The queue table's worker columns, per queue (correlated to OuterRef("pk")): the workers
    that listen to it and are not lost, and how many of those are busy. For queues/selectors.py's
    `listeners`."""
    links = WorkerQueue.objects.filter(queue=OuterRef("pk")).exclude(worker__status=WorkerStatus.LOST)
    return {
        "worker_count": correlated_count(links, on="queue"),
        "busy_count": correlated_count(links.filter(worker__status=WorkerStatus.BUSY), on="queue"),
    }


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
