"""The autoscaler loop against a real EC2 API: moto's server, driven by boto3 through the AWS
provider, with faults injected by a botocore hook (reference/autoscaling.md §2.12)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.utils import timezone
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import StateReason
from moto.server import ThreadedMotoServer

from accounts.actor import Actor
from accounts.models import ApiKey
from autoscalers import billing, services, tasks
from autoscalers.boot import boot_script
from autoscalers.models import AppState, AutoscalerApp, Decision, Instance, InstanceState, Resource, ServedQueue
from autoscalers.providers.aws import AwsProvider
from autoscalers.providers.base import TAG_APP, TAG_INSTANCE, TAG_MANAGED, LaunchSpec
from experiments import services as experiment_services
from experiments.models import Attempt, Experiment, UsageRecord
from queues.models import Queue, QueueEntry
from workers.dispatch import dispatch_claim
from workers.models import Worker

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[1]
AMI = "ami-12c6146b"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch, moto_url: str) -> Iterator[None]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].reset()
    yield


def ec2(moto_url: str) -> Any:
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_url)


@pytest.fixture
def app(admin_user: User, moto_url: str, make_queue: Callable[..., Queue]) -> AutoscalerApp:
    a = AutoscalerApp.objects.create(
        name="gpu-fleet", provider="aws", state=AppState.RUNNING, owner=admin_user, workers_prefix="aws",
        max_idle_s=60, max_spinup_s=600, settings={"region": "us-east-1", "endpoint_url": moto_url},
    )  # fmt: skip
    services.credentials_set(a, {"access_key_id": "AKIATESTING", "secret_access_key": "s3cret-value"})
    a.save()
    g5 = Resource.objects.create(app=a, name="g5", instance_type="g5.xlarge", gpu_count=1, cpus=4,
                                 machine_image=AMI, max_instances=2)  # fmt: skip
    g6 = Resource.objects.create(app=a, name="g6", instance_type="g6.xlarge", gpu_count=1, cpus=4,
                                 machine_image=AMI, max_instances=1)  # fmt: skip
    q = make_queue("gpu")
    ServedQueue.objects.create(app=a, queue=q, resource=g5, order=0)
    ServedQueue.objects.create(app=a, queue=q, resource=g6, order=1)
    return a


def ours(moto_url: str, *states: str) -> list[dict[str, Any]]:
    found = []
    for r in ec2(moto_url).describe_instances(Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}])[
        "Reservations"
    ]:
        found += [i for i in r["Instances"] if not states or i["State"]["Name"] in states]
    return found


def waiting(make_experiment: Callable[..., Experiment], queue: Queue, n: int, **spec: Any) -> list[Experiment]:
    return [make_experiment(queue=queue, name=f"train-{i}", gpus=spec.get("gpus", 1), cpus=1) for i in range(n)]


def live(app: AutoscalerApp) -> list[Instance]:
    return list(Instance.objects.filter(app=app).exclude(state__in=[InstanceState.TERMINATED, InstanceState.FAILED]))


def test_waiting_experiments_start_machines_in_resource_order_within_max_instances(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], moto_url: str
) -> None:
    waiting(make_experiment, Queue.objects.get(name="gpu"), 4)
    plan = services.reconcile(app.pk)
    assert len(plan.launches) == 3  # two on g5, then one on g6: the fourth waits
    rows = live(app)
    assert sorted(r.resource.name for r in rows) == ["g5", "g5", "g6"]
    assert all(r.state == InstanceState.PENDING and r.cloud_id.startswith("i-") for r in rows)
    machines = ours(moto_url, "running")
    assert len(machines) == 3
    tags = {t["Key"]: t["Value"] for t in machines[0]["Tags"]}
    assert tags[TAG_APP] == app.pk and tags[TAG_INSTANCE] in {r.pk for r in rows}
    assert Decision.objects.filter(
        app=app,
        kind="refuse",
        message="no launch for 1 waiting experiment(s): every resource that fits is at its max instances",
    ).exists()
    # Each machine has its own expiring agent key for its worker name and its queues only.
    key = ApiKey.objects.get(pk=rows[0].api_key_id)
    assert key.role == "agent" and key.worker_prefix == rows[0].worker_name and key.expires_at is not None
    assert [q.name for q in key.allowed_queues.all()] == ["gpu"]
    # Again: the rows are the capacity, nothing more is launched.
    assert services.reconcile(app.pk).launches == []
    assert len(ours(moto_url)) == 3


def test_a_machine_registers_goes_idle_is_drained_and_stopped_and_its_worker_goes(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker], moto_url: str
) -> None:
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    (row,) = live(app)
    services.reconcile(app.pk)
    assert Instance.objects.get(pk=row.pk).state == InstanceState.BOOTING
    worker = make_worker(row.worker_name, [Queue.objects.get(name="gpu")])
    services.reconcile(app.pk)
    row.refresh_from_db()
    assert row.state == InstanceState.IDLE and row.registered_at is not None
    later = timezone.now() + timedelta(seconds=app.max_idle_s + 1)
    services.reconcile(app.pk, now=later)
    row.refresh_from_db()
    worker.refresh_from_db()
    assert row.state == InstanceState.DRAINING and worker.draining
    # The drained agent exits (its worker leaves); the machine is ended, then seen gone.
    worker.delete()
    services.reconcile(app.pk, now=later)
    assert Instance.objects.get(pk=row.pk).state == InstanceState.TERMINATING
    assert ours(moto_url, "terminated")
    services.reconcile(app.pk, now=later)
    row.refresh_from_db()
    assert row.state == InstanceState.TERMINATED and row.ended_at is not None
    assert ApiKey.objects.get(pk=row.api_key_id).revoked_at is not None


def test_a_machine_that_took_work_is_never_drained(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker],
    agent_actor: Actor,
) -> None:  # fmt: skip
    gpu = Queue.objects.get(name="gpu")
    waiting(make_experiment, gpu, 1)
    services.reconcile(app.pk)
    (row,) = live(app)
    worker = make_worker(row.worker_name, [gpu], gpu_slots=[{"index": 0, "model": "nvidia a10g", "memory_mb": 24576}])
    services.reconcile(app.pk)
    # The loop saw it idle; then it takes work before the idle time is up.
    assert dispatch_claim(actor=agent_actor, worker=worker) is not None
    services.reconcile(app.pk, now=timezone.now() + timedelta(seconds=app.max_idle_s + 1))
    row.refresh_from_db()
    worker.refresh_from_db()
    assert row.state == InstanceState.BUSY and not worker.draining


def test_a_machine_whose_agent_never_registers_is_ended_after_max_spin_up(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], moto_url: str
) -> None:
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    AutoscalerApp.objects.filter(pk=app.pk).update(state=AppState.STOPPED)  # no relaunch in this test
    services.reconcile(app.pk, now=timezone.now() + timedelta(seconds=app.max_spinup_s + 1))
    (row,) = Instance.objects.filter(app=app)
    assert row.state == InstanceState.TERMINATING and "did not register" in row.end_reason
    assert len(ours(moto_url, "terminated")) == 1


def ec2_error(code: str, status: int = 400) -> AWSResponse:
    """What EC2 answers with an error (reference/autoscaling.md §2.12), for a before-send hook."""
    body = (f'<?xml version="1.0"?><Response><Errors><Error><Code>{code}</Code><Message>injected {code}</Message>'
            "</Error></Errors><RequestID>t</RequestID></Response>").encode()  # fmt: skip

    class Raw:
        def stream(self, **_: Any) -> Iterator[bytes]:
            yield body

    return AWSResponse("http://injected", status, {}, Raw())


def with_fault(monkeypatch: pytest.MonkeyPatch, event: str, hook: Callable[..., Any], first: bool = True) -> None:
    """The AWS provider, with a botocore hook on one of its client's events."""

    def faulty(a: AutoscalerApp) -> AwsProvider:
        p = AwsProvider(a.pk, dict(a.settings), services.credentials_of(a))
        (p.ec2.meta.events.register_first if first else p.ec2.meta.events.register)(event, hook)
        return p

    monkeypatch.setitem(services.PROVIDERS, "aws", faulty)


