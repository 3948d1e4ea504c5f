"""The autoscaler loop against GCP: the real googleapiclient (compute v1, its shipped discovery
document) talking to a local fake Compute Engine (tests/fake_gce.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User

from accounts.actor import Actor, actor_for_user
from autoscalers import services
from autoscalers.models import AppState, AutoscalerApp, Instance, InstanceState, Resource, ServedQueue
from autoscalers.providers.base import TAG_APP, TAG_INSTANCE, LaunchSpec
from experiments.models import Attempt, Experiment
from queues.models import Queue
from tests.fake_gce import FakeComputeEngine
from workers.dispatch import dispatch_claim
from workers.models import Worker

pytestmark = pytest.mark.django_db(transaction=True)
SLOT = [{"index": 0, "model": "nvidia l4", "memory_mb": 23034}]


@pytest.fixture
def gce() -> Iterator[FakeComputeEngine]:
    fake = FakeComputeEngine()
    yield fake
    fake.close()


@pytest.fixture
def app(admin_user: User, gce: FakeComputeEngine, make_queue: Callable[..., Queue]) -> AutoscalerApp:
    a = AutoscalerApp.objects.create(
        name="gcp-fleet", provider="gcp", state=AppState.RUNNING, owner=admin_user, workers_prefix="gcp",
        max_idle_s=60, settings={"project": "p", "zone": "us-central1-a", "endpoint_url": gce.url},
    )  # fmt: skip
    l4 = Resource.objects.create(app=a, name="g2", instance_type="g2-standard-8", gpu_type="nvidia-l4", gpu_count=1,
                                 cpus=8, max_instances=2, spot=True)  # fmt: skip
    t4 = Resource.objects.create(app=a, name="n1", instance_type="n1-standard-8", gpu_type="nvidia-tesla-t4",
                                 gpu_count=1, cpus=8, max_instances=1)  # fmt: skip
    q = make_queue("gpu")
    ServedQueue.objects.create(app=a, queue=q, resource=l4, order=0)
    ServedQueue.objects.create(app=a, queue=q, resource=t4, order=1)
    return a


def live(app: AutoscalerApp) -> list[Instance]:
    return list(Instance.objects.filter(app=app).exclude(state__in=[InstanceState.TERMINATED, InstanceState.FAILED]))


def test_launch_register_and_end_through_the_real_client(
    app: AutoscalerApp, gce: FakeComputeEngine, make_experiment: Callable[..., Experiment],
    make_worker: Callable[..., Worker],
) -> None:  # fmt: skip
    gpu = Queue.objects.get(name="gpu")
    make_experiment(queue=gpu, gpus=1)
    services.reconcile(app.pk)
    (row,) = live(app)
    assert row.state == InstanceState.PENDING and row.cloud_id == row.worker_name and row.spot
    inst = gce.instances[row.cloud_id]
    assert inst["labels"][TAG_APP] == app.pk and inst["labels"][TAG_INSTANCE] == row.pk
    assert (
        inst["scheduling"]["provisioningModel"] == "SPOT"
        and inst["scheduling"]["instanceTerminationAction"] == "DELETE"
    )
    assert inst["guestAccelerators"][0]["acceleratorType"].endswith("/nvidia-l4")
    script = next(i["value"] for i in inst["metadata"]["items"] if i["key"] == "startup-script")
    assert "muster agent run --name " + row.worker_name in script
    # The same launch again (its answer lost): the requestId makes it the same operation, and the
    # name the same machine: never a second one.
    provider = services.provider_for(app)
    assert provider.launch(_spec_of(row)) == row.cloud_id and gce.inserts == 1 and len(gce.instances) == 1
    gce.request_ids.clear()  # past the requestId's memory: the name still holds (409, already exists)
    assert provider.launch(_spec_of(row)) == row.cloud_id and len(gce.instances) == 1
    make_worker(row.worker_name, [gpu], gpu_slots=SLOT)
    services.reconcile(app.pk)
    row.refresh_from_db()
    assert row.state == InstanceState.IDLE
    assert "startup-script ran" in services.console_of(actor=_admin(app), instance_id=row.pk)
    services.app_set_state(actor=_admin(app), app_id=app.pk, state=AppState.STOPPED)
    services.reconcile(app.pk)  # drained
    services.reconcile(app.pk)  # ended
    assert row.cloud_id not in gce.instances
    services.reconcile(app.pk)
    row.refresh_from_db()
    assert row.state == InstanceState.TERMINATED


def test_a_capacity_error_in_the_operation_falls_back_and_a_quota_error_stops_the_app(
    app: AutoscalerApp, gce: FakeComputeEngine, make_experiment: Callable[..., Experiment]
) -> None:
    make_experiment(queue=Queue.objects.get(name="gpu"), gpus=1)
    gce.next_insert_errors = [{"op_error": "ZONE_RESOURCE_POOL_EXHAUSTED"}]
    services.reconcile(app.pk)
    failed = Instance.objects.get(app=app, state=InstanceState.FAILED)
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in failed.end_reason
    assert Resource.objects.get(app=app, name="g2").spot_blocked_until is not None  # spot rests: on-demand next
    services.reconcile(app.pk)
    (row,) = live(app)
    assert row.resource.name == "g2" and not row.spot
    make_experiment(queue=Queue.objects.get(name="gpu"), gpus=1)
    gce.next_insert_errors = [{"http": (403, "quotaExceeded")}]
    services.reconcile(app.pk)
    app.refresh_from_db()
    assert app.state == AppState.ERROR and "quotaExceeded" in app.error


def test_throttling_is_retried_by_the_client(
    app: AutoscalerApp,
    gce: FakeComputeEngine,
    make_experiment: Callable[..., Experiment],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("googleapiclient.http.time.sleep", lambda s: None)  # the client's backoff, not ours
    make_experiment(queue=Queue.objects.get(name="gpu"), gpus=1)
    gce.next_insert_errors = [{"http": (403, "rateLimitExceeded")}, {"http": (429, "rateLimitExceeded")}]
    services.reconcile(app.pk)
    (row,) = live(app)
    assert row.state == InstanceState.PENDING and gce.inserts == 3


def test_a_preempted_machine_puts_its_run_back_at_the_front(
    app: AutoscalerApp, gce: FakeComputeEngine, make_experiment: Callable[..., Experiment],
    make_worker: Callable[..., Worker], agent_actor: Actor,
) -> None:  # fmt: skip
    gpu = Queue.objects.get(name="gpu")
    exp = make_experiment(queue=gpu, gpus=1)
    services.reconcile(app.pk)
    (row,) = live(app)
    worker = make_worker(row.worker_name, [gpu], gpu_slots=SLOT)
    claim = dispatch_claim(actor=agent_actor, worker=worker)
    assert claim is not None
    AutoscalerApp.objects.filter(pk=app.pk).update(state=AppState.STOPPED)
    gce.preempt(row.cloud_id)
    services.reconcile(app.pk)
    row.refresh_from_db()
    exp.refresh_from_db()
    assert row.state == InstanceState.TERMINATED and "interrupted" in row.end_reason
    assert exp.status == "queued" and exp.retry_count == 0
    assert Attempt.objects.get(pk=claim.attempt.pk).failure_class == "interrupted"


def _admin(app: AutoscalerApp) -> Actor:

    return actor_for_user(app.owner)


def _spec_of(row: Instance) -> Any:

    r = row.resource
    return LaunchSpec(
        instance_id=row.pk, app_id=row.app_id, name=row.worker_name, instance_type=r.instance_type, spot=row.spot,
        machine_image=r.machine_image, disk_gb=r.disk_gb, gpu_type=r.gpu_type, gpu_count=r.gpu_count, boot_script="",
        server_url="http://127.0.0.1", agent_key="k", queues=("gpu",),
    )  # fmt: skip
