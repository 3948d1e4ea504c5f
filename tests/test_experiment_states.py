"""Every legal and illegal status move, and every repeat that must be a no-op."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Group

from accounts.actor import Actor, actor_for_user
from accounts.secrets import secret_env_decrypt
from core.errors import Conflict, Forbidden, InvalidInput, StaleLease
from core.models import AuditEvent
from experiments import services
from experiments.models import Attempt, Experiment, FailureClass, Status, UsageRecord
from queues.models import Queue, QueueEntry
from workers.dispatch import dispatch_claim
from workers.models import Worker

pytestmark = pytest.mark.django_db


def events(exp: Experiment) -> list[str]:
    return list(
        AuditEvent.objects.filter(object_type="experiment", object_id=exp.pk)
        .order_by("id")
        .values_list("action", flat=True)
    )


@pytest.fixture
def running(
    make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker], queue: Queue, agent_actor: Actor
) -> tuple[Experiment, Attempt, Worker]:
    worker = make_worker(queues=[queue])
    exp = make_experiment(queue=queue)
    claim = dispatch_claim(actor=agent_actor, worker=worker)
    assert claim is not None
    exp.refresh_from_db()
    return exp, claim.attempt, worker


def test_it_creates_in_created_with_an_audit_event(make_experiment: Callable[..., Experiment]) -> None:
    exp = make_experiment()
    assert exp.status == Status.CREATED
    assert events(exp) == ["create"]


def test_enqueue_moves_created_to_queued_and_remembers_the_status(
    make_experiment: Callable[..., Experiment], queue: Queue, alice_actor: Actor
) -> None:
    exp = make_experiment()
    out = services.experiment_enqueue(actor=alice_actor, experiment_id=exp.pk, queue_id=queue.pk)
    exp.refresh_from_db()
    assert exp.status == Status.QUEUED and exp.enqueue_status == Status.CREATED
    assert QueueEntry.objects.filter(experiment=exp, queue=queue).exists()
    assert out.warnings == ["no live worker listens to queue default"]
    assert events(exp) == ["create", "enqueue"]


def test_enqueue_repeated_to_the_same_queue_is_a_no_op(
    make_experiment: Callable[..., Experiment], queue: Queue, alice_actor: Actor
) -> None:
    exp = make_experiment(queue=queue)
    out = services.experiment_enqueue(actor=alice_actor, experiment_id=exp.pk, queue_id=queue.pk)
    assert out.changed is False
    assert events(exp) == ["create", "enqueue"]
    assert QueueEntry.objects.count() == 1


def test_enqueue_of_a_queued_experiment_to_another_queue_moves_it(
    make_experiment: Callable[..., Experiment], queue: Queue, make_queue: Callable[..., Queue], alice_actor: Actor
) -> None:
    other = make_queue("other")
    exp = make_experiment(queue=queue)
    services.experiment_enqueue(actor=alice_actor, experiment_id=exp.pk, queue_id=other.pk)
    assert QueueEntry.objects.get(experiment=exp).queue == other
    exp.refresh_from_db()
    assert exp.queue == other and exp.status == Status.QUEUED
    assert events(exp)[-1] == "move_queue"


def test_no_warning_when_a_live_worker_listens(
    make_experiment: Callable[..., Experiment], queue: Queue, make_worker: Callable[..., Worker], alice_actor: Actor
) -> None:
    make_worker(queues=[queue])
    exp = make_experiment()
    out = services.experiment_enqueue(actor=alice_actor, experiment_id=exp.pk, queue_id=queue.pk)
    assert out.warnings == []


def test_dequeue_returns_to_the_status_before_enqueue(
    make_experiment: Callable[..., Experiment], queue: Queue, alice_actor: Actor
) -> None:
    exp = make_experiment(queue=queue)
    services.experiment_dequeue(actor=alice_actor, experiment_id=exp.pk)
    exp.refresh_from_db()
    assert exp.status == Status.CREATED
    assert not QueueEntry.objects.exists()
    again = services.experiment_dequeue(actor=alice_actor, experiment_id=exp.pk)
    assert again.changed is False
    assert events(exp) == ["create", "enqueue", "dequeue"]


def test_dequeue_of_a_rerun_goes_back_to_its_finished_status(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, alice_actor: Actor
) -> None:
    exp, attempt, _ = running
    services.attempt_finish(
        actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.COMPLETED, exit_code=0
    )
    services.experiment_rerun(actor=alice_actor, experiment_id=exp.pk)
    services.experiment_dequeue(actor=alice_actor, experiment_id=exp.pk)
    exp.refresh_from_db()
    assert exp.status == Status.COMPLETED


def test_claim_moves_queued_to_in_progress_with_an_attempt(running: tuple[Experiment, Attempt, Worker]) -> None:
    exp, attempt, worker = running
    assert exp.status == Status.IN_PROGRESS
    assert exp.current_attempt_id == attempt.pk
    assert attempt.number == 1 and attempt.worker == worker and attempt.wait_s is not None
    assert not QueueEntry.objects.exists()
    assert events(exp)[-1] == "claim"


def test_created_cannot_be_stopped(make_experiment: Callable[..., Experiment], alice_actor: Actor) -> None:
    exp = make_experiment()
    with pytest.raises(Conflict, match="cannot stop"):
        services.experiment_stop(actor=alice_actor, experiment_id=exp.pk)


def test_stop_of_a_queued_experiment_is_immediate(
    make_experiment: Callable[..., Experiment], queue: Queue, alice_actor: Actor
) -> None:
    exp = make_experiment(queue=queue)
    services.experiment_stop(actor=alice_actor, experiment_id=exp.pk)
    exp.refresh_from_db()
    assert exp.status == Status.STOPPED and not QueueEntry.objects.exists()
    assert services.experiment_stop(actor=alice_actor, experiment_id=exp.pk).changed is False
    assert events(exp) == ["create", "enqueue", "stop"]


def test_stop_of_a_run_on_a_live_worker_is_a_request_until_the_agent_reports(
    running: tuple[Experiment, Attempt, Worker], alice_actor: Actor, agent_actor: Actor
) -> None:
    exp, attempt, _ = running
    services.experiment_stop(actor=alice_actor, experiment_id=exp.pk)
    exp.refresh_from_db()
    assert exp.status == Status.IN_PROGRESS and exp.status_message == "stopping"
    assert services.experiment_stop(actor=alice_actor, experiment_id=exp.pk).changed is False
    assert services.attempt_progress(
        actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, iteration=3, metrics={}
    )
    # The run died of our SIGTERM: a non-zero exit still reads as stopped.
    services.attempt_finish(
        actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.FAILED, exit_code=-15
    )
    exp.refresh_from_db()
    assert exp.status == Status.STOPPED
    assert events(exp)[-2:] == ["stop_request", "finish"]


def test_stop_with_no_live_worker_is_immediate_and_fences_the_attempt(
    running: tuple[Experiment, Attempt, Worker], alice_actor: Actor, agent_actor: Actor
) -> None:
    exp, attempt, worker = running
    Worker.objects.filter(pk=worker.pk).update(status="lost")
    services.experiment_stop(actor=alice_actor, experiment_id=exp.pk)
    exp.refresh_from_db()
    assert exp.status == Status.STOPPED
    with pytest.raises(StaleLease):
        services.attempt_progress(
            actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, iteration=1, metrics={}
        )


def test_a_stop_whose_run_the_agent_no_longer_has_ends_stopped_not_retried(
    running: tuple[Experiment, Attempt, Worker], alice_actor: Actor, agent_actor: Actor
) -> None:
    """The agent restarted (or lost the run) after the stop was asked: the attempt is fenced as
    lost, and the experiment is stopped, as asked, even with retries left for a lost worker."""
    exp, attempt, _ = running
    Experiment.objects.filter(pk=exp.pk).update(retry_policy={"worker_lost": 3})
    services.experiment_stop(actor=alice_actor, experiment_id=exp.pk)
    services.attempt_fence(
        actor=agent_actor, attempt=attempt, failure_class=FailureClass.WORKER_LOST, message="the agent restarted"
    )
    exp.refresh_from_db()
    assert exp.status == Status.STOPPED and exp.retry_count == 0
    assert exp.status_reason == FailureClass.STOPPED
    assert not QueueEntry.objects.filter(experiment=exp).exists()


@pytest.mark.parametrize("outcome", [Status.COMPLETED, Status.FAILED, Status.STOPPED])
def test_finish_moves_in_progress_to_the_outcome_and_repeats_are_no_ops(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, outcome: Status
) -> None:
    exp, attempt, worker = running
    kw: dict[str, Any] = {
        "actor": agent_actor,
        "attempt_id": attempt.pk,
        "token": attempt.lease_token,
        "outcome": outcome,
        "exit_code": 0 if outcome == Status.COMPLETED else 3,
    }
    services.attempt_finish(**kw)
    services.attempt_finish(**kw)
    exp.refresh_from_db()
    assert exp.status == outcome
    assert events(exp).count("finish") == 1
    assert UsageRecord.objects.filter(attempt=attempt).count() == 1
    worker.refresh_from_db()
    assert worker.status == "idle"


def test_finish_with_a_different_outcome_after_finishing_is_refused(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor
) -> None:
    _exp, attempt, _ = running
    services.attempt_finish(
        actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.COMPLETED
    )
    with pytest.raises(Conflict):
        services.attempt_finish(
            actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.FAILED
        )


def test_a_failed_run_records_user_error_and_its_exit_code(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor
) -> None:
    exp, attempt, _ = running
    services.attempt_finish(
        actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.FAILED, exit_code=7
    )
    exp.refresh_from_db()
    attempt.refresh_from_db()
    assert exp.exit_code == 7 and exp.status_reason == FailureClass.USER_ERROR
    assert attempt.failure_class == FailureClass.USER_ERROR


def test_start_is_idempotent(running: tuple[Experiment, Attempt, Worker], agent_actor: Actor) -> None:
    exp, attempt, _ = running
    services.attempt_start(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token)
    services.attempt_start(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token)
    assert AuditEvent.objects.filter(object_type="attempt", action="start").count() == 1
    exp.refresh_from_db()
    assert exp.started_at is not None


def test_a_wrong_token_is_stale(running: tuple[Experiment, Attempt, Worker], agent_actor: Actor) -> None:
    _, attempt, _ = running
    with pytest.raises(StaleLease):
        services.attempt_start(actor=agent_actor, attempt_id=attempt.pk, token="0" * 32)


def test_a_worker_lost_run_is_retried_at_the_front_and_the_old_token_is_refused(
    running: tuple[Experiment, Attempt, Worker],
    agent_actor: Actor,
    make_experiment: Callable[..., Experiment],
    make_worker: Callable[..., Worker],
    queue: Queue,
) -> None:
    exp, attempt, _ = running
    services.attempt_start(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token)
    waiting = make_experiment(queue=queue, name="waiting")
    services.attempt_fence(actor=agent_actor, attempt=attempt, failure_class=FailureClass.WORKER_LOST, message="lost")
    exp.refresh_from_db()
    assert exp.status == Status.QUEUED and exp.retry_count == 1
    # Front of its queue: claimed before the experiment that was waiting.
    other = make_worker(name="host:1", queues=[queue], instance_id="i2")
    claim = dispatch_claim(actor=agent_actor, worker=other)
    assert claim is not None and claim.experiment.pk == exp.pk and claim.attempt.number == 2
    with pytest.raises(StaleLease):
        services.attempt_finish(
            actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.COMPLETED
        )
    services.attempt_finish(
        actor=agent_actor, attempt_id=claim.attempt.pk, token=claim.attempt.lease_token, outcome=Status.COMPLETED
    )
    exp.refresh_from_db()
    assert exp.status == Status.COMPLETED
    assert QueueEntry.objects.get().experiment == waiting


def test_a_second_loss_fails_when_the_policy_allows_one_retry(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, make_worker: Callable[..., Worker], queue: Queue
) -> None:
    exp, attempt, _ = running
    services.attempt_start(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token)
    services.attempt_fence(actor=agent_actor, attempt=attempt, failure_class=FailureClass.WORKER_LOST, message="lost")
    claim = dispatch_claim(actor=agent_actor, worker=make_worker(name="h2", queues=[queue], instance_id="x"))
    assert claim is not None
    services.attempt_start(actor=agent_actor, attempt_id=claim.attempt.pk, token=claim.attempt.lease_token)
    services.attempt_fence(
        actor=agent_actor, attempt=claim.attempt, failure_class=FailureClass.WORKER_LOST, message="lost"
    )
    exp.refresh_from_db()
    assert exp.status == Status.FAILED and exp.status_reason == FailureClass.WORKER_LOST


def test_a_lost_claim_that_never_started_goes_back_without_using_a_retry_three_times(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, queue: Queue
) -> None:
    exp, attempt, worker = running
    Experiment.objects.filter(pk=exp.pk).update(retry_policy={"worker_lost": 0})  # no retries at all
    for n in range(1, 4):
        services.attempt_fence(actor=agent_actor, attempt=attempt, failure_class=FailureClass.WORKER_LOST, message="m")
        exp.refresh_from_db()
        assert exp.status == Status.QUEUED and exp.retry_count == 0, n  # nothing of it ran
        assert QueueEntry.objects.get(experiment=exp)
        claim = dispatch_claim(actor=agent_actor, worker=worker)
        assert claim is not None and claim.experiment.pk == exp.pk
        attempt = claim.attempt
    # The fourth unstarted loss is counted: a spec that kills every agent it reaches still ends.
    services.attempt_fence(actor=agent_actor, attempt=attempt, failure_class=FailureClass.WORKER_LOST, message="m")
    exp.refresh_from_db()
    assert exp.status == Status.FAILED and exp.status_reason == FailureClass.WORKER_LOST


def test_an_interrupted_run_goes_back_to_the_front_without_using_a_retry_five_times(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, queue: Queue
) -> None:
    """Spot or preemption (or an agent stopped twice): not the experiment's fault, so no retry is
    used, up to INTERRUPTED_FREE_RETURNS times; then the retry policy decides."""
    exp, attempt, worker = running
    Experiment.objects.filter(pk=exp.pk).update(retry_policy={"interrupted": 0})
    for n in range(1, services.INTERRUPTED_FREE_RETURNS + 1):
        services.attempt_start(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token)
        services.attempt_fence(
            actor=agent_actor, attempt=attempt, failure_class=FailureClass.INTERRUPTED, message="spot"
        )
        exp.refresh_from_db()
        assert exp.status == Status.QUEUED and exp.retry_count == 0, n
        claim = dispatch_claim(actor=agent_actor, worker=worker)
        assert claim is not None and claim.experiment.pk == exp.pk
        attempt = claim.attempt
    services.attempt_start(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token)
    services.attempt_fence(actor=agent_actor, attempt=attempt, failure_class=FailureClass.INTERRUPTED, message="spot")
    exp.refresh_from_db()
    assert exp.status == Status.FAILED and exp.status_reason == FailureClass.INTERRUPTED


def test_user_errors_are_retried_only_when_the_policy_says(
    make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker], queue: Queue, agent_actor: Actor
) -> None:
    exp = make_experiment(queue=queue, retry_policy={"user_error": 2})
    worker = make_worker(queues=[queue])
    for _ in range(3):
        claim = dispatch_claim(actor=agent_actor, worker=worker)
        assert claim is not None
        services.attempt_finish(
            actor=agent_actor,
            attempt_id=claim.attempt.pk,
            token=claim.attempt.lease_token,
            outcome=Status.FAILED,
            exit_code=1,
        )
    exp.refresh_from_db()
    assert exp.status == Status.FAILED and exp.retry_count == 2
    assert exp.attempts.count() == 3


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.STOPPED])
def test_reset_moves_a_finished_experiment_to_created(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, alice_actor: Actor, status: Status
) -> None:
    exp, attempt, _ = running
    services.attempt_finish(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=status)
    services.experiment_reset(actor=alice_actor, experiment_id=exp.pk)
    exp.refresh_from_db()
    assert exp.status == Status.CREATED and exp.exit_code is None
    assert services.experiment_reset(actor=alice_actor, experiment_id=exp.pk).changed is False


def test_reset_of_a_run_fences_its_attempt(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, alice_actor: Actor
) -> None:
    exp, attempt, _ = running
    services.experiment_reset(actor=alice_actor, experiment_id=exp.pk)
    with pytest.raises(StaleLease):
        services.attempt_finish(
            actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.COMPLETED
        )


def test_reset_of_a_queued_experiment_is_refused(
    make_experiment: Callable[..., Experiment], queue: Queue, alice_actor: Actor
) -> None:
    exp = make_experiment(queue=queue)
    with pytest.raises(Conflict, match="dequeue it first"):
        services.experiment_reset(actor=alice_actor, experiment_id=exp.pk)


def test_in_progress_cannot_be_enqueued_dequeued_or_rerun(
    running: tuple[Experiment, Attempt, Worker], alice_actor: Actor, queue: Queue
) -> None:
    exp, _, _ = running
    for call in (
        lambda: services.experiment_enqueue(actor=alice_actor, experiment_id=exp.pk, queue_id=queue.pk),
        lambda: services.experiment_dequeue(actor=alice_actor, experiment_id=exp.pk),
        lambda: services.experiment_rerun(actor=alice_actor, experiment_id=exp.pk),
    ):
        with pytest.raises(Conflict):
            call()


def test_rerun_of_created_or_queued_is_refused(
    make_experiment: Callable[..., Experiment], queue: Queue, alice_actor: Actor
) -> None:
    for exp in (make_experiment(), make_experiment(queue=queue)):
        with pytest.raises(Conflict, match="re-run"):
            services.experiment_rerun(actor=alice_actor, experiment_id=exp.pk)


def test_rerun_makes_a_new_attempt_of_the_same_experiment(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, alice_actor: Actor
) -> None:
    exp, attempt, worker = running
    services.attempt_finish(
        actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.FAILED, exit_code=1
    )
    services.experiment_rerun(actor=alice_actor, experiment_id=exp.pk)
    claim = dispatch_claim(actor=agent_actor, worker=worker)
    assert claim is not None and claim.experiment.pk == exp.pk and claim.attempt.number == 2


def test_rerun_with_overrides_enqueues_a_linked_clone(
    running: tuple[Experiment, Attempt, Worker], agent_actor: Actor, alice_actor: Actor
) -> None:
    exp, attempt, _ = running
    services.attempt_finish(
        actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome=Status.COMPLETED
    )
    out = services.experiment_rerun(actor=alice_actor, experiment_id=exp.pk, overrides={"lr": 0.1})
    clone = out.experiment
    clone.refresh_from_db()
    assert clone.pk != exp.pk and clone.parent_id == exp.pk
    assert clone.parameters == {"lr": 0.1} and clone.status == Status.QUEUED


def test_clone_copies_the_spec_into_a_new_created_experiment(
    make_experiment: Callable[..., Experiment], alice_actor: Actor
) -> None:
    exp = make_experiment(parameters={"a": 1}, gpus=0.5, secret_env={"TOKEN": "s"})
    clone = services.experiment_clone(actor=alice_actor, experiment_id=exp.pk, overrides={"gpus": 1})
    assert clone.status == Status.CREATED and clone.parent == exp
    assert clone.gpus == 1 and clone.parameters == {"a": 1}
    assert secret_env_decrypt(clone.secret_env) == {"TOKEN": "s"}, "the owner's own clone keeps its secrets"


def test_another_users_clone_carries_no_secrets(
    make_experiment: Callable[..., Experiment], bob: Any, admin_actor: Actor
) -> None:
    exp = make_experiment(secret_env={"TOKEN": "alice-only"})
    for actor in (actor_for_user(bob), admin_actor):
        clone = services.experiment_clone(actor=actor, experiment_id=exp.pk)
        assert clone.secret_env == {}, actor
    assert secret_env_decrypt(Experiment.objects.get(pk=exp.pk).secret_env) == {"TOKEN": "alice-only"}


def test_someone_else_cannot_change_my_experiment(
    make_experiment: Callable[..., Experiment], bob: Any, queue: Queue
) -> None:

    exp = make_experiment()
    with pytest.raises(Forbidden):
        services.experiment_enqueue(actor=actor_for_user(bob), experiment_id=exp.pk, queue_id=queue.pk)


def test_a_queue_restricted_to_a_group_refuses_others(
    make_experiment: Callable[..., Experiment], make_queue: Callable[..., Queue], alice_actor: Actor, team: Any
) -> None:

    private = make_queue("private", group_ids=[Group.objects.create(name="others").pk])
    exp = make_experiment()
    with pytest.raises(Forbidden, match="may not submit"):
        services.experiment_enqueue(actor=alice_actor, experiment_id=exp.pk, queue_id=private.pk)
    shared = make_queue("shared", group_ids=[team.pk])

    member = actor_for_user(exp.owner)  # groups are read when the actor is made
    services.experiment_enqueue(actor=member, experiment_id=exp.pk, queue_id=shared.pk)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"gpus": 1.5}, "gpus"),
        ({"gpus": -1}, "gpus"),
        ({"stop_signal": "SIGNOPE"}, "stop_signal"),
        ({"retry_policy": {"bogus": 1}}, "retry_policy"),
        ({"command": ["x"], "working_dir": "relative"}, "working_dir"),
        ({"script": "print(1)", "command": ["x"]}, "script"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(alice_actor: Actor, spec: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        services.experiment_create(actor=alice_actor, spec={"name": "x", **spec})
    assert err.value.field == field
    assert not Experiment.objects.exists()


def test_spec_edits_only_while_created_but_labels_any_time(
    running: tuple[Experiment, Attempt, Worker], alice_actor: Actor
) -> None:
    exp, _, _ = running
    services.experiment_update(actor=alice_actor, experiment_id=exp.pk, changes={"name": "renamed"})
    with pytest.raises(Conflict, match="clone it instead"):
        services.experiment_update(actor=alice_actor, experiment_id=exp.pk, changes={"gpus": 1})