def test_a_capacity_error_falls_back_to_the_next_resource_and_rests_the_first(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], monkeypatch: pytest.MonkeyPatch
) -> None:
    def ice(request: Any, **_: Any) -> AWSResponse | None:
        body_sent = request.body.encode() if isinstance(request.body, str) else (request.body or b"")
        return ec2_error("InsufficientInstanceCapacity") if b"g5.xlarge" in body_sent else None

    with_fault(monkeypatch, "before-send.ec2.RunInstances", ice)
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    failed = Instance.objects.get(app=app, resource__name="g5")
    assert failed.state == InstanceState.FAILED and "InsufficientInstanceCapacity" in failed.end_reason
    assert Resource.objects.get(app=app, name="g5").blocked_until is not None
    services.reconcile(app.pk)
    assert [r.resource.name for r in live(app)] == ["g6"]


def test_a_throttling_storm_is_retried_by_botocore_and_the_launch_goes_through(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], monkeypatch: pytest.MonkeyPatch, moto_url: str
) -> None:
    throttled = {"n": 0}

    def throttle(request: Any, **_: Any) -> AWSResponse | None:
        if throttled["n"] >= 2:
            return None  # the third try reaches moto
        throttled["n"] += 1
        return ec2_error("RequestLimitExceeded", 503)

    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0)
    with_fault(monkeypatch, "before-send.ec2.RunInstances", throttle)
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    (row,) = live(app)
    assert throttled["n"] == 2 and row.state == InstanceState.PENDING and len(ours(moto_url)) == 1
    assert AutoscalerApp.objects.get(pk=app.pk).state == AppState.RUNNING


def test_a_permission_error_stops_the_app_with_the_error_shown(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], monkeypatch: pytest.MonkeyPatch
) -> None:
    with_fault(monkeypatch, "before-send.ec2.RunInstances", lambda **_: ec2_error("UnauthorizedOperation", 403))
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    app.refresh_from_db()
    assert app.state == AppState.ERROR and "UnauthorizedOperation" in app.error
    assert services.reconcile(app.pk).launches == []  # an app in error launches nothing


