"""The claim: queue order, priority, capacity, capabilities, pauses, limits and fairness."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.actor import Actor
from core.errors import Forbidden
from core.models import AuditEvent
from experiments import services
from experiments.models import Attempt, Capability, Experiment, Status
from queues.models import Queue, QueueEntry
from queues.services import queue_set_paused, queue_update
from workers import dispatch
from workers.claim_sql import take_sql
from workers.dispatch import Capacity, dispatch_claim
from workers.models import Worker
from workers.services import worker_update

pytestmark = pytest.mark.django_db
# Every test here runs with the claim as one statement (PostgreSQL) and as the ORM's steps:
# the two paths are one claim, and must agree.
CLAIM_PATHS = ["one-statement", "orm"] if os.environ.get("DATABASE_URL", "").startswith("postgres") else ["orm"]


@pytest.fixture(autouse=True, params=CLAIM_PATHS)
def claim_path(request: pytest.FixtureRequest, settings: Any) -> str:
    settings.CLAIM_IN_ONE_STATEMENT = request.param == "one-statement"
    return str(request.param)


MakeExp = Callable[..., Experiment]
MakeWorker = Callable[..., Worker]


def claim_names(actor: Actor, worker: Worker, n: int = 10) -> list[str]:
    names = []
    for _ in range(n):
        claim = dispatch_claim(actor=actor, worker=worker)
        if claim is None:
            break
        names.append(claim.experiment.name)
    return names


def test_nothing_to_claim_answers_none(agent_actor: Actor, make_worker: MakeWorker, queue: Queue) -> None:
    assert dispatch_claim(actor=agent_actor, worker=make_worker(queues=[queue])) is None


def test_queues_in_the_workers_order_then_priority_then_position(
    agent_actor: Actor, make_worker: MakeWorker, make_queue: Callable[..., Queue], make_experiment: MakeExp
) -> None:
    hi, lo = make_queue("high"), make_queue("low")
    make_experiment(queue=lo, name="lo1", priority=100)
    make_experiment(queue=hi, name="hi1")
    make_experiment(queue=hi, name="hi2", priority=5)
    make_experiment(queue=hi, name="hi3")
    worker = make_worker(queues=[hi, lo])
    assert claim_names(agent_actor, worker) == ["hi2", "hi1", "hi3", "lo1"]


def test_round_robin_with_order_fairness(
    agent_actor: Actor, make_worker: MakeWorker, make_queue: Callable[..., Queue], make_experiment: MakeExp
) -> None:
    a, b = make_queue("queue-a"), make_queue("queue-b")
    for i in range(3):
        make_experiment(queue=a, name=f"a{i}")
        make_experiment(queue=b, name=f"b{i}")
    worker = make_worker(queues=[a, b], order_fairness=True)
    assert claim_names(agent_actor, worker) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_paused_queues_are_skipped(
    agent_actor: Actor, admin_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp
) -> None:
    make_experiment(queue=queue, name="x")
    queue_set_paused(actor=admin_actor, queue_id=queue.pk, paused=True)
    worker = make_worker(queues=[queue])
    assert dispatch_claim(actor=agent_actor, worker=worker) is None
    queue_set_paused(actor=admin_actor, queue_id=queue.pk, paused=False)
    assert claim_names(agent_actor, worker) == ["x"]


def test_a_queue_at_its_concurrency_limit_is_skipped(
    agent_actor: Actor, admin_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp
) -> None:
    queue_update(actor=admin_actor, queue_id=queue.pk, changes={"concurrency_limit": 2})
    for i in range(4):
        make_experiment(queue=queue, name=f"e{i}")
    worker = make_worker(queues=[queue])
    claims = [dispatch_claim(actor=agent_actor, worker=worker) for _ in range(3)]
    assert [c is not None for c in claims] == [True, True, False]
    first = claims[0]
    assert first is not None
    services.attempt_finish(
        actor=agent_actor, attempt_id=first.attempt.pk, token=first.attempt.lease_token, outcome=Status.COMPLETED
    )
    assert dispatch_claim(actor=agent_actor, worker=worker) is not None


def test_only_what_fits_the_free_capacity_is_given(
    agent_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp
) -> None:
    make_experiment(queue=queue, name="four", gpus=4)
    make_experiment(queue=queue, name="two", gpus=2)
    make_experiment(queue=queue, name="one-a", gpus=1)
    make_experiment(queue=queue, name="half", gpus=0.5)
    make_experiment(queue=queue, name="one-b", gpus=1)
    slots = [{"index": 0, "model": "A100"}, {"index": 1, "model": "A100"}]
    worker = make_worker(queues=[queue], gpu_slots=slots)
    # A 4-GPU request is never given to a 2-slot worker; the rest packs into 2 GPUs.
    assert claim_names(agent_actor, worker) == ["two"]
    assert QueueEntry.objects.filter(experiment__name="four").exists()


def test_fractions_pack_onto_one_gpu(
    agent_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp
) -> None:
    for i in range(3):
        make_experiment(queue=queue, name=f"h{i}", gpus=0.5)
    worker = make_worker(queues=[queue], gpu_slots=[{"index": 0}])
    assert claim_names(agent_actor, worker) == ["h0", "h1"]


def test_cpu_and_memory_requests_are_matched(
    agent_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp
) -> None:
    make_experiment(queue=queue, name="big-mem", memory_mb=64_000)
    make_experiment(queue=queue, name="many-cpu", cpus=16)
    make_experiment(queue=queue, name="small", cpus=2, memory_mb=1000)
    worker = make_worker(queues=[queue], cpus=8, memory_mb=32_000)
    assert claim_names(agent_actor, worker) == ["small"]


def test_gpu_type_and_capabilities_must_match(
    agent_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp
) -> None:
    make_experiment(queue=queue, name="h100", gpus=1, gpu_type="h100")
    make_experiment(queue=queue, name="in-container", container_image="python:3.13")
    make_experiment(queue=queue, name="a100", gpus=1, gpu_type="a100")
    caps = Capability.COMMAND | Capability.SCRIPT
    worker = make_worker(queues=[queue], gpu_slots=[{"index": 0, "model": "NVIDIA A100-SXM4-80GB"}], capabilities=caps)
    assert claim_names(agent_actor, worker) == ["a100"]


def test_a_draining_worker_gets_nothing(
    agent_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp
) -> None:
    make_experiment(queue=queue)
    worker = make_worker(queues=[queue])
    worker_update(actor=agent_actor, worker=worker, drain=True)
    assert dispatch_claim(actor=agent_actor, worker=worker) is None
    worker_update(actor=agent_actor, worker=worker, drain=False)
    assert dispatch_claim(actor=agent_actor, worker=worker) is not None


def test_a_claim_policy_can_keep_an_entry_queued(
    agent_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_experiment(queue=queue, name="blocked")
    make_experiment(queue=queue, name="allowed")
    monkeypatch.setattr(
        dispatch, "CLAIM_POLICIES", [lambda entry, worker: "over limit" if entry.experiment.name == "blocked" else None]
    )
    assert claim_names(agent_actor, make_worker(queues=[queue])) == ["allowed"]


def test_a_caller_naming_no_worker_claims_from_named_queues(
    agent_actor: Actor, queue: Queue, make_experiment: MakeExp
) -> None:
    make_experiment(queue=queue, name="x")
    claim = dispatch_claim(actor=agent_actor, queue_ids=[queue.pk], capacity=Capacity())
    assert claim is not None and claim.attempt.worker is None and claim.experiment.status == Status.IN_PROGRESS


def test_users_cannot_claim(alice_actor: Actor, queue: Queue) -> None:
    with pytest.raises(Forbidden):
        dispatch_claim(actor=alice_actor, queue_ids=[queue.pk])


def test_the_claim_writes_no_queue_row(
    agent_actor: Actor, make_worker: MakeWorker, queue: Queue, make_experiment: MakeExp
) -> None:
    make_experiment(queue=queue)
    worker = make_worker(queues=[queue])
    with CaptureQueriesContext(connection) as ctx:
        assert dispatch_claim(actor=agent_actor, worker=worker) is not None
    sql = [q["sql"] for q in ctx.captured_queries]
    assert not any('UPDATE "queues_queue"' in s for s in sql)
    assert not any('"queues_queue"' in s and "FOR UPDATE" in s for s in sql)
    assert len(sql) <= 14


# The take's parameters and their types as psycopg sends them (workers/claim_sql.py: take_sql).
TAKE_TYPES = {
    "queue": "text", "gpus": "float8", "cpus": "float8", "memory": "int8", "missing": "int4", "any_model": "bool",
    "models": "text[]", "attempt": "text", "worker": "int8", "worker_name": "text", "token": "text",
    "now": "timestamptz", "actor": "int4", "actor_label": "text",
}  # fmt: skip


@pytest.mark.postgres_only
@pytest.mark.parametrize("claim_path", ["one-statement"], indirect=True)  # about that statement's plan
def test_the_takes_generic_plan_walks_the_queue_in_order_and_probes_one_experiment(
    make_experiment: MakeExp, queue: Queue
) -> None:
    """Prepared, the take soon runs one plan for any parameters: it must not grow with the queue.

    The experiments' statistics are taken while one is queued and then 300 more arrive (a
    sweep enqueued at once, before autovacuum looks again); the entries' are up to date.
    The old take's generic plan read every entry of the queue and sorted them (its fit test's
    default estimates said about one entry fits), and read every queued experiment through
    the status index: both O(queue length) per claim.
    """

    make_experiment(queue=queue)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE experiments_experiment")  # one queued experiment
    for _ in range(300):
        make_experiment(queue=queue)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE queues_queueentry")  # the entries as they are
    names: list[str] = []

    def numbered(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    sql = re.sub(r"%\((\w+)\)s", numbered, take_sql())
    with connection.cursor() as cursor:
        cursor.execute(f"PREPARE take_plan ({', '.join(TAKE_TYPES[n] for n in names)}) AS {sql}")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"EXPLAIN EXECUTE take_plan ({', '.join('NULL' for _ in names)})")
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE take_plan")
    assert "$1" in plan  # the generic plan, not one made for these values
    assert "Index Scan using entry_order_idx" in plan, plan
    assert "Sort" not in plan and "Bitmap" not in plan, plan
    assert "experiment_status_idx" not in plan, plan
    assert "Index Cond: ((id)::text = (attempt_1.experiment_id)::text)" in plan, plan  # one probe by id


@pytest.mark.postgres_only
def test_both_claim_paths_write_the_same_attempt_experiment_worker_and_audit(
    settings: Any, make_experiment: Callable[..., Experiment], make_worker: MakeWorker, queue: Queue,
    agent_actor: Actor,
) -> None:  # fmt: skip
    """The one statement's columns and defaults come from the models: every field of what it
    writes equals what the ORM's steps write for the same claim."""

    skip = {"id", "experiment", "experiment_id", "claimed_at", "queued_at", "wait_s", "lease_token", "worker", "worker_id",
            "worker_name"}  # fmt: skip
    written = []
    for one_statement in (True, False):
        settings.CLAIM_IN_ONE_STATEMENT = one_statement
        exp = make_experiment(queue=queue, gpus=0, cpus=2, memory_mb=512)
        worker = make_worker(name=f"w-{one_statement}", queues=[queue])
        claim = dispatch_claim(actor=agent_actor, worker=worker)
        assert claim is not None and claim.experiment.pk == exp.pk
        attempt = Attempt.objects.get(pk=claim.attempt.pk)
        exp.refresh_from_db()
        worker.refresh_from_db()
        event = AuditEvent.objects.filter(object_id=exp.pk, action="claim").get()
        written.append(
            (
                {f.name: getattr(attempt, f.name) for f in Attempt._meta.concrete_fields if f.name not in skip},
                (exp.status, exp.current_attempt_id == attempt.pk, exp.status_message),
                (worker.status, worker.used_cpus, worker.used_memory_mb),
                (event.before, {k: v for k, v in event.after.items() if k not in ("attempt", "worker")}),
            )
        )
    assert written[0] == written[1]
