"""Worker registration, unregistration, queue edits and drain; every change audited."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Sum, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from experiments.models import Attempt, FailureClass
from experiments.services import attempt_fence
from orchestration.actor import Actor
from orchestration.audit import Change, audit_record
from orchestration.errors import Conflict, Forbidden, InvalidInput
from queues.models import Queue
from workers.models import WORKER_NAME_RE, Worker, WorkerKind, WorkerQueue, WorkerStatus
from workers.selectors import worker_is_live

MAX_QUEUES = 100


@dataclass
class Registration:
    """What an agent declares when it registers."""

    name: str
    instance_id: str = ""
    hostname: str = ""
    ip: str | None = None
    queues: Sequence[str] = ()
    gpu_slots: Sequence[dict[str, Any]] = ()
    cpus: float = 1
    memory_mb: int = 0
    capabilities: int = 0
    agent_version: str = ""
    tags: Sequence[str] = ()
    order_fairness: bool = False
    timeout_s: int = 0
    kind: str = WorkerKind.MUSTER
    extra: dict[str, Any] = field(default_factory=dict)


def _snapshot(w: Worker) -> dict[str, Any]:
    return {
        "status": w.status,
        "instance_id": w.instance_id,
        "hostname": w.hostname,
        "draining": w.draining,
        "queues": list(WorkerQueue.objects.filter(worker=w).order_by("order").values_list("queue_id", flat=True)),
    }


def resolve_queues(*, actor: Actor, refs: Sequence[str]) -> list[Queue]:
    """Queues by id or name (case-insensitive), in the given order; unknown ones are a 400."""
    if len(refs) > MAX_QUEUES:
        raise InvalidInput(f"at most {MAX_QUEUES} queues", field="queues")
    found = {q.pk: q for q in Queue.objects.filter(pk__in=refs)}
    by_name = {q.name.lower(): q for q in Queue.objects.filter(name__in=refs)}
    missing = [r for r in refs if r not in found and r.lower() not in by_name]
    if missing:
        # A second, case-insensitive pass for names written in another case.
        for ref in list(missing):
            q = Queue.objects.filter(name__iexact=ref).first()
            if q is not None:
                by_name[ref.lower()] = q
                missing.remove(ref)
    if missing:
        raise InvalidInput(f"unknown queue {missing[0]!r}", field="queues")
    queues: list[Queue] = []
    for ref in refs:
        q = found.get(ref) or by_name[ref.lower()]
        if q not in queues:
            queues.append(q)
    key = actor.key
    if actor.is_agent and key is not None:
        allowed = set(key.allowed_queues.values_list("id", flat=True))
        if allowed:
            refused = [q.name for q in queues if q.pk not in allowed]
            if refused:
                raise Forbidden(f"this key may not serve queue {refused[0]!r}", field="queues")
    return queues


def _set_queues(worker: Worker, queues: Sequence[Queue]) -> None:
    WorkerQueue.objects.filter(worker=worker).delete()
    WorkerQueue.objects.bulk_create([WorkerQueue(worker=worker, queue=q, order=i) for i, q in enumerate(queues)])


def gpu_model_words(slots: Sequence[dict[str, Any]]) -> list[str]:
    words: set[str] = set()
    for slot in slots:
        model = str(slot.get("model", "")).lower().strip()
        if model:
            words.add(model)
            words.update(w for w in re.split(r"[\s_-]+", model) if w)
    return sorted(words)


def _check_name(actor: Actor, name: str) -> None:
    if not re.fullmatch(WORKER_NAME_RE, name):
        raise InvalidInput("worker names use only A-Z a-z 0-9 _ . , : @ - (up to 200)", field="name")
    key = actor.key
    if actor.is_agent and key is not None and key.worker_prefix and not name.startswith(key.worker_prefix):
        raise Forbidden(f"this key registers only workers named {key.worker_prefix}…", field="name")


def worker_register(*, actor: Actor, reg: Registration) -> Worker:
    """Register (or re-register) a worker; a new instance id ends the old instance's runs."""
    if not (actor.is_agent or actor.is_admin) or not actor.can_write:
        raise Forbidden("only agent keys register workers")
    _check_name(actor, reg.name)
    queues = resolve_queues(actor=actor, refs=list(reg.queues))
    declared = [q.pk for q in queues]
    replaced: list[Attempt] = []
    now = timezone.now()
    timeout = reg.timeout_s or settings.WORKER_TIMEOUT_S
    values = {
        "kind": reg.kind,
        "instance_id": reg.instance_id,
        "hostname": reg.hostname,
        "ip": reg.ip,
        "tags": list(reg.tags),
        "gpu_slots": list(reg.gpu_slots),
        "gpus": float(len(reg.gpu_slots)),
        "gpu_models": gpu_model_words(reg.gpu_slots),
        "cpus": reg.cpus,
        "memory_mb": reg.memory_mb,
        "capabilities": reg.capabilities,
        "agent_version": reg.agent_version,
        "order_fairness": reg.order_fairness,
        "timeout_s": reg.timeout_s,
        "last_seen_at": now,
        "live_until": now + timedelta(seconds=timeout),
        "api_key": actor.key,
        "owner_id": actor.user_id,
    }
    try:
        with transaction.atomic():
            worker = Worker.objects.select_for_update().filter(name=reg.name).first()
            if worker is None:
                worker = Worker.objects.create(
                    name=reg.name, registered_at=now, declared_queues=declared, status=WorkerStatus.IDLE, **values
                )
                _set_queues(worker, queues)
                audit_record(actor=actor, change=Change("worker", worker.name, "register", {}, _snapshot(worker)))
                return worker
            before = _snapshot(worker)
            if not actor.is_admin and worker.owner_id != actor.user_id:
                raise Forbidden(f"worker {reg.name!r} belongs to another account", field="name")
            live = worker_is_live(worker)
            if live and worker.hostname and reg.hostname and worker.hostname != reg.hostname:
                raise Conflict(
                    f"worker {reg.name!r} is live on host {worker.hostname}; pick another name", field="name"
                )
            if worker.instance_id and reg.instance_id and worker.instance_id != reg.instance_id:
                replaced = list(Attempt.objects.filter(worker=worker, finished_at__isnull=True))
            for key, value in values.items():
                setattr(worker, key, value)
            if not worker.draining:
                worker.status = WorkerStatus.IDLE
            if worker.declared_queues != declared:
                worker.declared_queues = declared
                _set_queues(worker, queues)
            worker.save()
            audit_record(actor=actor, change=Change("worker", worker.name, "register", before, _snapshot(worker)))
    except IntegrityError:
        raise Conflict(f"worker {reg.name!r} was registered at the same moment; retry", field="name") from None
    for attempt in replaced:
        attempt_fence(
            actor=actor,
            attempt=attempt,
            failure_class=FailureClass.WORKER_LOST,
            message="the agent restarted (new instance id)",
        )
    worker_recount_usage(worker)
    return worker


