"""Worker registration, unregistration, queue edits and drain; every change audited."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Sum, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.actor import SYSTEM, Actor
from core.audit import Change, audit_record
from core.db import atomic, prepared_cursor
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.servicebeat import server_state
from experiments.models import Attempt, Experiment, FailureClass
from experiments.services import attempt_fence, experiments_advance_iterations
from queues.access import actor_servable_queue_ids, actor_serves, servable_queue_ids
from queues.models import Queue
from queues.selectors import queues_find
from queues.wakeup import notify_queues
from workers import ingest
from workers.models import (
    WORKER_NAME_RE,
    AttemptStat,
    Worker,
    WorkerKind,
    WorkerQueue,
    WorkerStat,
    WorkerStatus,
    worker_timeout_s,
)
from workers.selectors import live_workers, worker_is_live

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


def resolve_queues(
    *, actor: Actor, refs: Sequence[str], owner_id: int | None = None, key_id: int | None = None
) -> list[Queue]:
    """Queues by id or name (case-insensitive), in the given order, that a worker may serve.

    Unknown ones are a 400; one the worker may not serve (queues/access.py: its key's owner may
    not enqueue there, or the key is limited to other queues) is a 403. The worker is the
    actor's own (registration) unless `owner_id`/`key_id` name another's (a queue edit).
    """
    if len(refs) > MAX_QUEUES:
        raise InvalidInput(f"at most {MAX_QUEUES} queues", field="queues")
    found = queues_find(refs)
    missing = [r for r in refs if r not in found]
    if missing:
        raise InvalidInput(f"unknown queue {missing[0]!r}", field="queues")
    queues: list[Queue] = []
    for ref in refs:
        if found[ref] not in queues:
            queues.append(found[ref])
    if owner_id is None and key_id is None:
        servable = actor_servable_queue_ids(actor, [q.pk for q in queues])
    else:
        servable = servable_queue_ids(owner_id=owner_id, key_id=key_id, queue_ids=[q.pk for q in queues])
    refused = [q.name for q in queues if q.pk not in servable]
    if refused:
        raise Forbidden(
            f"this worker may not serve queue {refused[0]!r}: its key's owner may not enqueue there, "
            "or the key is limited to other queues",
            field="queues",
        )
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


@atomic
def worker_register(*, actor: Actor, reg: Registration) -> Worker:
    """Register (or re-register) a worker; a new instance id ends the old instance's runs.

    One transaction: the old instance's runs are ended first (the lock order is attempt,
    experiment, worker: core/db.py), then the worker row is locked and written; a refusal
    after that (another account's worker, live on another host) undoes it all.
    """
    if not (actor.is_agent or actor.is_admin) or not actor.can_write:
        raise Forbidden("only agent keys register workers")
    _check_name(actor, reg.name)
    queues = resolve_queues(actor=actor, refs=list(reg.queues))
    declared = [q.pk for q in queues]
    now = timezone.now()
    timeout = worker_timeout_s(reg.timeout_s, 0.0)  # no report yet: no interval known
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
    seen = Worker.objects.filter(name=reg.name).values("pk", "instance_id").first()
    restarted = bool(seen and seen["instance_id"] and reg.instance_id and seen["instance_id"] != reg.instance_id)
    if seen is not None and restarted:
        replaced = list(Attempt.objects.filter(worker_id=seen["pk"], finished_at__isnull=True))
        _fence_lost(actor, replaced, "the agent restarted (new instance id)")
    try:
        with transaction.atomic():  # a savepoint: a first registration racing this one is a Conflict
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
            if seen is None or worker.pk != seen["pk"] or worker.instance_id != seen["instance_id"]:
                raise Conflict(f"worker {reg.name!r} was registered at the same moment; retry", field="name")
            live = worker_is_live(worker)
            if live and worker.hostname and reg.hostname and worker.hostname != reg.hostname:
                raise Conflict(
                    f"worker {reg.name!r} is live on host {worker.hostname}; pick another name", field="name"
                )
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
    worker_recount_usage(actor=actor, worker=worker)
    return worker


def _fence_lost(
    actor: Actor, attempts: Sequence[Attempt], message: str, failure_class: str = FailureClass.WORKER_LOST
) -> None:
    """End runs the worker no longer has as worker_lost (each retried by its policy), or as
    interrupted when its machine was (spot or preemption: back to the front, no retry used)."""
    for attempt in attempts:
        attempt_fence(actor=actor, attempt=attempt, failure_class=failure_class, message=message)


@atomic
def worker_unregister(
    *, actor: Actor, worker: Worker, failure_class: str = FailureClass.WORKER_LOST, message: str = "unregistered"
) -> None:
    """Remove a worker; what it still ran is ended as worker lost (and retried by policy), or
    with the failure class given (an autoscaler's interrupted machine).

    One transaction, in the lock order (the runs, their experiments, then the worker).
    """
    if not actor.can_write:
        raise Forbidden("this key is read-only")
    running = list(Attempt.objects.filter(worker=worker, finished_at__isnull=True))
    _fence_lost(actor, running, message, failure_class)
    before = _snapshot(worker)
    Worker.objects.filter(pk=worker.pk).delete()
    audit_record(actor=actor, change=Change("worker", worker.name, "unregister", before, {}))


@atomic
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
        resolved = resolve_queues(actor=actor, refs=list(queues), owner_id=worker.owner_id, key_id=worker.api_key_id)
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


@atomic
def worker_set_runtime_properties(*, actor: Actor, worker: Worker, properties: Sequence[dict[str, Any]]) -> Worker:
    """Set ClearML runtime properties ({key, value, expiry?}) on a worker, by key (others kept)."""
    if not actor.can_write:
        raise Forbidden("this key is read-only")
    worker = Worker.objects.select_for_update().get(pk=worker.pk)
    before = list(worker.runtime_properties)
    by_key = {p["key"]: p for p in before if isinstance(p, dict) and "key" in p}
    for prop in properties:
        entry = {"key": str(prop["key"])[:100], "value": str(prop.get("value", ""))[:1000]}
        if isinstance(prop.get("expiry"), (int, float)) and prop["expiry"] > 0:
            entry["expiry"] = prop["expiry"]
        by_key[entry["key"]] = entry
    after = list(by_key.values())[:100]
    if after != before:
        Worker.objects.filter(pk=worker.pk).update(runtime_properties=after)
        worker.runtime_properties = after
        audit_record(
            actor=actor, change=Change("worker", worker.name, "runtime_properties", {"p": before}, {"p": after})
        )
    return worker


def worker_release(*, actor: Actor, attempt: Attempt) -> None:
    """An attempt on its worker ended: give its capacity back (audited); idle when nothing runs.

    Called inside the attempt's end, after its row and its experiment's (the lock order).
    """
    worker_id = attempt.worker_id
    if worker_id is None:
        return
    Worker.objects.filter(pk=worker_id).update(
        used_gpus=Greatest(F("used_gpus") - attempt.gpus, Value(0.0)),
        used_cpus=Greatest(F("used_cpus") - attempt.cpus, Value(0.0)),
        used_memory_mb=Greatest(F("used_memory_mb") - attempt.memory_mb, Value(0)),
    )
    freed = {"attempt": attempt.pk, "gpus": attempt.gpus, "cpus": attempt.cpus, "memory_mb": attempt.memory_mb}
    audit_record(actor=actor, change=Change("worker", attempt.worker_name, "release", {}, freed))
    if not Attempt.objects.filter(worker_id=worker_id, finished_at__isnull=True).exists():
        Worker.objects.filter(pk=worker_id, status=WorkerStatus.BUSY).update(
            status=WorkerStatus.IDLE, used_gpus=0, used_cpus=0, used_memory_mb=0
        )


@atomic
def attempt_bind(*, actor: Actor, attempt_id: str, worker_name: str) -> Attempt:
    """Bind a claimed but unbound attempt to the worker that says it runs it; again is a no-op.

    Once bound, only that worker's key may write to it (fencing), as for any other attempt.
    """
    attempt = Attempt.objects.select_for_update(of=("self",)).get(pk=attempt_id)
    if attempt.worker_name == worker_name and attempt.worker_id is not None:
        return attempt
    if attempt.worker_id is not None:
        raise Conflict(f"this attempt runs on worker {attempt.worker_name}", field="task")
    if attempt.finished_at is not None:
        raise Conflict("this attempt has already finished", field="task")
    worker = Worker.objects.select_for_update().filter(name=worker_name).first()
    if worker is None:
        raise NotFound(f"worker {worker_name!r} is not registered", field="worker")
    if not actor.is_admin and (actor.key is None or worker.api_key_id != actor.key.pk):
        raise Forbidden(f"worker {worker_name!r} was registered with another key")
    if not actor.is_admin and not actor_serves(actor, attempt.queue_id):
        raise Forbidden("this attempt was claimed for a queue your key does not serve")
    Attempt.objects.filter(pk=attempt.pk, worker__isnull=True).update(worker=worker, worker_name=worker.name)
    Worker.objects.filter(pk=worker.pk).update(
        used_gpus=F("used_gpus") + attempt.gpus,
        used_cpus=F("used_cpus") + attempt.cpus,
        used_memory_mb=F("used_memory_mb") + attempt.memory_mb,
    )
    Worker.objects.filter(pk=worker.pk, status=WorkerStatus.IDLE).update(status=WorkerStatus.BUSY)
    attempt.worker, attempt.worker_name = worker, worker.name
    audit_record(actor=actor, change=Change("attempt", attempt.pk, "bind", {"worker": None}, {"worker": worker.name}))
    return attempt


class WorkersFleet:
    """The workers app's answers to the experiment lifecycle (experiments/fleet.py)."""

    def listens(self, queue_id: str) -> bool:
        return live_workers().filter(queue_links__queue_id=queue_id).exists()

    def runs(self, worker_id: int) -> bool:
        worker = Worker.objects.filter(pk=worker_id).only("status", "live_until").first()
        return worker is not None and worker_is_live(worker)

    def release(self, *, actor: Actor, attempt: Attempt) -> None:
        if attempt.worker_id is None:
            return
        worker_release(actor=actor, attempt=attempt)
        # Capacity came back: wake the waiters on this worker's queues (its own long-poll among them).
        notify_queues(WorkerQueue.objects.filter(worker_id=attempt.worker_id).values_list("queue_id", flat=True))


def _usage(worker_id: int) -> dict[str, float]:
    row = Worker.objects.filter(pk=worker_id).values("used_gpus", "used_cpus", "used_memory_mb").first()
    return {"gpus": row["used_gpus"], "cpus": row["used_cpus"], "memory_mb": row["used_memory_mb"]} if row else {}


@atomic
def worker_recount_usage(*, actor: Actor, worker: Worker) -> None:
    """Recompute what a worker's running attempts use (on registration, and by reconcilers);
    audited when the count it held was wrong."""
    used = Attempt.objects.filter(worker=worker, finished_at__isnull=True).aggregate(
        gpus=Sum("gpus"), cpus=Sum("cpus"), memory=Sum("memory_mb")
    )
    after = {"gpus": float(used["gpus"] or 0), "cpus": float(used["cpus"] or 0), "memory_mb": used["memory"] or 0}
    before = _usage(worker.pk)
    if before and before != after:
        Worker.objects.filter(pk=worker.pk).update(
            used_gpus=after["gpus"], used_cpus=after["cpus"], used_memory_mb=after["memory_mb"]
        )
        audit_record(actor=actor, change=Change("worker", worker.name, "recount", before, after))


# ---------------------------------------------------------------------------- reports and liveness


@dataclass(frozen=True)
class RunningAttempt:
    """An attempt the agent says it is running, with its lease token and latest iteration."""

    attempt_id: str
    token: str
    iteration: int | None = None


@dataclass
class Report:
    """One heartbeat: what runs, and what the machine and each attempt used."""

    instance_id: str = ""
    interval_s: float = 0
    running: Sequence[RunningAttempt] = ()
    machine: dict[str, Any] = field(default_factory=dict)
    attempts: Sequence[dict[str, Any]] = ()


@dataclass
class ReportAnswer:
    """What the agent must do: kill runs that are no longer its own, stop the ones asked to."""

    kill: list[str]
    stop: list[str]
    drain: bool
    queues: list[str]


def worker_report(*, actor: Actor, name: str, report: Report) -> ReportAnswer:
    """Ingest a report (the heartbeat); never refused for what it says about work.

    A report that changes no state (a known live worker, the same instance, every claim
    accounted for) is answered from three reads and its writes are queued for the batch
    writer (workers/ingest.py); anything else takes the transactional path below.
    """
    if not (actor.is_agent or actor.is_admin) or not actor.can_write:
        raise Forbidden("only agent keys report")
    answer = _report_fast(actor=actor, name=name, report=report)
    if answer is not None:
        return answer
    if not Worker.objects.filter(name=name).exists():
        # Unknown workers that report are registered, as ClearML does.
        worker_register(actor=actor, reg=Registration(name=name, instance_id=report.instance_id, capabilities=3))
    now = timezone.now()
    lost_claims: list[Attempt] = []
    replaced: list[Attempt] = []
    with transaction.atomic():
        worker = Worker.objects.select_for_update().get(name=name)
        if not actor.is_admin and (actor.key is None or worker.api_key_id != actor.key.pk):
            raise Forbidden(f"worker {name!r} was registered with another key")
        server_running = {a.pk: a for a in Attempt.objects.filter(worker=worker, finished_at__isnull=True)}
        if report.instance_id and worker.instance_id and report.instance_id != worker.instance_id:
            replaced = list(server_running.values())
            server_running = {}
        reported = {r.attempt_id: r for r in report.running}
        valid = [
            r for r in report.running
            if r.attempt_id in server_running and server_running[r.attempt_id].lease_token == r.token
        ]  # fmt: skip
        kill = sorted(set(reported) - {r.attempt_id for r in valid})
        previous = worker.previous_report_at
        if previous is not None:
            lost_claims = [a for a in server_running.values() if a.pk not in reported and a.claimed_at < previous]
        stop = list(
            Experiment.objects.filter(
                current_attempt_id__in=[r.attempt_id for r in valid], stop_requested_at__isnull=False
            ).values_list("current_attempt_id", flat=True)
        )
        iterations = {r.attempt_id: r.iteration for r in valid if r.iteration is not None}
        interval = max(report.interval_s, 0.0)
        timeout = worker_timeout_s(worker.timeout_s, interval)
        status = worker.status
        if status in (WorkerStatus.UNRESPONSIVE, WorkerStatus.LOST):
            status = WorkerStatus.DRAINING if worker.draining else (
                WorkerStatus.BUSY if valid else WorkerStatus.IDLE
            )  # fmt: skip
        Worker.objects.filter(pk=worker.pk).update(
            last_seen_at=now,
            live_until=now + timedelta(seconds=timeout),
            previous_report_at=now,
            report_interval_s=interval,
            status=status,
            instance_id=report.instance_id or worker.instance_id,
        )
        if status != worker.status:
            audit_record(
                actor=actor,
                change=Change("worker", worker.name, "alive", {"status": worker.status}, {"status": status}),
            )
        _store_stats(worker, now, report, {r.attempt_id for r in valid})
        queues = list(WorkerQueue.objects.filter(worker=worker).order_by("order").values_list("queue__name", flat=True))
    # After the worker's lock is gone: the lock order is attempt, experiment, worker
    # (core/db.py), so no experiment row is written while a worker row is held.
    experiments_advance_iterations(iterations)
    _fence_lost(actor, replaced, "the agent restarted (new instance id)")
    _fence_lost(actor, lost_claims, "the worker does not run it (the claim answer was lost)")
    if replaced or lost_claims:
        worker_recount_usage(actor=actor, worker=worker)
    return ReportAnswer(kill=kill, stop=stop, drain=worker.draining, queues=queues)


def _report_fast(*, actor: Actor, name: str, report: Report) -> ReportAnswer | None:
    """The answer from reads alone, its writes queued; None when the report changes state."""
    w, server_running, queues = _report_reads(name)
    if w is None or w["status"] in (WorkerStatus.UNRESPONSIVE, WorkerStatus.LOST):
        return None
    if not actor.is_admin and (actor.key is None or w["api_key_id"] != actor.key.pk):
        raise Forbidden(f"worker {name!r} was registered with another key")
    if report.instance_id and w["instance_id"] and report.instance_id != w["instance_id"]:
        return None
    reported = {r.attempt_id: r for r in report.running}
    previous = w["previous_report_at"]
    if previous is not None and any(
        a_id not in reported and claimed_at < previous for a_id, (_, claimed_at, _) in server_running.items()
    ):
        return None  # a lost claim answer: the transactional path retries it
    valid = [r for r in report.running if r.attempt_id in server_running and server_running[r.attempt_id][0] == r.token]
    valid_ids = {r.attempt_id for r in valid}
    kill = sorted(set(reported) - valid_ids)
    stop = sorted(a for a in valid_ids if server_running[a][2] is not None)
    now = timezone.now()
    interval = max(report.interval_s, 0.0)
    timeout = worker_timeout_s(w["timeout_s"], interval)
    stat, attempt_stats = _stat_rows(w["id"], now, report, valid_ids)
    ingest.INGEST.add(
        ingest.Pending(
            worker_id=w["id"],
            at=now,
            live_until=now + timedelta(seconds=timeout),
            interval_s=interval,
            stat=stat,
            attempt_stats=attempt_stats,
            iterations={r.attempt_id: r.iteration for r in valid if r.iteration is not None},
        )
    )
    return ReportAnswer(kill=kill, stop=stop, drain=w["draining"], queues=queues)


def _when(value: Any) -> datetime | None:
    """A timestamp from a raw row: PostgreSQL gives datetimes, SQLite text in UTC."""
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


REPORT_WORKER_SQL = (
    "SELECT id, api_key_id, instance_id, status, draining, previous_report_at, timeout_s "
    "FROM workers_worker WHERE name = %s"
)
REPORT_ATTEMPTS_SQL = (
    "SELECT a.id, a.lease_token, a.claimed_at, e.stop_requested_at FROM experiments_attempt a "
    "JOIN experiments_experiment e ON e.id = a.experiment_id WHERE a.worker_id = %s AND a.finished_at IS NULL"
)
REPORT_QUEUES_SQL = (
    "SELECT q.name FROM workers_workerqueue wq JOIN queues_queue q ON q.id = wq.queue_id "
    'WHERE wq.worker_id = %s ORDER BY wq."order"'
)


# PostgreSQL: the three reads in one prepared statement, one round trip.
REPORT_ONE_SQL = (
    "SELECT w.id, w.api_key_id, w.instance_id, w.status, w.draining, w.previous_report_at, w.timeout_s, "
    "(SELECT COALESCE(json_agg(json_build_array(a.id, a.lease_token, a.claimed_at, e.stop_requested_at)), "
    "'[]'::json)::text FROM experiments_attempt a JOIN experiments_experiment e ON e.id = a.experiment_id "
    "WHERE a.worker_id = w.id AND a.finished_at IS NULL), "
    "(SELECT COALESCE(json_agg(q.name ORDER BY wq.\"order\"), '[]'::json)::text "
    "FROM workers_workerqueue wq JOIN queues_queue q ON q.id = wq.queue_id WHERE wq.worker_id = w.id) "
    "FROM workers_worker w WHERE w.name = %s"
)
REPORT_WORKER_KEYS = ("id", "api_key_id", "instance_id", "status", "draining", "previous_report_at", "timeout_s")


def _report_reads(
    name: str,
) -> tuple[dict[str, Any] | None, dict[str, tuple[str, datetime, datetime | None]], list[str]]:
    """What a report's answer needs: the worker, its running attempts with their stop flags, its queues.

    Plain SQL (no ORM compilation on the hot path): on PostgreSQL one prepared statement,
    elsewhere three.
    """
    if connection.vendor == "postgresql":
        with prepared_cursor() as cur:
            cur.execute(REPORT_ONE_SQL, [name])
            row = cur.fetchone()
        if row is None:
            return None, {}, []
        attempts = [tuple(a) for a in json.loads(row[-2])]
        queues = list(json.loads(row[-1]))
        row = row[:-2]
    else:
        with connection.cursor() as cur:
            cur.execute(REPORT_WORKER_SQL, [name])
            row = cur.fetchone()
            if row is None:
                return None, {}, []
            cur.execute(REPORT_ATTEMPTS_SQL, [row[0]])
            attempts = cur.fetchall()
            cur.execute(REPORT_QUEUES_SQL, [row[0]])
            queues = [q for (q,) in cur.fetchall()]
    w = dict(zip(REPORT_WORKER_KEYS, row, strict=True))
    w["draining"] = bool(w["draining"])
    w["previous_report_at"] = _when(w["previous_report_at"])
    running = {a_id: (token, _when(claimed) or timezone.now(), _when(stop)) for a_id, token, claimed, stop in attempts}
    return w, running, queues


def _stat_rows(
    worker_id: int, now: datetime, report: Report, valid: set[str]
) -> tuple[WorkerStat | None, list[AttemptStat]]:
    m = report.machine
    stat = None
    if m:
        stat = WorkerStat(
            worker_id=worker_id,
            at=now,
            cpu_percent=m.get("cpu_percent"),
            cpu_per_core=m.get("cpu_per_core", []),
            memory_used_mb=m.get("memory_used_mb"),
            memory_free_mb=m.get("memory_free_mb"),
            gpus=m.get("gpus", []),
            network_rx_bps=m.get("network_rx_bps"),
            network_tx_bps=m.get("network_tx_bps"),
            disk_read_bps=m.get("disk_read_bps"),
            disk_write_bps=m.get("disk_write_bps"),
            disk_free_mb=m.get("disk_free_mb"),
            running=len(valid),
        )
    rows = [
        AttemptStat(
            attempt_id=a["attempt"],
            at=now,
            cpu_percent=a.get("cpu_percent"),
            memory_mb=a.get("memory_mb"),
            gpu_util=a.get("gpu_util"),
            gpu_memory_mb=a.get("gpu_memory_mb"),
        )
        for a in report.attempts
        if a["attempt"] in valid
    ]
    return stat, rows


def _store_stats(worker: Worker, now: datetime, report: Report, valid: set[str]) -> None:
    stat, rows = _stat_rows(worker.pk, now, report, valid)
    if stat is not None:
        stat.save()
    AttemptStat.objects.bulk_create(rows)


def worker_check_liveness(*, since: datetime, now: datetime | None = None) -> dict[str, int]:
    """Beat's reconciler: silent one timeout -> unresponsive, two -> lost (its runs retried).

    `since` is when this checker started: no verdict is given until a worker has had two
    of its timeouts to report after it, so a deploy or a beat restart never fails runs.
    """
    now = now or timezone.now()
    counts = {"unresponsive": 0, "lost": 0}

    server_away, server_up_since = server_state(now)
    if server_away:
        return counts  # no agent can report while the server is away: their silence says nothing
    if server_up_since is not None:
        since = max(since, server_up_since)
    candidates = Worker.objects.filter(live_until__lt=now).exclude(status=WorkerStatus.LOST)
    for worker in candidates[:1000]:
        timeout = worker.effective_timeout_s
        if (now - since).total_seconds() < 2 * timeout:
            continue
        silent = (now - worker.last_seen_at).total_seconds()
        if silent >= 2 * timeout:
            verdict = WorkerStatus.LOST
        elif silent >= timeout and worker.status != WorkerStatus.UNRESPONSIVE:
            verdict = WorkerStatus.UNRESPONSIVE
        else:
            continue
        with transaction.atomic():
            rows = Worker.objects.filter(pk=worker.pk, status=worker.status, last_seen_at=worker.last_seen_at).update(
                status=verdict
            )
            if rows != 1:
                continue  # it reported (or another checker ruled) meanwhile
            audit_record(
                actor=SYSTEM,
                change=Change(
                    "worker",
                    worker.name,
                    verdict,
                    {"status": worker.status},
                    {"status": verdict},
                    f"silent for {silent:.0f}s",
                ),
            )
        counts[verdict] += 1
        if verdict == WorkerStatus.LOST:
            for attempt in Attempt.objects.filter(worker=worker, finished_at__isnull=True):
                attempt_fence(
                    actor=SYSTEM,
                    attempt=attempt,
                    failure_class=FailureClass.WORKER_LOST,
                    message=f"worker {worker.name} lost (silent for {silent:.0f}s)",
                )
    return counts
