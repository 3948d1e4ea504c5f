"""Every state change of experiments and attempts: compare-and-set, audited, one function each."""

from __future__ import annotations

import hmac
import math
import secrets
import signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import connection
from django.db.models import Max
from django.utils import timezone

from accounts.actor import SYSTEM, Actor
from accounts.secrets import secret_env_encrypt
from core.audit import Change, audit_record, audit_record_many
from core.db import atomic
from core.errors import Conflict, Forbidden, InvalidInput, NotFound, StaleLease
from experiments.access import manage_check
from experiments.fleet import fleet
from experiments.models import (
    DEFAULT_RETRY_POLICY,
    FINISHED,
    SPEC_FIELDS,
    Attempt,
    Experiment,
    FailureClass,
    LogChunk,
    Snapshot,
    Status,
    UsageRecord,
)
from experiments.text import clean_text
from queues import positions
from queues.access import actor_serves, may_enqueue
from queues.models import Queue, QueueEntry
from queues.selectors import queue_find
from queues.wakeup import notify_queues

# Fields that may change whatever the status (labels, not what runs).
LABEL_FIELDS = frozenset({"name", "project", "tags"})
STOP_SIGNALS = frozenset(s.name for s in signal.Signals if s.name.startswith("SIG") and "_" not in s.name)


@dataclass
class Outcome:
    """What a service did: the experiment, whether it changed anything, and warnings."""

    experiment: Experiment
    changed: bool = True
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers


def _snapshot(exp: Experiment) -> dict[str, Any]:
    return {
        "status": exp.status,
        "queue": exp.queue_id,
        "status_message": exp.status_message,
        "attempt": exp.current_attempt_id,
    }


def _locked(experiment_id: str) -> Experiment:
    try:
        return Experiment.objects.select_for_update().get(pk=experiment_id)
    except Experiment.DoesNotExist:
        raise NotFound(f"experiment {experiment_id} does not exist", field="experiment") from None


def _locked_run(experiment_id: str) -> tuple[Experiment, Attempt | None]:
    """The experiment and its current attempt, both locked, the attempt first (core/db.py's
    lock order, the one the agent's writes take), so a stop never deadlocks with a finish."""
    for _ in range(5):
        current = Experiment.objects.filter(pk=experiment_id).values_list("current_attempt_id", flat=True).first()
        attempt = None
        if current is not None:
            attempt = Attempt.objects.select_for_update(of=("self",)).select_related("worker").get(pk=current)
        exp = _locked(experiment_id)
        if exp.current_attempt_id == current:
            return exp, attempt
    raise Conflict(f"experiment {experiment_id} keeps changing: try again", field="experiment")


def _check_owner(actor: Actor, exp: Experiment) -> None:
    manage_check(actor, exp.owner_id)


def _move(
    *,
    actor: Actor,
    exp: Experiment,
    to: Status,
    action: str,
    message: str = "",
    **fields: Any,
) -> None:
    """Compare-and-set the status from what was read under lock; audit the change."""
    before = _snapshot(exp)
    now = timezone.now()
    values = {"status": to, "updated_at": now, **fields}
    rows = Experiment.objects.filter(pk=exp.pk, status=exp.status).update(**values)
    if rows != 1:
        raise Conflict(f"experiment {exp.pk} changed while it was being updated; try again")
    for key, value in values.items():
        setattr(exp, key, value)
    audit_record(
        actor=actor,
        change=Change("experiment", exp.pk, action, before, _snapshot(exp), message),
    )


def _illegal(exp: Experiment, verb: str) -> Conflict:
    return Conflict(f"cannot {verb} experiment {exp.pk}: it is {exp.status}", field="status")


def resolve_queue(*, actor: Actor, queue_id: str | None = None, queue_name: str | None = None) -> Queue:
    """The queue with this id, or named by `queue_name`: its id or its name (case-insensitive).

    An unknown queue is a 404 for everyone: a queue is never created by naming it here.
    """
    found = None
    if queue_id:
        found = Queue.objects.filter(pk=queue_id).first()
    elif queue_name:
        found = queue_find(queue_name)
    else:
        raise InvalidInput("a queue is required", field="queue")
    if found is None:
        raise NotFound(f"queue {queue_id or queue_name!r} does not exist", field="queue")
    return found