def test_a_lost_answer_to_a_launch_never_starts_a_second_machine(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:

    def lose(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="injected")

    with_fault(monkeypatch, "after-call.ec2.RunInstances", lose, first=False)
    Resource.objects.filter(app=app, name="g5").update(max_instances=1)
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)  # the machine starts; its answer is lost: the row stays requested
    (row,) = live(app)
    assert row.state == InstanceState.REQUESTED and len(ours(moto_url)) == 1
    monkeypatch.undo()
    Instance.objects.filter(pk=row.pk).update(launch_claimed_at=None)
    services.reconcile(app.pk)  # the retry finds the machine by its tag
    row.refresh_from_db()
    assert row.state == InstanceState.PENDING and len(ours(moto_url)) == 1


def test_an_orphan_machine_is_ended_and_a_spot_interruption_puts_the_run_back_at_the_front(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker], moto_url: str,
    agent_actor: Actor,
) -> None:  # fmt: skip
    tags = [{"Key": TAG_MANAGED, "Value": "true"}, {"Key": TAG_APP, "Value": app.pk}]
    orphan = ec2(moto_url).run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, TagSpecifications=[{"ResourceType": "instance", "Tags": tags}]
    )["Instances"][0]["InstanceId"]
    gpu = Queue.objects.get(name="gpu")
    (exp,) = waiting(make_experiment, gpu, 1)
    services.reconcile(app.pk)
    (row,) = live(app)
    worker = make_worker(row.worker_name, [gpu], gpu_slots=[{"index": 0, "model": "nvidia a10g", "memory_mb": 24576}])
    claim = dispatch_claim(actor=agent_actor, worker=worker)
    assert claim is not None and claim.experiment.pk == exp.pk
    later = timezone.now() + timedelta(seconds=services.ORPHAN_GRACE_S + 1)
    services.reconcile(app.pk, now=later)
    assert orphan in {i["InstanceId"] for i in ours(moto_url, "terminated")}
    assert Decision.objects.filter(app=app, kind="orphan", message__contains=orphan).exists()
    # The cloud takes our machine back (spot): its row ends, its worker goes at once, and the run
    # goes back to the front of its queue without using a retry.
    row.refresh_from_db()
    inst = ec2_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].get_instance(row.cloud_id)
    inst.terminate()
    inst.state_reason = StateReason("Server.SpotInstanceTermination: Spot instance termination",
                                    "Server.SpotInstanceTermination")  # fmt: skip
    AutoscalerApp.objects.filter(pk=app.pk).update(state=AppState.STOPPED)
    services.reconcile(app.pk, now=later)
    row.refresh_from_db()
    assert row.state == InstanceState.TERMINATED and "spot" in row.end_reason
    assert not Worker.objects.filter(name=row.worker_name).exists()
    exp.refresh_from_db()
    assert exp.status == "queued" and exp.retry_count == 0 and exp.status_reason == "interrupted"
    assert Attempt.objects.get(pk=claim.attempt.pk).failure_class == "interrupted"
    assert QueueEntry.objects.get(experiment=exp).queue_id == gpu.pk


def test_the_money_cap_refuses_a_launch_and_says_so_in_the_console_and_on_the_experiment(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], web: Client
) -> None:
    Resource.objects.filter(app=app).update(hourly_price_usd=Decimal("3.60"))
    # A launch reserves its spin-up time (600 s here): $0.60.
    AutoscalerApp.objects.filter(pk=app.pk).update(cap_day_usd=Decimal("0.50"))
    (exp,) = waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    assert services.reconcile(app.pk).launches == []
    assert Decision.objects.filter(app=app, kind="refuse", message__contains="day's cap of $0.50").exists()
    before = Decision.objects.filter(app=app).count()
    services.reconcile(app.pk)  # the same refusal again is not written again
    assert Decision.objects.filter(app=app).count() == before
    page = web.get(f"/experiments/{exp.pk}/").content.decode()
    assert "autoscaler gpu-fleet: no launch for 1 waiting experiment(s): g5: the day&#x27;s cap of $0.50" in page


