"""The claim's take on PostgreSQL as one statement: pick, delete, attempt, experiment, audit.

Semantically the same as the ORM path in dispatch.py (which SQLite and claims with
policies use): data-modifying CTEs run in the caller's transaction, the pick locks with
SKIP LOCKED, and the experiment moves only from `queued`. One round trip instead of
eight keeps claimers of one queue from queueing up behind each other's latency.

The fit test (capacity, capabilities, GPU model) sits inside a CASE on purpose. The take
is a prepared statement, and PostgreSQL soon plans it once for any parameters (a generic
plan). Written as plain conditions, their default estimates (a third for each `<=` on a
parameter, half a percent for the `needs` mask) multiply to "about one entry fits", and
the planner then prefers to read every entry of the queue and sort them, over walking
entry_order_idx until the first fit: every claim cost O(queue length), 35 ms a take at
2,000 entries under 32 claimers (docs/BENCHMARKS.md). A CASE is one opaque condition
(estimated at one half), so the ordered index walk wins whatever the statistics say.
The experiment's `queued` check is a CASE for the same reason: with statistics from when
few experiments were queued, the planner read every queued experiment through the status
index and matched ids (O(queued experiments) per claim) instead of one primary-key probe.
tests/test_dispatch.py checks both in the generic plan.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from accounts.models import UserSecret
from core.db import prepared_cursor
from core.models import AuditEvent
from experiments.models import Attempt, Experiment
from experiments.selectors import RUN_FIELDS
from queues.access import servable_sql
from queues.models import QueueEntry
from workers.models import Worker

TAKE_TEMPLATE = """
WITH picked AS (
    SELECT e.id, e.experiment_id, e.queue_id, e.added_at, e.gpus, e.cpus, e.memory_mb
    FROM {entry_table} e
    WHERE e.queue_id = %(queue)s
      AND CASE WHEN e.gpus <= %(gpus)s AND e.cpus <= %(cpus)s AND e.memory_mb <= %(memory)s
                    AND (e.needs & %(missing)s) = 0
                    AND (%(any_model)s OR e.gpu_type = '' OR e.gpu_type = ANY(%(models)s))
               THEN true ELSE false END
    ORDER BY e.priority DESC, e.position, e.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM {entry_table} d USING picked WHERE d.id = picked.id
    RETURNING picked.*
), attempt AS (
    INSERT INTO {attempt_table} ({attempt_columns})
    SELECT {attempt_values}
    FROM gone
    RETURNING id, number, experiment_id, queue_id, claimed_at, queued_at, wait_s
), moved AS (
    UPDATE {experiment_table} x
    SET status = 'in_progress', current_attempt_id = attempt.id, status_message = '', updated_at = %(now)s
    FROM attempt
    WHERE x.id = attempt.experiment_id AND CASE WHEN x.status = 'queued' THEN true ELSE false END
    RETURNING {run_columns}
), audited AS (
    INSERT INTO {audit_table} (at, actor_id, actor_label, object_type, object_id, action, before, after, message)
    SELECT %(now)s, %(actor)s, %(actor_label)s, 'experiment', attempt.experiment_id, 'claim',
           jsonb_build_object('status', 'queued', 'queue', attempt.queue_id),
           jsonb_build_object('status', 'in_progress', 'attempt', attempt.id, 'worker', %(worker_name)s), ''
    FROM attempt
), busy AS (
    UPDATE {worker_table} w
    SET status = 'busy',
        used_gpus = w.used_gpus + attempt_usage.gpus,
        used_cpus = w.used_cpus + attempt_usage.cpus,
        used_memory_mb = w.used_memory_mb + attempt_usage.memory_mb,
        last_queue_id = CASE WHEN w.order_fairness THEN attempt.queue_id ELSE w.last_queue_id END
    FROM attempt, (SELECT gpus, cpus, memory_mb FROM gone) AS attempt_usage
    WHERE w.id = %(worker)s
)
SELECT moved.*, attempt.number AS attempt_number, attempt.claimed_at AS attempt_claimed_at,
       attempt.queued_at AS attempt_queued_at, attempt.wait_s AS attempt_wait_s,
       (SELECT COALESCE(json_agg(json_build_array(s.name, s.ciphertext) ORDER BY s.name), '[]'::json)::text
        FROM {secret_table} s WHERE s.owner_id = moved.owner_id) AS owner_secrets
FROM moved, attempt
"""


# What the take writes into a new attempt's columns from the picked entry and the parameters;
# every other column gets its model field's default (take_sql), so a new column with a
# default needs nothing here, and one without a default fails every claim test at once.
ATTEMPT_VALUES = {
    "id": "%(attempt)s",
    "experiment_id": "gone.experiment_id",
    "number": "COALESCE((SELECT MAX(a.number) FROM {attempt_table} a WHERE a.experiment_id = gone.experiment_id), 0) + 1",
    "worker_id": "%(worker)s",
    "worker_name": "%(worker_name)s",
    "queue_id": "gone.queue_id",
    "lease_token": "%(token)s",
    "gpus": "gone.gpus",
    "cpus": "gone.cpus",
    "memory_mb": "gone.memory_mb",
    "queued_at": "gone.added_at",
    "claimed_at": "%(now)s",
    "wait_s": "GREATEST(EXTRACT(EPOCH FROM (%(now)s - gone.added_at)), 0)",
}


def run_columns() -> tuple[str, ...]:
    """The experiment columns the take returns: what an agent needs (RUN_FIELDS) and the claim's state."""

    return (*RUN_FIELDS, "status", "current_attempt_id", "owner_id")


