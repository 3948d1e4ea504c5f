"""ClearML endpoints over Muster's services (no second copy of any state change).

What clearml-agent 3.0.3 and 1.9.2 call (reference/clearml.md §3.1 and §3.7), with ClearML's
request and response shapes. The attempt a clearml-agent runs is found from the task (the
experiment's current attempt); the facade passes its lease token to the services, and the
services check the caller's key: before a worker binds the attempt (its first status_report
naming the task), any agent key that serves the attempt's queue; after, only the bound
worker's key.
"""

from __future__ import annotations

import re
import shlex
import statistics
import time
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, F, Window
from django.db.models.functions import RowNumber
from django.utils import timezone

from accounts.actor import Actor
from clearml_api.mapping import iso, project, queue_doc, script_changes, task_doc, worker_doc
from clearml_api.patterns import name_matcher
from clearml_api.tokens import token_issue
from clearml_api.transport import ApiFailure, Call, endpoint
from experiments import services as exp_services
from experiments.models import Attempt, Capability, Experiment, Status
from queues import services as queue_services
from queues.access import actor_servable_queue_ids
from queues.models import Queue, QueueEntry
from queues.selectors import queue_find
from workers import selectors as worker_selectors
from workers import services as worker_services
from workers.dispatch import Capacity, dispatch_claim
from workers.models import Worker, WorkerKind, WorkerQueue

CLEARML_CAPABILITIES = Capability.SCRIPT | Capability.GIT  # literal scripts and git; no argv, no snapshots
MAX_ENTRIES = 1000
NAME_SCAN = 20_000  # tasks.get_all with a name pattern looks at this many of the newest tasks
MB = 1024 * 1024

# -- auth ------------------------------------------------------------------------------------------


@endpoint("auth.login")
def auth_login(call: Call) -> dict[str, Any]:
    actor = call.caller
    if not call.key_access:
        raise ApiFailure(401, 20, "Unauthorized (log in with an API key)")
    raw = call.data.get("expiration_sec")
    expiry = int(raw) if isinstance(raw, (int, str)) and str(raw).isdigit() else 30 * 86400

    user = User.objects.get(pk=int(actor.user_id or 0))
    token = token_issue(access_key=call.key_access, user_id=user.pk, username=user.get_username(),
                        role=str(actor.role), expiry_s=max(60, min(expiry, 365 * 86400)))  # fmt: skip
    return {"token": token}


# -- queues ----------------------------------------------------------------------------------------


def _queue(ref: str) -> Queue:
    queue = queue_find(ref)
    if queue is None:
        raise ApiFailure(400, 701, f"Invalid queue id (id={ref})")
    return queue


def _entries(queue_ids: list[str], limit: int) -> dict[str, list[Any]]:
    """The first `limit` entries of each queue in claim order, in one query for all of them."""

    order = [F("priority").desc(), F("position").asc(), F("id").asc()]
    rows = (
        QueueEntry.objects.filter(queue_id__in=queue_ids)
        .annotate(rank=Window(RowNumber(), partition_by=[F("queue_id")], order_by=order))
        .filter(rank__lte=limit)
        .order_by("queue_id", "rank")
        .values_list("queue_id", "experiment_id", "added_at")
    )
    out: dict[str, list[Any]] = {q: [] for q in queue_ids}
    for queue_id, experiment_id, added_at in rows:
        out[queue_id].append((experiment_id, added_at))
    return out


def _queue_docs(call: Call, queues: list[Queue]) -> list[dict[str, Any]]:
    only = call.strings("only_fields")
    want_entries = not only or any(f == "entries" or f.startswith("entries.") for f in only)
    limit = call.data.get("max_task_entries")
    limit = min(int(limit), MAX_ENTRIES) if isinstance(limit, int) and limit >= 0 else MAX_ENTRIES
    entries = _entries([q.pk for q in queues], limit) if want_entries else {}
    return [project(queue_doc(q, entries.get(q.pk) if want_entries else None), only) for q in queues]


