"""core.db.atomic: a transaction the database aborts as a conflict runs again from the start.

On PostgreSQL two threads lock two experiments in opposite orders: the server detects the
deadlock, aborts one, and both calls still succeed. A stop racing a finish of the same run
(the user's order and the agent's) ends with one consistent outcome, never a 500.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from functools import partial
from typing import Any

import psycopg
import pytest
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from accounts.actor import SYSTEM
from core.db import atomic, is_transient, prepared_cursor
from experiments.models import Experiment, Status
from experiments.services import attempt_finish, attempt_start, experiment_reset, experiment_stop
from tests.race import race
from workers.dispatch import dispatch_claim
from workers.models import Worker


class _Cause(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


def _conflict(sqlstate: str) -> OperationalError:
    error = OperationalError(f"conflict {sqlstate}")
    error.__cause__ = _Cause(sqlstate)
    return error


def test_transient_errors_are_the_deadlock_serialization_and_sqlite_lock_ones() -> None:
    assert is_transient(_conflict("40P01"))
    assert is_transient(_conflict("40001"))
    assert is_transient(OperationalError("database is locked"))
    assert not is_transient(_conflict("53300"))  # too many connections: not ours to retry
    assert not is_transient(OperationalError("no such table: x"))


@pytest.mark.django_db(transaction=True)
def test_a_transient_conflict_runs_the_transaction_again_and_rolls_back_the_first_try(alice: Any) -> None:
    owner = alice
    calls: list[int] = []

    @atomic
    def make(name: str) -> Experiment:
        calls.append(1)
        exp = Experiment.objects.create(name=name, owner=owner)
        if len(calls) == 1:
            raise _conflict("40P01")
        return exp

    exp = make("once")
    assert len(calls) == 2
    assert list(Experiment.objects.filter(name="once").values_list("pk", flat=True)) == [exp.pk]


@pytest.mark.django_db(transaction=True)
def test_other_errors_and_repeated_conflicts_are_raised() -> None:
    calls: list[int] = []

    @atomic
    def broken() -> None:
        calls.append(1)
        raise OperationalError("no such table: x")

    with pytest.raises(OperationalError, match="no such table"):
        broken()
    assert len(calls) == 1

    @atomic
    def always() -> None:
        calls.append(1)
        raise _conflict("40001")

    calls.clear()
    with pytest.raises(OperationalError):
        always()
    assert len(calls) == 4


@pytest.mark.django_db(transaction=True)
def test_inside_an_outer_transaction_the_outer_one_owns_the_retry() -> None:
    calls: list[int] = []

    @atomic
    def inner() -> None:
        calls.append(1)
        raise _conflict("40P01")

    with pytest.raises(OperationalError), transaction.atomic():
        inner()
    assert len(calls) == 1


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_real_postgresql_deadlock_is_retried_and_both_sides_succeed(alice: Any) -> None:
    owner = alice
    a = Experiment.objects.create(name="a", owner=owner)
    b = Experiment.objects.create(name="b", owner=owner)
    both_hold_one = threading.Barrier(2, timeout=10)
    tries: list[str] = []

    @atomic
    def lock_in_order(first: str, second: str, label: str) -> None:
        tries.append(label)
        Experiment.objects.select_for_update().get(pk=first)
        if tries.count(label) == 1:
            both_hold_one.wait()  # the first try of each side: a guaranteed cycle
        Experiment.objects.filter(pk=second).update(status_message=label)

    errors = race(partial(lock_in_order, a.pk, b.pk, "ab"), partial(lock_in_order, b.pk, a.pk, "ba"))
    assert errors == []
    assert sorted(tries) in (["ab", "ab", "ba"], ["ab", "ba", "ba"])  # exactly one side ran again
    assert {Experiment.objects.get(pk=a.pk).status_message, Experiment.objects.get(pk=b.pk).status_message} <= {
        "ab",
        "ba",
    }


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_stop_racing_the_agents_finish_ends_in_one_outcome(
    make_queue: Any, make_worker: Any, make_experiment: Any
) -> None:
    queue = make_queue("race")
    worker = make_worker("w-race", [queue])
    for round_ in range(20):
        exp = make_experiment(queue=queue, name=f"race-{round_}")
        claim = dispatch_claim(actor=SYSTEM, worker=worker)
        assert claim is not None and claim.attempt.experiment_id == exp.pk
        attempt_start(actor=SYSTEM, attempt_id=claim.attempt.pk, token=claim.attempt.lease_token)
        if round_ % 2:  # a worker past its lease: the stop ends the attempt itself (the path that locks it)
            Worker.objects.filter(pk=worker.pk).update(live_until=timezone.now() - timedelta(seconds=1))
        else:
            Worker.objects.filter(pk=worker.pk).update(live_until=timezone.now() + timedelta(minutes=5))
        errors = race(
            partial(experiment_stop, actor=SYSTEM, experiment_id=exp.pk),
            partial(
                attempt_finish, actor=SYSTEM, attempt_id=claim.attempt.pk, token=claim.attempt.lease_token,
                outcome=Status.COMPLETED, exit_code=0,
            ),
        )  # fmt: skip
        # Either side may lose: a finish after the stop fenced the attempt (409, kill it), a stop after
        # the run completed (409, nothing to stop); never a deadlock or a 500.
        assert all(type(e).__name__ in ("StaleLease", "Conflict") for e in errors), errors
        exp.refresh_from_db()
        assert exp.status in (Status.COMPLETED, Status.STOPPED) or exp.stop_requested_at is not None
        if exp.status == Status.IN_PROGRESS:  # a stop request the agent never carried out: end it for the next round
            experiment_reset(actor=SYSTEM, experiment_id=exp.pk)
    assert connection.vendor == "postgresql"


@pytest.mark.postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_prepared_statement_survives_a_migration_that_changes_a_column_type() -> None:
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE prep_probe (id int PRIMARY KEY, v int)")
        cur.execute("INSERT INTO prep_probe VALUES (1, 2)")
    try:
        for _ in range(2):
            with prepared_cursor() as cur:
                cur.execute("SELECT id, v FROM prep_probe WHERE id = %s", [1])
                assert cur.fetchone() == (1, 2)
        # Another process migrates meanwhile: this connection's plan no longer fits the table.
        db = connection.settings_dict
        with psycopg.connect(
            host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"], autocommit=True
        ) as other:
            other.execute("ALTER TABLE prep_probe ALTER COLUMN v TYPE bigint")
        with prepared_cursor() as cur:  # outside a transaction: forgotten and run again at once
            cur.execute("SELECT id, v FROM prep_probe WHERE id = %s", [1])
            assert cur.fetchone() == (1, 2)
    finally:
        with connection.cursor() as cur:
            cur.execute("DROP TABLE prep_probe")