@functools.cache
def take_sql() -> str:
    """TAKE_TEMPLATE with the tables, the attempt's columns and their defaults read from the models."""

    connection.ensure_connection()
    quote = connection.SchemaEditorClass(connection).quote_value
    columns: list[str] = []
    values: list[str] = []
    for field in Attempt._meta.concrete_fields:
        if field.column in ATTEMPT_VALUES:
            value = ATTEMPT_VALUES[field.column]
        else:
            default = field.get_default()
            if default is None and field.null:
                continue  # NULL
            if default is None:
                raise ImproperlyConfigured(
                    f"the claim cannot fill attempts.{field.column}: give the field a default "
                    "or a value in workers/claim_sql.py: ATTEMPT_VALUES"
                )
            value = str(quote(field.get_db_prep_save(default, connection)))  # a text's % already doubled
        columns.append(str(field.column))
        values.append(value)
    tables = {
        "attempt_table": Attempt._meta.db_table,
        "entry_table": QueueEntry._meta.db_table,
        "experiment_table": Experiment._meta.db_table,
        "audit_table": AuditEvent._meta.db_table,
        "worker_table": Worker._meta.db_table,
        "secret_table": UserSecret._meta.db_table,
    }
    attempt_values = ", ".join(values).replace("{attempt_table}", tables["attempt_table"])
    later = {name: "{" + name + "}" for name in ("attempt_columns", "attempt_values", "run_columns")}
    return (
        TAKE_TEMPLATE.format_map({**tables, **later})  # the tables first: the defaults may hold braces
        .replace("{attempt_columns}", ", ".join(columns))
        .replace("{attempt_values}", attempt_values)
        .replace("{run_columns}", ", ".join(f"x.{c}" for c in run_columns()))
    )


@functools.cache
def _json_columns(model: Any, columns: tuple[str, ...]) -> frozenset[str]:
    """Which of these columns are JSON (they arrive as text on Django's connection)."""
    fields = [model._meta.get_field(c.removesuffix("_id")) if c != "id" else None for c in columns]
    return frozenset(c for c, f in zip(columns, fields, strict=True) if f and f.get_internal_type() == "JSONField")


def _decoded(model: Any, columns: tuple[str, ...], row: tuple[Any, ...]) -> dict[str, Any]:
    """Column values as model field values."""
    json_columns = _json_columns(model, columns)
    return {
        column: json.loads(raw) if column in json_columns and isinstance(raw, str) else raw
        for column, raw in zip(columns, row, strict=True)
    }


def take(
    params: dict[str, Any],
) -> tuple[Experiment, int, datetime, datetime, float, list[tuple[str, str]]] | None:
    """Run the take for one queue; the experiment (as moved), its attempt's facts and its owner's
    secrets (name, ciphertext: the claim's answer needs them, so they ride on the same round trip), or None."""

    with prepared_cursor() as cursor:
        cursor.execute(take_sql(), params)
        row = cursor.fetchone()
        if row is None:
            return None
    columns = run_columns()
    values = _decoded(Experiment, columns, row[: len(columns)])
    number, claimed_at, queued_at, wait_s, secrets = row[len(columns) :]
    owner_secrets = [(name, ciphertext) for name, ciphertext in json.loads(secrets)]
    return Experiment(**values), number, claimed_at, queued_at, wait_s, owner_secrets


# The worker columns a claim reads (its capacity, usage, order and owner).
CLAIM_FIELDS = (
    "id", "name", "status", "draining", "gpus", "cpus", "memory_mb", "used_gpus", "used_cpus", "used_memory_mb",
    "capabilities", "gpu_models", "order_fairness", "last_queue_id", "last_seen_at", "timeout_s", "api_key_id",
    "owner_id", "report_interval_s",
)  # fmt: skip

LOCK_WORKER = """
SELECT {worker_columns},
       (SELECT COALESCE(json_agg(json_build_array(q.id, q.paused, q.concurrency_limit, q.name)
                                 ORDER BY wq."order"), '[]'::json)::text
        FROM workers_workerqueue wq JOIN queues_queue q ON q.id = wq.queue_id
        WHERE wq.worker_id = w.id AND {servable}) AS queue_rows
FROM workers_worker w
WHERE {where}
FOR UPDATE OF w
"""


def lock_worker_sql(columns: tuple[str, ...], where: str) -> str:
    """LOCK_WORKER for these worker columns and this condition on `w` (bench/dispatch.py's baseline runs it too)."""
    return LOCK_WORKER.format(
        worker_columns=", ".join(f"w.{c}" for c in columns),
        where=where,
        servable=servable_sql(queue="q.id", owner="w.owner_id", key="w.api_key_id"),
    )


def lock_worker(
    columns: tuple[str, ...], *, pk: int | None = None, name: str | None = None
) -> tuple[Worker, list[tuple[str, bool, int | None, str]]] | None:
    """Lock a worker row and read the queues it may serve (in its order) in one round trip.

    A queue the worker lists but may no longer serve (its owner left the queue's groups, the
    queue's groups changed) is left out here, inside the claim (queues/access.py).
    """

    where, arg = ("w.id = %s", pk) if pk is not None else ("w.name = %s", name)
    sql = lock_worker_sql(columns, where)
    with prepared_cursor() as cursor:
        cursor.execute(sql, [arg])
        row = cursor.fetchone()
    if row is None:
        return None
    values = _decoded(Worker, columns, row[:-1])
    queues = [tuple(q) for q in json.loads(row[-1])]
    return Worker(**values), queues


def enabled() -> bool:
    """The claim runs as one statement: on PostgreSQL, unless CLAIM_IN_ONE_STATEMENT is off
    (the tests run every dispatch test both ways: the two must agree)."""

    return connection.vendor == "postgresql" and settings.CLAIM_IN_ONE_STATEMENT