def validate_spec(values: Mapping[str, Any]) -> None:
    """Domain rules on an experiment's spec that a type check cannot express."""
    gpus = values.get("gpus")
    if gpus is not None and (not math.isfinite(gpus) or gpus < 0 or (gpus > 1 and gpus != int(gpus))):
        raise InvalidInput("gpus must be 0, a fraction below 1, or a whole number", field="gpus")
    cpus = values.get("cpus")
    if cpus is not None and (not math.isfinite(cpus) or cpus < 0):
        raise InvalidInput("cpus must be a finite number of at least 0", field="cpus")
    sig = values.get("stop_signal")
    if sig is not None and sig not in STOP_SIGNALS:
        raise InvalidInput(f"unknown stop signal {sig!r}", field="stop_signal")
    policy = values.get("retry_policy")
    if policy is not None:
        known = set(FailureClass.values) - {FailureClass.STOPPED}
        for key, count in policy.items():
            if key not in known:
                raise InvalidInput(f"unknown failure class {key!r}", field="retry_policy")
            if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 100:
                raise InvalidInput(f"retries for {key} must be an integer from 0 to 100", field="retry_policy")
    wd = values.get("working_dir")
    in_tree = values.get("repository") or values.get("snapshot")
    if values.get("command") and wd and not wd.startswith("/") and not in_tree:
        raise InvalidInput(
            "a command's working directory must be absolute (or relative to its repository)", field="working_dir"
        )
    if wd and in_tree and (wd.startswith("/") or ".." in wd.split("/")):
        raise InvalidInput("the working directory is a path inside the repository", field="working_dir")
    if values.get("script") and values.get("command"):
        raise InvalidInput("give a command or a script, not both", field="script")
    snapshot = values.get("snapshot")
    if snapshot:
        if not Snapshot.objects.filter(pk=snapshot).exists():
            raise InvalidInput(f"snapshot {str(snapshot)[:12]} was not uploaded", field="snapshot")
        if values.get("repository"):
            raise InvalidInput("give a repository or a snapshot, not both", field="snapshot")


# ---------------------------------------------------------------------------- experiments