def worker_unregister(*, actor: Actor, worker: Worker) -> None:
    """Remove a worker; what it still ran is ended as worker lost (and retried by policy)."""
    if not actor.can_write:
        raise Forbidden("this key is read-only")
    for attempt in Attempt.objects.filter(worker=worker, finished_at__isnull=True):
        attempt_fence(actor=actor, attempt=attempt, failure_class=FailureClass.WORKER_LOST, message="unregistered")
    with transaction.atomic():
        before = _snapshot(worker)
        Worker.objects.filter(pk=worker.pk).delete()
        audit_record(actor=actor, change=Change("worker", worker.name, "unregister", before, {}))


@transaction.atomic
def worker_update(
    *, actor: Actor, worker: Worker, queues: Sequence[str] | None = None, drain: bool | None = None, reason: str = ""
) -> Worker:
    """Change a worker's queues live, or drain / undrain it."""
    if not actor.can_write:
        raise Forbidden("this key is read-only")
    worker = Worker.objects.select_for_update().get(pk=worker.pk)
    before = _snapshot(worker)
    changed = False
    if queues is not None:
        resolved = resolve_queues(actor=actor, refs=list(queues))
        if [q.pk for q in resolved] != before["queues"]:
            _set_queues(worker, resolved)
            changed = True
    if drain is not None and drain != worker.draining:
        worker.draining = drain
        worker.drain_reason = reason[:200] if drain else ""
        if drain:
            worker.status = WorkerStatus.DRAINING
        elif worker.status == WorkerStatus.DRAINING:
            busy = Attempt.objects.filter(worker=worker, finished_at__isnull=True).exists()
            worker.status = WorkerStatus.BUSY if busy else WorkerStatus.IDLE
        worker.save(update_fields=["draining", "drain_reason", "status"])
        changed = True
    if changed:
        action = "drain" if drain else ("undrain" if drain is False else "edit_queues")
        audit_record(actor=actor, change=Change("worker", worker.name, action, before, _snapshot(worker), reason))
    return worker


def worker_release(*, worker_id: int, gpus: float, cpus: float, memory_mb: int) -> None:
    """An attempt on this worker ended: give its capacity back; idle when nothing runs."""
    Worker.objects.filter(pk=worker_id).update(
        used_gpus=Greatest(F("used_gpus") - gpus, Value(0.0)),
        used_cpus=Greatest(F("used_cpus") - cpus, Value(0.0)),
        used_memory_mb=Greatest(F("used_memory_mb") - memory_mb, Value(0)),
    )
    if not Attempt.objects.filter(worker_id=worker_id, finished_at__isnull=True).exists():
        Worker.objects.filter(pk=worker_id, status=WorkerStatus.BUSY).update(
            status=WorkerStatus.IDLE, used_gpus=0, used_cpus=0, used_memory_mb=0
        )


def worker_recount_usage(worker: Worker) -> None:
    """Recompute what a worker's running attempts use (on registration, and by reconcilers)."""
    used = Attempt.objects.filter(worker=worker, finished_at__isnull=True).aggregate(
        gpus=Sum("gpus"), cpus=Sum("cpus"), memory=Sum("memory_mb")
    )
    Worker.objects.filter(pk=worker.pk).update(
        used_gpus=used["gpus"] or 0, used_cpus=used["cpus"] or 0, used_memory_mb=used["memory"] or 0
    )