@pytest.mark.postgres_only
def test_four_reconciles_at_once_never_exceed_max_instances_or_the_cap(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], moto_url: str
) -> None:
    waiting(make_experiment, Queue.objects.get(name="gpu"), 10)
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            services.reconcile(app.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Instance.objects.filter(app=app).count() == 3  # g5: 2, g6: 1, never more
    assert len(ours(moto_url)) == 3


def test_billing_follows_each_clouds_rule() -> None:
    t0 = timezone.now().replace(microsecond=0)
    assert billing.billable_seconds("aws", t0, t0 + timedelta(seconds=30)) == 60  # the 60 s minimum
    assert billing.billable_seconds("aws", t0, t0 + timedelta(seconds=90)) == 90
    assert billing.billable_seconds("gcp", t0, t0 + timedelta(seconds=10)) == 60
    assert billing.cost("aws", Decimal("3.60"), t0, t0 + timedelta(seconds=30)) == Decimal("0.0600")
    assert billing.list_price("aws", "g5.xlarge") is not None
    life = billing.Life(Decimal("3.60"), t0 - timedelta(hours=2), None)
    assert billing.spend_between("aws", [life], t0 - timedelta(hours=1), t0) == Decimal("3.6000")
    assert billing.burn_rate([life]) == Decimal("3.60")
    later = billing.Life(Decimal("3.60"), t0 + timedelta(hours=1), None)  # after the window: nothing in it
    assert billing.spend_between("aws", [later], t0 - timedelta(hours=1), t0) == Decimal("0")


def test_credentials_are_encrypted_and_never_leave(app: AutoscalerApp) -> None:
    raw = AutoscalerApp.objects.values_list("credentials_encrypted", flat=True).get(pk=app.pk)
    assert "s3cret-value" not in raw and services.credentials_of(app)["secret_access_key"] == "s3cret-value"


def test_no_module_outside_the_providers_imports_a_cloud_sdk() -> None:
    found = []
    for path in ROOT.glob("*/**/*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in {".venv", "var", "tests", ".tools", "node_modules"} or rel.parts[:2] == (
            "autoscalers",
            "providers",
        ):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])  # fmt: skip
            found += [
                f"{rel}: {n}" for n in names if n.split(".")[0] in {"boto3", "botocore", "googleapiclient", "google"}
            ]
    assert found == []


def test_an_enqueue_to_a_served_queue_wakes_its_app_at_once(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], make_queue: Callable[..., Queue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip

    woken: list[str] = []
    monkeypatch.setattr(tasks.reconcile_task, "delay", woken.append)
    make_experiment(queue=make_queue("elsewhere"))
    assert woken == []
    make_experiment(queue=Queue.objects.get(name="gpu"))
    assert woken == [app.pk]
    AutoscalerApp.objects.filter(pk=app.pk).update(state=AppState.STOPPED)
    make_experiment(queue=Queue.objects.get(name="gpu"))
    assert woken == [app.pk]  # a stopped app is not woken


# -- the API ---------------------------------------------------------------------------------------

BODY: dict[str, Any] = {
    "name": "gpu-east", "provider": "aws", "workers_prefix": "east",
    "settings": {"region": "us-east-1", "subnets": ["subnet-a", "subnet-b"], "tags": {"team": "ml"}},
    "credentials": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "very-secret-key"},
    "resources": [
        {"name": "g5", "instance_type": "g5.xlarge", "gpu_count": 1, "max_instances": 4, "machine_image": AMI},
        {"name": "g6", "instance_type": "g6.xlarge", "gpu_count": 1, "max_instances": 2, "spot": True},
    ],
    "queues": {"train": ["g5", "g6"]},
    "cap_day_usd": "50.00",
}  # fmt: skip


