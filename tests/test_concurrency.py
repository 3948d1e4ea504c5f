"""Concurrent claimers: each experiment claimed exactly once, none lost, priority respected.

On PostgreSQL: 16 concurrent claimers drain 5,000 experiments from 3 queues with mixed
resource requests. On SQLite: 4 processes claim at once without "database is locked".
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection, connections
from django.utils import timezone

from accounts.actor import SYSTEM
from experiments.models import Attempt, Experiment, Status
from queues.models import Queue, QueueEntry
from queues.services import queue_create
from workers.dispatch import dispatch_claim
from workers.services import Registration, worker_register, worker_release

ROOT = Path(__file__).resolve().parent.parent


def seed(queues: list[Queue], n: int, *, rng: random.Random) -> dict[str, tuple[str, int, int, float]]:
    """n queued experiments spread over the queues; returns id -> (queue, priority, position, gpus)."""
    owner = User.objects.create_user("owner", "", "pw-owner-123")
    now = timezone.now()
    exps, entries, layout = [], [], {}
    for i in range(n):
        queue = queues[i % len(queues)]
        gpus = rng.choice([0, 0, 0.5, 1, 1, 2, 4])
        priority = rng.choice([0, 0, 0, 1, 2])
        exp = Experiment(name=f"e{i}", owner=owner, status=Status.QUEUED, queue=queue, gpus=gpus, priority=priority)
        exps.append(exp)
        entries.append(
            QueueEntry(
                queue=queue,
                experiment=exp,
                priority=priority,
                position=(i + 1) * 1024,
                added_at=now,
                gpus=gpus,
                needs=1,
            )
        )
        layout[exp.pk] = (queue.pk, priority, (i + 1) * 1024, gpus)
    Experiment.objects.bulk_create(exps, batch_size=1000)
    QueueEntry.objects.bulk_create(entries, batch_size=1000)
    return layout


@dataclass
class Record:
    worker: str
    experiment: str
    start: float
    end: float


@pytest.mark.postgres_only
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_16_claimers_drain_5000_experiments_exactly_once_in_priority_order() -> None:
    rng = random.Random(7)
    queues = [queue_create(actor=SYSTEM, name=f"queue-{i}") for i in range(3)]
    layout = seed(queues, 5000, rng=rng)
    workers = []
    for i in range(16):
        order = queues[i % 3 :] + queues[: i % 3]
        gpus = [0, 1, 2, 4][i % 4]
        slots = [{"index": g} for g in range(gpus)]
        workers.append(
            worker_register(
                actor=SYSTEM,
                reg=Registration(name=f"w{i}", queues=[q.pk for q in order], gpu_slots=slots, cpus=64, capabilities=31),
            )
        )
    records: list[Record] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(workers))

    def run(worker: Any) -> None:
        try:
            barrier.wait()
            while True:
                start = time.monotonic()
                claim = dispatch_claim(actor=SYSTEM, worker=worker)
                end = time.monotonic()
                if claim is None:
                    return
                # Finish at once so the worker's capacity is whole again for its next claim.
                Attempt.objects.filter(pk=claim.attempt.pk).update(finished_at=timezone.now())
                worker_release(actor=SYSTEM, attempt=claim.attempt)
                with lock:
                    records.append(Record(worker.name, claim.experiment.pk, start, end))
        except Exception as exc:
            errors.append(repr(exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counts = Counter(r.experiment for r in records)
    assert max(counts.values()) == 1, "an experiment was claimed twice"
    assert set(counts) == set(layout), "an experiment was lost"
    assert not QueueEntry.objects.exists()
    assert Attempt.objects.count() == 5000
    assert Experiment.objects.filter(status=Status.IN_PROGRESS).count() == 5000

    # Priority: no claim took an entry while a better one that fit the same worker stayed
    # unclaimed and unlocked for the whole claim (it was claimed only after this one ended).
    by_exp = {r.experiment: r for r in records}
    worker_order = {w.name: [link.queue_id for link in w.queue_links.order_by("order")] for w in workers}
    worker_gpus = {w.name: w.gpus for w in workers}

    def key(worker: str, exp_id: str) -> tuple[int, int, int]:
        queue_id, priority, position, _ = layout[exp_id]
        return (worker_order[worker].index(queue_id), -priority, position)

    # For each worker: the entries that fit it in its claim order, and for every prefix
    # the latest time any of them was claimed; a later start than this claim's end is a miss.
    violations = []
    for w in workers:
        fitting = sorted((key(w.name, e), e) for e, (_, _, _, gpus) in layout.items() if gpus <= worker_gpus[w.name])
        latest, running = [], float("-inf")
        for _, e in fitting:
            latest.append(running)  # the latest start among strictly better entries
            running = max(running, by_exp[e].start)
        index = {e: i for i, (_, e) in enumerate(fitting)}
        for r in records:
            if r.worker == w.name and latest[index[r.experiment]] > r.end:
                violations.append((r.worker, r.experiment))
    assert violations == []


@pytest.mark.sqlite_only
@pytest.mark.django_db(transaction=True)
def test_4_sqlite_processes_claim_at_once_without_locking_errors() -> None:
    queue = queue_create(actor=SYSTEM, name="default")
    layout = seed([queue], 300, rng=random.Random(1))
    for i in range(4):
        worker_register(
            actor=SYSTEM,
            reg=Registration(
                name=f"p{i}", queues=[queue.pk], cpus=64, capabilities=31, gpu_slots=[{"index": g} for g in range(4)]
            ),
        )
    db_name = connection.settings_dict["NAME"]
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db_name}"}  # the tests' settings module, inherited
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.claimer", f"p{i}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "database is locked" not in err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["errors"] for r in results] == [[], [], [], []]
    claimed = [x for r in results for x in r["claimed"]]
    assert len(claimed) == len(set(claimed)) == len(layout)
    assert sum(1 for r in results if r["claimed"]) >= 2, "the processes did not overlap"