@endpoint("queues.get_all")
@endpoint("queues.get_all_ex")
def queues_get_all(call: Call) -> dict[str, Any]:
    qs = Queue.objects.order_by("name")
    ids = call.strings("id")
    if ids:
        qs = qs.filter(pk__in=ids)
    queues = list(qs)
    name = call.data.get("name")
    if name:
        matches = name_matcher(name, field="name", ignore_case=True)
        queues = [q for q in queues if matches(q.name)]
    for tag in call.strings("tags"):  # "-tag" excludes
        if tag.startswith("-"):
            queues = [q for q in queues if tag[1:] not in queue_doc(q)["tags"]]
        else:
            queues = [q for q in queues if tag in queue_doc(q)["tags"]]
    return {"queues": _queue_docs(call, queues)}


@endpoint("queues.get_by_id")
def queues_get_by_id(call: Call) -> dict[str, Any]:
    return {"queue": _queue_docs(call, [_queue(call.text("queue"))])[0]}


@endpoint("queues.get_default")
def queues_get_default(call: Call) -> dict[str, Any]:
    found = [q for q in Queue.objects.all() if "default" in (q.system_tags or [])]
    if len(found) != 1:
        raise ApiFailure(400, 703, "No default queue" if not found else "More than one default queue")
    return {"id": found[0].pk, "name": found[0].name}


@endpoint("queues.create")
def queues_create(call: Call) -> dict[str, Any]:
    queue = queue_services.queue_create(
        actor=call.caller, name=call.text("name", max_len=100),
        display_name=call.text("display_name", required=False, max_len=100),
        tags=call.strings("tags"), system_tags=call.strings("system_tags"),
    )  # fmt: skip
    return {"id": queue.pk}


@endpoint("queues.add_task")
def queues_add_task(call: Call) -> dict[str, Any]:
    queue = _queue(call.text("queue"))
    exp_services.experiment_enqueue(actor=call.caller, experiment_id=call.text("task"), queue_id=queue.pk)
    return {"added": 1}


@endpoint("queues.get_next_task")
def queues_get_next_task(call: Call) -> dict[str, Any]:
    """Atomic pop: a claim with no worker named (bound by the worker's next status_report)."""

    queue = _queue(call.text("queue"))
    if not actor_servable_queue_ids(call.caller, [queue.pk]):
        raise ApiFailure(403, 0, f"this key may not serve queue {queue.name}")
    if queue.paused:
        return {}
    claim = dispatch_claim(
        actor=call.caller, queue_ids=[queue.pk], capacity=Capacity(capabilities=CLEARML_CAPABILITIES)
    )
    if claim is None:
        return {}
    answer: dict[str, Any] = {"entry": {"task": claim.experiment.pk, "added": iso(claim.attempt.queued_at)}}
    if call.data.get("get_task_info"):
        answer["task_info"] = {"company": "muster", "user": str(claim.experiment.owner_id)}
    return answer


# -- workers ---------------------------------------------------------------------------------------


def _hostname(call: Call) -> str:
    return call.request.headers.get("X-ClearML-Worker", "")[:255]


def _queue_ids(refs: list[str]) -> list[str]:
    return [_queue(ref).pk for ref in refs]


def _register(call: Call, name: str, queues: list[str] | None = None) -> None:
    reg = worker_services.Registration(
        name=name, hostname=_hostname(call), ip=call.request.META.get("REMOTE_ADDR"),
        queues=_queue_ids(queues or []), capabilities=CLEARML_CAPABILITIES, tags=call.strings("tags"),
        kind=WorkerKind.CLEARML, cpus=0, agent_version="clearml-agent",
    )  # fmt: skip
    worker_services.worker_register(actor=call.caller, reg=reg)


@endpoint("workers.register")
def workers_register(call: Call) -> dict[str, Any]:
    _register(call, call.text("worker"), call.strings("queues"))
    return {}


@endpoint("workers.unregister")
def workers_unregister(call: Call) -> dict[str, Any]:
    name = call.text("worker")
    worker = Worker.objects.filter(name=name).first()
    if worker is None:
        return {}  # ClearML's auto_unregister: twice is fine
    worker = worker_selectors.worker_for_actor(actor=call.caller, name=name, write=True)
    worker_services.worker_unregister(actor=call.caller, worker=worker)
    return {}