def test_the_api_creates_exports_imports_and_never_shows_credentials(
    admin_api: Any, make_queue: Callable[..., Queue]
) -> None:
    make_queue("train")
    r = admin_api.post("/api/v1/autoscalers/", BODY, format="json")
    assert r.status_code == 201, r.content
    app = r.json()
    assert app["state"] == "stopped" and app["credentials_set"] and app["queues"] == {"train": ["g5", "g6"]}
    assert "very-secret-key" not in r.content.decode()
    exported = admin_api.get(f"/api/v1/autoscalers/{app['id']}/export/").json()
    assert "credentials" not in exported and "very-secret-key" not in json.dumps(exported)
    assert [r["name"] for r in exported["resources"]] == ["g5", "g6"] and exported["resources"][1]["spot"]
    assert exported["settings"]["subnets"] == ["subnet-a", "subnet-b"] and exported["queues"] == {"train": ["g5", "g6"]}
    # The export is an import: another app from it (a new name and prefix).
    again = admin_api.post(
        "/api/v1/autoscalers/", {**exported, "name": "gpu-west", "workers_prefix": "west"}, format="json"
    )
    assert again.status_code == 201, again.content
    assert not again.json()["credentials_set"]
    assert "very-secret-key" not in json.dumps(admin_api.get("/api/v1/autoscalers/").json())
    # Start, then stop; the console says who did what.
    assert (
        admin_api.post(f"/api/v1/autoscalers/{app['id']}/state/", {"state": "running"}, format="json").json()["state"]
        == "running"
    )
    kinds = [d["kind"] for d in admin_api.get(f"/api/v1/autoscalers/{app['id']}/decisions/").json()]
    assert "state" in kinds and "config" in kinds
    spend = admin_api.get(f"/api/v1/autoscalers/{app['id']}/spend/").json()
    assert spend["today_usd"] == "0.0000" and spend["cap_day_usd"] == "50.00"
    assert admin_api.delete(f"/api/v1/autoscalers/{app['id']}/").status_code == 204


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"settings": {}}, "settings", "aws needs region"),
        ({"settings": {"region": "x", "zone": "y"}}, "settings", "'zone' is not a aws setting"),
        ({"queues": {"train": ["p4d"]}}, "queues", "no resource named 'p4d'"),
        ({"queues": {"nowhere": ["g5"]}}, "queues", "queue 'nowhere' does not exist"),
        ({"credentials": {"password": "x"}}, "credentials", "'password' is not a aws credential"),
        ({"workers_prefix": "Bad Prefix"}, "workers_prefix", "a workers prefix"),
        ({"container_mode": True}, "default_container_image", "container mode needs a default container image"),
        ({"resources": [{**BODY["resources"][0], "min_idle": 9}]}, "min_idle", "cannot be more than max_instances"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem_and_writes_nothing(
    admin_api: Any, make_queue: Callable[..., Queue], change: dict[str, Any], field: str, words: str
) -> None:
    make_queue("train")
    r = admin_api.post("/api/v1/autoscalers/", {**BODY, **change}, format="json")
    assert 400 <= r.status_code < 500 and words in r.content.decode(), r.content
    assert field in r.content.decode()
    assert not AutoscalerApp.objects.exists()


def test_an_app_with_machines_is_not_deleted(
    app: AutoscalerApp, admin_api: Any, make_experiment: Callable[..., Experiment]
) -> None:
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    r = admin_api.delete(f"/api/v1/autoscalers/{app.pk}/")
    assert r.status_code == 409 and "still has machines" in r.content.decode()
    (row,) = live(app)
    machines = admin_api.get(f"/api/v1/autoscalers/{app.pk}/instances/").json()
    assert machines[0]["worker_name"] == row.worker_name and machines[0]["cloud_id"] == row.cloud_id
    console = admin_api.get(f"/api/v1/autoscalers/{app.pk}/instances/{row.pk}/console/")
    assert console.status_code == 200 and "output" in console.json()


# -- the AUTOSCALERS tab ---------------------------------------------------------------------------


@pytest.fixture
def web(admin_user: User) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def test_the_tab_lists_apps_and_a_json_editor_creates_edits_and_shows_every_error(
    web: Client, alice: User, make_queue: Callable[..., Queue]
) -> None:
    make_queue("train")
    assert "AUTOSCALERS" in web.get("/orchestration/workers/").content.decode()
    page = web.get("/orchestration/autoscalers/").content.decode()
    assert "No autoscalers yet" in page
    new = web.get("/orchestration/autoscalers/new/json/").content.decode()
    assert "&quot;provider&quot;: &quot;aws&quot;" in new  # an example to edit
    bad = {**BODY, "workers_prefix": "Bad", "max_idle_s": 1, "resources": [{**BODY["resources"][0], "gpu_count": -1}]}
    r = web.post("/orchestration/autoscalers/new/json/", {"config": json.dumps(bad)})
    text = r.content.decode()
    assert r.status_code == 400 and "workers_prefix: a workers prefix" in text and "max_idle_s: " in text
    assert "resources[0].gpu_count: " in text  # every problem at once, each named by its path
    r = web.post("/orchestration/autoscalers/new/json/", {"config": json.dumps({**BODY, "queues": {"train": ["p4d"]}})})
    assert r.status_code == 400 and "queues: queue train: no resource named" in r.content.decode()
    assert not AutoscalerApp.objects.exists()
    assert web.post("/orchestration/autoscalers/new/json/", {"config": "{nope"}).status_code == 400
    r = web.post("/orchestration/autoscalers/new/json/", {"config": json.dumps(BODY)})
    assert r.status_code == 302
    app = AutoscalerApp.objects.get(name="gpu-east")
    dashboard = web.get(r["Location"]).content.decode()
    assert "Machines per resource" in dashboard and "g5.xlarge" in dashboard and "very-secret-key" not in dashboard
    edit = web.get(f"/orchestration/autoscalers/{app.pk}/edit/json/").content.decode()
    assert "very-secret-key" not in edit and "AKIAEXAMPLE" not in edit
    changed = {**json.loads(web.get(f"/orchestration/autoscalers/{app.pk}/export/").content), "max_idle_s": 300}
    assert "credentials" not in changed
    assert (
        web.post(f"/orchestration/autoscalers/{app.pk}/edit/json/", {"config": json.dumps(changed)}).status_code == 302
    )
    app.refresh_from_db()
    assert app.max_idle_s == 300 and services.credentials_of(app)["secret_access_key"] == "very-secret-key"
    r = web.post(f"/orchestration/autoscalers/{app.pk}/state/", {"state": "running"})
    assert r.status_code == 204 and AutoscalerApp.objects.get(pk=app.pk).state == "running"
    cards = web.get("/orchestration/autoscalers/").content.decode()
    assert f'id="app-{app.pk}"' in cards and "month-end forecast" in cards
    # Not for people who are not admins: no tab, and the pages say so.
    other = Client()
    other.force_login(alice)
    assert "AUTOSCALERS" not in other.get("/orchestration/workers/").content.decode()
    assert other.get("/orchestration/autoscalers/").status_code == 403
    assert other.get(f"/orchestration/autoscalers/{app.pk}/").status_code == 403
    assert other.post(f"/orchestration/autoscalers/{app.pk}/state/", {"state": "stopped"}).status_code == 403


def test_the_dashboard_shows_machines_their_console_and_the_decisions(
    app: AutoscalerApp, web: Client, make_experiment: Callable[..., Experiment]
) -> None:
    (exp,) = waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    (row,) = live(app)
    assert "autoscaler gpu-fleet is starting 1 machine<" in web.get(f"/experiments/{exp.pk}/").content.decode()
    page = web.get(f"/orchestration/autoscalers/{app.pk}/").content.decode()
    assert row.worker_name in page and row.cloud_id in page and "starting a g5.xlarge" in page
    assert "1 waiting" in page
    console = web.get(f"/orchestration/autoscalers/{app.pk}/machines/{row.pk}/console/")
    assert console.status_code == 200 and "output" in console.json()
    assert web.get(f"/orchestration/autoscalers/{app.pk}/live/").status_code == 200
    r = web.post(f"/orchestration/autoscalers/{app.pk}/delete/")
    assert r.status_code == 409  # it has a machine


def test_the_server_serves_the_agent_as_a_wheel_that_pip_installs(
    client: Client, tmp_path: Path, settings: Any
) -> None:
    """Machines install the agent from the server (no registry): an index pip's --find-links reads,
    and a wheel built from muster_agent/ that pip installs, with its dependencies declared."""
    settings.AGENT_WHEELS_DIR = tmp_path / "wheels"
    index = client.get("/agent/wheels/").content.decode()  # no login: a booting machine has none
    (name,) = re.findall(r'href="(muster_agent-[^"]+\.whl)"', index)
    response = client.get(f"/agent/wheels/{name}")
    assert response.status_code == 200
    wheel = tmp_path / name
    wheel.write_bytes(b"".join(response.streaming_content))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "muster_agent/cli.py" in names and "muster_agent/sdk/muster/__init__.py" in names
    assert "Requires-Dist: psutil>=5.9" in meta and 'Requires-Dist: nvidia-ml-py>=12.535; extra == "gpu"' in meta
    assert client.get("/agent/wheels/../../etc/passwd").status_code == 404
    assert client.get("/agent/wheels/nothing.whl").status_code == 404
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-index", "--no-deps", str(wheel)],
                   check=True, timeout=120)  # fmt: skip
    code = "import importlib.metadata as m, muster_agent; print(m.version('muster-agent'), muster_agent.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    version, where = shown.stdout.split()
    assert version == "0.1.0" and where.startswith(str(venv)), shown.stderr
    assert (venv / "bin" / "muster").exists()
    # The same code, the same wheel: built once.
    assert re.findall(r'href="(muster_agent-[^"]+\.whl)"', client.get("/agent/wheels/").content.decode()) == [name]