def _new_values(*, actor: Actor, spec: Mapping[str, Any], group_id: int | None) -> dict[str, Any]:
    """The checked column values of a new experiment (its owner and group included)."""
    if actor.is_agent or not actor.can_write or actor.user_id is None:
        raise Forbidden("only users and admins create experiments")
    unknown = set(spec) - set(SPEC_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    validate_spec(spec)
    values = dict(spec)
    values.setdefault("stop_grace_s", settings.STOP_GRACE_DEFAULT_S)
    if group_id is not None and not actor.is_admin and group_id not in actor.group_ids:
        raise Forbidden("you are not in that group", field="group")
    if group_id is not None and not Group.objects.filter(pk=group_id).exists():
        raise InvalidInput(f"unknown group {group_id}", field="group")
    if "secret_env" in values:
        values["secret_env"] = secret_env_encrypt(values["secret_env"] or {})
    return {"owner_id": actor.user_id, "group_id": group_id, **values}


@atomic
def experiment_create(*, actor: Actor, spec: Mapping[str, Any], group_id: int | None = None) -> Experiment:
    """Create an experiment in `created` from a validated spec."""
    exp = Experiment.objects.create(**_new_values(actor=actor, spec=spec, group_id=group_id))
    audit_record(actor=actor, change=Change("experiment", exp.pk, "create", {}, _snapshot(exp)))
    return exp


@atomic
def experiment_submit(
    *, actor: Actor, spec: Mapping[str, Any], group_id: int | None = None, queue_name: str | None = None
) -> Outcome:
    """Create an experiment and, when a queue is named, put it there, in one transaction.

    An enqueue that is refused (an unknown queue, one the user may not submit to) leaves no
    experiment behind. The new row is written once, already queued: nobody else can see it
    before the commit, so there is nothing to lock or compare. The audit keeps both steps.
    """
    if not queue_name:
        return Outcome(experiment_create(actor=actor, spec=spec, group_id=group_id))
    values = _new_values(actor=actor, spec=spec, group_id=group_id)
    queue = resolve_queue(actor=actor, queue_name=queue_name)
    if not may_enqueue(actor, queue):
        raise Forbidden(f"you may not submit to queue {queue.name}", field="queue")
    warnings = [] if fleet().listens(queue.pk) else [f"no live worker listens to queue {queue.name}"]
    exp = Experiment.objects.create(
        **values, status=Status.QUEUED, enqueue_status=Status.CREATED, queue=queue, queued_at=timezone.now()
    )
    _add_entry(exp, queue)
    created = {**_snapshot(exp), "status": Status.CREATED, "queue": None}
    audit_record_many(
        actor=actor,
        changes=[
            Change("experiment", exp.pk, "create", {}, created),
            Change("experiment", exp.pk, "enqueue", created, _snapshot(exp), f"queue {queue.name}"),
        ],
    )
    notify_queues([queue.pk])
    return Outcome(exp, warnings=warnings)


@atomic
def experiment_update(*, actor: Actor, experiment_id: str, changes: Mapping[str, Any]) -> Experiment:
    """Edit an experiment: labels at any time, what it runs only while it is `created`."""
    exp = _locked(experiment_id)
    _check_owner(actor, exp)
    unknown = set(changes) - set(SPEC_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    spec_changes = set(changes) - LABEL_FIELDS
    if spec_changes and exp.status != Status.CREATED:
        raise Conflict(
            f"only a created experiment's spec can be edited (it is {exp.status}); clone it instead",
            field=sorted(spec_changes)[0],
        )
    validate_spec({**{f: getattr(exp, f) for f in SPEC_FIELDS}, **changes})
    if not changes:
        return exp
    before = {k: getattr(exp, k) for k in changes if k != "secret_env"}
    for key, value in changes.items():
        setattr(exp, key, secret_env_encrypt(value or {}) if key == "secret_env" else value)
    exp.save(update_fields=[*changes, "updated_at"])
    after = {k: getattr(exp, k) for k in changes if k != "secret_env"}
    audit_record(actor=actor, change=Change("experiment", exp.pk, "edit", before, after))
    return exp


def _clone_values(exp: Experiment, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    values = {f: getattr(exp, f) for f in SPEC_FIELDS}
    if overrides:
        params = dict(values["parameters"])
        for key, value in overrides.items():
            if key in SPEC_FIELDS and key != "parameters":
                values[key] = value
            else:
                params[key] = value
        values["parameters"] = params
    return values


@atomic
def experiment_clone(
    *, actor: Actor, experiment_id: str, overrides: Mapping[str, Any] | None = None, name: str | None = None
) -> Experiment:
    """A new `created` experiment with the same spec (overrides applied), linked to its parent."""
    try:
        source = Experiment.objects.get(pk=experiment_id)
    except Experiment.DoesNotExist:
        raise NotFound(f"experiment {experiment_id} does not exist", field="experiment") from None
    if actor.is_agent or not actor.can_write or actor.user_id is None:
        raise Forbidden("only users and admins clone experiments")
    values = _clone_values(source, overrides)
    values["name"] = name or source.name
    validate_spec(values)
    if overrides and "secret_env" in overrides:
        values["secret_env"] = secret_env_encrypt(overrides["secret_env"] or {})
    elif source.owner_id != actor.user_id:
        # Secrets belong to their owner: another user's clone (an admin's too) runs without them.
        values["secret_env"] = {}
    exp = Experiment.objects.create(
        owner_id=actor.user_id, group_id=source.group_id, parent=source, queue=source.queue, **values
    )
    audit_record(
        actor=actor,
        change=Change("experiment", exp.pk, "clone", {}, _snapshot(exp), f"cloned from {source.pk}"),
    )
    return exp


def _add_entry(exp: Experiment, queue: Queue, *, front: bool = False) -> QueueEntry:
    position = positions.front_position(queue.pk, exp.priority) if front else positions.next_position()
    return QueueEntry.objects.create(
        queue=queue,
        experiment=exp,
        priority=exp.priority,
        position=position,
        added_at=timezone.now(),
        gpus=exp.gpus,
        gpu_type=exp.gpu_type,
        cpus=exp.cpus,
        memory_mb=exp.memory_mb,
        needs=exp.needs_mask,
    )


@atomic
def experiment_enqueue(
    *,
    actor: Actor,
    experiment_id: str,
    queue_id: str | None = None,
    queue_name: str | None = None,
    priority: int | None = None,
) -> Outcome:
    """Put an experiment in a queue; a queued one moves; warns when no live worker listens."""
    exp = _locked(experiment_id)
    _check_owner(actor, exp)
    if not queue_id and not queue_name and exp.queue_id:
        queue_id = exp.queue_id
    queue = resolve_queue(actor=actor, queue_id=queue_id, queue_name=queue_name)
    if not may_enqueue(actor, queue):
        raise Forbidden(f"you may not submit to queue {queue.name}", field="queue")
    if priority is not None and priority != exp.priority:
        Experiment.objects.filter(pk=exp.pk).update(priority=priority)
        exp.priority = priority
    warnings = [] if fleet().listens(queue.pk) else [f"no live worker listens to queue {queue.name}"]
    if exp.status == Status.QUEUED:
        entry = QueueEntry.objects.filter(experiment=exp).first()
        if entry is not None and entry.queue_id == queue.pk and (priority is None or entry.priority == priority):
            return Outcome(exp, changed=False, warnings=warnings)
        experiments_move_to_queue(actor=actor, entries=[entry] if entry else [], experiments=[exp], target=queue)
        return Outcome(exp, warnings=warnings)
    if exp.status == Status.IN_PROGRESS:
        raise _illegal(exp, "enqueue")
    _add_entry(exp, queue)
    _move(
        actor=actor,
        exp=exp,
        to=Status.QUEUED,
        action="enqueue",
        message=f"queue {queue.name}",
        enqueue_status=exp.status,
        queue=queue,
        queued_at=timezone.now(),
        status_reason="",
        status_message="",
        stop_requested_at=None,
    )
    notify_queues([queue.pk])
    return Outcome(exp, warnings=warnings)


def experiments_move_to_queue(
    *, actor: Actor, entries: Sequence[QueueEntry], experiments: Sequence[Experiment], target: Queue
) -> None:
    """Move entries to the end of another queue, in the order given (their priority kept).

    A fixed number of statements whatever the selection's size: positions come in one
    block, entries and experiments are updated in bulk.
    """
    pairs = [(e, x) for e, x in zip(entries, experiments, strict=True) if e.queue_id != target.pk]
    if not pairs:
        return
    befores = [_snapshot(x) for _, x in pairs]
    for (entry, exp), position in zip(pairs, positions.next_positions(len(pairs)), strict=True):
        entry.queue, entry.position = target, position
        exp.queue = target
    QueueEntry.objects.bulk_update([e for e, _ in pairs], ["queue", "position"], batch_size=1000)
    Experiment.objects.filter(pk__in=[x.pk for _, x in pairs]).update(queue=target, updated_at=timezone.now())
    audit_record_many(
        actor=actor,
        changes=[
            Change("experiment", x.pk, "move_queue", before, _snapshot(x), f"to queue {target.name}")
            for (_, x), before in zip(pairs, befores, strict=True)
        ],
    )
    notify_queues([target.pk])


def _return_from_queue(exp: Experiment) -> Status:
    """The status a dequeued experiment goes back to (its enqueue_status, else created)."""
    back = exp.enqueue_status
    return Status(back) if back in (Status.CREATED, *FINISHED) else Status.CREATED


@atomic
def experiment_dequeue(*, actor: Actor, experiment_id: str) -> Outcome:
    """Take a queued experiment out of its queue, back to the status it had before."""
    exp = _locked(experiment_id)
    _check_owner(actor, exp)
    if exp.status != Status.QUEUED:
        if exp.status == Status.IN_PROGRESS:
            raise _illegal(exp, "dequeue")
        return Outcome(exp, changed=False)
    QueueEntry.objects.filter(experiment=exp).delete()
    _move(actor=actor, exp=exp, to=_return_from_queue(exp), action="dequeue", enqueue_status="")
    return Outcome(exp)


def experiments_dequeue_many(*, actor: Actor, entries: Iterable[QueueEntry], action: str = "dequeue") -> int:
    """Dequeue many entries in bulk (clear, delete, bulk dequeue): each back to its enqueue_status."""
    ids = [e.experiment_id for e in entries]
    if not ids:
        return 0
    exps = list(Experiment.objects.select_for_update().filter(pk__in=ids, status=Status.QUEUED))
    QueueEntry.objects.filter(experiment_id__in=[e.pk for e in exps]).delete()
    now = timezone.now()
    changes = []
    by_status: dict[Status, list[str]] = {}
    for exp in exps:
        before = _snapshot(exp)
        exp.status = _return_from_queue(exp)
        by_status.setdefault(exp.status, []).append(exp.pk)
        changes.append(Change("experiment", exp.pk, action, before, _snapshot(exp)))
    for status, pks in by_status.items():
        Experiment.objects.filter(pk__in=pks, status=Status.QUEUED).update(
            status=status, enqueue_status="", updated_at=now
        )
    audit_record_many(actor=actor, changes=changes)
    return len(exps)


@atomic
def experiment_stop(*, actor: Actor, experiment_id: str, message: str = "") -> Outcome:
    """Stop: queued at once; running on a live worker, a request the agent carries out."""
    exp, attempt = _locked_run(experiment_id)
    _check_owner(actor, exp)
    if exp.status == Status.STOPPED:
        return Outcome(exp, changed=False)
    if exp.status == Status.QUEUED:
        QueueEntry.objects.filter(experiment=exp).delete()
        _move(actor=actor, exp=exp, to=Status.STOPPED, action="stop", message=message, finished_at=timezone.now())
        return Outcome(exp)
    if exp.status != Status.IN_PROGRESS:
        raise _illegal(exp, "stop")
    if attempt is not None and attempt.worker_id is not None and fleet().runs(attempt.worker_id):
        if exp.stop_requested_at is not None:
            return Outcome(exp, changed=False)
        before = _snapshot(exp)
        Experiment.objects.filter(pk=exp.pk).update(
            stop_requested_at=timezone.now(), status_message="stopping", updated_at=timezone.now()
        )
        exp.status_message = "stopping"
        audit_record(actor=actor, change=Change("experiment", exp.pk, "stop_request", before, _snapshot(exp), message))
        return Outcome(exp)
    if attempt is not None:
        _end_attempt(attempt, actor=actor, outcome=Status.STOPPED, failure_class=FailureClass.STOPPED, fenced=True)
    _move(actor=actor, exp=exp, to=Status.STOPPED, action="stop", message=message, finished_at=timezone.now())
    return Outcome(exp)


@atomic
def experiment_reset(*, actor: Actor, experiment_id: str) -> Outcome:
    """Back to `created`: from a finished status, or from a run (whose attempt is fenced)."""
    exp, attempt = _locked_run(experiment_id)
    _check_owner(actor, exp)
    if exp.status == Status.CREATED:
        return Outcome(exp, changed=False)
    if exp.status == Status.QUEUED:
        raise Conflict(f"experiment {exp.pk} is queued: dequeue it first", field="status")
    if exp.status == Status.IN_PROGRESS and attempt is not None:
        _end_attempt(attempt, actor=actor, outcome=Status.STOPPED, failure_class=FailureClass.STOPPED, fenced=True)
    _move(
        actor=actor,
        exp=exp,
        to=Status.CREATED,
        action="reset",
        status_reason="",
        status_message="",
        enqueue_status="",
        stop_requested_at=None,
        started_at=None,
        finished_at=None,
        exit_code=None,
        last_iteration=None,
        last_metrics={},
        retry_count=0,
    )
    return Outcome(exp)


@atomic
def experiment_rerun(
    *,
    actor: Actor,
    experiment_id: str,
    queue_id: str | None = None,
    queue_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Outcome:
    """Run a finished experiment again: a new attempt, or with overrides a linked clone."""
    exp = _locked(experiment_id)
    _check_owner(actor, exp)
    if exp.status not in FINISHED:
        raise _illegal(exp, "re-run")
    if overrides:
        clone = experiment_clone(actor=actor, experiment_id=exp.pk, overrides=overrides)
        return experiment_enqueue(
            actor=actor, experiment_id=clone.pk, queue_id=queue_id or exp.queue_id, queue_name=queue_name
        )
    Experiment.objects.filter(pk=exp.pk).update(retry_count=0, exit_code=None, stop_requested_at=None)
    return experiment_enqueue(actor=actor, experiment_id=exp.pk, queue_id=queue_id, queue_name=queue_name)


# ---------------------------------------------------------------------------- attempts (agent side)


def _leased(*, actor: Actor, attempt_id: str, token: str) -> Attempt:
    """The attempt, locked, if `token` is its lease and it was not fenced; else 409 (kill it)."""
    try:
        attempt = Attempt.objects.select_for_update(of=("self",)).select_related("worker").get(pk=attempt_id)
    except Attempt.DoesNotExist:
        raise NotFound(f"attempt {attempt_id} does not exist", field="attempt") from None
    if not actor.is_admin:
        worker = attempt.worker
        if worker is None:
            # Claimed through ClearML's get_next_task, which names no worker: until a worker
            # binds it (attempt_bind), any agent key that may serve its queue may write to it.
            if not actor.is_agent or actor.key is None or not actor_serves(actor, attempt.queue_id):
                raise Forbidden("this attempt was claimed for a queue your key does not serve")
        elif actor.key is None or worker.api_key_id != actor.key.pk:
            raise Forbidden("this attempt runs on a worker your key does not own")
    if not hmac.compare_digest(attempt.lease_token, token) or attempt.fenced:
        raise StaleLease()
    return attempt


def _agent_runs(actor: Actor, exp: Experiment) -> bool:
    """Whether this agent key runs the experiment now: its current attempt is on the key's worker,
    or, claimed through ClearML's pop and not bound yet, in a queue the key serves."""
    if exp.current_attempt_id is None or actor.key is None:
        return False
    attempt = Attempt.objects.select_related("worker").filter(pk=exp.current_attempt_id).first()
    if attempt is None or attempt.finished_at is not None:
        return False
    if attempt.worker is None:
        return actor_serves(actor, attempt.queue_id)
    return attempt.worker.api_key_id == actor.key.pk


def attempts_unbound_expire(*, now: datetime | None = None) -> int:
    """Retry (or fail) attempts claimed through ClearML's get_next_task that no worker bound in time."""

    now = now or timezone.now()
    deadline = now - timedelta(seconds=settings.CLEARML_BIND_TIMEOUT_S)
    stale = list(Attempt.objects.filter(worker__isnull=True, finished_at__isnull=True, claimed_at__lt=deadline))
    for attempt in stale:
        attempt_fence(
            actor=SYSTEM, attempt=attempt, failure_class=FailureClass.WORKER_LOST,
            message="claimed through ClearML's API but no worker reported running it",
        )  # fmt: skip
    return len(stale)


@atomic
def experiment_set_runtime(*, actor: Actor, experiment_id: str, runtime: Mapping[str, Any]) -> Experiment:
    """Merge keys into the experiment's runtime properties (ClearML's `runtime`: the agent's notes)."""
    exp = _locked(experiment_id)
    if not actor.can_write:
        raise Forbidden("this key is read-only")
    if actor.is_agent and not _agent_runs(actor, exp):
        raise Forbidden("an agent changes the runtime properties of experiments it runs only")
    if not (actor.is_admin or actor.is_agent or exp.owner_id == actor.user_id):
        raise Forbidden("only the owner, an admin or the agent running it may change its runtime properties")
    merged = {**exp.runtime, **dict(runtime)}
    if merged != exp.runtime:
        before = {"runtime": exp.runtime}
        Experiment.objects.filter(pk=exp.pk).update(runtime=merged, updated_at=timezone.now())
        exp.runtime = merged
        audit_record(actor=actor, change=Change("experiment", exp.pk, "runtime", before, {"runtime": merged}))
    return exp


@atomic
def attempt_set_requirements(*, actor: Actor, attempt_id: str, token: str, requirements: str) -> Attempt:
    """Store the environment the agent actually built for this attempt (a re-run rebuilds it)."""
    attempt = _leased(actor=actor, attempt_id=attempt_id, token=token)
    text = requirements[:1_000_000]
    if attempt.frozen_requirements != text:
        Attempt.objects.filter(pk=attempt.pk).update(frozen_requirements=text)
        attempt.frozen_requirements = text
    return attempt


@atomic
def attempt_start(*, actor: Actor, attempt_id: str, token: str) -> Attempt:
    """The agent started the run; a repeat is a no-op."""
    attempt = _leased(actor=actor, attempt_id=attempt_id, token=token)
    if attempt.started_at is not None:
        return attempt
    if attempt.finished_at is not None:
        raise Conflict("this attempt has already finished")
    now = timezone.now()
    Attempt.objects.filter(pk=attempt.pk, started_at__isnull=True).update(started_at=now)
    attempt.started_at = now
    exp = _locked(attempt.experiment_id)
    before = _snapshot(exp)
    Experiment.objects.filter(pk=exp.pk, started_at__isnull=True).update(started_at=now)
    audit_record(
        actor=actor,
        change=Change("attempt", attempt.pk, "start", before, {**before, "started_at": now.isoformat()}),
    )
    return attempt


@atomic
def attempt_progress(
    *, actor: Actor, attempt_id: str, token: str, iteration: int | None, metrics: Mapping[str, float]
) -> bool:
    """Record the latest iteration and scalars (not a state change); True when a stop is requested."""
    attempt = _leased(actor=actor, attempt_id=attempt_id, token=token)
    if attempt.finished_at is not None:
        raise Conflict("this attempt has already finished")
    exp = Experiment.objects.only("id", "last_metrics", "last_iteration", "stop_requested_at").get(
        pk=attempt.experiment_id
    )
    fields: dict[str, Any] = {}
    if iteration is not None and (exp.last_iteration is None or iteration > exp.last_iteration):
        fields["last_iteration"] = iteration
    if metrics:
        fields["last_metrics"] = {**exp.last_metrics, **metrics}
    if fields:
        Experiment.objects.filter(pk=exp.pk).update(**fields)
    return exp.stop_requested_at is not None


@atomic
def attempt_append_logs(*, actor: Actor, attempt_id: str, token: str, chunks: Sequence[tuple[int, str]]) -> int:
    """Store sequenced log chunks; a chunk seen before is skipped; over the cap keep head and tail."""
    return _store_chunks(_leased(actor=actor, attempt_id=attempt_id, token=token), chunks)


def _store_chunks(attempt: Attempt, chunks: Sequence[tuple[int, str]]) -> int:
    """attempt_append_logs' work on the attempt it has locked.

    A log keeps its head (LOG_HEAD_BYTES) and its tail (LOG_TAIL_BYTES); once a chunk went to
    the tail, every later one does, so the two never interleave. When the tail grows past its
    cap its oldest chunks go, and both cut ends are trimmed to whole lines (a chunk without any
    newline, one huge line, stays whole); what went is counted, in bytes and lines, for the one
    marker a reader sees where the middle was (selectors.log_page).
    """
    seqs = [seq for seq, _ in chunks]
    seen = set(LogChunk.objects.filter(attempt=attempt, seq__in=seqs).values_list("seq", flat=True))
    fresh: dict[int, str] = {}
    for seq, text in chunks:
        if seq not in seen:
            fresh[seq] = clean_text(text)
    if not fresh:
        return 0
    head_cap: int = settings.LOG_HEAD_BYTES
    tail_cap: int = settings.LOG_TAIL_BYTES
    head, tail = attempt.log_head_bytes, attempt.log_tail_bytes
    in_tail = tail > 0 or attempt.log_truncated
    rows = []
    for seq in sorted(fresh):
        text = fresh[seq]
        size = len(text.encode())
        in_tail = in_tail or (head > 0 and head + size > head_cap)
        if in_tail:
            tail += size
        else:
            head += size
        rows.append(LogChunk(attempt=attempt, seq=seq, text=text, in_tail=in_tail))
    LogChunk.objects.bulk_create(rows, ignore_conflicts=True)
    values: dict[str, Any] = {"log_head_bytes": head, "log_tail_bytes": tail}
    if tail > tail_cap:
        values.update(_drop_the_middle(attempt, head, tail, tail_cap))
    Attempt.objects.filter(pk=attempt.pk).update(**values)
    for key, value in values.items():
        setattr(attempt, key, value)
    return len(rows)


def _drop_the_middle(attempt: Attempt, head: int, tail: int, tail_cap: int) -> dict[str, Any]:
    """Drop the oldest tail chunks until the tail fits, trim both cut ends to whole lines; the
    attempt's new sizes and drop counts."""
    dropped_bytes, dropped_lines = attempt.log_dropped_bytes, attempt.log_dropped_lines
    gone: list[int] = []
    ended_line = True  # whether the text dropped last ended with a newline
    for pk, text in LogChunk.objects.filter(attempt=attempt, in_tail=True).order_by("seq").values_list("pk", "text"):
        if tail <= tail_cap:
            break
        size = len(text.encode())
        gone.append(pk)
        tail -= size
        dropped_bytes += size
        dropped_lines += text.count("\n")
        ended_line = text.endswith("\n")
    LogChunk.objects.filter(pk__in=gone).delete()
    first = LogChunk.objects.filter(attempt=attempt, in_tail=True).order_by("seq").first()
    if first is not None and not ended_line and "\n" in first.text:
        cut, _, rest = first.text.partition("\n")  # the rest of a line whose start was dropped
        LogChunk.objects.filter(pk=first.pk).update(text=rest)
        size = len(cut.encode()) + 1
        tail -= size
        dropped_bytes += size
        dropped_lines += 1
    if not attempt.log_truncated:  # the first drop: the head's last line lost its continuation
        last = LogChunk.objects.filter(attempt=attempt, in_tail=False).order_by("-seq").first()
        if last is not None and not last.text.endswith("\n") and "\n" in last.text:
            kept, _, partial = last.text.rpartition("\n")
            LogChunk.objects.filter(pk=last.pk).update(text=kept + "\n")
            size = len(partial.encode())
            head -= size
            dropped_bytes += size
    return {
        "log_head_bytes": head,
        "log_tail_bytes": tail,
        "log_truncated": True,
        "log_dropped_bytes": dropped_bytes,
        "log_dropped_lines": dropped_lines,
    }


@atomic
def attempt_append_text(*, actor: Actor, attempt_id: str, token: str, text: str) -> int:
    """Append text after the attempt's last chunk, for writers that send no sequence (ClearML's events).

    The next sequence number is read under the attempt's lock, so two writers at once (the
    agent and the SDK in the task both send console lines) never take the same number,
    which would have made the second chunk look like a repeat of the first and dropped it.
    """
    attempt = _leased(actor=actor, attempt_id=attempt_id, token=token)
    top = LogChunk.objects.filter(attempt=attempt).aggregate(top=Max("seq"))["top"]
    return _store_chunks(attempt, [((top or 0) + 1, text)])


UNSTARTED_FREE_RETURNS = 3
INTERRUPTED_FREE_RETURNS = 5


def _retry_allowed(exp: Experiment, failure_class: str) -> bool:
    policy = {**DEFAULT_RETRY_POLICY, **(exp.retry_policy or {})}
    return exp.stop_requested_at is None and exp.retry_count < int(policy.get(failure_class, 0))


def _record_usage(attempt: Attempt, exp: Experiment, ended: datetime) -> None:
    worker = attempt.worker
    gpu_type = ""
    if worker is not None and worker.gpu_slots:
        gpu_type = str(worker.gpu_slots[0].get("model", ""))
    queue_name = Queue.objects.filter(pk=attempt.queue_id).values_list("name", flat=True).first() or ""
    UsageRecord.objects.get_or_create(
        attempt=attempt,
        defaults={
            "owner_id": exp.owner_id,
            "group_id": exp.group_id,
            "project": exp.project,
            "queue_name": queue_name,
            "worker_name": attempt.worker_name,
            "gpu_type": gpu_type,
            "gpu_count": attempt.gpus,
            "cpus": attempt.cpus,
            "started_at": attempt.started_at or attempt.claimed_at,
            "ended_at": ended,
        },
    )


def _end_attempt(
    attempt: Attempt,
    *,
    actor: Actor,
    outcome: Status,
    failure_class: str = "",
    exit_code: int | None = None,
    message: str = "",
    fenced: bool = False,
    resource_summary: Mapping[str, Any] | None = None,
) -> None:
    now = timezone.now()
    values: dict[str, Any] = {
        "finished_at": now,
        "outcome": outcome,
        "failure_class": failure_class,
        "exit_code": exit_code,
        "message": message[:500],
        "fenced": fenced,
    }
    if resource_summary is not None:
        values["resource_summary"] = dict(resource_summary)
    ended = Attempt.objects.filter(pk=attempt.pk, finished_at__isnull=True).update(**values)
    for key, value in values.items():
        setattr(attempt, key, value)
    if ended and attempt.worker_id is not None:
        fleet().release(actor=actor, attempt=attempt)
    exp = Experiment.objects.get(pk=attempt.experiment_id)
    _record_usage(attempt, exp, now)


def _settle_experiment(
    *, actor: Actor, exp: Experiment, attempt: Attempt, outcome: Status, failure_class: str, message: str
) -> None:
    """After an attempt ended: retry at the front of its queue when the policy allows, else finish.

    A claim that never started (its answer lost, or the agent stopped while it was on its
    way) goes back to the front without using a retry: nothing of it ran. Only the first
    UNSTARTED_FREE_RETURNS such returns are free, so a spec that kills every agent that
    receives it still ends.
    """
    if exp.stop_requested_at is not None and outcome != Status.COMPLETED:
        # A user asked it to stop: however the attempt then ended (its agent gone, restarted, or
        # no longer running it), the answer is "stopped", never a retry.
        outcome, failure_class = Status.STOPPED, FailureClass.STOPPED
        message = f"stopped on request ({message})" if message else "stopped on request"
    free = (
        failure_class == FailureClass.WORKER_LOST
        and attempt.started_at is None
        and exp.stop_requested_at is None
        and Attempt.objects.filter(experiment_id=exp.pk, started_at__isnull=True).count() <= UNSTARTED_FREE_RETURNS
    )
    # A machine the cloud took back (spot, preemption) is nobody's fault: the run goes back to
    # the front without using a retry, up to INTERRUPTED_FREE_RETURNS times.
    interrupted = (
        failure_class == FailureClass.INTERRUPTED
        and exp.stop_requested_at is None
        and Attempt.objects.filter(experiment_id=exp.pk, failure_class=FailureClass.INTERRUPTED).count()
        <= INTERRUPTED_FREE_RETURNS
    )
    free = free or interrupted
    if outcome != Status.COMPLETED and failure_class and (free or _retry_allowed(exp, failure_class)):
        queue = Queue.objects.filter(pk=attempt.queue_id or exp.queue_id).first()
        if queue is not None:
            _add_entry(exp, queue, front=True)
            _move(
                actor=actor,
                exp=exp,
                to=Status.QUEUED,
                action="retry",
                message=(
                    f"back to the front: its machine {attempt.worker_name or ''} was interrupted ({message})"
                    if interrupted
                    else f"back to the front: it never started on {attempt.worker_name or 'its worker'} ({message})"
                    if free
                    else f"retry {exp.retry_count + 1} after {failure_class}"
                ),
                enqueue_status=Status.CREATED,
                queue=queue,
                queued_at=timezone.now(),
                retry_count=exp.retry_count + (0 if free else 1),
                status_reason=failure_class,
            )
            notify_queues([queue.pk])
            return
    _move(
        actor=actor,
        exp=exp,
        to=outcome,
        action="finish",
        message=message,
        finished_at=timezone.now(),
        exit_code=attempt.exit_code,
        status_reason=failure_class,
        status_message=message[:500],
    )


@atomic
def attempt_finish(
    *,
    actor: Actor,
    attempt_id: str,
    token: str,
    outcome: Status,
    exit_code: int | None = None,
    failure_class: str = "",
    message: str = "",
    resource_summary: Mapping[str, Any] | None = None,
    frozen_requirements: str | None = None,
) -> Attempt:
    """The agent's final word on a run; the same word again is a no-op (delivery is retried)."""
    if outcome not in FINISHED:
        raise InvalidInput("outcome must be completed, failed or stopped", field="outcome")
    attempt = _leased(actor=actor, attempt_id=attempt_id, token=token)
    exp = _locked(attempt.experiment_id)
    if outcome == Status.FAILED and exp.stop_requested_at is not None:
        outcome = Status.STOPPED  # the run died of the stop we asked for
    if outcome == Status.STOPPED:
        failure_class = FailureClass.STOPPED
    elif outcome == Status.COMPLETED:
        failure_class = ""
    elif not failure_class:
        failure_class = FailureClass.USER_ERROR
    if attempt.finished_at is not None:
        if attempt.outcome == outcome:
            return attempt
        raise Conflict(f"this attempt already finished as {attempt.outcome}")
    if exp.current_attempt_id != attempt.pk or exp.status != Status.IN_PROGRESS:
        raise StaleLease()
    if frozen_requirements is not None:
        Attempt.objects.filter(pk=attempt.pk).update(frozen_requirements=frozen_requirements)
    _end_attempt(
        attempt,
        actor=actor,
        outcome=outcome,
        failure_class=failure_class,
        exit_code=exit_code,
        message=message,
        resource_summary=resource_summary,
    )
    _settle_experiment(
        actor=actor, exp=exp, attempt=attempt, outcome=outcome, failure_class=failure_class, message=message
    )
    return attempt


@atomic
def attempt_fence(*, actor: Actor, attempt: Attempt, failure_class: str, message: str) -> None:
    """End a run the server gave up on (worker lost or replaced): fence it, then retry or fail."""
    attempt = Attempt.objects.select_for_update(of=("self",)).select_related("worker").get(pk=attempt.pk)
    if attempt.finished_at is not None:
        return
    exp = _locked(attempt.experiment_id)
    _end_attempt(attempt, actor=actor, outcome=Status.FAILED, failure_class=failure_class, message=message, fenced=True)
    if exp.current_attempt_id == attempt.pk and exp.status == Status.IN_PROGRESS:
        outcome = Status.STOPPED if exp.stop_requested_at is not None else Status.FAILED
        _settle_experiment(
            actor=actor, exp=exp, attempt=attempt, outcome=outcome, failure_class=failure_class, message=message
        )


def new_lease_token() -> str:
    return secrets.token_hex(16)


def next_attempt_number(experiment_id: str) -> int:
    top = Attempt.objects.filter(experiment_id=experiment_id).aggregate(top=Max("number"))["top"]
    return (top or 0) + 1


def experiments_advance_iterations(iterations: dict[str, int]) -> None:
    """Move experiments' last iteration forward, never back, in one statement (rows in attempt id order),
    from their current attempts' reports: {attempt id: iteration}.

    The comparison is in the UPDATE itself, so two writers at once cannot move it back.
    """
    if not iterations:
        return
    table = Experiment._meta.db_table
    items = sorted(iterations.items())
    with connection.cursor() as cur:
        if connection.vendor == "postgresql":
            values = ", ".join(["(%s, %s::bigint)"] * len(items))
            # Rows locked in id order first (an UPDATE … FROM locks in whatever order its join
            # reads them): two writers of overlapping sets never wait on each other in a cycle.
            cur.execute(
                f"WITH v(attempt, it) AS (VALUES {values}), "  # noqa: S608 - constants
                f"locked AS (SELECT x.id, v.it FROM {table} x JOIN v ON x.current_attempt_id = v.attempt "
                "WHERE x.last_iteration IS NULL OR x.last_iteration < v.it ORDER BY x.id FOR UPDATE OF x) "
                f"UPDATE {table} AS x SET last_iteration = locked.it FROM locked "
                "WHERE x.id = locked.id AND (x.last_iteration IS NULL OR x.last_iteration < locked.it)",
                [p for item in items for p in item],
            )
            return
        cur.executemany(
            f"UPDATE {table} SET last_iteration = %s WHERE current_attempt_id = %s "  # noqa: S608 - constants
            "AND (last_iteration IS NULL OR last_iteration < %s)",
            [(it, attempt, it) for attempt, it in items],
        )