def _machine(stats: Any) -> dict[str, Any]:
    """ClearML machine_stats (MB, MB/s, lists per GPU, cpu_usage as a list) as Muster's report."""
    if not isinstance(stats, dict):
        return {}

    def num(key: str) -> float | None:
        value = stats.get(key)
        if isinstance(value, list):
            values = [float(v) for v in value if isinstance(v, (int, float))]
            return statistics.fmean(values) if values else None
        return float(value) if isinstance(value, (int, float)) else None

    def series(key: str) -> list[float]:
        value = stats.get(key)
        if isinstance(value, (int, float)):
            return [float(value)]
        return [float(v) for v in value if isinstance(v, (int, float))] if isinstance(value, list) else []

    out: dict[str, Any] = {}
    cores = series("cpu_usage")
    if cores:
        out["cpu_percent"] = round(statistics.fmean(cores), 2)
        out["cpu_per_core"] = cores if len(cores) > 1 else []
    for ours, theirs in (("memory_used_mb", "memory_used"), ("memory_free_mb", "memory_free")):
        if (v := num(theirs)) is not None:
            out[ours] = v
    for ours, theirs in (("network_rx_bps", "network_rx"), ("network_tx_bps", "network_tx"),
                         ("disk_read_bps", "disk_read"), ("disk_write_bps", "disk_write")):  # fmt: skip
        if (v := num(theirs)) is not None:
            out[ours] = v * MB
    util, used, free, temp = (series(k) for k in ("gpu_usage", "gpu_memory_used", "gpu_memory_free", "gpu_temperature"))
    gpus = []
    for i in range(max(len(util), len(used))):
        gpu: dict[str, Any] = {"index": i}
        for key, values in (
            ("util", util),
            ("memory_used_mb", used),
            ("memory_free_mb", free),
            ("temperature_c", temp),
        ):
            if i < len(values):
                gpu[key] = values[i]
        gpus.append(gpu)
    if gpus:
        out["gpus"] = gpus
    return out


def _served_queue_ids(actor: Actor) -> set[str]:
    """The queues an agent key serves (queues/access.py): an agent reads only the tasks of these."""
    return actor_servable_queue_ids(actor, Queue.objects.values_list("pk", flat=True))


def _task(call: Call, task_id: str) -> Experiment:
    exp = Experiment.objects.select_related("current_attempt__worker").filter(pk=task_id).first()
    if exp is None:
        raise ApiFailure(400, 101, f"Invalid task id (id={task_id})")
    actor = call.caller
    if actor.is_agent and exp.queue_id not in _served_queue_ids(actor):
        raise ApiFailure(403, 0, f"this key does not serve the queue of task {task_id}")
    return exp


def _fence(call: Call, attempt: Attempt) -> None:
    """Once bound, an agent's writes must come from the bound worker's host (its X-ClearML-Worker header)."""
    host = _hostname(call)
    worker = attempt.worker
    if call.caller.is_admin or worker is None or not host or not worker.hostname:
        return
    if host != worker.hostname:
        raise ApiFailure(403, 0, f"task runs on worker {worker.name} (host {worker.hostname}), not on {host}")


def _running_attempt(call: Call, task_id: str) -> Attempt:
    exp = _task(call, task_id)
    attempt = exp.current_attempt
    if attempt is None or attempt.finished_at is not None:
        raise ApiFailure(400, 110, f"Task {task_id} is not running (status {exp.status})")
    return attempt


@endpoint("workers.status_report")
def workers_status_report(call: Call) -> dict[str, Any]:
    """The heartbeat; naming a task binds that task's unbound attempt to this worker."""
    name = call.text("worker")
    actor = call.caller
    if not Worker.objects.filter(name=name).exists():  # unknown workers that report are registered
        _register(call, name)
    running = []
    task_id = call.data.get("task")
    if isinstance(task_id, str) and task_id:
        exp = Experiment.objects.select_related("current_attempt").filter(pk=task_id).first()
        attempt_row = exp.current_attempt if exp is not None else None
        if attempt_row is not None and attempt_row.finished_at is None:
            if attempt_row.worker_id is None:
                attempt_row = worker_services.attempt_bind(actor=actor, attempt_id=attempt_row.pk, worker_name=name)
            if attempt_row.worker_name == name:
                running.append(worker_services.RunningAttempt(attempt_id=attempt_row.pk, token=attempt_row.lease_token))
    worker = Worker.objects.get(name=name)
    # The agent's report gap (30 s by default; extra reports come on every state change): a
    # short gap lowers the estimate only slowly, so its timeout stays 3 x its usual gap.
    gap = time.time() - worker.last_seen_at.timestamp()
    interval = max(gap, 0.9 * worker.report_interval_s) if gap < 600 else worker.report_interval_s
    report = worker_services.Report(
        interval_s=interval, running=running, machine=_machine(call.data.get("machine_stats"))
    )
    worker_services.worker_report(actor=actor, name=name, report=report)
    return {}