def test_the_boot_script_installs_the_agent_from_the_server_and_powers_off_after_it(app: AutoscalerApp) -> None:
    AutoscalerApp.objects.filter(pk=app.pk).update(
        init_script="nvidia-smi", container_mode=True, default_container_image="python:3.12",
        environment={"HF_HOME": "/data/hf"}, files={"/etc/muster/extra.txt": "hello"},
    )  # fmt: skip
    app.refresh_from_db()
    spec = LaunchSpec(
        instance_id="i" * 32, app_id=app.pk, name="aws-g5-1", instance_type="g5.xlarge", spot=False,
        machine_image=AMI, disk_gb=100, gpu_type="", gpu_count=1, boot_script="",
        server_url="https://muster.example.com", agent_key="mk123.secret", queues=("gpu", "gpu-low"),
        environment={"HF_HOME": "/data/hf"},
    )  # fmt: skip
    script = boot_script(app, spec)
    assert script.startswith("#!/bin/bash\n")
    assert "--find-links https://muster.example.com/agent/wheels/ 'muster-agent[gpu]'" in script
    assert "muster agent run --name aws-g5-1 --queue gpu --queue gpu-low --container-engine docker" in script
    assert "--default-image python:3.12" in script and "--cpu-only" not in script
    assert "export HF_HOME=/data/hf" in script and "export MUSTER_API_KEY=mk123.secret" in script
    assert script.index("nvidia-smi") < script.index("pip install") and script.rstrip().endswith("stop billing")
    assert "cat > /etc/muster/extra.txt" in script


def test_a_spot_machine_not_up_within_its_rollback_timeout_is_replaced_on_demand(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], moto_url: str
) -> None:
    Resource.objects.filter(app=app, name="g5").update(spot=True, spot_rollback_after_s=120, spot_blackout_s=600)
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    (first,) = live(app)
    assert first.spot and ours(moto_url)[0].get("InstanceLifecycle") == "spot"
    services.reconcile(app.pk, now=timezone.now() + timedelta(seconds=121))
    first.refresh_from_db()
    assert first.state == InstanceState.TERMINATING and "rolling back to on-demand" in first.end_reason
    assert Resource.objects.get(app=app, name="g5").spot_blocked_until is not None
    services.reconcile(app.pk)
    replacement = next(r for r in live(app) if r.pk != first.pk)
    assert replacement.resource.name == "g5" and not replacement.spot


