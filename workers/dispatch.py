"""The claim: hand a worker the first entry it can run, exactly once, under concurrency.

Walk the worker's queues in its order (or round robin), skip paused queues and queues at
their concurrency limit, and take the first entry by (priority desc, position) whose
request fits the worker's free capacity and capabilities and that every claim policy
allows, with SELECT … FOR UPDATE SKIP LOCKED. In the same transaction: delete the entry,
create the attempt, move the experiment to in_progress, record the wait and audit it.
No per-queue row is written, so claimers of one queue never serialize on a hot row;
only a queue with a concurrency limit locks its own row, to keep the limit exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.actor import Actor
from core.audit import Change, audit_record
from core.errors import Conflict, Forbidden, NotFound
from core.ids import new_id
from experiments.models import Attempt, Capability, Experiment, Status
from experiments.services import new_lease_token, next_attempt_number
from queues.access import actor_servable_queue_ids, servable_queue_ids
from queues.models import Queue, QueueEntry
from workers import claim_sql
from workers.claim_sql import CLAIM_FIELDS
from workers.models import Worker, WorkerQueue, WorkerStatus

ALL_CAPABILITIES = sum(c.value for c in Capability)
UNLIMITED = 1e18
MAX_POLICY_SKIPS = 50

# A claim policy looks at a candidate entry for a worker (None: a caller that names no
# worker) and returns a reason to leave it queued, or None to allow it. The resource
# policies issue registers its engine here; by default everything is allowed.
ClaimPolicy = Callable[[QueueEntry, "Worker | None"], "str | None"]
CLAIM_POLICIES: list[ClaimPolicy] = []


@dataclass(frozen=True)
class Capacity:
    """What a claimer has free right now; UNLIMITED where it does not say."""

    gpus: float = UNLIMITED
    cpus: float = UNLIMITED
    memory_mb: float = UNLIMITED
    capabilities: int = ALL_CAPABILITIES
    gpu_models: tuple[str, ...] = ()
    any_gpu_model: bool = True


@dataclass
class Claim:
    """A successful claim: the new attempt (with its lease token) and its experiment."""

    attempt: Attempt
    experiment: Experiment
    queue: Queue
    # The owner's secrets (name, ciphertext) when the claim already read them (the one-statement take).
    owner_secrets: list[tuple[str, str]] | None = None


QueueRow = tuple[str, bool, "int | None", str]


def _lock_worker(worker_pk: int | None, name: str | None = None) -> tuple[Worker, list[QueueRow] | None]:
    """Lock the worker row (it serializes this agent's own claims and holds its usage).

    On PostgreSQL the worker's queues come back in the same round trip; elsewhere None.
    """
    if claim_sql.enabled():
        found = claim_sql.lock_worker(CLAIM_FIELDS, pk=worker_pk, name=name)
        if found is None:
            raise NotFound(f"worker {name or worker_pk!r} is not registered", field="name")
        return found
    lookup = {"pk": worker_pk} if worker_pk is not None else {"name": name}
    try:
        return Worker.objects.select_for_update().only(*CLAIM_FIELDS).get(**lookup), None
    except Worker.DoesNotExist:
        raise NotFound(f"worker {name or worker_pk!r} is not registered", field="name") from None


def _free_capacity(worker: Worker) -> Capacity:
    """Capacity left on a locked worker."""
    return Capacity(
        gpus=worker.gpus - worker.used_gpus,
        cpus=(worker.cpus - worker.used_cpus) if worker.cpus > 0 else UNLIMITED,
        memory_mb=(worker.memory_mb - worker.used_memory_mb) if worker.memory_mb > 0 else UNLIMITED,
        capabilities=worker.capabilities,
        gpu_models=tuple(worker.gpu_models),
        any_gpu_model=False,
    )


def _fits(capacity: Capacity) -> Q:
    eps = 1e-9  # float sums of fractions (0.1 + 0.2) must still fit
    q = Q(gpus__lte=capacity.gpus + eps, cpus__lte=capacity.cpus + eps, memory_mb__lte=capacity.memory_mb)
    if not capacity.any_gpu_model:
        q &= Q(gpu_type="") | Q(gpu_type__in=capacity.gpu_models)
    return q


def _queue_order(
    actor: Actor, worker: Worker | None, queue_ids: Sequence[str] | None, rows: list[QueueRow] | None = None
) -> list[QueueRow]:
    """(id, paused, concurrency limit, name) of the queues to walk, in the order to walk them.

    Only queues the worker (or, naming no worker, the caller's key) may serve: on PostgreSQL
    the worker's `rows` come filtered from its lock; here the same rule (queues/access.py).
    """
    if worker is not None:
        if rows is None:
            rows = list(
                WorkerQueue.objects.filter(worker=worker)
                .order_by("order")
                .values_list("queue_id", "queue__paused", "queue__concurrency_limit", "queue__name")
            )
            servable = servable_queue_ids(
                owner_id=worker.owner_id, key_id=worker.api_key_id, queue_ids=[r[0] for r in rows]
            )
            rows = [r for r in rows if r[0] in servable]
        if worker.order_fairness and worker.last_queue_id:
            ids = [r[0] for r in rows]
            if worker.last_queue_id in ids:
                start = ids.index(worker.last_queue_id) + 1
                rows = rows[start:] + rows[:start]
        return rows
    servable = actor_servable_queue_ids(actor, queue_ids or [])
    by_id = {
        q[0]: q for q in Queue.objects.filter(pk__in=servable).values_list("id", "paused", "concurrency_limit", "name")
    }
    return [by_id[q] for q in (queue_ids or []) if q in by_id]


def _touch(worker: Worker) -> None:
    """A claim shows the agent is alive; write only when the last sign is a second old."""
    now = timezone.now()
    if (now - worker.last_seen_at).total_seconds() >= 1:
        Worker.objects.filter(pk=worker.pk).update(
            last_seen_at=now, live_until=now + timedelta(seconds=worker.effective_timeout_s)
        )


def _under_limit(queue_id: str, limit: int) -> bool:
    # The only per-queue lock in the claim: it keeps the limit exact under concurrency.
    Queue.objects.select_for_update().filter(pk=queue_id).values_list("id", flat=True).first()
    running = Attempt.objects.filter(queue_id=queue_id, finished_at__isnull=True).count()
    return running < limit


def _pick(queue_id: str, fits: Q, missing_caps: int, worker: Worker | None) -> QueueEntry | None:
    excluded: list[int] = []
    for _ in range(MAX_POLICY_SKIPS):
        qs = (
            QueueEntry.objects.filter(Q(queue_id=queue_id) & fits)
            .annotate(missing=F("needs").bitand(missing_caps))
            .filter(missing=0)
            .exclude(pk__in=excluded)
            .order_by("-priority", "position", "id")
            .select_for_update(skip_locked=True, of=("self",))
        )
        entry = qs.first()
        if entry is None:
            return None
        if all(policy(entry, worker) is None for policy in CLAIM_POLICIES):
            return entry
        excluded.append(entry.pk)
    return None


def dispatch_claim(
    *,
    actor: Actor,
    worker: Worker | None = None,
    worker_name: str | None = None,
    queue_ids: Sequence[str] | None = None,
    capacity: Capacity | None = None,
    heard: bool = True,
) -> Claim | None:
    """Claim the next runnable experiment for a worker (or for a caller naming queues only).

    Name the worker by instance or by name; by name, the ownership check rides on the
    same query that locks the row. `heard`: the agent itself asked just now, so the claim
    counts as a sign of life; a long-poll's later checks (the server's own, while the agent
    waits) pass False, or a dead agent's wait would keep it alive until the wait ends.
    """
    if not (actor.is_agent or actor.is_admin) or not actor.can_write:
        raise Forbidden("only agent keys claim work")
    queue_rows: list[QueueRow] | None = None
    with transaction.atomic():
        if worker is not None or worker_name is not None:
            # Locking the worker serializes one agent's own parallel claims, so its free
            # capacity cannot be given away twice; other workers are not affected.
            worker, queue_rows = _lock_worker(worker.pk if worker is not None else None, worker_name)
            if not actor.is_admin and (actor.key is None or worker.api_key_id != actor.key.pk):
                raise Forbidden(f"worker {worker.name!r} was registered with another key")
            if heard:
                _touch(worker)
            if worker.draining or worker.status == WorkerStatus.LOST:
                return None
            capacity = _free_capacity(worker)
        capacity = capacity or Capacity()
        fits = _fits(capacity)
        missing_caps = ALL_CAPABILITIES & ~capacity.capabilities
        for queue_id, paused, limit, queue_name in _queue_order(actor, worker, queue_ids, queue_rows):
            if paused:
                continue
            if limit is not None and not _under_limit(queue_id, limit):
                continue
            if claim_sql.enabled() and not CLAIM_POLICIES:
                claim = _take_in_one_statement(
                    actor=actor,
                    queue=Queue(pk=queue_id, name=queue_name),
                    capacity=capacity,
                    missing_caps=missing_caps,
                    worker=worker,
                )
                if claim is not None:
                    return claim
                continue
            entry = _pick(queue_id, fits, missing_caps, worker)
            if entry is not None:
                return _take(actor=actor, entry=entry, worker=worker)
    return None


def _take_in_one_statement(
    *, actor: Actor, queue: Queue, capacity: Capacity, missing_caps: int, worker: Worker | None
) -> Claim | None:
    """PostgreSQL: the same pick and take as _pick + _take, in one round trip."""
    attempt_id, token, now = new_id(), new_lease_token(), timezone.now()
    worker_name = worker.name if worker else ""
    taken = claim_sql.take(
        {
            "queue": queue.pk,
            "gpus": min(capacity.gpus, UNLIMITED) + 1e-9,
            "cpus": min(capacity.cpus, UNLIMITED) + 1e-9,
            "memory": min(capacity.memory_mb, 2**62),
            "missing": missing_caps,
            "any_model": capacity.any_gpu_model,
            "models": list(capacity.gpu_models),
            "attempt": attempt_id,
            "worker": worker.pk if worker else None,
            "worker_name": worker_name,
            "token": token,
            "now": now,
            "actor": actor.user_id,
            "actor_label": actor.label[:200],
        }
    )
    if taken is None:
        return None
    experiment, number, claimed_at, queued_at, wait_s, owner_secrets = taken
    attempt = Attempt(
        id=attempt_id,
        experiment=experiment,
        number=number,
        worker=worker,
        worker_name=worker_name,
        queue_id=queue.pk,
        lease_token=token,
        gpus=experiment.gpus,
        cpus=experiment.cpus,
        memory_mb=experiment.memory_mb,
        queued_at=queued_at,
        claimed_at=claimed_at,
        wait_s=wait_s,
    )
    return Claim(attempt=attempt, experiment=experiment, queue=queue, owner_secrets=owner_secrets)


def _take(*, actor: Actor, entry: QueueEntry, worker: Worker | None) -> Claim:
    now = timezone.now()
    QueueEntry.objects.filter(pk=entry.pk).delete()
    exp_id = entry.experiment_id
    attempt = Attempt.objects.create(
        experiment_id=exp_id,
        number=next_attempt_number(exp_id),
        worker=worker,
        worker_name=worker.name if worker else "",
        queue_id=entry.queue_id,
        lease_token=new_lease_token(),
        gpus=entry.gpus,
        cpus=entry.cpus,
        memory_mb=entry.memory_mb,
        queued_at=entry.added_at,
        claimed_at=now,
        wait_s=max((now - entry.added_at).total_seconds(), 0.0),
    )
    rows = Experiment.objects.filter(pk=exp_id, status=Status.QUEUED).update(
        status=Status.IN_PROGRESS, current_attempt=attempt, status_message="", updated_at=now
    )
    if rows != 1:  # an entry always belongs to a queued experiment; anything else is a bug
        raise Conflict(f"experiment {exp_id} was not queued")
    audit_record(
        actor=actor,
        change=Change(
            "experiment",
            exp_id,
            "claim",
            {"status": Status.QUEUED, "queue": entry.queue_id},
            {"status": Status.IN_PROGRESS, "attempt": attempt.pk, "worker": attempt.worker_name},
        ),
    )
    if worker is not None:
        fields: dict[str, Any] = {
            "status": WorkerStatus.BUSY,
            "used_gpus": F("used_gpus") + entry.gpus,
            "used_cpus": F("used_cpus") + entry.cpus,
            "used_memory_mb": F("used_memory_mb") + entry.memory_mb,
        }
        if worker.order_fairness:
            fields["last_queue_id"] = entry.queue_id
        Worker.objects.filter(pk=worker.pk).update(**fields)
    experiment = Experiment.objects.get(pk=exp_id)
    queue = Queue.objects.get(pk=entry.queue_id)
    return Claim(attempt=attempt, experiment=experiment, queue=queue)