@endpoint("workers.get_all")
def workers_get_all(call: Call) -> dict[str, Any]:
    qs = Worker.objects.order_by("name")
    last_seen = call.data.get("last_seen", 3600)
    if isinstance(last_seen, int) and last_seen > 0:
        qs = qs.filter(last_seen_at__gte=timezone.now() - timedelta(seconds=last_seen))
    pattern = call.data.get("worker_pattern")
    workers = list(qs[:5000])
    if pattern:
        matches = name_matcher(pattern, field="worker_pattern", ignore_case=False)
        workers = [w for w in workers if matches(w.name)]
    running: dict[int, list[Any]] = {}
    for a in Attempt.objects.filter(worker__in=workers, finished_at__isnull=True).select_related("experiment"):
        running.setdefault(a.worker_id or 0, []).append(
            (a.experiment_id, a.experiment.name, a.experiment.last_iteration, a.started_at)
        )
    counts = dict(QueueEntry.objects.values("queue").annotate(n=Count("id")).values_list("queue", "n"))
    links: dict[int, list[dict[str, Any]]] = {}
    for link in WorkerQueue.objects.filter(worker__in=workers).select_related("queue").order_by("order"):
        links.setdefault(link.worker_id, []).append(
            {"id": link.queue_id, "name": link.queue.name, "num_tasks": counts.get(link.queue_id, 0)}
        )
    return {"workers": [worker_doc(w, running=running.get(w.pk, []), queues=links.get(w.pk, [])) for w in workers]}


@endpoint("workers.get_runtime_properties")
def workers_get_runtime_properties(call: Call) -> dict[str, Any]:
    worker = worker_selectors.worker_for_actor(actor=call.caller, name=call.text("worker"), write=False)
    now = time.time()
    props = [p for p in worker.runtime_properties if not p.get("expiry") or p["expiry"] > now]
    return {"runtime_properties": props}


@endpoint("workers.set_runtime_properties")
def workers_set_runtime_properties(call: Call) -> dict[str, Any]:
    actor = call.caller
    worker = worker_selectors.worker_for_actor(actor=actor, name=call.text("worker"), write=True)
    props = call.data.get("runtime_properties")
    if not isinstance(props, list) or not all(isinstance(p, dict) and isinstance(p.get("key"), str) for p in props):
        raise ApiFailure(400, 12, "Validation error (runtime_properties is a list of {key, value, expiry})")
    worker_services.worker_set_runtime_properties(actor=actor, worker=worker, properties=props)
    return {"added": [p["key"] for p in props], "removed": [], "errors": []}


# -- tasks -----------------------------------------------------------------------------------------


@endpoint("tasks.get_all")
@endpoint("tasks.get_all_ex")
def tasks_get_all(call: Call) -> dict[str, Any]:
    ids = call.strings("id")
    qs = Experiment.objects.select_related("current_attempt").order_by("-created_at")
    if call.caller.is_agent:
        qs = qs.filter(queue_id__in=_served_queue_ids(call.caller))
    if ids:
        qs = qs.filter(pk__in=ids)
    statuses = call.strings("status")
    if statuses:
        qs = qs.filter(status__in=statuses)
    size = call.data.get("page_size")
    limit = min(int(size), 500) if isinstance(size, int) and size > 0 else 500
    only = call.strings("only_fields")
    name = call.data.get("name")
    if not name:
        return {"tasks": [project(task_doc(e), only) for e in qs[:limit]]}
    # Matched here (RE2, linear time) over the newest NAME_SCAN names, not in the database's own regex dialect.
    matches = name_matcher(name, field="name", ignore_case=True)
    ids = [pk for pk, text in qs.values_list("pk", "name")[:NAME_SCAN] if matches(text)][:limit]
    by_id = {e.pk: e for e in qs.filter(pk__in=ids)}
    return {"tasks": [project(task_doc(by_id[pk]), only) for pk in ids if pk in by_id]}