def test_two_machines_running_one_experiment_are_reported_in_the_console(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker]
) -> None:
    gpu = Queue.objects.get(name="gpu")
    (exp,) = waiting(make_experiment, gpu, 1)
    services.reconcile(app.pk)
    Resource.objects.filter(app=app).update(max_instances=3)
    waiting(make_experiment, gpu, 1)
    services.reconcile(app.pk)
    first, second = live(app)[:2]
    for row in (first, second):  # a fenced attempt its machine still runs, beside the current one
        make_worker(row.worker_name, [gpu], instance_id=row.pk)
        Attempt.objects.create(experiment=exp, number=Attempt.objects.filter(experiment=exp).count() + 1,
                               worker_name=row.worker_name, lease_token="t", claimed_at=timezone.now())  # fmt: skip
    services.reconcile(app.pk)
    assert Decision.objects.filter(app=app, message__contains=f"experiment {exp.pk} runs on 2 machines").exists()


def test_the_spend_graph_has_each_days_spend_and_the_running_total(
    app: AutoscalerApp, web: Client, make_experiment: Callable[..., Experiment]
) -> None:
    Resource.objects.filter(app=app).update(hourly_price_usd=Decimal("3.60"))
    waiting(make_experiment, Queue.objects.get(name="gpu"), 1)
    services.reconcile(app.pk)
    Instance.objects.filter(app=app).update(started_at=timezone.now() - timedelta(minutes=10))
    graph = web.get(f"/orchestration/autoscalers/{app.pk}/spend/").json()
    daily, total = graph["traces"]
    assert len(daily["x"]) == 30 and total["y"][-1] == pytest.approx(0.6, abs=0.01)  # 10 minutes at $3.60/h
    assert total["y"][-1] == pytest.approx(sum(daily["y"]), abs=0.001) and daily["y"][0] == 0
    assert (
        'data-graph="/orchestration/autoscalers/' in web.get(f"/orchestration/autoscalers/{app.pk}/").content.decode()
    )


def _form(**fields: str) -> dict[str, str]:
    base = {
        "name": "gpu-form", "provider": "aws", "workers_prefix": "form", "polling_interval_s": "30",
        "max_idle_s": "600", "max_spinup_s": "1200", "settings.region": "eu-west-1",
        "settings.subnets": "subnet-a, subnet-b", "settings.tags": "team=ml\ncost-center=42",
        "settings.launch_spec": '{"EbsOptimized": true}', "credentials.access_key_id": "AKIAFORM",
        "credentials.secret_access_key": "form-secret", "environment": "HF_HOME=/data/hf", "files": "",
        "cap_day_usd": "25", "cap_month_usd": "", "warn_duplicate_runs": "on",
        "resource_rows": "3", "resources.0.name": "g5", "resources.0.instance_type": "g5.xlarge",
        "resources.0.gpu_count": "1", "resources.0.max_instances": "3", "resources.0.spot": "on",
        "resources.0.spot_rollback_after_s": "300", "resources.1.name": "g6", "resources.1.instance_type": "g6.xlarge",
        "resources.1.gpu_count": "1", "queue_rows": "2", "queues.0.queue": "train", "queues.0.resources": "g5, g6",
    }  # fmt: skip
    return {**base, **fields}


def test_the_field_form_creates_and_edits_an_app_and_shows_every_error_beside_its_field(
    web: Client, make_queue: Callable[..., Queue]
) -> None:
    make_queue("train")
    page = web.get("/orchestration/autoscalers/new/").content.decode()
    assert 'name="settings.region"' in page and 'name="settings.project"' in page and "Compute resources" in page
    bad = web.post(
        "/orchestration/autoscalers/new/", _form(workers_prefix="Bad Prefix", **{"resources.0.gpu_count": "-1"})
    )
    text = bad.content.decode()
    assert bad.status_code == 400 and "workers_prefix" in text and "resources.0.gpu_count" in text
    assert 'id="f-workers_prefix" name="workers_prefix" type="text" value="Bad Prefix" aria-invalid="true"' in text
    assert not AutoscalerApp.objects.exists()
    assert web.post("/orchestration/autoscalers/new/", _form(**{"settings.tags": "no-equals"})).status_code == 400
    r = web.post("/orchestration/autoscalers/new/", _form())
    assert r.status_code == 302, r.content.decode()[-2000:]
    app = AutoscalerApp.objects.get(name="gpu-form")
    exported = services.app_export(app)
    assert exported["settings"] == {
        "region": "eu-west-1",
        "subnets": ["subnet-a", "subnet-b"],
        "tags": {"team": "ml", "cost-center": "42"},
        "launch_spec": {"EbsOptimized": True},
    }
    assert exported["queues"] == {"train": ["g5", "g6"]} and exported["environment"] == {"HF_HOME": "/data/hf"}
    g5 = app.resources.get(name="g5")
    assert g5.spot and g5.spot_rollback_after_s == 300 and g5.max_instances == 3
    assert services.credentials_of(app)["secret_access_key"] == "form-secret"
    edit = web.get(f"/orchestration/autoscalers/{app.pk}/edit/").content.decode()
    assert "form-secret" not in edit and "AKIAFORM" not in edit and 'value="subnet-a, subnet-b"' in edit
    changed = _form(max_idle_s="300", **{"credentials.access_key_id": "", "credentials.secret_access_key": ""})
    assert web.post(f"/orchestration/autoscalers/{app.pk}/edit/", changed).status_code == 302
    app.refresh_from_db()
    assert app.max_idle_s == 300 and services.credentials_of(app)["secret_access_key"] == "form-secret"


