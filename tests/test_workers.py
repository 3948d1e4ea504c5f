"""Workers' services: registration and unregistration as one audited transaction each, and
the capacity a worker's runs use, given back and recounted with an audit trail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from accounts.actor import Actor
from core.errors import Conflict
from core.models import AuditEvent
from experiments.models import Attempt, Experiment, FailureClass, Status
from queues.models import Queue
from workers.dispatch import dispatch_claim
from workers.models import Worker
from workers.services import Registration, worker_recount_usage, worker_register, worker_unregister

pytestmark = pytest.mark.django_db


@pytest.fixture
def running(
    make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker], queue: Queue, agent_actor: Actor
) -> Attempt:
    make_experiment(queue=queue, cpus=2)
    worker = make_worker(name="box:0", queues=[queue], instance_id="one", hostname="box")
    claim = dispatch_claim(actor=agent_actor, worker=worker)
    assert claim is not None
    return claim.attempt


def _reregister(actor: Actor, queue: Queue, **kw: Any) -> Worker:
    return worker_register(actor=actor, reg=Registration(name="box:0", queues=[queue.pk], **kw))


def test_a_new_instance_ends_the_old_runs_and_registers_audited(
    running: Attempt, agent_actor: Actor, queue: Queue
) -> None:
    worker = _reregister(agent_actor, queue, instance_id="two", hostname="box")
    running.refresh_from_db()
    assert running.failure_class == FailureClass.WORKER_LOST and running.fenced
    assert (worker.instance_id, worker.used_cpus) == ("two", 0)
    actions = list(AuditEvent.objects.filter(object_type="worker").values_list("action", flat=True))
    assert "register" in actions and "release" in actions


def test_a_refused_reregistration_leaves_the_old_instances_runs_alone(
    running: Attempt, agent_actor: Actor, queue: Queue
) -> None:
    """Live on another host: refused, and the runs it would have ended still run (all undone)."""
    with pytest.raises(Conflict, match="live on host box"):
        _reregister(agent_actor, queue, instance_id="two", hostname="other-box")
    running.refresh_from_db()
    assert running.finished_at is None
    assert Worker.objects.get(name="box:0").instance_id == "one"
    assert Experiment.objects.get(pk=running.experiment_id).status == Status.IN_PROGRESS


def test_unregistering_ends_the_runs_and_removes_the_worker_audited(running: Attempt, agent_actor: Actor) -> None:
    worker = Worker.objects.get(name="box:0")
    worker_unregister(actor=agent_actor, worker=worker)
    running.refresh_from_db()
    assert running.fenced and not Worker.objects.filter(name="box:0").exists()
    assert AuditEvent.objects.filter(object_type="worker", object_id="box:0", action="unregister").exists()


def test_a_wrong_usage_count_is_recounted_and_audited_and_a_right_one_left_alone(
    running: Attempt, agent_actor: Actor
) -> None:
    worker = Worker.objects.get(name="box:0")
    assert worker.used_cpus == 2
    worker_recount_usage(actor=agent_actor, worker=worker)
    assert not AuditEvent.objects.filter(action="recount").exists()
    Worker.objects.filter(pk=worker.pk).update(used_cpus=7)
    worker_recount_usage(actor=agent_actor, worker=worker)
    assert Worker.objects.get(pk=worker.pk).used_cpus == 2
    event = AuditEvent.objects.get(action="recount")
    assert (event.before["cpus"], event.after["cpus"]) == (7, 2)