@endpoint("tasks.get_by_id")
def tasks_get_by_id(call: Call) -> dict[str, Any]:
    return {"task": task_doc(_task(call, call.text("task")))}


def _changed(exp_id: str) -> dict[str, Any]:
    exp = Experiment.objects.get(pk=exp_id)
    return {"updated": 1, "fields": {"status": exp.status, "status_message": exp.status_message}}


@endpoint("tasks.started")
def tasks_started(call: Call) -> dict[str, Any]:
    task_id = call.text("task")
    attempt = _running_attempt(call, task_id)
    _fence(call, attempt)
    exp_services.attempt_start(actor=call.caller, attempt_id=attempt.pk, token=attempt.lease_token)
    return _changed(task_id)


def _finish(call: Call, outcome: Status) -> dict[str, Any]:
    task_id = call.text("task")
    exp = _task(call, task_id)
    attempt = exp.current_attempt
    if attempt is None:
        raise ApiFailure(400, 110, f"Task {task_id} never ran")
    _fence(call, attempt)
    reason = call.text("status_reason", required=False)
    message = " ".join(x for x in (reason, call.text("status_message", required=False)) if x)[:500]
    exit_code = None
    match = re.search(r"exit code (-?\d+)", reason)
    if match:
        exit_code = int(match.group(1))
    exp_services.attempt_finish(actor=call.caller, attempt_id=attempt.pk, token=attempt.lease_token, outcome=outcome,
                                exit_code=exit_code if outcome == Status.FAILED else (0 if outcome == Status.COMPLETED else None),
                                message=message)  # fmt: skip
    return _changed(task_id)


@endpoint("tasks.completed")
def tasks_completed(call: Call) -> dict[str, Any]:
    return _finish(call, Status.COMPLETED)


@endpoint("tasks.failed")
def tasks_failed(call: Call) -> dict[str, Any]:
    return _finish(call, Status.FAILED)


@endpoint("tasks.stopped")
def tasks_stopped(call: Call) -> dict[str, Any]:
    exp = Experiment.objects.filter(pk=call.text("task")).first()
    if exp is not None and exp.status != Status.IN_PROGRESS:
        return {"updated": 0, "fields": {}}  # already settled (a stop of a queued task, a repeat)
    return _finish(call, Status.STOPPED)


@endpoint("tasks.stop")
def tasks_stop(call: Call) -> dict[str, Any]:
    task_id = call.text("task")
    exp_services.experiment_stop(
        actor=call.caller, experiment_id=task_id, message=call.text("status_message", required=False)
    )
    return _changed(task_id)


@endpoint("tasks.ping")
def tasks_ping(call: Call) -> dict[str, Any]:
    return {}


@endpoint("tasks.dequeue")
def tasks_dequeue(call: Call) -> dict[str, Any]:
    task_id = call.text("task")
    exp = _task(call, task_id)
    if exp.status == Status.IN_PROGRESS and call.data.get("new_status") == Status.IN_PROGRESS:
        return {"updated": 0, "fields": {}}  # the agent's child after the pop: already running
    outcome = exp_services.experiment_dequeue(actor=call.caller, experiment_id=task_id)
    return {"updated": int(outcome.changed), "fields": {"status": outcome.experiment.status}}


@endpoint("tasks.edit")
def tasks_edit(call: Call) -> dict[str, Any]:
    """Runtime, container and script fields; `updated` says whether any was given (others are not editable here)."""
    task_id = call.text("task")
    actor = call.caller
    exp = _task(call, task_id)
    if not (actor.is_admin or actor.is_agent or exp.owner_id == actor.user_id):
        raise ApiFailure(403, 0, f"task {task_id} belongs to someone else")
    runtime = call.data.get("runtime")
    container = call.data.get("container")
    code = call.data.get("script")
    if not any(isinstance(v, dict) for v in (runtime, container, code)):
        return {"updated": 0, "fields": {}}
    if isinstance(runtime, dict):
        exp_services.experiment_set_runtime(actor=actor, experiment_id=task_id, runtime=runtime)
    if isinstance(container, dict) and not actor.is_agent:
        changes = {"container_image": str(container.get("image") or ""),
                   "container_args": shlex.split(str(container.get("arguments") or "")),
                   "setup_script": str(container.get("setup_shell_script") or "")}  # fmt: skip
        exp_services.experiment_update(actor=actor, experiment_id=task_id, changes=changes)
    elif isinstance(container, dict):
        exp_services.experiment_set_runtime(actor=actor, experiment_id=task_id, runtime={"_container": container})
    if isinstance(code, dict):
        exp_services.experiment_update(actor=actor, experiment_id=task_id, changes=script_changes(code))
    return {"updated": 1, "fields": {}}