def test_runs_on_autoscaled_machines_get_their_cost_in_the_usage_ledger(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], make_worker: Callable[..., Worker],
    agent_actor: Actor,
) -> None:  # fmt: skip

    Resource.objects.filter(app=app).update(hourly_price_usd=Decimal("3.60"))
    gpu = Queue.objects.get(name="gpu")
    waiting(make_experiment, gpu, 1)
    services.reconcile(app.pk)
    (row,) = live(app)
    worker = make_worker(row.worker_name, [gpu], gpu_slots=[{"index": 0, "model": "nvidia a10g", "memory_mb": 24576}])
    claim = dispatch_claim(actor=agent_actor, worker=worker)
    assert claim is not None
    attempt = claim.attempt
    experiment_services.attempt_start(actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token)
    experiment_services.attempt_finish(
        actor=agent_actor, attempt_id=attempt.pk, token=attempt.lease_token, outcome="completed", exit_code=0
    )
    record = UsageRecord.objects.get(attempt_id=attempt.pk)
    UsageRecord.objects.filter(pk=record.pk).update(started_at=record.ended_at - timedelta(minutes=30))
    services.reconcile(app.pk)
    assert UsageRecord.objects.get(pk=record.pk).cost == Decimal("1.8000")  # 30 minutes at $3.60/h


def _cap_world(app: AutoscalerApp, make_experiment: Callable[..., Experiment]) -> None:
    Resource.objects.filter(app=app).update(hourly_price_usd=Decimal("3.60"), max_instances=10)
    AutoscalerApp.objects.filter(pk=app.pk).update(cap_day_usd=Decimal("1.30"))  # two reservations of $0.60
    waiting(make_experiment, Queue.objects.get(name="gpu"), 10)


def test_pass_after_pass_never_launches_past_the_money_cap(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], moto_url: str
) -> None:
    _cap_world(app, make_experiment)
    for _ in range(3):  # machines still starting keep their reservation
        services.reconcile(app.pk)
    assert Instance.objects.filter(app=app).count() == 2 and len(ours(moto_url)) == 2


@pytest.mark.postgres_only
def test_four_passes_at_once_never_launch_past_the_money_cap(
    app: AutoscalerApp, make_experiment: Callable[..., Experiment], moto_url: str
) -> None:
    _cap_world(app, make_experiment)
    barrier = threading.Barrier(4)

    def run(gate: threading.Barrier = barrier) -> None:
        gate.wait()
        try:
            services.reconcile(app.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Instance.objects.filter(app=app).count() == 2 and len(ours(moto_url)) == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/orchestration/autoscalers/"), ("GET", "/orchestration/autoscalers/new/"),
        ("GET", "/orchestration/autoscalers/new/json/"), ("GET", "/orchestration/autoscalers/{app}/"),
        ("GET", "/orchestration/autoscalers/{app}/live/"), ("GET", "/orchestration/autoscalers/{app}/edit/"),
        ("GET", "/orchestration/autoscalers/{app}/edit/json/"), ("GET", "/orchestration/autoscalers/{app}/export/"),
        ("GET", "/orchestration/autoscalers/{app}/spend/"), ("POST", "/orchestration/autoscalers/{app}/state/"),
        ("POST", "/orchestration/autoscalers/{app}/delete/"),
        ("GET", "/orchestration/autoscalers/{app}/machines/{machine}/console/"),
    ],
)  # fmt: skip
def test_every_autoscaler_page_route_is_for_admins_only(
    app: AutoscalerApp, web: Client, alice: User, method: str, path: str
) -> None:
    """The pages' routes as each role: nobody signed in, a user (not an admin), an admin."""
    machine = Instance.objects.create(
        app=app, resource=app.resources.first(), worker_name="aws-x-1", hourly_price_usd=0, state="terminated"
    )
    url = path.format(app=app.pk, machine=machine.pk)
    body = {"state": "stopped"} if url.endswith("state/") else {}
    anon = getattr(Client(), method.lower())(url, body)
    assert anon.status_code in (302, 401), (url, anon.status_code)
    user = Client()
    user.force_login(alice)
    assert getattr(user, method.lower())(url, body).status_code == 403, url
    assert getattr(web, method.lower())(url, body).status_code < 400 or url.endswith("delete/"), url
    assert AutoscalerApp.objects.filter(pk=app.pk).exists() or url.endswith("delete/")


def test_the_agent_wheels_are_public_and_nothing_else_there(client: Client, tmp_path: Path, settings: Any) -> None:
    settings.AGENT_WHEELS_DIR = tmp_path
    assert client.get("/agent/wheels/").status_code == 200  # a booting machine has no login
    assert client.get("/agent/wheels/secrets.txt").status_code == 404
