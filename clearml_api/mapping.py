"""Muster's queues, workers and experiments as ClearML's queue, worker and task documents."""

from __future__ import annotations

import shlex
from datetime import datetime
from typing import Any

from django.utils import timezone

from experiments.models import Experiment, Status
from queues.models import Queue
from workers.models import Worker

FORCE_OFF = "force_workers:off"


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def project(doc: dict[str, Any], only_fields: list[str]) -> dict[str, Any]:
    """Keep only the (dotted) fields asked for, and always the id."""
    if not only_fields:
        return doc
    out: dict[str, Any] = {"id": doc.get("id")}
    for path in only_fields:
        source: Any = doc
        parts = path.split(".")
        for part in parts:
            source = source.get(part) if isinstance(source, dict) else None
            if source is None:
                break
        if source is None:
            continue
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = source
    return out


def queue_doc(queue: Queue, entries: list[tuple[str, datetime]] | None = None) -> dict[str, Any]:
    tags = list(queue.tags or [])
    if queue.paused and FORCE_OFF not in tags:
        tags.append(FORCE_OFF)  # a paused queue reads as one its agents must not serve
    doc: dict[str, Any] = {
        "id": queue.pk, "name": queue.name, "display_name": queue.display_name or queue.name, "company": "muster",
        "created": iso(queue.created_at), "last_update": iso(queue.updated_at), "tags": tags,
        "system_tags": list(queue.system_tags or []), "metadata": {},
    }  # fmt: skip
    if entries is not None:
        doc["entries"] = [{"task": task, "added": iso(added)} for task, added in entries]
    return doc


def task_doc(exp: Experiment) -> dict[str, Any]:
    status_message = exp.status_message
    if exp.status == Status.IN_PROGRESS and exp.stop_requested_at is not None:
        status_message = "stopping"  # what clearml-agent polls for (ClearML's tasks.stop on a live task)
    literal = bool(exp.script) and not exp.repository
    entry_point = exp.entry_point or ("script.py" if literal else "")
    requirements = {"pip": exp.requirements} if exp.requirements else {}
    attempt = exp.current_attempt
    started = exp.started_at
    active = (timezone.now() - started).total_seconds() if started and exp.status == Status.IN_PROGRESS else None
    return {
        "id": exp.pk, "name": exp.name, "type": "training", "status": exp.status,
        "status_reason": exp.status_reason, "status_message": status_message, "status_changed": iso(exp.updated_at),
        "user": str(exp.owner_id), "company": "muster", "project": exp.project or None,
        "created": iso(exp.created_at), "started": iso(exp.started_at), "completed": iso(exp.finished_at),
        "last_update": iso(exp.updated_at), "last_change": iso(exp.updated_at),
        "last_iteration": exp.last_iteration or 0, "active_duration": int(active) if active is not None else None,
        "tags": list(exp.tags or []), "system_tags": [],
        "script": {
            "binary": exp.runtime.get("_binary", "python3") if isinstance(exp.runtime, dict) else "python3",
            "repository": exp.repository, "branch": exp.branch, "version_num": exp.commit, "tag": "",
            "entry_point": entry_point, "working_dir": exp.working_dir or ".", "requirements": requirements,
            "diff": exp.script if literal else exp.diff,
        },
        "execution": {
            "queue": exp.queue_id, "parameters": {k: str(v) for k, v in (exp.parameters or {}).items()},
            "docker_cmd": " ".join([exp.container_image, *map(shlex.quote, exp.container_args)]).strip() or None,
        },
        "container": {
            "image": exp.container_image, "arguments": " ".join(shlex.quote(a) for a in exp.container_args),
            "setup_shell_script": exp.setup_script,
        } if exp.container_image else dict(exp.runtime.get("_container") or {}),
        "runtime": exp.runtime or {},
        "last_worker": attempt.worker_name if attempt else None,
        "hyperparams": {}, "configuration": {}, "models": {"input": [], "output": []},
    }  # fmt: skip


def worker_doc(worker: Worker, *, running: list[tuple[str, str, int | None, datetime | None]],
               queues: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    task = None
    if running:
        exp_id, name, iteration, started = running[0]
        runtime_ms = int((timezone.now() - started).total_seconds() * 1000) if started else 0
        task = {"id": exp_id, "name": name, "running_time": runtime_ms, "last_iteration": iteration or 0}
    return {
        "id": worker.name, "user": {"id": str(worker.owner_id), "name": ""}, "company": {"id": "muster", "name": "Muster"},
        "ip": worker.ip,
        "register_time": iso(worker.registered_at), "last_activity_time": iso(worker.last_seen_at),
        "last_report_time": iso(worker.last_seen_at), "task": task, "queue": queues[0] if queues else None,
        "queues": queues, "tags": list(worker.tags or []), "system_tags": [], "key": worker.name,
    }  # fmt: skip


def script_changes(script: dict[str, Any]) -> dict[str, Any]:
    """A ClearML task's `script` as changes to our experiment's code fields.

    A literal script (no repository, a `diff` that is not a patch) is our `script`; otherwise
    repository, branch, version_num (the commit) and diff are the git provenance.
    """
    changes: dict[str, Any] = {}
    repository = str(script.get("repository") or "")
    diff = str(script.get("diff") or "")
    literal = not repository and diff and not diff.startswith(("diff ", "submodule "))
    if "repository" in script:
        changes["repository"] = repository
    for ours, theirs in (("branch", "branch"), ("commit", "version_num"), ("entry_point", "entry_point")):
        if theirs in script:
            changes[ours] = str(script.get(theirs) or "")
    if "working_dir" in script:
        changes["working_dir"] = "" if script.get("working_dir") in (None, ".") else str(script["working_dir"])
    if literal:
        changes["script"], changes["diff"] = diff, ""
    elif "diff" in script:
        changes["diff"] = diff
    requirements = script.get("requirements")
    if isinstance(requirements, dict):
        changes["requirements"] = str(requirements.get("pip") or "")
    elif isinstance(requirements, str):
        changes["requirements"] = requirements
    return changes