@endpoint("tasks.set_requirements")
def tasks_set_requirements(call: Call) -> dict[str, Any]:
    attempt = _running_attempt(call, call.text("task"))
    _fence(call, attempt)
    requirements = call.data.get("requirements") or {}
    text = requirements.get("pip", "") if isinstance(requirements, dict) else str(requirements)
    exp_services.attempt_set_requirements(actor=call.caller, attempt_id=attempt.pk, token=attempt.lease_token,
                                          requirements=str(text))  # fmt: skip
    return {"updated": 1, "fields": {}}


@endpoint("tasks.enqueue")
def tasks_enqueue(call: Call) -> dict[str, Any]:
    task_id = call.text("task")
    queue_ref = call.text("queue", required=False) or call.text("queue_name", required=False)
    kwargs: dict[str, Any] = {}
    if queue_ref:
        queue = queue_find(queue_ref)
        if queue is None and call.data.get("queue_name"):
            queue = queue_services.queue_create(actor=call.caller, name=queue_ref)
        if queue is None:
            raise ApiFailure(400, 701, f"Invalid queue id (id={queue_ref})")
        kwargs["queue_id"] = queue.pk
    else:
        default = [q for q in Queue.objects.all() if "default" in (q.system_tags or [])]
        if not default:
            raise ApiFailure(400, 703, "No default queue")
        kwargs["queue_id"] = default[0].pk
    outcome = exp_services.experiment_enqueue(actor=call.caller, experiment_id=task_id, **kwargs)
    answer: dict[str, Any] = {"queued": 1, "updated": 1, "fields": {"status": outcome.experiment.status}}
    if call.data.get("verify_watched_queue"):
        answer["queue_watched"] = (
            worker_selectors.live_workers().filter(queue_links__queue_id=kwargs["queue_id"]).exists()
        )
    return answer


# -- events ----------------------------------------------------------------------------------------


@endpoint("events.add_batch")
def events_add_batch(call: Call) -> dict[str, Any]:
    """Every event type is accepted; console lines go to the attempt's log, scalar iterations to progress."""
    events = call.lines or ([call.data] if call.data.get("task") else [])
    by_task: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if isinstance(event.get("task"), str):
            by_task.setdefault(event["task"], []).append(event)
    for task_id, batch in by_task.items():
        exp = Experiment.objects.select_related("current_attempt__worker").filter(pk=task_id).first()
        attempt = exp.current_attempt if exp else None
        if attempt is None or attempt.finished_at is not None:
            continue
        _fence(call, attempt)
        text = "".join(
            str(e.get("msg", "")) + ("" if str(e.get("msg", "")).endswith("\n") else "\n")
            for e in batch if e.get("type") == "log"
        )  # fmt: skip
        if text:
            exp_services.attempt_append_text(actor=call.caller, attempt_id=attempt.pk, token=attempt.lease_token,
                                             text=text)  # fmt: skip
        iterations = [
            e["iter"] for e in batch if e.get("type") == "training_stats_scalar" and isinstance(e.get("iter"), int)
        ]
        metrics = {f"{e.get('metric')}/{e.get('variant')}": float(e["value"]) for e in batch
                   if e.get("type") == "training_stats_scalar" and isinstance(e.get("value"), (int, float))}  # fmt: skip
        if iterations or metrics:
            exp_services.attempt_progress(actor=call.caller, attempt_id=attempt.pk, token=attempt.lease_token,
                                          iteration=max(iterations) if iterations else None, metrics=metrics)  # fmt: skip
    return {"added": len(events), "errors": 0, "errors_info": {}}
